"""User servers on the local backend: GPUs granted, isolation, errors, restarts."""

import base64
import contextlib
import json
import os
import threading

import requests

from hubfixture import tiny_wheel, wait_for

ENV_PROBE = """
import json, os
print(json.dumps({k: os.environ.get(k) for k in (
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "HOME", "PYTHONUSERBASE", "USER",
    "GPULAB_PROFILE", "GPULAB_KERNEL_CHECKPOINT")} | {"uid": os.getuid(), "cwd": os.getcwd()}))
"""


def probe(user) -> dict:
    return json.loads(user.run(ENV_PROBE).strip().splitlines()[-1])


def test_gpu_server_sees_exactly_its_granted_gpu(hub):
    alice = hub.create_user("alice")
    r = alice.spawn(profile="gpu-1")
    assert r.status_code in (201, 202), r.text
    granted = [g for g in hub.gpus()["gpus"] if g.get("user") == "alice"]
    assert len(granted) == 1
    env = probe(alice)
    assert env["CUDA_VISIBLE_DEVICES"] == granted[0]["id"]
    assert env["NVIDIA_VISIBLE_DEVICES"] == granted[0]["id"]
    assert env["GPULAB_PROFILE"] == "gpu-1"
    assert env["GPULAB_KERNEL_CHECKPOINT"] == "auto"  # how Return GPU keeps its kernels
    home = str(hub.data_root / "homes" / "alice")
    assert env["HOME"] == home and env["cwd"] == home
    assert env["PYTHONUSERBASE"] == home + "/.local"
    assert env["USER"] == hub.unix_prefix + "alice"
    assert env["uid"] != 0

    # the user sees their own grant by name through the API, and the pool's size
    mine = alice.session.get(hub.api("/gpulab/gpus"), timeout=10).json()
    assert mine["total"] == 3 and mine["free"] == 2
    assert [g["id"] for g in mine["gpus"] if g.get("user") == "alice"] == [granted[0]["id"]]


def test_cpu_profile_gets_no_gpu(hub):
    bob = hub.create_user("bob")
    assert bob.spawn(profile="cpu").status_code in (201, 202)
    env = probe(bob)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["NVIDIA_VISIBLE_DEVICES"] == ""
    assert hub.gpus()["free"] == 3


def test_users_never_share_and_exhausted_pool_fails_cleanly(hub):
    alice, bob, carol = (hub.create_user(n) for n in ("alice", "bob", "carol"))
    root = hub.create_user("root-admin", admin=True)
    assert alice.spawn(profile="gpu-2").status_code in (201, 202)
    assert bob.spawn(profile="gpu-1").status_code in (201, 202)
    holders = hub.holders()
    assert sorted(holders.values()) == ["alice", "alice", "bob"]
    assert len(set(holders)) == 3

    r = carol.spawn(profile="gpu-1")
    assert r.status_code == 409
    assert r.json()["message"] == "not enough GPUs free: asked for 1, 0 of 3 free"
    # nothing half-started: no server, no process, no grant
    assert carol.model()["servers"] == {}
    assert hub.unix_pids("carol") == []
    assert "carol" not in hub.holders().values()

    # an admin is told who holds them
    r = root.spawn(profile="gpu-1")
    assert r.status_code == 409
    assert "held by alice (2), bob (1)" in r.json()["message"]


def test_stop_frees_the_grant_and_records_events(hub):
    alice = hub.create_user("alice")
    alice.spawn(profile="gpu-1")
    assert list(hub.holders().values()) == ["alice"]
    # a process the user detached from the server must not outlive it (it could hold the GPU)
    alice.run("import subprocess; subprocess.Popen(['setsid', 'nohup', 'sleep', '600'])")
    alice.stop()
    assert hub.holders() == {}
    assert hub.unix_pids("alice") == []
    events = alice.session.get(hub.api("/gpulab/events"), timeout=10).json()["events"]
    assert [e["action"] for e in events[:2]] == ["release", "grant"]
    assert events[0]["reason"] == "stopped"


def test_spawn_progress_is_reported(hub):
    alice = hub.create_user("alice")
    t = threading.Thread(target=alice.spawn, kwargs={"profile": "gpu-1", "wait": False})
    t.start()
    messages = []

    def progress_seen():
        with alice.session.get(
            hub.api("/users/alice/server/progress"), stream=True, timeout=60
        ) as r:
            for line in r.iter_lines():
                if line.startswith(b"data:"):
                    event = json.loads(line[5:])
                    messages.append(event.get("message", ""))
                    if event.get("ready") or event.get("failed"):
                        return True

    wait_for(progress_seen, 60, "spawn progress events")
    t.join()
    text = "\n".join(messages)
    assert "Granted GPU(s)" in text
    assert "Starting JupyterLab as" in text


def test_users_cannot_read_or_signal_each_other(hub):
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    alice.spawn(profile="cpu")
    bob.spawn(profile="cpu")
    bob.run("open('secret.txt', 'w').write('bob only')")
    bob_pid = hub.unix_pids("bob")[0]
    out = alice.run(
        f"""
import os, json
res = {{}}
for what, fn in {{
    "read": lambda: open({str(hub.data_root / "homes" / "bob" / "secret.txt")!r}).read(),
    "list_home": lambda: os.listdir({str(hub.data_root / "homes" / "bob")!r}),
    "list_homes": lambda: os.listdir({str(hub.data_root / "homes")!r}),
    "signal": lambda: os.kill({bob_pid}, 0),
    "ledger": lambda: open({str(hub.data_root / "gpulab.sqlite")!r}, 'rb').read(1),
}}.items():
    try:
        fn(); res[what] = "allowed"
    except PermissionError:
        res[what] = "denied"
print(json.dumps(res))
"""
    )
    assert json.loads(out.strip()) == {
        "read": "denied",
        "list_home": "denied",
        "list_homes": "denied",
        "signal": "denied",
        "ledger": "denied",
    }
    st = os.stat(hub.data_root / "homes" / "alice")
    assert st.st_mode & 0o777 == 0o700


def test_user_installed_packages_and_files_survive_a_restart(hub):
    alice = hub.create_user("alice")
    alice.spawn(profile="cpu")
    wheel = base64.b64encode(tiny_wheel()).decode()
    out = alice.run(
        f"""
import base64, subprocess, sys
open("gpulabprobe-1.0-py3-none-any.whl", "wb").write(base64.b64decode({wheel!r}))
open("notes.txt", "w").write("kept")
r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                    "gpulabprobe-1.0-py3-none-any.whl"], capture_output=True, text=True)
print(r.returncode, r.stdout[-300:], r.stderr[-300:])
"""
    )
    assert out.startswith("0"), out
    alice.stop()
    alice.spawn(profile="gpu-1")
    out = alice.run(
        "import gpulabprobe; print(gpulabprobe.VALUE, gpulabprobe.__file__); print(open('notes.txt').read())"
    )
    value, path, notes = out.split()
    assert value == "42" and notes == "kept"
    assert path.startswith(str(hub.data_root / "homes" / "alice" / ".local"))


def test_bad_input_gets_clear_4xx(hub):
    alice = hub.create_user("alice")
    r = alice.spawn(profile="nope")
    assert r.status_code == 400
    assert "unknown profile 'nope'" in r.json()["message"] and "gpu-1" in r.json()["message"]
    r = alice.spawn(profile="gpu-1", gpus=-1)
    assert r.status_code == 400 and "0 or more" in r.json()["message"]
    r = alice.spawn(profile="gpu-1", gpus="two")
    assert r.status_code == 400
    r = alice.spawn(colour="red")
    assert r.status_code == 400 and "unknown server option" in r.json()["message"]
    assert alice.model()["servers"] == {} and hub.holders() == {}

    r = hub.admin.get(hub.api("/gpulab/gpus?user=nobody-here"), timeout=10)
    assert r.status_code == 404 and r.json()["message"] == "No such user: nobody-here"
    hub.create_user("bob")
    r = alice.session.get(hub.api("/gpulab/gpus?user=bob"), timeout=10)
    assert r.status_code == 403 and "Only admins act for other users" in r.json()["message"]
    r = requests.get(hub.api("/gpulab/gpus"), timeout=10)
    assert r.status_code == 403 and r.json()["status"] == 403
    r = alice.session.get(hub.api("/gpulab/events?limit=lots"), timeout=10)
    assert r.status_code == 400 and "whole number" in r.json()["message"]


def test_hub_killed_and_restarted_keeps_live_servers_and_frees_dead_ones(make_hub):
    hub = make_hub({"gpus": {"ids": ["0", "1"]}}).start()
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    alice.spawn(profile="gpu-1")
    bob.spawn(profile="gpu-1")
    alice_gpu = next(g for g, u in hub.holders().items() if u == "alice")
    alice.run("open('before.txt', 'w').write('x')")

    hub.kill()
    # bob's server dies while the hub is down
    for pid in hub.unix_pids("bob"):
        os.kill(pid, 9)
    wait_for(lambda: hub.unix_pids("bob") == [], 10, "bob's processes to die")
    hub.start()

    assert hub.holders() == {alice_gpu: "alice"}
    r = alice.server_get("/api/status")
    assert r.status_code == 200, r.text
    assert probe(alice)["CUDA_VISIBLE_DEVICES"] == alice_gpu
    assert bob.model()["servers"] == {}
    # the freed GPU can be had again
    assert bob.spawn(profile="gpu-1").status_code in (201, 202)
    assert sorted(hub.holders().values()) == ["alice", "bob"]


def test_a_server_that_dies_frees_its_gpu_at_once(hub):
    """Not at JupyterHub's next poll (every 30 s): the spawner watches its process."""
    carol = hub.create_user("carol")
    assert carol.spawn(profile="gpu-1").status_code in (201, 202)
    assert list(hub.holders().values()) == ["carol"]
    for pid in hub.unix_pids("carol"):
        with contextlib.suppress(ProcessLookupError):  # gone with its parent
            os.kill(pid, 9)
    # within a few seconds on a busy machine; JupyterHub's own poll comes every 30 s
    wait_for(lambda: hub.holders() == {}, 10, "carol's GPU to be free")
    wait_for(lambda: not carol.model()["servers"], 10, "the hub to see the server gone")
    events = hub.admin.get(hub.api("/gpulab/events?user=carol"), timeout=10).json()["events"]
    assert events[0]["action"] == "release" and events[0]["reason"] == "server exited"


SLOW_START = """
import pathlib, time
pathlib.Path.home().joinpath("starting").touch()
time.sleep(15)
"""


def test_a_spawn_in_flight_when_the_hub_dies_completes_after_its_restart(make_hub, tmp_path):
    """A hub killed while a server still starts: at its restart the hub waits for that
    server (up to the start timeout), where JupyterHub gave it ``http_timeout`` and then
    stopped it ("never showed up ... Giving up"), losing the spawn."""
    extra = tmp_path / "extra_config.py"
    extra.write_text("")
    hub = make_hub({"gpus": {"ids": ["0"]}, "hub": {"extra_config": str(extra)}}).start()
    dora = hub.create_user("dora")
    assert dora.spawn(profile="gpu-1").status_code in (201, 202)
    # her own server configuration makes the next start slow (15 s before it answers)
    dora.run(f"import pathlib\nd = pathlib.Path.home() / '.jupyter'\nd.mkdir(exist_ok=True)\n"
             f"(d / 'jupyter_server_config.py').write_text({SLOW_START!r})")  # fmt: skip
    dora.stop()
    assert dora.spawn(wait=False, profile="gpu-1").status_code in (201, 202)
    marker = hub.data_root / "homes" / "dora" / "starting"
    wait_for(marker.exists, 60, "dora's server process to be starting")

    # JupyterHub's own wait for a server to answer, shorter than this server needs
    extra.write_text("c.Spawner.http_timeout = 5\n")
    hub.kill()
    hub.start()
    dora.wait_ready(90)  # fails at once if the hub gave the server up
    assert list(hub.holders().values()) == ["dora"]
    assert dora.server_get("/api/status").status_code == 200
    assert "Giving up" not in hub.log_path.read_text()
