"""What held when gpulab was attacked, kept as tests so no change quietly reopens it.

Bob, an ordinary user with a token and a shell in his own server, goes after Alice's
server, files, jobs, storage and GPUs: through the proxy with odd paths, through every
gpulab endpoint with her name, with no token at all, and with paths that climb out of
his home. Alice's marker must appear in none of the answers.
"""

from __future__ import annotations

import requests

from hubfixture import wait_for

MARKER = "alice-private-7f3a"

# every gpulab endpoint, with Alice's name where one goes
ENDPOINTS = [
    ("GET", "/gpulab/gpus?user=alice"),
    ("GET", "/gpulab/events?user=alice"),
    ("GET", "/gpulab/gpu?user=alice"),
    ("POST", "/gpulab/gpu/return?user=alice"),
    ("POST", "/gpulab/gpu/get?user=alice"),
    ("DELETE", "/gpulab/gpu/get?user=alice"),
    ("GET", "/gpulab/storage?user=alice"),
    ("GET", "/gpulab/storage/volume?user=alice"),
    ("POST", "/gpulab/storage/volume/resize?user=alice"),
    ("GET", "/gpulab/storage/volume/snapshots?user=alice"),
    ("POST", "/gpulab/storage/volume/snapshots?user=alice"),
    ("DELETE", "/gpulab/storage/volume/snapshots/s1?user=alice"),
    ("POST", "/gpulab/storage/volume/snapshots/s1/rollback?user=alice"),
    ("POST", "/gpulab/storage/s3/rotate-keys?user=alice"),
    ("GET", "/gpulab/jobs?user=alice"),
    ("POST", "/gpulab/jobs?user=alice"),
    ("GET", "/gpulab/jobs/secret?user=alice"),
    ("GET", "/gpulab/jobs/secret/logs?user=alice&replica=worker-0"),
    ("POST", "/gpulab/jobs/secret/cancel?user=alice"),
    ("DELETE", "/gpulab/jobs/secret?user=alice"),
    ("GET", "/gpulab/sweeps?user=alice"),
    ("GET", "/gpulab/models?user=alice"),
    ("GET", "/gpulab/models/secret?user=alice"),
    ("GET", "/gpulab/models/secret/logs?user=alice"),
    ("DELETE", "/gpulab/models/secret?user=alice"),
    ("POST", "/gpulab/models/secret:predict?user=alice"),
    ("POST", "/gpulab/serving/alice/v1/models/secret:predict"),
]


def test_another_users_name_opens_nothing(hub):
    alice = hub.create_user("alice")
    bob = hub.create_user("bob")
    job = {
        "name": "secret",
        "command": ["python", "-c", f"print('{MARKER}')"],
    }
    r = alice.session.post(hub.api("/gpulab/jobs"), json=job, timeout=30)
    assert r.status_code == 201, r.text
    wait_for(
        lambda: (
            MARKER
            in alice.session.get(
                hub.api("/gpulab/jobs/secret/logs"), params={"replica": "worker-0"}, timeout=30
            ).text
        ),
        120,
        "Alice's job to print",
    )

    for method, path in ENDPOINTS:
        body = {"gpus": 1} if "gpu/get" in path else {"instances": [1]} if "predict" in path else {}
        r = bob.session.request(method, hub.api(path), json=body, timeout=60)
        assert r.status_code in (400, 401, 403, 404, 405), (method, path, r.status_code, r.text)
        assert MARKER not in r.text, (method, path, r.text)
        assert r.headers.get("Content-Type", "").startswith("application/json"), (path, r.text)
    # Alice's job is untouched: still there, not cancelled or forgotten
    r = alice.session.get(hub.api("/gpulab/jobs/secret"), timeout=30)
    assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text


def test_no_token_opens_nothing(hub):
    anonymous = requests.Session()
    for method, path in ENDPOINTS:
        r = anonymous.request(method, hub.api(path), json={}, timeout=30, allow_redirects=False)
        assert r.status_code in (401, 403, 405), (method, path, r.status_code)
    for path in ("/users", "/users/alice", "/users/alice/tokens", "/groups", "/services"):
        r = anonymous.get(hub.api(path), timeout=30)
        assert r.status_code in (401, 403), (path, r.status_code)


def test_the_proxy_keeps_servers_apart(hub):
    alice = hub.create_user("alice")
    bob = hub.create_user("bob")
    assert alice.spawn(profile="cpu").status_code in (201, 202)
    assert bob.spawn(profile="cpu").status_code in (201, 202)
    alice.run(f"open('notes.txt', 'w').write('{MARKER}')")
    assert MARKER in alice.server_get("/api/contents/notes.txt").text  # the check can see it

    base = hub.url
    for path in (
        "/user/alice/api/contents/notes.txt",
        "/user/bob/../alice/api/contents/notes.txt",
        "/user/bob/%2e%2e/alice/api/contents/notes.txt",
        "/user/bob/..%2falice/api/contents/notes.txt",
        "/user/alice%2fapi/contents/notes.txt",
        "/user/ALICE/api/contents/notes.txt",
        "/user/bob/api/contents/..%2f..%2falice%2fnotes.txt",
        "/user/alice/api/kernels",
        "/user/alice/gpulab/gpu",
        "/user/alice/gpulab/internal/activity",
    ):
        r = bob.session.get(base + path, timeout=30, allow_redirects=False)
        assert MARKER not in r.text, path
        assert r.status_code != 200 or path.startswith("/user/bob/"), (path, r.status_code)


def test_paths_out_of_the_home_are_refused(hub):
    bob = hub.create_user("bob")
    for field, value in (
        ("workdir", "../alice"),
        ("workdir", "/var/lib"),
        ("workdir", "~/../../etc"),
        ("script", "../alice/train.py"),
        ("script", "/etc/shadow"),
    ):
        spec = {"name": "escape", "command": "true", field: value}
        if field == "script":
            del spec["command"]
        r = bob.session.post(hub.api("/gpulab/jobs"), json=spec, timeout=30)
        assert r.status_code == 400, (field, value, r.text)
        assert "home" in r.json()["message"], r.text
    for base_path in ("../alice/model", "/etc", "~/../alice/model"):
        r = bob.session.post(
            hub.api("/gpulab/models"), json={"name": "m", "base_path": base_path}, timeout=30
        )
        assert r.status_code == 400, (base_path, r.text)
