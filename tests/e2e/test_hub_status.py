"""Open labs and the hub: the top bar's polls stop at the user's server, which follows the
hub's GPU status by one request that waits at the hub for a change (issue: the hub under
load). A change still reaches the lab at once, a hung hub does not hang the lab, and a
hub restart shows as "Reconnecting to the hub…" with the last state kept.
"""

import re
import signal
import threading
import time

import pytest
import test_lab_browser
from playwright.sync_api import expect
from test_lab_browser import held_by

from browsing import log_in
from hubfixture import wait_for

pytestmark = pytest.mark.timeout(240)


def lab_state(user, timeout: float = 30) -> dict:
    """What the top bar's poll gets from the user's server."""
    r = user.session.get(user.server_url + "/gpulab/gpu", timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


def hub_status(user, **query) -> tuple[int, dict]:
    r = user.session.get(user.hub.api("/gpulab/gpu"), params=query, timeout=150)
    return r.status_code, r.json()


def test_a_waiting_status_request_is_answered_by_the_change(hub):
    mona = hub.create_user("mona")
    assert mona.spawn(profile="gpu-1").status_code in (201, 202)
    status, now = hub_status(mona)
    assert status == 200 and len(now["gpus"]) == 1 and now["etag"]

    # the same status again: the hub waits; an admin's Return GPU answers it, once per
    # change it makes (the operation starts, the GPU is free, ...)
    seen = []

    def follow():
        started, etag = time.monotonic(), now["etag"]
        while time.monotonic() - started < 100:
            status, model = hub_status(mona, wait="100", etag=etag)
            seen.append((status, model, time.monotonic() - started))
            if status != 200 or not model["gpus"]:
                return
            etag = model["etag"]

    follower = threading.Thread(target=follow)
    follower.start()
    r = hub.admin.post(hub.api("/gpulab/gpu/return"), params={"user": "mona"}, json={})
    assert r.status_code == 200, r.text
    follower.join(120)
    assert [status for status, _, _ in seen] == [200] * len(seen)
    last = seen[-1][1]
    assert last["gpus"] == [] and last["operation"]["state"] == "done"
    etags = [now["etag"]] + [model["etag"] for _, model, _ in seen]
    assert len(set(etags)) == len(etags), "an answer that changed nothing"
    assert seen[-1][2] < 60, "answered by the wait's end, not by the change"

    # a status other than the current one is answered at once
    status, same = hub_status(mona, wait="100", etag="not-the-current-one")
    assert status == 200 and same["etag"] == last["etag"]
    for bad in ("-1", "121", "soon"):
        status, error = hub_status(mona, wait=bad, etag=now["etag"])
        assert status == 400 and "wait" in error["message"], (bad, error)


def test_open_labs_are_answered_by_their_server_and_follow_changes(hub):
    nils = hub.create_user("nils")
    assert nils.spawn(profile="gpu-1").status_code in (201, 202)
    (index,) = held_by(hub, "nils")
    # the first polls ask the hub; from then on the server follows the hub's status
    wait_for(lambda: lab_state(nils)["followed"], 30, "the server to follow the hub's status")

    # a hung hub: the lab is still answered, with what was last known
    hub.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(5):
            state = lab_state(nils, timeout=10)
            assert state["followed"] and [g["index"] for g in state["gpus"]] == [index]
    finally:
        hub.proc.send_signal(signal.SIGCONT)

    # a change made at the hub (not through this server) shows at the next poll
    r = hub.admin.post(hub.api("/gpulab/gpu/return"), params={"user": "nils"}, json={})
    assert r.status_code == 200, r.text
    wait_for(lambda: lab_state(nils)["gpus"] == [], 10, "the lab to see the GPU returned")
    # a change made through the server: its own answer, then the status, agree at once
    r = nils.session.post(nils.server_url + "/gpulab/gpu/get", json={"gpus": 1}, timeout=60)
    assert r.status_code in (200, 202), r.text
    wait_for(lambda: len(lab_state(nils)["gpus"]) == 1, 60, "the GPU back in the lab")
    wait_for(lambda: lab_state(nils)["followed"], 30, "the server to follow again")


def test_the_top_bar_says_reconnecting_while_the_hub_restarts(hub, page):
    olga = hub.create_user("olga")
    assert olga.spawn(profile="gpu-1").status_code in (201, 202)
    (index,) = held_by(hub, "olga")
    log_in(page, hub, "olga")
    page.goto(olga.server_url + "/lab")
    widget = page.locator("#gpulab-gpu")
    label = widget.locator(".gpulab-gpu-label")
    status = widget.locator(".gpulab-gpu-status")
    expect(widget).to_have_attribute("data-gpulab-state", "gpu", timeout=60_000)
    expect(label).to_have_text(re.compile(rf"^GPU {index}\b"))

    hub.kill()
    try:
        # the last state stays, with a word on why nothing can be done just now
        expect(status).to_have_text("Reconnecting to the hub…", timeout=30_000)
        expect(widget).to_have_attribute("data-gpulab-state", "reconnecting")
        expect(label).to_have_text(re.compile(rf"^GPU {index}\b"))
        expect(widget.locator(".gpulab-gpu-button")).to_be_disabled()
        test_lab_browser.shot(page, "reconnecting")
    finally:
        hub.start()
    expect(widget).to_have_attribute("data-gpulab-state", "gpu", timeout=60_000)
    expect(status).to_be_hidden()
    expect(label).to_have_text(re.compile(rf"^GPU {index}\b"))
