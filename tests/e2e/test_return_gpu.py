"""Return GPU / Get GPU on a real hub with real kernels: the GPU is freed, nothing is lost."""

import base64
import json
import threading
import time

from hubfixture import gpulab as gpulab_cli
from hubfixture import open_notebook, run, tiny_wheel, wait_for

STATE = """
import numpy as np
weights = {"w1": np.random.default_rng(0).normal(size=(64, 32)), "b1": np.zeros(32)}
big = np.arange(2_000_000, dtype=np.float64)          # 16 MB
config = {"lr": 0.01, "layers": [64, 32], "name": "probe"}
class Scaler:
    def __init__(self, k): self.k = k
    def __call__(self, x): return x * self.k
scale = Scaler(3)
double = lambda x: 2 * x
alias = config                                        # the same object under two names
gen = (i for i in range(3))                           # cannot be pickled
print("defined")
"""

CHECK = """
import json, os
print(json.dumps({
    "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "w1": float(weights["w1"].sum()),
    "big": float(big.sum()),
    "config": config,
    "scale": scale(2),
    "double": double(21),
    "alias_is_config": alias is config,
    "has_gen": "gen" in globals(),
}))
"""


def check(user, kernel: str) -> dict:
    return json.loads(run(user, kernel, CHECK).strip().splitlines()[-1])


def gpu_state(user) -> dict:
    """The server extension's view (what the JupyterLab top bar shows)."""
    r = user.session.get(user.server_url + "/gpulab/gpu", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_restored(user) -> dict:
    wait_for(lambda: gpu_state(user)["restore"]["state"] in ("done", "failed"), 60, "restore")
    return gpu_state(user)["restore"]


def wait_op(user, states=("done", "failed", "cancelled")) -> dict:
    wait_for(lambda: gpu_state(user)["operation"]["state"] in states, 90, f"operation {states}")
    return gpu_state(user)["operation"]


OWN_CODE = """
import os, sys
os.makedirs("lib", exist_ok=True)
open("lib/shapes.py", "w").write("class Box:\\n    def __init__(self, n):\\n        self.n = n\\n")
sys.path.append(os.path.abspath("lib"))
import shapes
box = shapes.Box(5)
"""


def test_return_and_get_gpu_keeps_variables_files_and_packages(hub):
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    assert alice.spawn(profile="gpu-1").status_code in (201, 202)
    assert hub.holders() == {"0": "alice"}
    kernel = open_notebook(alice, "work/train.ipynb")
    assert run(alice, kernel, STATE).strip() == "defined"
    before = check(alice, kernel)
    assert before["gpus"] == "0"
    wheel = base64.b64encode(tiny_wheel()).decode()
    out = run(
        alice,
        kernel,
        f"""
import base64, subprocess, sys
open("probe.whl".replace("probe", "gpulabprobe-1.0-py3-none-any"), "wb").write(base64.b64decode({wheel!r}))
open("notes.txt", "w").write("kept")
r = subprocess.run([sys.executable, "-m", "pip", "install", "--user", "--no-index", "--no-deps",
                    "gpulabprobe-1.0-py3-none-any.whl"], capture_output=True, text=True)
print(r.returncode)
""",
    )
    assert out.strip() == "0"

    # the notebook has run six cells (the next is In [7]) and uses two IPython extensions
    run(alice, kernel, "get_ipython().execution_count = 7")
    run(alice, kernel, "%load_ext tensorboard\n%load_ext autoreload\n%autoreload 2")
    # ... imports its own code from a folder it put on the module path, has moved to a
    # folder and set a variable for the libraries it calls
    run(alice, kernel, OWN_CODE)
    run(alice, kernel, "os.makedirs('data', exist_ok=True)\n%cd data\n%env WANDB_MODE=offline")

    # Return GPU, through the server extension as the JupyterLab button does
    r = alice.session.post(alice.server_url + "/gpulab/gpu/return", json={}, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["released"] == ["0"]
    assert answer["operation"]["state"] == "done"
    assert answer["operation"]["path"] == "namespace"
    report = answer["operation"]["detail"]["kernels"]
    assert [k["path"] for k in report] == ["work/train.ipynb"]
    # no CUDA driver here to park the kernel (gpus.kernel_checkpoint: auto): it restarts
    assert report[0]["kept_by"] == "namespace"
    assert answer["message"] == "Returned GPU 0; your kernels now run on the CPU"
    assert "gen" in report[0]["failed"] and "pickle" in report[0]["failed"]["gen"]
    assert {"weights", "big", "config", "scale", "double", "alias"} <= set(report[0]["saved"])
    # the ledger freed it at once, with the reason, and another user can take it
    assert hub.holders() == {}
    events = hub.admin.get(hub.api("/gpulab/events?user=alice"), timeout=10).json()["events"]
    assert events[0]["action"] == "release" and events[0]["reason"] == "returned by user"
    assert bob.spawn(profile="gpu-1").status_code in (201, 202)
    assert hub.holders() == {"0": "bob"}

    # the same kernel (the notebook stays connected) has its variables back, on the CPU
    restore = wait_restored(alice)
    assert restore["state"] == "done", restore
    assert "not saved: gen" in restore["message"]
    # after the restart its cell numbers go on from there, not from In [1] again, and
    # %tensorboard and autoreload (in its mode 2) are there
    assert run(alice, kernel, "print(get_ipython().execution_count)").strip() == "7"
    shell = run(
        alice,
        kernel,
        "ip = get_ipython(); r = ip.magics_manager.registry['AutoreloadMagics']._reloader\n"
        "print(ip.find_line_magic('tensorboard') is not None, r.enabled, r.check_all)",
    )
    assert shell.split() == ["True", "True", "True"]
    where = run(alice, kernel, "print(os.getcwd(), os.environ['WANDB_MODE'], box.n)")
    cwd, mode, n = where.split()
    assert cwd.endswith("/alice/data") and mode == "offline" and n == "5", where
    run(alice, kernel, "%cd ..")
    after = check(alice, kernel)
    assert after["gpus"] == ""
    assert {k: after[k] for k in before if k != "gpus"} == {
        **{k: before[k] for k in before if k != "gpus"},
        "has_gen": False,
    }
    assert after["alias_is_config"] is True
    state = gpu_state(alice)
    assert state["gpus"] == [] and state["visible"] == ""
    assert state["parked"] == []  # the kernel restarted: nothing waits for the GPU
    # new kernels and terminals get no GPU either
    assert (
        json.loads(
            alice.run("import os, json; print(json.dumps(os.environ['CUDA_VISIBLE_DEVICES']))")
        )
        == ""
    )

    # Get GPU while bob holds one: alice gets another
    r = alice.session.post(alice.server_url + "/gpulab/gpu/get", json={"gpus": 1}, timeout=60)
    assert r.status_code in (200, 202), r.text
    op = wait_op(alice)
    assert op["state"] == "done", op["message"]
    assert hub.holders() == {"0": "bob", "1": "alice"}
    again = check(alice, kernel)
    assert again["gpus"] == "1"
    assert {k: again[k] for k in before if k != "gpus"} == {
        k: after[k] for k in before if k != "gpus"
    }
    out = run(
        alice, kernel, "import gpulabprobe; print(gpulabprobe.VALUE, open('notes.txt').read())"
    )
    assert out.split() == ["42", "kept"]
    events = hub.admin.get(hub.api("/gpulab/events?user=alice"), timeout=10).json()["events"]
    assert events[0]["action"] == "grant" and events[0]["reason"] == "Get GPU by user"

    # with both GPUs free, Get GPU takes the one the server returned last, not the first
    assert bob.stop().status_code in (202, 204)
    wait_for(lambda: hub.holders() == {"1": "alice"}, 30, "bob's GPU free")
    r = alice.session.post(alice.server_url + "/gpulab/gpu/return", json={}, timeout=60)
    assert r.status_code == 200 and r.json()["released"] == ["1"], r.text
    wait_restored(alice)
    r = alice.session.post(alice.server_url + "/gpulab/gpu/get", json={"gpus": 1}, timeout=60)
    assert r.status_code in (200, 202), r.text
    assert wait_op(alice)["state"] == "done"
    assert hub.holders() == {"1": "alice"} and check(alice, kernel)["gpus"] == "1"


def test_get_gpu_waits_in_a_queue_and_can_be_cancelled(hub):
    alice, bob, carol = (hub.create_user(n) for n in ("alice", "bob", "carol"))
    assert alice.spawn(profile="gpu-2").status_code in (201, 202)
    assert bob.spawn(profile="gpu-1").status_code in (201, 202)
    assert carol.spawn(profile="cpu").status_code in (201, 202)
    kernel = open_notebook(carol, "c.ipynb")
    run(carol, kernel, "x = 41")

    r = carol.session.post(carol.server_url + "/gpulab/gpu/get", json={"gpus": 1}, timeout=30)
    assert r.status_code == 202, r.text
    op = gpu_state(carol)["operation"]
    assert op["state"] == "queued" and op["position"] == 1
    assert "position 1 in the queue" in op["message"]
    # a GPU freed now goes to the queue, not to a new spawn
    r = bob.session.post(hub.api("/gpulab/gpu/return"), json={}, timeout=60)
    assert r.status_code == 200
    op = wait_op(carol)
    assert op["state"] == "done", op["message"]
    assert hub.holders()["0"] == "alice" and list(hub.holders().values()).count("carol") == 1
    assert run(carol, kernel, "print(x + 1)").strip() == "42"

    # waiting again, then cancelled: nothing granted, the queue empty
    carol.session.post(hub.api("/gpulab/gpu/return"), json={}, timeout=60)
    bob.session.post(hub.api("/gpulab/gpu/get"), json={"gpus": 1}, timeout=30)
    assert wait_op(bob)["state"] == "done"
    r = carol.session.post(carol.server_url + "/gpulab/gpu/get", json={"gpus": 1}, timeout=30)
    assert gpu_state(carol)["operation"]["state"] == "queued"
    r = carol.session.delete(carol.server_url + "/gpulab/gpu/get", timeout=30)
    assert r.status_code == 200 and r.json()["operation"]["state"] == "cancelled"
    assert gpu_state(carol)["queue"] == 0
    assert "carol" not in hub.holders().values()


def test_busy_kernel_is_not_lost(hub):
    alice = hub.create_user("alice")
    assert alice.spawn(profile="gpu-1").status_code in (201, 202)
    kernel = open_notebook(alice, "long.ipynb")
    run(alice, kernel, "kept = 'yes'")
    outcome = []

    def long_cell():
        try:
            run(alice, kernel, "import time\nfor i in range(600): time.sleep(0.1)")
        except RuntimeError as e:  # the cell's error, as the notebook shows it
            outcome.append(str(e))

    runner = threading.Thread(target=long_cell, daemon=True)
    runner.start()
    wait_for(
        lambda: alice.server_get(f"/api/kernels/{kernel}").json()["execution_state"] == "busy",
        30,
        "the kernel to be busy",
    )
    r = alice.session.post(alice.server_url + "/gpulab/gpu/return", json={}, timeout=60)
    assert r.status_code == 409, r.text
    assert r.json()["busy"] == ["long.ipynb"] and "still running" in r.json()["message"]
    assert hub.holders() == {"0": "alice"}
    r = alice.session.post(
        alice.server_url + "/gpulab/gpu/return", json={"interrupt": True}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert hub.holders() == {}
    runner.join(30)
    assert outcome and "KeyboardInterrupt" in outcome[0]
    wait_restored(alice)
    assert run(alice, kernel, "print(kept, i > 0)").split() == ["yes", "True"]


DIES_WHEN_SAVED = """
import os, signal
class DiesWhenSaved:  # what an out-of-memory kill in the middle of pickling does
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)
doomed = DiesWhenSaved()
"""


def test_a_kernel_that_dies_while_it_is_saved_does_not_hold_up_the_return(hub):
    alice = hub.create_user("alice")
    assert alice.spawn(profile="gpu-1").status_code in (201, 202)
    kept = open_notebook(alice, "kept.ipynb")
    run(alice, kept, "answer = 42")
    dies = open_notebook(alice, "dies.ipynb")
    run(alice, dies, DIES_WHEN_SAVED)

    # the dead kernel would never answer: the return goes on without it, at once
    r = alice.session.post(alice.server_url + "/gpulab/gpu/return", json={}, timeout=60)
    assert r.status_code == 200, r.text
    assert hub.holders() == {}
    reports = {k["path"]: k for k in r.json()["operation"]["detail"]["kernels"]}
    assert reports["dies.ipynb"]["saved"] == []
    assert reports["dies.ipynb"]["note"] == (
        "dies.ipynb: its kernel died while its variables were being saved "
        "(killed by SIGKILL); it restarted without them"
    )
    assert "answer" in reports["kept.ipynb"]["saved"]
    restore = wait_restored(alice)
    assert "dies.ipynb: its kernel died" in restore["message"], restore
    # the other notebook has its variables, the one that died a working kernel, on the CPU
    assert run(alice, kept, "print(answer)").strip() == "42"
    out = run(
        alice,
        dies,
        "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']), 'doomed' in globals())",
    )
    assert out.split() == ["''", "False"]


def test_a_return_that_does_not_fit_in_the_home_changes_nothing(make_hub):
    hub = make_hub(
        {"gpus": {"ids": ["0"]}, "storage": {"home_quota": True, "home_size": "64MiB"}}
    ).start()
    dana = hub.create_user("dana")
    assert dana.spawn(profile="gpu-1").status_code in (201, 202)
    kernel = open_notebook(dana, "big.ipynb")
    run(dana, kernel, "import numpy as np; big = np.ones(10_000_000); step = 7")  # 76 MiB
    free = "import shutil; print(shutil.disk_usage('.').free)"
    before = int(run(dana, kernel, free))

    r = dana.session.post(dana.server_url + "/gpulab/gpu/return", json={}, timeout=60)
    assert r.status_code == 507, r.text
    message = r.json()["message"]
    assert message.startswith("checkpointing big.ipynb failed: the checkpoint needs 76.3 MiB, and ")
    assert "Free some space in your home or grow it" in message
    # the GPU, the kernel and its variables are as they were, and the home has its room
    assert hub.holders() == {"0": "dana"}
    assert run(
        dana, kernel, "import os; print(big.sum(), step, os.environ['CUDA_VISIBLE_DEVICES'])"
    ).split() == [
        "10000000.0",
        "7",
        "0",
    ]
    assert int(run(dana, kernel, free)) >= before - 2**20
    op = dana.session.get(hub.api("/gpulab/gpu"), timeout=30).json()["operation"]
    assert op["state"] == "failed" and op["message"] == message

    # once it fits, the return goes through; of the refused one nothing is left in the home
    run(dana, kernel, "del big")
    r = dana.session.post(dana.server_url + "/gpulab/gpu/return", json={}, timeout=60)
    assert r.status_code == 200, r.text
    assert hub.holders() == {}
    wait_restored(dana)
    assert run(dana, kernel, "print(step)").strip() == "7"
    left = "import os; print(*os.listdir(os.path.expanduser('~/.gpulab/checkpoints')))"
    files = run(dana, kernel, left).split()
    assert {f.split(".pkl")[0] for f in files} == {files[0].split(".pkl")[0]}, files
    assert not [f for f in files if f.endswith(".tmp") or ".data" in f], files


SLOW_STATE = """
import time
import numpy as np
weights = np.ones(5_000_000)  # 40 MB, saved before the slow one
class SlowToSave:
    def __reduce__(self):
        time.sleep(4)
        return (SlowToSave, ())
slow = SlowToSave()
kept = 123
"""


def test_hub_restart_in_the_middle_of_a_return_completes_it(make_hub):
    hub = make_hub({"gpus": {"ids": ["0"]}}).start()
    alice = hub.create_user("alice")
    assert alice.spawn(profile="gpu-1").status_code in (201, 202)
    kernel = open_notebook(alice, "slow.ipynb")
    run(alice, kernel, SLOW_STATE)
    url = hub.api("/gpulab/gpu")

    returning = threading.Thread(
        target=lambda: _ignore_errors(lambda: alice.session.post(url + "/return", timeout=60)),
        daemon=True,
    )
    returning.start()
    # wait until the server is checkpointing (its kernel takes 4 s to save); the top bar
    # shows how much is written so far
    wait_for(
        lambda: (gpu_state(alice)["saved_bytes"] or 0) >= 40_000_000,
        30,
        "the server to have written the weights",
        0.05,
    )
    assert gpu_state(alice)["switching"]
    hub.kill()  # mid-checkpoint: the grant is still held, the server carries on
    assert hub.proc.poll() is not None
    hub.start()

    # Get GPU, pressed the moment the hub answers, waits until the restarted hub has
    # finished the Return (before, it would find the GPU still granted and do nothing),
    # then brings the GPU back
    got = {}
    getting = threading.Thread(
        target=lambda: got.update(
            r=alice.session.post(url + "/get", json={"gpus": 1}, timeout=120)
        ),
        daemon=True,
    )
    getting.start()
    finished = None
    while getting.is_alive():  # meanwhile: never free while the kernel could use it
        free = not hub.holders()
        visible = gpu_state(alice)["visible"]
        after = alice.session.get(url, timeout=10).json()["operation"]
        if after["kind"] == "return":  # no Get GPU moved the kernels between the reads
            assert not (free and visible), "the GPU was free while the kernel could use it"
            if after["state"] == "done":
                finished = after
        time.sleep(0.05)
    getting.join()
    r = got["r"]
    assert r.status_code in (200, 202), r.text
    assert r.json()["operation"]["kind"] == "get", r.json()
    assert finished is None or "after a hub restart" in finished["message"], finished
    op = wait_op(alice)
    assert op["kind"] == "get" and op["state"] == "done", op
    assert hub.holders() == {"0": "alice"}
    wait_restored(alice)
    assert json.loads(
        run(
            alice,
            kernel,
            "import json, os; print(json.dumps([kept, os.environ['CUDA_VISIBLE_DEVICES']]))",
        )
    ) == [123, "0"]


def _ignore_errors(call):
    try:
        call()
    except Exception:  # noqa: BLE001 -- the hub is killed under this request
        pass


def test_idle_gpu_is_reclaimed_keeping_state(make_hub):
    hub = make_hub(
        {
            "gpus": {"ids": ["0", "1"], "reclaim_interval": 1},
            "profiles": [
                {"slug": "cpu", "gpus": 0, "default": True},
                {"slug": "gpu-idle", "gpus": 1, "idle_return": "4s"},
                {"slug": "gpu-keep", "gpus": 1},
            ],
        }
    ).start()
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    assert bob.spawn(profile="gpu-keep").status_code in (201, 202)
    assert alice.spawn(profile="gpu-idle").status_code in (201, 202)
    kernel = open_notebook(alice, "idle.ipynb")
    run(alice, kernel, "answer = 42")
    # that a running cell is not idle however long it runs, the server's answer and the
    # reclaim's decision on it, is tested in tests/serverext and tests/unit (with a clock)
    wait_for(lambda: "alice" not in hub.holders().values(), 40, "alice's idle GPU to be reclaimed")
    events = hub.admin.get(hub.api("/gpulab/events?user=alice"), timeout=10).json()["events"]
    assert events[0]["action"] == "release"
    assert events[0]["reason"].startswith("reclaimed: GPU idle for")
    wait_restored(alice)
    assert run(alice, kernel, "print(answer)").strip() == "42"
    out = gpulab_cli(hub, alice.token, "gpu", "status")
    assert out.returncode == 0 and "(reclaimed: GPU idle for" in out.stdout, out.stderr
    # the server lives on, on the CPU; bob's profile has no idle timeout
    assert alice.server_get("/api/status").status_code == 200
    assert list(hub.holders().values()) == ["bob"]


def test_cli_returns_and_gets_a_gpu(hub):
    alice = hub.create_user("alice")
    assert alice.spawn(profile="gpu-1").status_code in (201, 202)
    kernel = open_notebook(alice, "cli.ipynb")
    run(alice, kernel, "import threading\nkept = [1, 2, 3]\nlock = threading.Lock()")

    def gpulab(*args):
        return gpulab_cli(hub, alice.token, "gpu", *args, timeout=120)

    out = gpulab("return")
    assert out.returncode == 0, out.stderr
    assert "Returned GPU 0" in out.stdout
    assert "cli.ipynb: kept 2 variable(s); not saved: lock" in out.stdout
    assert hub.holders() == {}
    out = gpulab("status")
    assert out.returncode == 0 and "alice: no GPU" in out.stdout
    assert "last return: done: Returned GPU 0" in out.stdout and "by user" not in out.stdout
    wait_restored(alice)

    out = gpulab("get", "1")
    assert out.returncode == 0, out.stderr
    assert "Got GPU 0" in out.stdout and "Restored 2 variables" in out.stdout
    assert hub.holders() == {"0": "alice"}
    assert run(alice, kernel, "print(sum(kept))").strip() == "6"

    out = gpulab("return", "2")
    assert out.returncode == 2 and "takes no count" in out.stderr
    out = gpulab("return", "--user", "bob")
    assert out.returncode == 1 and "403" in out.stderr and "Traceback" not in out.stderr
