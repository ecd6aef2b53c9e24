"""A guest in a shared server goes after what is the owner's alone.

Alice shares her running server with Bob (JupyterHub's sharing: he reaches it with his
own login, here a token for her server alone). Inside, he may work as she does: that is
what sharing is. But the gpulab extension's endpoints act with the server's own hub
token, for whoever reaches them: before they checked the caller, Bob returned Alice's
GPU, read her jobs and could have made links to her server. Each must answer him 403
and change nothing; the GPU state he may see, without the buttons.

Then Alice revokes him: his open kernel connection is closed within seconds and his next
request is refused, where the server would otherwise have trusted its cached answer
from the hub for five minutes and kept his websocket open for good.
"""

from __future__ import annotations

import json

import pytest
import websocket

from hubfixture import end_sharing, guest_session, wait_for


@pytest.fixture(autouse=True)
def no_shares_left(hub):
    yield
    end_sharing(hub)


def test_a_guest_cannot_use_the_owners_gpu_jobs_or_sharing(hub):
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    assert alice.spawn(profile="gpu-1").status_code in (201, 202)
    held = hub.holders()
    assert list(held.values()) == ["alice"]
    # an admin shares (as Alice could): the server is then really Bob's to reach
    r = hub.admin.post(hub.api("/shares/alice/"), json={"user": "bob"}, timeout=10)
    assert r.status_code == 200, r.text
    guest = guest_session(hub, bob, "alice")
    url = alice.server_url

    r = guest.get(url + "/api/contents", timeout=30)
    assert r.status_code == 200, r.text  # he is in
    r = guest.get(url + "/gpulab/gpu", timeout=30)
    assert r.status_code == 200 and r.json()["owner"] is False
    assert alice.server_get("/gpulab/gpu").json()["owner"] is True

    attempts = [
        ("POST", "/gpulab/gpu/return", {"force": True}),
        ("POST", "/gpulab/gpu/get", {"gpus": 1}),
        ("DELETE", "/gpulab/gpu/get", None),
        ("GET", "/gpulab/hub/jobs", None),
        ("GET", "/gpulab/hub/models", None),
        ("GET", "/gpulab/hub/usage", None),
        ("POST", "/gpulab/hub/jobs/train/cancel", {}),
        ("POST", "/gpulab/hub/jobs", {"name": "guestjob", "command": "true"}),
        ("POST", "/gpulab/hub/models", {"name": "m", "base_path": "models/m"}),
        ("PATCH", "/gpulab/hub/models/m", {"replicas": 2}),
        ("DELETE", "/gpulab/hub/models/m", None),
        ("POST", "/gpulab/hub/models/m:predict", {"instances": [1.0]}),
        ("GET", "/gpulab/hub/gpus", None),
        ("GET", "/gpulab/tensorboard", None),
        ("POST", "/gpulab/tensorboard", {"logdir": ""}),
        ("GET", "/gpulab/share", None),
        ("POST", "/gpulab/share/codes", {"expires_in": 3600}),
        ("POST", "/gpulab/share/guests", {"user": "mallory"}),
        ("DELETE", "/gpulab/share", None),
    ]
    for method, path, body in attempts:
        r = guest.request(method, url + path, json=body, timeout=60)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert "Only alice can" in r.json()["message"], (path, r.text)

    assert hub.holders() == held  # the GPU is still hers
    codes = hub.admin.get(hub.api("/share-codes/alice/"), timeout=10).json()["items"]
    assert codes == []
    # what Alice herself may do, through the same endpoints
    r = alice.session.get(url + "/gpulab/share", timeout=30)
    assert r.status_code == 200, r.text
    assert [g["name"] for g in r.json()["guests"]] == ["bob"]


@pytest.mark.timeout(180)
def test_a_revoked_guest_is_out_within_seconds(hub):
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    assert alice.spawn().status_code in (201, 202)
    r = alice.session.post(alice.server_url + "/gpulab/share/guests", json={"user": "bob"})
    assert r.status_code == 200, r.text
    assert r.json() == {"kind": "user", "name": "bob", "created_at": r.json()["created_at"]}
    guest = guest_session(hub, bob, "alice")
    token = guest.headers["Authorization"].split()[1]

    # Bob works in a kernel of Alice's server, over its websocket, as a notebook does
    r = guest.post(alice.server_url + "/api/kernels", json={"name": "python3"}, timeout=60)
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    ws_url = alice.server_url.replace("http://", "ws://") + f"/api/kernels/{kernel}/channels"
    ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=60)
    request = {
        "header": {"msg_id": "probe", "msg_type": "kernel_info_request", "session": "s",
                   "username": "bob", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "content": {}, "channel": "shell",
    }  # fmt: skip
    ws.send(json.dumps(request))
    wait_for(lambda: json.loads(ws.recv()).get("msg_type") == "kernel_info_reply", 60, "reply")
    # Alice's own connection, which must stay
    mine = websocket.create_connection(
        ws_url, header=[f"Authorization: token {alice.token}"], timeout=60
    )

    r = alice.session.delete(alice.server_url + "/gpulab/share/guests/user/bob", timeout=30)
    assert r.status_code == 204, r.text

    ws.settimeout(20)
    while True:  # whatever the kernel still sends, then the server's close
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    assert int.from_bytes(data[:2], "big") == 4003 and b"revoked bob" in data
    r = guest.get(alice.server_url + "/api/contents", timeout=30)
    assert r.status_code == 403, r.text
    listed = alice.session.get(alice.server_url + "/gpulab/share", timeout=30).json()
    assert listed["guests"] == []

    mine.send(json.dumps({**request, "header": {**request["header"], "msg_id": "mine"}}))
    wait_for(lambda: json.loads(mine.recv()).get("msg_type") == "kernel_info_reply", 30, "mine")
    mine.close()
