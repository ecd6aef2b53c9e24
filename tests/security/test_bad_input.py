"""Issue 20, finding 8: bad input to the gpulab REST API gave server errors.

The attacker is a second hub user (a real unix account with a server) who sends the
hub what no client would: JSON nested 100,000 deep, numbers of 400 digits, a log offset
past any file, a 120 MB body, NaN and Infinity. Every one must get a 4xx with a JSON
message, and nothing they send may leave the API answering with something that is not
JSON (another user's or the admin's job list included).
"""

from __future__ import annotations

import json

import pytest
import requests

from hubfixture import wait_for

NINES = "9" * 400

# every route of the gpulab API that reads a JSON body (default_handlers of hub/api/*.py)
BODY_ROUTES = [
    ("POST", "/gpulab/gpu/return"),
    ("POST", "/gpulab/gpu/get"),
    ("POST", "/gpulab/storage/volume/resize"),
    ("POST", "/gpulab/storage/volume/snapshots"),
    ("POST", "/gpulab/jobs"),
    ("POST", "/gpulab/sweeps"),
    ("POST", "/gpulab/models"),
    ("PATCH", "/gpulab/models/line"),
]


def strict_json(text: str):
    """JSON as the standard defines it: no NaN, Infinity or -Infinity."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def assert_client_error(r: requests.Response, what: str, status: int | None = None) -> dict:
    """A 4xx (or exactly ``status``) whose body is a JSON object with a message."""
    assert 400 <= r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if status is not None:
        assert r.status_code == status, f"{what}: {r.status_code} {r.text[:300]}"
    assert r.headers.get("Content-Type", "").startswith("application/json"), what
    body = strict_json(r.text)
    assert isinstance(body.get("message"), str) and body["message"], f"{what}: {body}"
    assert body.get("status") == r.status_code, f"{what}: {body}"
    return body


@pytest.fixture
def mallory(hub):
    """The attacker: a hub user with a running server (their shell)."""
    user = hub.create_user("mallory")
    r = user.spawn(profile="cpu")
    assert r.status_code in (201, 202), r.text
    return user


# Sent from inside the attacker's own server, with the token the server holds.
DEEP_PROBE = """
import json, os, urllib.request, urllib.error
api = os.environ["JUPYTERHUB_API_URL"]
token = os.environ["JUPYTERHUB_API_TOKEN"]
routes = ROUTES
found = {}
for shape in ("[" * 100000, '{"a":' * 100000):
    for method, path in routes:
        req = urllib.request.Request(
            api + path, data=shape.encode(), method=method,
            headers={"Authorization": "token " + token, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                code, ctype, text = resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as e:
            code, ctype, text = e.code, e.headers.get("Content-Type", ""), e.read()
        found[f"{shape[:2]} {method} {path}"] = [code, ctype, text.decode("utf-8", "replace")[:300]]
print(json.dumps(found))
"""


def test_deeply_nested_json_gets_400_on_every_body_route(hub, mallory):
    out = mallory.run(DEEP_PROBE.replace("ROUTES", repr(BODY_ROUTES)), timeout=180)
    found = json.loads(out.strip().splitlines()[-1])
    assert len(found) == 2 * len(BODY_ROUTES)
    bad = {k: v for k, v in found.items() if not 400 <= v[0] < 500}
    assert not bad, f"server errors from deep nesting: {bad}"
    for key, (_code, ctype, text) in found.items():
        assert ctype.startswith("application/json"), key
        assert strict_json(text)["message"], key
    # the ones that get as far as reading the body say what is wrong with it
    assert "nested" in strict_json(found["[[ POST /gpulab/jobs"][2])["message"]
    # and the hub still answers the attacker and everyone else
    assert mallory.session.get(hub.api("/gpulab/jobs"), timeout=10).status_code == 200


def test_numbers_of_400_digits_are_refused(hub):
    mallory = hub.create_user("mallory")
    s, api = mallory.session, hub.api
    for size in (NINES, int(NINES), NINES + "GiB", f"{NINES}.5"):
        r = s.post(api("/gpulab/storage/volume/resize"), json={"size": size}, timeout=30)
        assert_client_error(r, f"resize to {str(size)[:12]}...", 400)
    # a 400-digit number anywhere in a body is refused where the JSON is read
    raw = '{"name": "big", "command": "true", "replicas": ' + NINES + "}"
    r = s.post(api("/gpulab/jobs"), data=raw, timeout=30)
    assert "number" in assert_client_error(r, "replicas of 400 digits", 400)["message"]
    for constant in ("NaN", "Infinity", "-Infinity", "1e999"):
        raw = '{"name": "nan", "command": "true", "active_deadline": ' + constant + "}"
        r = s.post(api("/gpulab/jobs"), data=raw, timeout=30)
        assert_client_error(r, f"active_deadline {constant}", 400)
    r = s.get(api("/gpulab/events"), params={"limit": NINES}, timeout=30)
    assert_client_error(r, "events limit of 400 digits", 400)


def test_a_deadline_of_400_nines_is_refused_and_job_lists_stay_json(hub):
    mallory = hub.create_user("mallory")
    for deadline in (int(NINES), NINES, NINES + "s", NINES + "d"):
        spec = {"name": "forever", "command": "true", "active_deadline": deadline}
        r = mallory.session.post(hub.api("/gpulab/jobs"), json=spec, timeout=30)
        assert_client_error(r, f"active_deadline {str(deadline)[:12]}...", 400)
    # a year is the most a deadline may be
    spec = {"name": "longest", "command": "true", "active_deadline": "367d"}
    r = mallory.session.post(hub.api("/gpulab/jobs"), json=spec, timeout=30)
    assert_client_error(r, "active_deadline of 367 days", 400)
    # what everybody reads stays JSON: the attacker's own list and the admin's
    for session in (mallory.session, hub.admin):
        r = session.get(hub.api("/gpulab/jobs"), timeout=30)
        assert r.status_code == 200, r.text
        strict_json(r.text)


def test_a_huge_log_offset_is_refused(hub):
    mallory = hub.create_user("mallory")
    spec = {"name": "hello", "command": ["echo", "hello"]}
    r = mallory.session.post(hub.api("/gpulab/jobs"), json=spec, timeout=30)
    assert r.status_code == 201, r.text
    logs = hub.api("/gpulab/jobs/hello/logs")

    def said_hello():
        r = mallory.session.get(logs, params={"replica": "worker-0"}, timeout=30)
        return r.status_code == 200 and "hello" in r.text

    wait_for(said_hello, 120, "the job's log")
    for offset in (str(2**63), "1" + "0" * 30, NINES):
        r = mallory.session.get(logs, params={"replica": "worker-0", "offset": offset}, timeout=30)
        assert_client_error(r, f"log offset {offset[:12]}...", 400)
    # an offset past the end of the log is fine: nothing more to read
    r = mallory.session.get(logs, params={"replica": "worker-0", "offset": 10**12}, timeout=30)
    assert r.status_code == 200 and r.text == "", r.text


def test_a_120_mb_body_gets_413(hub):
    mallory = hub.create_user("mallory")
    body = b'{"name": "' + b"a" * (120 * 2**20) + b'"}'
    for path in ("/gpulab/jobs", "/gpulab/models", "/gpulab/storage/volume/snapshots"):
        try:
            r = mallory.session.post(
                hub.api(path),
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=120,
            )
        except requests.ConnectionError as e:
            pytest.fail(f"POST {path} with 120 MB: the connection was dropped ({e})")
        assert_client_error(r, f"120 MB to {path}", 413)
    # a body just over the limit gets 413 too, and the hub still answers
    r = mallory.session.post(hub.api("/gpulab/jobs"), data=b" " * (2**20 + 1), timeout=30)
    assert_client_error(r, "1 MiB + 1 to /gpulab/jobs", 413)
    assert mallory.session.get(hub.api("/gpulab/jobs"), timeout=10).status_code == 200


def test_a_number_json_cannot_hold_stored_before_the_limits_is_written_as_null():
    from gpulab.hub.api.base import finite

    stored = {"jobs": [{"active_deadline": float("inf"), "metrics": {"loss": float("nan")}}]}
    assert json.dumps(finite(stored), allow_nan=False) == (
        '{"jobs": [{"active_deadline": null, "metrics": {"loss": null}}]}'
    )
