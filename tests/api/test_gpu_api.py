"""The GPU API (``/hub/api/gpulab/gpu``, the ledger's quotas and queue, idle reclaim)
against the hub in-process: who may act on which server, what bad requests get, what the
hub asks of the server, what the ledger records."""

from __future__ import annotations

import threading

from hubfixture import wait_for


def gpu_state(hub, user) -> dict:
    r = user.session.get(hub.api("/gpulab/gpu"), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_op(hub, user, states=("done", "failed", "cancelled")) -> dict:
    wait_for(lambda: gpu_state(hub, user)["operation"]["state"] in states, 60, f"op {states}")
    return gpu_state(hub, user)["operation"]


def test_return_and_get_are_idempotent_and_authorised(hub):
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    root = hub.create_user("root-admin", admin=True)
    assert alice.spawn(profile="gpu-1").status_code in (201, 202)
    url = hub.api("/gpulab/gpu")

    # someone else's server: 403, and nothing changes
    r = bob.session.post(url + "/return?user=alice", json={}, timeout=30)
    assert r.status_code == 403 and "alice" in r.json()["message"]
    r = bob.session.post(url + "/get?user=alice", json={"gpus": 1}, timeout=30)
    assert r.status_code == 403
    assert hub.holders() == {"0": "alice"}
    # the server was asked nothing but how busy its GPU is (the reclaim's rounds)
    assert [c.path for c in hub.recorder.of("alice") if c.path != "activity"] == []

    # bad input: clear 4xx
    for body, status in (({"gpus": 0}, 400), ({"gpus": "two"}, 400), ({"gpus": 5}, 409)):
        r = alice.session.post(url + "/get", json=body, timeout=30)
        assert r.status_code == status, (body, r.text)
        assert r.json()["message"]
    r = alice.session.post(url + "/return", data="not json", timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    r = bob.session.get(url, timeout=30)
    assert r.status_code == 404 and "no default server" in r.json()["message"]
    r = alice.session.get(url + "?user=nobody-here", timeout=30)
    assert r.status_code == 403

    # a double click: two returns at once release once, the second is a no-op answer
    answers = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(
                alice.session.post(url + "/return", json={}, timeout=60).json()
            )
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(a["released"]) for a in answers) == [0, 1], answers
    assert any("holds no GPU" in a["message"] for a in answers)
    assert hub.holders() == {}
    # the server was asked once to take its kernels off the GPU
    switches = hub.recorder.of("alice", "switch")
    assert [c.body["visible"] for c in switches] == [""], switches

    # beyond the user's quota (2), or the pool (3) for a user allowed 4: refused at
    # once, not left in the queue
    r = alice.session.post(url + "/get", json={"gpus": 3}, timeout=30)
    assert r.status_code == 403 and "quota" in r.json()["message"]
    lab = hub.create_user("lab")
    assert lab.spawn(profile="cpu").status_code in (201, 202)
    r = lab.session.post(url + "/get", json={"gpus": 4}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["message"] == "Get GPU asks for 4 GPU(s); this hub has 3"
    assert gpu_state(hub, lab)["queue"] == 0 and gpu_state(hub, lab)["operation"] is None

    # Get GPU: granted, then the server is asked to move onto it; an admin may return it
    r = alice.session.post(url + "/get", json={"gpus": 1}, timeout=30)
    assert r.status_code in (200, 202)
    assert wait_op(hub, alice)["state"] == "done"
    held = [gpu for gpu, user in hub.holders().items() if user == "alice"]
    assert [c.body["visible"] for c in hub.recorder.of("alice", "switch")] == ["", *held]
    r = root.session.post(url + "/return?user=alice", json={}, timeout=60)
    assert r.status_code == 200 and r.json()["released"]
    events = hub.admin.get(hub.api("/gpulab/events?user=alice"), timeout=10).json()["events"]
    assert events[0]["reason"] == "returned by admin root-admin"


def test_user_and_group_quotas(hub):
    dave = hub.create_user("dave")
    r = dave.spawn(profile="gpu-1", gpus=3)
    assert r.status_code == 403
    assert "dave may hold 2 GPU(s)" in r.json()["message"]
    erin = hub.create_user("erin", groups=("team",))
    frank = hub.create_user("frank", groups=("team",))
    assert erin.spawn(profile="gpu-1").status_code in (201, 202)
    r = frank.spawn(profile="gpu-1")
    assert r.status_code == 403
    assert "group team may hold 1 GPU(s)" in r.json()["message"]
    assert frank.model()["servers"] == {}
    # once erin stops, frank gets one
    erin.stop()
    assert frank.spawn(profile="gpu-1").status_code in (201, 202)
    assert list(hub.holders().values()) == ["frank"]


def test_an_idle_gpu_is_reclaimed_on_the_hubs_clock(hub):
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    assert alice.spawn(profile="gpu-idle").status_code in (201, 202)
    assert bob.spawn(profile="gpu-1").status_code in (201, 202)
    # the hub asks the servers what they do at each round, and keeps the GPUs
    wait_for(lambda: len(hub.recorder.of("alice", "activity")) >= 2, 30, "two idle checks")
    assert sorted(hub.holders().values()) == ["alice", "bob"]

    hub.clock.advance(2 * 3600)  # two hours of nothing in alice's server
    wait_for(lambda: "alice" not in hub.holders().values(), 30, "alice's GPU to be reclaimed")
    assert [c.body["visible"] for c in hub.recorder.of("alice", "switch")] == [""]
    events = hub.admin.get(hub.api("/gpulab/events?user=alice"), timeout=10).json()["events"]
    assert events[0]["action"] == "release"
    assert events[0]["reason"] == "reclaimed: GPU idle for 2.0 h"
    assert list(hub.holders().values()) == ["bob"]  # no idle_return: kept
    # bob's server is asked how busy its GPU is (usage accounting), and never returned
    assert hub.recorder.of("bob", "activity") and hub.recorder.of("bob", "switch") == []
