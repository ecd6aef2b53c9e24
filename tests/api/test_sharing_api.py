"""Sharing under gpulab's rules (``hub/api/sharing.py``), against the hub in-process:
only members of ``sharing.groups`` share, links last at most ``sharing.max_expiry``,
a teammate is named without a user directory, a revocation reaches the running server,
and a server's own token may share that server only when its owner may."""

from __future__ import annotations

import datetime

import pytest

from apihub import API_SETTINGS, InProcessHub
from browsing import login, sign_up


@pytest.fixture(scope="module")
def shared_hub():
    """This module's hub (the tier's ``hub`` fixture cleans it after each test)."""
    settings = {**API_SETTINGS, "sharing": {"groups": ["sharers"], "max_expiry": "2h"}}
    hub = InProcessHub(settings).start()
    yield hub
    hub.cleanup()


def seconds_between(model: dict) -> float:
    parse = datetime.datetime.fromisoformat
    return (parse(model["expires_at"]) - parse(model["created_at"])).total_seconds()


def server_token(hub, name: str) -> str:
    """The token JupyterHub gave ``name``'s running server (``$JUPYTERHUB_API_TOKEN``)."""
    return hub.app.users[name].spawner.api_token


def token_scopes(hub, token: str) -> set[str]:
    r = hub.admin.get(hub.api("/user"), headers={"Authorization": f"token {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return set(r.json()["scopes"])


def test_links_follow_the_group_rule_and_the_longest_expiry(hub):
    alice = hub.create_user("alice", groups=("sharers",))
    carol = hub.create_user("carol")
    for user in (alice, carol):
        assert user.spawn().status_code in (201, 202)
    codes = hub.api("/share-codes/{}/")

    # no expiry asked: JupyterHub's day, cut to this hub's longest
    r = alice.session.post(codes.format("alice"), json={}, timeout=10)
    assert r.status_code == 200, r.text
    assert seconds_between(r.json()) == pytest.approx(7200, abs=5)
    assert "/hub/accept-share?code=" in r.json()["accept_url"]
    r = alice.session.post(codes.format("alice"), json={"expires_in": 3600}, timeout=10)
    assert r.status_code == 200 and seconds_between(r.json()) == pytest.approx(3600, abs=5)
    r = alice.session.post(codes.format("alice"), json={"expires_in": 3 * 3600}, timeout=10)
    assert r.status_code == 400 and "sharing.max_expiry" in r.json()["message"]
    r = alice.session.get(codes.format("alice"), timeout=10)
    assert len(r.json()["items"]) == 2

    # carol is not in sharers: refused with the reason, not JupyterHub's scope names
    r = carol.session.post(codes.format("carol"), json={}, timeout=10)
    assert r.status_code == 403 and "sharers" in r.json()["message"]
    r = carol.session.post(hub.api("/shares/carol/"), json={"user": "alice"}, timeout=10)
    assert r.status_code == 403 and "sharers" in r.json()["message"]

    # what the Share dialog asks first
    r = alice.session.get(hub.api("/gpulab/sharing"), timeout=10)
    assert r.status_code == 200, r.text
    policy = r.json()
    assert policy["allowed"] and policy["max_expiry"] == 7200
    assert policy["groups"] == ["sharers"] and policy["users"] is None
    policy = carol.session.get(hub.api("/gpulab/sharing"), timeout=10).json()
    assert not policy["allowed"] and "sharers" in policy["reason"]
    r = carol.session.get(hub.api("/gpulab/sharing?user=alice"), timeout=10)
    assert r.status_code == 403

    # the servers' own tokens: alice's may share her server (the lab's dialog goes
    # through it), carol's may not share hers (only see that nothing is), and neither
    # reaches anyone else's
    scopes = token_scopes(hub, server_token(hub, "alice"))
    assert {"shares!server=alice/", "read:shares!server=alice/"} <= scopes
    carol_scopes = token_scopes(hub, server_token(hub, "carol"))
    assert not any(s.startswith("shares") for s in carol_scopes), carol_scopes
    server = {"Authorization": f"token {server_token(hub, 'alice')}"}
    r = hub.admin.post(codes.format("alice"), headers=server, json={}, timeout=10)
    assert r.status_code == 200, r.text
    r = hub.admin.post(codes.format("carol"), headers=server, json={}, timeout=10)
    assert r.status_code == 403


def test_direct_shares_need_no_user_directory_and_revoking_reaches_the_server(hub):
    alice = hub.create_user("alice", groups=("sharers",))
    bob = hub.create_user("bob")
    hub.create_user("dave", groups=("others",))
    assert alice.spawn().status_code in (201, 202)
    shares = hub.api("/shares/alice/")

    # alice cannot list names (no user directory), yet names a teammate
    assert alice.session.get(hub.api("/users"), timeout=10).status_code == 403
    r = alice.session.post(shares, json={"user": "bob"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["user"] == {"name": "bob"}
    r = alice.session.post(shares, json={"user": "nobody-here"}, timeout=10)
    assert r.status_code == 400 and "No such user" in r.json()["message"]
    r = alice.session.post(shares, json={"user": "alice"}, timeout=10)
    assert r.status_code == 400 and "owns" in r.json()["message"]
    # her own group, not another one
    r = alice.session.post(shares, json={"group": "sharers"}, timeout=10)
    assert r.status_code == 200, r.text
    r = alice.session.post(shares, json={"group": "others"}, timeout=10)
    assert r.status_code == 403

    # bob may now reach alice's server, with a token for it alone
    access = "access:servers!server=alice/"
    r = bob.session.post(hub.api("/users/bob/tokens"), json={"scopes": [access]}, timeout=10)
    assert r.status_code == 201, r.text
    assert access in r.json()["scopes"]

    # revoking him: the hub tells alice's running server, which ends his sessions
    r = alice.session.patch(shares, json={"user": "bob"}, timeout=10)
    assert r.status_code == 200, r.text
    # (before it answers: whoever asks next, bob is refused)
    (call,) = hub.recorder.of("alice", "guests/end")
    assert call.method == "POST" and "bob" in call.body["reason"]
    r = bob.session.post(hub.api("/users/bob/tokens"), json={"scopes": [access]}, timeout=10)
    assert r.status_code == 400 and "not held" in r.json()["message"], r.text

    r = alice.session.delete(shares, timeout=10)
    assert r.status_code == 204
    assert len(hub.recorder.of("alice", "guests/end")) == 2
    listed = alice.session.get(shares, timeout=10).json()
    assert listed["items"] == []


def test_read_only_links_follow_the_same_rules_and_are_the_owners_alone(hub):
    alice = hub.create_user("alice", groups=("sharers",))
    carol = hub.create_user("carol")
    views = hub.api("/gpulab/views")

    r = alice.session.post(views, json={"path": "/work/a.ipynb"}, timeout=10)
    assert r.status_code == 200, r.text
    made = r.json()
    assert made["path"] == "work/a.ipynb" and made["url"].startswith("/hub/gpulab/view/")
    assert seconds_between(made) == pytest.approx(7200, abs=5)  # the longest, under a day
    r = alice.session.post(views, json={"path": "a.ipynb", "expires_in": 3 * 3600}, timeout=10)
    assert r.status_code == 400 and "sharing.max_expiry" in r.json()["message"]
    for bad in (30, True, "1h"):
        r = alice.session.post(views, json={"path": "a.ipynb", "expires_in": bad}, timeout=10)
        assert r.status_code == 400, (bad, r.text)
    r = carol.session.post(views, json={"path": "c.ipynb"}, timeout=10)
    assert r.status_code == 403 and "sharers" in r.json()["message"]

    # listed without the token; nobody else sees or revokes it
    (listed,) = alice.session.get(views, timeout=10).json()["views"]
    assert listed["id"] == made["id"] and "url" not in listed and listed["view_count"] == 0
    assert carol.session.get(views, timeout=10).json()["views"] == []
    assert carol.session.get(views + "?user=alice", timeout=10).status_code == 403
    assert carol.session.delete(f"{views}/{made['id']}", timeout=10).status_code == 404
    assert alice.session.delete(f"{views}/{made['id']}", timeout=10).status_code == 204
    assert alice.session.get(views, timeout=10).json()["views"] == []


def test_the_hub_renders_no_oversized_notebook_whatever_the_owners_server_sends(hub):
    """The owner controls their server: it may answer a read-only link with a notebook
    far over the limit its extension keeps, to make the hub render it for minutes."""
    mallory = hub.create_user("mallory", groups=("sharers",))
    assert mallory.spawn().status_code in (201, 202)
    big = {"cell_type": "markdown", "id": "x", "metadata": {}, "source": "x" * 2**20}
    server = hub.app.users["mallory"].spawner.recorded()
    server.notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [big] * 21}
    r = mallory.session.post(hub.api("/gpulab/views"), json={"path": "big.ipynb"}, timeout=10)
    assert r.status_code == 200, r.text
    password = "pw-mallory-1234"
    assert sign_up(hub, "mallory", password).status_code == 200
    browser = login(hub, "mallory", password)
    r = browser.get(hub.url + r.json()["url"] + "/content", timeout=60)
    assert r.status_code == 413 and "larger than 20 MiB" in r.text
