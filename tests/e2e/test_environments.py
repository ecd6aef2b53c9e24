"""Environment snapshots on the local backend (hub/environments, docs/environments.md):
a user installs a package, saves their environment, and starts a server from the
snapshot, with a real registry (Debian's docker-registry, started by the hub) and umoci
judging the image gpulab wrote."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from registryfixture import umoci_verify

from gpulab.hub.environments.registry_process import EmbeddedRegistry
from hubfixture import run_job, tiny_wheel, wait_for

INSTALL_PROBE = f"""
import base64, subprocess
open("gpulabprobe-1.0-py3-none-any.whl", "wb").write(base64.b64decode({base64.b64encode(tiny_wheel()).decode()!r}))
r = subprocess.run(["pip", "install", "--user", "--no-index", "--no-deps",
                    "gpulabprobe-1.0-py3-none-any.whl"], capture_output=True, text=True)
print(r.returncode, r.stderr[-300:])
"""
PROBE = (
    "import os\n"
    "try:\n"
    "    import gpulabprobe; print(gpulabprobe.VALUE, gpulabprobe.__file__)\n"
    "except ImportError:\n"
    "    print('missing -')\n"
)


def environments(user, **params) -> list[dict]:
    r = user.session.get(user.hub.api("/gpulab/environments"), params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["environments"]


def save(user, name: str, **body) -> dict:
    r = user.session.post(
        user.hub.api("/gpulab/environments"), json={"name": name, **body}, timeout=60
    )
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "saving"

    def ended():
        env = user.session.get(user.hub.api(f"/gpulab/environments/{name}"), timeout=30).json()
        return env["state"] != "saving" and env

    return wait_for(ended, 120, f"environment {name} to be saved")


def test_save_an_environment_and_start_servers_from_it(hub, tmp_path):
    alice = hub.create_user("alice", groups=("vision",))
    bob = hub.create_user("bob", groups=("vision",))
    alice.spawn(profile="cpu")
    assert alice.run(INSTALL_PROBE).startswith("0 ")

    env = save(alice, "probe-1", description="the probe")
    assert env["state"] == "ready", env
    assert env["python"] == "3.11" and env["layers"] == 1 and env["size"] > 0
    assert {"name": "gpulabprobe", "version": "1.0"} in env["packages"]
    assert env["image"] == f"gpulab/environments/alice@{env['digest']}"
    assert "1 package(s) over the base" in env["message"]

    # a real image: umoci unpacks it, every digest and diff_id checked
    registry = EmbeddedRegistry(
        hub.data_root / "registry", int((hub.data_root / "registry" / "port").read_text())
    ).client()
    rootfs = umoci_verify(registry, "gpulab/environments/alice", env["digest"], tmp_path)
    site = rootfs / "opt/gpulab/envs/alice/probe-1/lib/python3.11/site-packages"
    assert (site / "gpulabprobe" / "__init__.py").read_text() == "VALUE = 42\n"
    manifest, _, _ = registry.get_manifest("gpulab/environments/alice", "probe-1")
    config = json.loads(
        registry.get_blob_bytes("gpulab/environments/alice", manifest["config"]["digest"])
    )
    labels = config["config"]["Labels"]
    assert "gpulabprobe==1.0" in labels["org.gpulab.pip-freeze"].split("\n")
    assert labels["org.gpulab.python"] == "3.11" and labels["org.gpulab.base"].startswith("local:")

    # the default environment loses the package; a server from the snapshot has it
    alice.run("import subprocess; subprocess.run(['pip', 'uninstall', '-y', 'gpulabprobe'])")
    assert alice.run(PROBE).startswith("missing")
    alice.stop()
    r = alice.spawn(profile="cpu", environment="probe-1")
    assert r.status_code in (201, 202), r.text
    value, path = alice.run(PROBE).split()
    assert value == "42" and path.startswith(str(hub.data_root / "environments" / "layers"))
    # read-only for the user; what they install there goes to that server's own layer
    out = alice.run(
        "import gpulabprobe, os\n"
        "try:\n"
        "    open(gpulabprobe.__file__, 'a'); print('written')\n"
        "except PermissionError:\n"
        "    print('denied', os.environ['GPULAB_ENVIRONMENT'], os.environ['PYTHONUSERBASE'])\n"
    )
    assert out.split() == [
        "denied",
        "alice/probe-1",
        str(hub.data_root / "homes/alice/.gpulab/environments/alice/probe-1"),
    ]

    # a job runs in it too; one naming a snapshot that is not there is refused
    job, log = run_job(
        alice,
        {
            "name": "in-env",
            "environment": "probe-1",
            "command": ["python", "-c", "import gpulabprobe; print('job sees', gpulabprobe.VALUE)"],
        },
    )
    assert job["state"] == "succeeded" and "job sees 42" in log, (job, log)
    r = alice.session.post(
        hub.api("/gpulab/jobs"),
        json={"name": "no-env", "environment": "nope", "command": ["true"]},
        timeout=30,
    )
    assert r.status_code == 404 and "no environment 'nope'" in r.json()["message"], r.text

    # bob may not start from it until alice shares it with a group of his
    r = bob.spawn(profile="cpu", environment="alice/probe-1", wait=False)
    assert r.status_code == 404, r.text
    assert [e["ref"] for e in environments(bob)] == []
    r = alice.session.patch(
        hub.api("/gpulab/environments/probe-1"), json={"groups": ["vision"]}, timeout=30
    )
    assert r.status_code == 200 and r.json()["groups"] == ["vision"], r.text
    assert [e["ref"] for e in environments(bob)] == ["alice/probe-1"]
    assert bob.spawn(profile="cpu", environment="alice/probe-1").status_code in (201, 202)
    assert bob.run(PROBE).split()[0] == "42"

    # deleted: gone from the list and the registry; servers can no longer start from it
    r = alice.session.delete(hub.api("/gpulab/environments/probe-1"), timeout=60)
    assert r.status_code == 204, r.text
    assert environments(alice) == []
    with pytest.raises(Exception, match="404|not found|unknown"):
        registry.get_manifest("gpulab/environments/alice", env["digest"])
    alice.stop()
    r = alice.spawn(profile="cpu", environment="probe-1", wait=False)
    assert r.status_code == 404 and "no environment" in r.json()["message"], r.text


def test_bad_saves_are_refused_with_a_reason(make_hub):
    hub = make_hub({"environments": {"max_per_user": 1}}).start()
    alice = hub.create_user("alice")

    def post(body, expect):
        r = alice.session.post(hub.api("/gpulab/environments"), json=body, timeout=60)
        assert r.status_code == expect, r.text
        return r.json()

    assert "name must be" in post({"name": "Bad Name"}, 400)["message"]
    assert "name must be" in post({}, 400)["message"]
    assert "unknown field" in post({"name": "a", "colour": "red"}, 400)["message"]
    assert "groups you are in" in post({"name": "a", "groups": ["staff"]}, 403)["message"]
    empty = save(alice, "empty")  # nothing installed: an empty layer
    assert empty["state"] == "ready" and empty["packages"] == [], empty
    assert "already have" in post({"name": "empty"}, 409)["message"]
    assert "the most you may keep" in post({"name": "second"}, 409)["message"]
    r = alice.spawn(profile="cpu", environment=5, wait=False)
    assert r.status_code == 400 and "environment must name" in r.json()["message"]
    r = alice.spawn(profile="cpu", environment="../etc", wait=False)
    assert r.status_code == 404 and "no environment '../etc'" in r.json()["message"]
    r = alice.session.get(hub.api("/gpulab/environments/nope"), timeout=30)
    assert r.status_code == 404 and "no environment named nope" in r.json()["message"]

    # the registry the hub started ends with the hub
    pid = int((hub.data_root / "registry" / "registry.pid").read_text())
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/usr/bin/docker-registry")
    hub.stop()
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the registry to stop")


def test_an_unreachable_registry_is_named_and_nothing_is_recorded(make_hub):
    hub = make_hub({"environments": {"registry": "http://127.0.0.1:9"}}).start()
    alice = hub.create_user("alice")
    r = alice.session.post(hub.api("/gpulab/environments"), json={"name": "x"}, timeout=60)
    assert r.status_code == 503, r.text
    assert "127.0.0.1:9" in r.json()["message"]
    assert environments(alice) == []
