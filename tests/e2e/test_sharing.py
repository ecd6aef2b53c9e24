"""Share links end to end, through the owner's server as the lab's Share dialog calls it:
a real hub, real servers, teammates with browser sessions (the hub's login form, its
share and OAuth pages). The live co-editing of two browsers is in
``test_sharing_browser.py``."""

from __future__ import annotations

import re
import uuid

import pytest
import requests

from browsing import accept_share, login, sign_up
from hubfixture import end_sharing


@pytest.fixture(autouse=True)
def no_shares_left(hub):
    yield
    end_sharing(hub)


def teammate(hub, name: str):
    """A new user named ``name`` and a few letters signs up (the admin added them) and
    logs in: their name and browser session."""
    name = f"{name}-{uuid.uuid4().hex[:4]}"
    hub.create_user(name)
    password = "pw-" + uuid.uuid4().hex
    assert sign_up(hub, name, password).status_code == 200
    return name, login(hub, name, password)


def text(page) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text))


def test_a_link_opens_the_notebook_for_a_teammate_until_it_is_revoked(hub):
    alice = hub.create_user("alice")
    assert alice.spawn().status_code in (201, 202)
    share = alice.server_url + "/gpulab/share"
    state = alice.session.get(share, timeout=30).json()
    assert state["allowed"] and state["codes"] == [] and state["guests"] == []

    r = alice.session.post(share + "/codes", json={"expires_in": 3600, "path": "work/a b.ipynb"})
    assert r.status_code == 200, r.text
    link = r.json()
    assert link["url"].startswith("/hub/accept-share?code=")
    assert link["url"].endswith("&next=%2Fuser%2Falice%2Flab%2Ftree%2Fwork%2Fa%2520b.ipynb")
    r = alice.session.post(share + "/codes", json={"expires_in": 10**9}, timeout=30)
    assert r.status_code == 400 and "sharing.max_expiry" in r.json()["message"]

    # bob follows it: the hub's pages say whose server it is and what he can do there
    bob_name, bob = teammate(hub, "bob")
    page = bob.get(hub.url + link["url"], timeout=30)
    assert "alice shared a server with you" in text(page)
    assert "you run code as alice" in text(page)
    landed = accept_share(bob, hub, link["url"])
    assert landed.status_code == 200, landed.text
    assert landed.url == f"{hub.url}/user/alice/lab/tree/work/a%20b.ipynb"
    # in alice's server he is bob (his name on his cursor and edits), not alice
    r = bob.get(alice.server_url + "/api/me", timeout=30)
    assert r.status_code == 200 and r.json()["identity"]["username"] == bob_name

    state = alice.session.get(share, timeout=30).json()
    (code,) = state["codes"]
    assert code["id"] == link["id"] and code["exchange_count"] == 1
    assert [(g["kind"], g["name"]) for g in state["guests"]] == [("user", bob_name)]

    # the link is revoked: nobody else gets in with it; bob keeps his access
    r = alice.session.delete(f"{share}/codes/{link['id']}", timeout=30)
    assert r.status_code == 204, r.text
    _, carol = teammate(hub, "carol")
    r = carol.get(hub.url + link["url"], timeout=30)
    assert r.status_code == 404 and "Share not found or expired" in r.text
    assert carol.get(alice.server_url + "/api/contents", timeout=30).status_code == 403
    assert bob.get(alice.server_url + "/api/contents", timeout=30).status_code == 200

    # stop sharing: bob is out at once
    r = alice.session.delete(share, timeout=30)
    assert r.status_code == 204, r.text
    assert bob.get(alice.server_url + "/api/contents", timeout=30).status_code == 403
    state = alice.session.get(share, timeout=30).json()
    assert state["codes"] == [] and state["guests"] == []


def test_shares_with_a_named_teammate_or_group_and_bad_requests(hub):
    alice = hub.create_user("alice", groups=("vision",))
    hub.create_user("bob", groups=("vision",))
    assert alice.spawn().status_code in (201, 202)
    guests = alice.server_url + "/gpulab/share/guests"

    r = alice.session.post(guests, json={"user": "nobody-at-all"}, timeout=30)
    assert r.status_code == 404 and r.json()["message"] == "no hub user named nobody-at-all"
    r = alice.session.post(guests, json={"group": "vision"}, timeout=30)
    assert r.status_code == 200 and r.json()["kind"] == "group", r.text
    for body in ({}, {"user": "bob", "group": "vision"}, {"user": 3}, []):
        r = alice.session.post(guests, json=body, timeout=30)
        assert r.status_code == 400 and r.json()["message"], (body, r.text)
    r = alice.session.post(guests, data="{", timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    r = alice.session.delete(guests + "/robot/bob", timeout=30)
    assert r.status_code == 404

    state = alice.session.get(alice.server_url + "/gpulab/share", timeout=30).json()
    assert state["groups"] == ["vision"]
    assert [(g["kind"], g["name"]) for g in state["guests"]] == [("group", "vision")]
    r = alice.session.delete(guests + "/group/vision", timeout=30)
    assert r.status_code == 204
    state = alice.session.get(alice.server_url + "/gpulab/share", timeout=30).json()
    assert state["guests"] == []


def test_a_read_only_link_shows_one_notebook_rendered_sandboxed_and_following_edits(hub):
    alice = hub.create_user("alice")
    assert alice.spawn().status_code in (201, 202)
    notebook = {
        "type": "notebook",
        "content": {
            "nbformat": 4, "nbformat_minor": 5, "metadata": {},
            "cells": [
                {"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": 1,
                 "source": "answer = 6 * 7", "outputs": [
                     {"output_type": "display_data", "metadata": {},
                      "data": {"text/html": "<b>forty-two</b><script>parent.stolen = 1</script>"}},
                 ]},
            ],
        },
    }  # fmt: skip
    r = alice.session.put(alice.server_url + "/api/contents/report.ipynb", json=notebook)
    assert r.status_code in (200, 201), r.text
    views = alice.server_url + "/gpulab/share/views"
    for body in ({"path": "../../etc/passwd.ipynb"}, {"path": "notes.txt"}, {"path": 5}):
        r = alice.session.post(views, json=body, timeout=30)
        assert r.status_code == 400 and r.json()["message"], (body, r.text)
    r = alice.session.post(views, json={"path": "report.ipynb", "expires_in": 3600})
    assert r.status_code == 200, r.text
    link = r.json()
    assert link["url"].startswith("/hub/gpulab/view/") and link["path"] == "report.ipynb"

    # any logged-in hub user with the link; nobody without a login
    assert requests.get(hub.url + link["url"], allow_redirects=False).status_code == 302
    _, viewer = teammate(hub, "viewer")
    page = viewer.get(hub.url + link["url"], timeout=30)
    assert page.status_code == 200 and 'sandbox=""' in page.text, page.text[-500:]
    content = viewer.get(hub.url + link["url"] + "/content", timeout=60)
    assert content.status_code == 200, content.text[-500:]
    assert "answer" in content.text and "forty-two" in content.text
    policy = content.headers["Content-Security-Policy"]
    assert policy.startswith("sandbox;") and "script-src" not in policy
    assert "default-src 'none'" in policy
    # the viewer reaches nothing else of alice's
    assert viewer.get(alice.server_url + "/api/contents", timeout=30).status_code == 403

    # the page follows the owner's edits
    before = viewer.get(hub.url + link["url"] + "/version", timeout=30).json()["version"]
    notebook["content"]["cells"][0]["source"] = "answer = 'edited'"
    alice.session.put(alice.server_url + "/api/contents/report.ipynb", json=notebook)
    after = viewer.get(hub.url + link["url"] + "/version", timeout=30).json()["version"]
    assert after != before
    assert "edited" in viewer.get(hub.url + link["url"] + "/content", timeout=60).text

    state = alice.session.get(alice.server_url + "/gpulab/share", timeout=30).json()
    (listed,) = state["views"]
    assert listed["id"] == link["id"] and listed["view_count"] == 1

    # the owner's server stops: the page says so; revoked: gone
    alice.stop()
    r = viewer.get(hub.url + link["url"] + "/content", timeout=30)
    assert r.status_code == 409 and "not running" in r.text
    r = alice.session.delete(f"{hub.api('/gpulab/views')}/{link['id']}", timeout=30)
    assert r.status_code == 204
    r = viewer.get(hub.url + link["url"], timeout=30)
    assert r.status_code == 404 and "revoked or has expired" in r.text


def test_a_single_use_link_admits_one_teammate_then_says_it_is_used_up(hub):
    alice = hub.create_user("alice")
    assert alice.spawn().status_code in (201, 202)
    share = alice.server_url + "/gpulab/share"
    for bad in (0, 1001, "one", True):
        r = alice.session.post(share + "/codes", json={"max_uses": bad}, timeout=30)
        assert r.status_code == 400 and "max_uses" in r.json()["message"], (bad, r.text)
    r = alice.session.post(share + "/codes", json={"expires_in": 3600, "max_uses": 1})
    assert r.status_code == 200 and r.json()["max_uses"] == 1, r.text
    link = r.json()["url"]

    first_name, first = teammate(hub, "first")
    assert accept_share(first, hub, link).url == f"{hub.url}/user/alice/lab"
    # the one admitted may come back by it; the next person is told it is used up
    assert first.get(hub.url + link, timeout=30).status_code == 200
    _, second = teammate(hub, "second")
    r = second.get(hub.url + link, timeout=30)
    assert r.status_code == 410 and "already used once" in text(r), text(r)[-300:]
    assert second.get(alice.server_url + "/api/contents", timeout=30).status_code == 403

    (code,) = alice.session.get(share, timeout=30).json()["codes"]
    assert (code["max_uses"], code["exchange_count"]) == (1, 1)
    assert [g["name"] for g in alice.session.get(share, timeout=30).json()["guests"]] == [
        first_name
    ]
