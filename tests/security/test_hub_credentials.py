"""The attacker owns their server process: nothing the hub sends it may be good elsewhere.

Mallory, an ordinary user, makes her own server log every request it receives (a
``~/.jupyter/jupyter_server_config.py``: her server, her config), then presses Get GPU and
Return GPU, which make the hub call her server's internal API. Whatever the hub sent must
open nothing at the hub: not the users list, not another user's files.
"""

from __future__ import annotations

import json

import requests

from hubfixture import wait_for

# tornado calls log_function for every request the server finishes, with its headers
CAPTURE_CONFIG = """
import json, os
def _capture(handler):
    with open(os.path.expanduser("~/captured.jsonl"), "a") as f:
        request = handler.request
        f.write(json.dumps({"path": request.path, "headers": dict(request.headers)}) + "\\n")
c.ServerApp.tornado_settings = {"log_function": _capture}
"""


def capturing_server(user, profile: str) -> None:
    """Start ``user``'s server with a config of theirs that logs every request."""
    assert user.spawn(profile=profile).status_code in (201, 202)
    user.run(
        "import os\n"
        "os.makedirs(os.path.expanduser('~/.jupyter'), exist_ok=True)\n"
        "open(os.path.expanduser('~/.jupyter/jupyter_server_config.py'), 'w')"
        f".write({CAPTURE_CONFIG!r})\n"
    )
    user.stop()
    assert user.spawn(profile=profile).status_code in (201, 202)


def captured_internal_calls(user) -> list[dict]:
    """The hub's calls to the server's internal API, as the user's config logged them."""
    out = user.run("print(open(__import__('os').path.expanduser('~/captured.jsonl')).read())")
    captured = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [c for c in captured if "/gpulab/internal/" in c["path"]]


def assert_no_credential(hub, internal: list[dict], victim) -> None:
    """Nothing in those calls opens the hub's API or another user's server."""
    admin_token = (hub.data_root / "cli-token").read_text().strip()
    values = {v for c in internal for v in c["headers"].values()}
    assert not any(admin_token in v for v in values)
    for value in values:
        for offered in {value, value.removeprefix("token ").removeprefix("Bearer ")}:
            headers = {"Authorization": f"token {offered}"}
            users = requests.get(hub.api("/users"), headers=headers, timeout=10)
            assert users.status_code in (401, 403), (value, users.status_code)
            files = requests.get(
                victim.server_url + "/api/contents/",
                headers=headers,
                timeout=10,
                allow_redirects=False,
            )
            assert files.status_code in (302, 403), (value, files.status_code)
    # the victim's own token does open them: the check above can tell
    assert victim.server_get("/api/contents/").status_code == 200


def test_nothing_the_hub_sends_a_server_is_a_credential_at_the_hub(hub):
    victim = hub.create_user("victim")
    mallory = hub.create_user("mallory")
    assert victim.spawn(profile="cpu").status_code in (201, 202)
    capturing_server(mallory, "cpu")

    url = mallory.server_url + "/gpulab/gpu"
    r = mallory.session.post(url + "/get", json={"gpus": 1}, timeout=120)
    assert r.status_code in (200, 202), r.text

    def settled():
        model = mallory.server_get("/gpulab/gpu").json()
        return model["gpus"] and model["operation"]["state"] == "done"

    wait_for(settled, 60, "Mallory's Get GPU to finish")
    r = mallory.session.post(url + "/return", json={}, timeout=120)
    assert r.status_code == 200, r.text

    internal = captured_internal_calls(mallory)
    # the hook saw the hub's calls, so what the hub sends is in hand
    assert {c["path"].rsplit("/", 1)[1] for c in internal} >= {"switch"}, internal
    assert_no_credential(hub, internal, victim)


def test_a_server_obeys_only_the_hub(hub):
    """A user's own token, another user's, or none: the internal API refuses them all."""
    alice = hub.create_user("alice")
    bob = hub.create_user("bob")
    assert alice.spawn(profile="gpu-1").status_code in (201, 202)
    internal = alice.server_url + "/gpulab/internal/switch"
    for caller in (alice.session, bob.session, requests.Session()):
        r = caller.post(internal, json={"visible": ""}, timeout=30)
        assert r.status_code in (302, 403, 404), r.status_code
    forged = requests.post(
        internal,
        json={"visible": ""},
        headers={"X-Gpulab-Internal-Secret": "guess", "Authorization": f"token {alice.token}"},
        timeout=30,
        allow_redirects=False,
    )
    assert forged.status_code == 403, forged.text
    # and the server still has its GPU: nothing was switched
    assert alice.server_get("/gpulab/gpu").json()["visible"] != ""


def test_the_hub_tells_who_listens_on_a_servers_port():
    """A dead server's port is anyone's to take: the hub checks the listener's account
    (``LocalGpuSpawner.impostor``) before it sends the server anything."""
    import pwd
    import socket
    import subprocess
    import sys

    from gpulab.spawner.local import listener_uids

    nobody = pwd.getpwnam("nobody").pw_uid
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    squatter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); print('up', flush=True); time.sleep(60)",
        ],
        user=nobody,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert squatter.stdout.readline().strip() == "up"
        assert listener_uids(port) == {nobody}
    finally:
        squatter.kill()
        squatter.wait()
    assert listener_uids(port) == set()
