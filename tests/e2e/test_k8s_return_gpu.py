"""Return GPU / Get GPU on the kubernetes backend: the server moves to a new pod.

A real hub on the fake cluster (``k8sfixture``): the GPU pod is checkpointed and deleted,
its GPU is free once the watch has seen it gone, a CPU pod on the same home claim takes
over and starts the notebooks again with their variables; Get GPU moves it back.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import websocket
from test_switch_race import KernelClient

from hubfixture import gpulab, open_notebook, run, wait_for
from k8sfixture import NAMESPACE, NODE, kube_delete, kube_get, kube_post, user_pod

pytestmark = pytest.mark.timeout(300)

STATE = """
import numpy as np
weights = np.arange(12.0).reshape(3, 4)
config = {"lr": 0.01, "name": "probe"}
gen = (i for i in range(3))
print("defined")
"""

CHECK = """
import json
print(json.dumps({"weights": float(weights.sum()), "config": config,
                  "has_gen": "gen" in globals()}))
"""


def gpu_op(user) -> dict:
    r = user.session.get(user.hub.api("/gpulab/gpu"), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_op_ended(user, timeout: float = 90) -> dict:
    wait_for(
        lambda: gpu_op(user)["operation"]["state"] in ("done", "failed", "cancelled"),
        timeout,
        f"{user.name}'s GPU operation to end",
    )
    return gpu_op(user)["operation"]


def notebook_kernel(user, path: str) -> str:
    """The kernel of the session the new server made for ``path`` (as JupyterLab finds
    it after a reload)."""
    r = user.session.get(user.server_url + "/api/sessions", timeout=30)
    assert r.status_code == 200, r.text
    found = [s["kernel"]["id"] for s in r.json() if s["path"] == path]
    assert len(found) == 1, r.json()
    return found[0]


def restored(user) -> dict:
    """The new server's restore report, once it has finished."""

    def report():
        r = user.session.get(user.server_url + "/gpulab/gpu", timeout=30)
        return r.status_code == 200 and r.json()["restore"]["state"] in ("done", "failed")

    wait_for(report, 90, f"{user.name}'s notebooks to be restored")
    return user.session.get(user.server_url + "/gpulab/gpu", timeout=30).json()["restore"]


def gpu_limit(pod: dict) -> str | None:
    (container,) = pod["spec"]["containers"]
    return ((container.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu")


def claim(pod: dict) -> str:
    return next(
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    )


def gpu_server_with(user, profile: str, notebook: str, code: str) -> str:
    """Spawn ``profile`` for ``user``, open ``notebook`` and run ``code`` (which prints
    "ok") in its kernel; the kernel's id."""
    assert user.spawn(profile=profile).status_code in (201, 202)
    kernel = open_notebook(user, notebook)
    assert run(user, kernel, code).strip() == "ok"
    return kernel


def test_return_gpu_moves_the_server_to_a_cpu_pod_and_get_gpu_moves_it_back(k8s, kube):
    hub = k8s
    eve = hub.create_user("eve")
    assert eve.spawn(profile="gpu-1").status_code in (201, 202)
    gpu_pod = user_pod(kube, "eve")
    assert gpu_limit(gpu_pod) == "1" and claim(gpu_pod) == "home-eve"
    kernel = first_kernel = open_notebook(eve, "work/train.ipynb")
    assert run(eve, kernel, STATE).strip() == "defined"

    # someone else's server is not eve's to return
    mallory = hub.create_user("mallory")
    r = mallory.session.post(hub.api("/gpulab/gpu/return?user=eve"), json={}, timeout=30)
    assert r.status_code == 403, r.text

    # Return GPU: answered once the GPU pod is gone and its GPU free
    r = eve.session.post(hub.api("/gpulab/gpu/return"), json={}, timeout=120)
    assert r.status_code in (200, 202), r.text
    answer = r.json()
    assert answer["released"] == [f"{NODE}/0"]
    assert hub.gpus()["free"] == 2
    now = user_pod(kube, "eve")
    assert now is None or now["metadata"]["uid"] != gpu_pod["metadata"]["uid"]
    report = answer["operation"]["detail"]["kernels"]
    assert [k["path"] for k in report] == ["work/train.ipynb"]
    assert {"weights", "config"} <= set(report[0]["saved"]) and "gen" in report[0]["failed"]
    events = hub.admin.get(hub.api("/gpulab/events?user=eve"), timeout=10).json()["events"]
    assert events[0]["action"] == "release" and events[0]["reason"] == "returned by user"

    # a CPU pod on the same home claim takes over; the notebook's variables are back
    op = wait_op_ended(eve)
    assert op["state"] == "done", op
    assert op["detail"]["new_pod"] and "moved to a new pod without a GPU" in op["message"]
    cpu_pod = user_pod(kube, "eve")
    assert gpu_limit(cpu_pod) is None and claim(cpu_pod) == "home-eve"
    assert "nvidia.com/gpu.product" not in (cpu_pod["spec"].get("nodeSelector") or {})
    assert eve.model()["servers"][""]["ready"]
    report = restored(eve)
    assert report["state"] == "done", report
    assert {"weights", "config"} <= set(report["kernels"][0]["restored"])
    kernel = notebook_kernel(eve, "work/train.ipynb")
    values = json.loads(run(eve, kernel, CHECK).strip().splitlines()[-1])
    assert values == {"weights": 66.0, "config": {"lr": 0.01, "name": "probe"}, "has_gen": False}
    # the checkpoint is kept as the notebook's latest, restored; the manifest is marked read
    r = eve.session.get(hub.api("/gpulab/gpu/checkpoints"), timeout=30)
    assert r.status_code == 200, r.text
    # (the fake cluster's pods share one folder as their home, so other tests' are listed)
    (kept,) = [c for c in r.json()["checkpoints"] if c["kernel"] == first_kernel]
    assert kept["notebook"] == "work/train.ipynb" and kept["state"] == "restored", kept
    checkpoints = Path(hub.settings["kubernetes"]["home_mount"]) / ".gpulab" / "checkpoints"
    assert (checkpoints / f"{kept['id']}.pkl").is_file()
    assert (checkpoints / "resume.json.done").exists()
    assert run(eve, kernel, "weights *= 2; print('changed')").strip() == "changed"
    # returning again changes nothing
    r = eve.session.post(hub.api("/gpulab/gpu/return"), json={}, timeout=30)
    assert r.status_code == 200 and "nothing to return" in r.json()["message"]
    assert user_pod(kube, "eve")["metadata"]["uid"] == cpu_pod["metadata"]["uid"]

    # Get GPU: a GPU pod again, on the granted node, with the variables as left on the CPU
    r = eve.session.post(hub.api("/gpulab/gpu/get"), json={"gpus": 1}, timeout=30)
    assert r.status_code in (200, 202), r.text
    op = wait_op_ended(eve)
    assert op["state"] == "done", op
    assert hub.holders() == {f"{NODE}/0": "eve"}
    new_gpu_pod = user_pod(kube, "eve")
    assert gpu_limit(new_gpu_pod) == "1" and claim(new_gpu_pod) == "home-eve"
    assert new_gpu_pod["spec"]["nodeSelector"]["kubernetes.io/hostname"] == NODE
    assert restored(eve)["state"] == "done"
    kernel = notebook_kernel(eve, "work/train.ipynb")
    values = json.loads(run(eve, kernel, CHECK).strip().splitlines()[-1])
    assert values["weights"] == 132.0


def test_cells_sent_while_the_server_moves_run_before_it_or_are_refused(k8s, kube):
    """A notebook keeps sending cells while its server moves to a CPU pod: each one ran
    before the checkpoint (and its effect moved with the variables), or was answered that
    the server is moving; none ran in a kernel without the variables."""
    hub = k8s
    fay = hub.create_user("fay")
    kernel = gpu_server_with(fay, "gpu-1", "count.ipynb", "n = 0\nprint('ok')")
    client = KernelClient(fay, kernel)
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            try:
                client.execute("n += 1\nprint(n)")
            except (websocket.WebSocketException, OSError):
                return  # the old pod is gone
            time.sleep(0.01)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    wait_for(lambda: len(client.replies) >= 5, 30, "the first cells to run")
    r = fay.session.post(hub.api("/gpulab/gpu/return"), json={}, timeout=120)
    stop.set()
    sender.join(10)
    client.close()
    assert r.status_code in (200, 202), r.text
    with client.lock:
        replies, stdout, errors = list(client.replies), dict(client.stdout), dict(client.errors)
    ran = [parent for parent, content in replies if content["status"] == "ok"]
    refused = [parent for parent, content in replies if content.get("ename") == "NotRun"]
    assert len(ran) + len(refused) == len(replies), replies
    assert refused, "no cell was sent while the kernel was checkpointed"
    assert all("moving to a new pod" in errors[p] for p in refused), errors
    # the cells that ran came first, each seeing the ones before it
    assert [parent for parent, _ in replies] == ran + refused
    assert [stdout[p].strip() for p in ran] == [str(i) for i in range(1, len(ran) + 1)]
    # ... and what they did moved with the variables
    assert wait_op_ended(fay)["state"] == "done"
    assert restored(fay)["state"] == "done"
    kernel = notebook_kernel(fay, "count.ipynb")
    assert run(fay, kernel, "print(n)").strip() == str(len(ran))


def test_get_gpu_that_cannot_be_scheduled_goes_back_to_a_cpu_pod(k8s, kube):
    hub = k8s
    fay = hub.create_user("fay")
    gpu_server_with(fay, "gpu-1", "keep.ipynb", "kept = [1, 2, 3]; print('ok')")
    # `gpulab gpu return` follows the move until the new pod serves
    out = gpulab(hub, fay.token, "gpu", "return")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Returned GPU {NODE}/0" in out.stdout
    assert "your server moved to a new pod without a GPU" in " ".join(out.stdout.split())
    assert gpu_op(fay)["operation"]["state"] == "done"

    # something outside gpulab takes both GPUs of the node: the ledger cannot know
    outside = {
        "metadata": {"name": "outside-trainer"},
        "spec": {
            "containers": [
                {"name": "t", "image": "t:1", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
            ]
        },
    }
    kube_post(kube, f"/api/v1/namespaces/{NAMESPACE}/pods", outside)
    path = f"/api/v1/namespaces/{NAMESPACE}/pods/outside-trainer"
    wait_for(lambda: kube_get(kube, path)["spec"].get("nodeName"), 30, "the outside pod")
    try:
        r = fay.session.post(hub.api("/gpulab/gpu/get"), json={"gpus": 1}, timeout=30)
        assert r.status_code in (200, 202), r.text
        op = wait_op_ended(fay, timeout=120)
        # the scheduler's reason, the grant given back, and the server on the CPU again
        assert op["state"] == "failed", op
        assert "Insufficient nvidia.com/gpu" in op["message"], op
        assert "runs without a GPU again" in op["message"], op
        assert hub.gpus()["free"] == 2
        pod = user_pod(kube, "fay")
        assert gpu_limit(pod) is None and pod["status"]["phase"] == "Running"
        assert restored(fay)["state"] == "done"
        kernel = notebook_kernel(fay, "keep.ipynb")
        assert run(fay, kernel, "print(kept)").strip() == "[1, 2, 3]"
    finally:
        kube_delete(kube, path)


def test_a_hub_restart_in_the_middle_of_a_move_loses_nothing(k8s, kube):
    hub = k8s
    gil = hub.create_user("gil")
    gpu_server_with(gil, "gpu-1", "gil.ipynb", "kept = 'safe'; print('ok')")
    # as the lab's button asks: answered once the kernels are checkpointed
    r = gil.session.post(hub.api("/gpulab/gpu/return"), json={"wait": False}, timeout=120)
    assert r.status_code == 202, r.text
    assert r.json()["operation"]["detail"]["kernels"][0]["saved"] == ["kept"]
    hub.kill()  # while the pod is being replaced
    hub.start()

    def settled():
        """The server is gone (the hub found no pod of it), or runs and the move ended."""
        server = gil.model()["servers"].get("")
        if server is None:
            return "gone"
        if server["ready"] and gpu_op(gil)["operation"]["state"] in ("done", "failed"):
            return "running"
        return None

    outcome = wait_for(settled, 120, "the move to be settled after the restart")
    # the ledger and the pods agree: a GPU is held exactly when a pod of gil's has it
    wait_for(lambda: user_pod(kube, "gil") is None or outcome == "running", 60, "no pod")
    pod = user_pod(kube, "gil")
    held = [gpu for gpu, who in hub.holders().items() if who == "gil"]
    assert held == ([f"{NODE}/0"] if pod and gpu_limit(pod) else []), (outcome, pod)
    # the notebook's variable is there, on the server that runs now or the next one
    if outcome == "gone":
        assert gil.spawn(profile="cpu").status_code in (201, 202)
    gil.wait_ready()
    assert restored(gil)["state"] == "done"
    kernel = notebook_kernel(gil, "gil.ipynb")
    assert run(gil, kernel, "print(kept)").strip() == "safe"


def test_an_idle_gpu_is_reclaimed_by_a_move_to_a_cpu_pod(k8s, kube):
    hub = k8s
    ida = hub.create_user("ida")
    gpu_server_with(ida, "gpu-idle", "idle.ipynb", "answer = 42; print('ok')")
    wait_for(lambda: "ida" not in hub.holders().values(), 60, "ida's idle GPU to be reclaimed")
    events = hub.admin.get(hub.api("/gpulab/events?user=ida"), timeout=10).json()["events"]
    assert events[0]["action"] == "release"
    assert events[0]["reason"].startswith("reclaimed: GPU idle for"), events[0]
    assert wait_op_ended(ida)["state"] == "done"
    assert gpu_limit(user_pod(kube, "ida")) is None
    assert restored(ida)["state"] == "done"
    assert run(ida, notebook_kernel(ida, "idle.ipynb"), "print(answer)").strip() == "42"
