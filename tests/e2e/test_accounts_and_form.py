"""Real authentication (bootstrapped admin, sign-up with approval) and the spawn form,
driven through the hub's HTML pages as a browser would."""

import subprocess
import sys

import requests

from browsing import login, sign_up
from gpulab.spawner.userenv import default_root
from hubfixture import BIN, wait_for


def logged_in(s: requests.Session, hub) -> bool:
    r = s.get(
        hub.url + "/hub/api/user", timeout=10, headers={"X-XSRFToken": s.cookies.get("_xsrf") or ""}
    )
    return r.status_code == 200


DEPRECATED_HOOKS = (
    "JupyterHub.extra_handlers is deprecated",
    "The shared database session at Authenticator.db is deprecated",
    "Configuration specifies both admin_users and users in the admin role specification",
)
"""What JupyterHub logs at start when gpulab leans on a hook a later release removes."""


def deprecation_warnings(hub) -> list[str]:
    log = hub.log_path.read_text(errors="replace")
    return [warning for warning in DEPRECATED_HOOKS if warning in log]


def test_the_hub_starts_without_deprecation_warnings_and_serves_its_api(hub):
    assert deprecation_warnings(hub) == []
    # gpulab's REST API, registered in the hub's process, answers at the same paths
    r = hub.admin.get(hub.api("/gpulab/gpus"), timeout=10)
    assert r.status_code == 200 and r.json()["total"] == 3, r.text
    r = hub.admin.get(hub.api("/gpulab/openapi.json"), timeout=10)
    assert r.status_code == 200 and "/gpulab/gpus" in r.text
    # and JupyterHub's 404 for unknown API paths is still JupyterHub's
    r = hub.admin.get(hub.api("/gpulab-nothing-here"), timeout=10)
    assert r.status_code == 404


def test_bootstrapped_admin_logs_in_and_wrong_passwords_do_not(hub):
    admin = login(hub, "admin", hub.admin_password)
    assert admin.login_status == 302 and logged_in(admin, hub)
    intruder = login(hub, "admin", "not-the-password")
    assert (
        intruder.login_status == 403
        and "Invalid username or password" in intruder.login_page
        and not logged_in(intruder, hub)
    )
    nobody = login(hub, "mallory", "anything-at-all")
    assert not logged_in(nobody, hub)


def test_sign_up_needs_admin_approval(hub):
    password = "a-long-enough-pass-2026"
    r = sign_up(hub, "newbie", password)
    assert r.status_code == 200 and "Your information has been sent to the admin" in r.text
    waiting = login(hub, "newbie", password)
    assert waiting.login_status == 403 and not logged_in(waiting, hub)
    assert "has not been approved by an administrator yet" in waiting.login_page

    admin = login(hub, "admin", hub.admin_password)
    # the Authorize button on /hub/authorize posts this form (a GET changes nothing)
    data = {"action": "approve", "_xsrf": admin.cookies.get("_xsrf")}
    r = admin.post(hub.url + "/hub/authorize/newbie", data=data, timeout=10)
    assert r.status_code == 200
    assert logged_in(login(hub, "newbie", password), hub)


def test_users_added_by_the_admin_sign_up_and_log_in_at_once(hub):
    hub.create_user("invited")
    password = "invited-pass-2026-x"
    r = sign_up(hub, "invited", password)
    assert r.status_code == 200 and "The signup was successful" in r.text
    assert logged_in(login(hub, "invited", password), hub)


def test_spawn_form_lists_profiles_with_live_gpu_availability(hub):
    alice = hub.create_user("alice")
    alice.spawn(profile="gpu-1")
    admin = login(hub, "admin", hub.admin_password)
    r = admin.get(hub.url + "/hub/spawn", timeout=10)
    assert r.status_code == 200
    page = r.text
    for label in ("CPU only", "1 GPU", "2 GPUs"):
        assert label in page
    assert "2 of 3 GPUs free" in page

    # submitting the form spawns the chosen profile
    r = admin.post(
        hub.url + "/hub/spawn",
        data={"profile": "gpu-2", "_xsrf": admin.cookies.get("_xsrf")},
        timeout=60,
    )
    assert r.status_code == 200
    wait_for(
        lambda: sorted(hub.holders().values()) == ["admin", "admin", "alice"],
        60,
        "the form's spawn to hold two GPUs",
    )


def test_cli_status_shows_holders_and_doctor_checks(hub):
    alice = hub.create_user("alice")
    alice.spawn(profile="gpu-1")
    env = {**hub.env, "COLUMNS": "200"}
    out = subprocess.run(
        [str(BIN / "gpulab"), "status"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "GPUs: 2 of 3 free" in out.stdout
    gpu_row = next(line for line in out.stdout.splitlines() if "alice" in line and "held" in line)
    assert "ago" in gpu_row and "(default server)" in gpu_row
    assert any("alice" in line and "gpu-1" in line for line in out.stdout.splitlines())

    out = subprocess.run(
        [str(BIN / "gpulab"), "status"],
        capture_output=True,
        text=True,
        env={**env, "GPULAB_TOKEN": "not-a-token"},
        timeout=60,
    )
    assert out.returncode == 1 and "Missing or invalid credentials" in out.stderr
    assert "Traceback" not in out.stderr

    out = subprocess.run(
        [str(BIN / "gpulab"), "doctor"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 configured GPU id(s) 0,1,2" in out.stdout
    assert "configurable-http-proxy 5.3.0" in out.stdout
    assert "answering at" in out.stdout
    assert "embedded: Debian's docker-registry on loopback" in out.stdout
    assert str(default_root()) in out.stdout  # the user environment, whole

    out = subprocess.run(
        [sys.executable, "-m", "gpulab.hub.client.cli", "status"],
        capture_output=True,
        text=True,
        env={**env, "GPULAB_HUB__PORT": "eighty"},
        timeout=60,
    )
    assert out.returncode == 2 and "expected a whole number" in out.stderr


def test_another_authenticator_by_configuration(make_hub, tmp_path):
    extra = tmp_path / "auth.py"
    extra.write_text('c.DummyAuthenticator.password = "team-shared-secret"\n')
    extra.chmod(0o644)
    hub = make_hub(
        {"hub": {"authenticator": "dummy", "extra_config": str(extra)}, "gpus": {"ids": ["0"]}}
    ).start()
    assert logged_in(login(hub, "zoe", "team-shared-secret"), hub)
    assert not logged_in(login(hub, "zoe", "wrong"), hub)
    # gpulab's own sign-up pages belong to the gpulab authenticator only
    assert requests.get(hub.url + "/hub/signup", timeout=10).status_code == 404
    # its REST API is served beside any authenticator's pages
    r = hub.admin.get(hub.api("/gpulab/gpus"), timeout=10)
    assert r.status_code == 200 and r.json()["total"] == 1, r.text
    assert deprecation_warnings(hub) == []
