"""Return GPU and Get GPU latency, with kernels holding 100 MB.

Starts a real hub, spawns a one-GPU server with two notebook kernels holding 50 MB of
numpy state each, then, N times (default 10):

- Return GPU through the API: time from the click until the ledger shows the GPU free
  (the API answers once it is), and until the variables are back in the kernels (on
  the CPU);
- Get GPU: time from the click until the kernels run on the GPU with their variables.

The reference, measured in the same run: freeing the GPU the way there was before,
stopping the server (which loses every variable).

``--backend local`` (the default): configured GPU ids, no driver needed; the kernels
move inside the server. ``--backend kubernetes``: the fake cluster of the tests (one
node, one GPU, pods run as local processes); the server moves to a new pod each time,
and the reference stop deletes its pod.

    .venv/bin/python benchmarks/return_gpu.py [--rounds 10] [--backend kubernetes]

Goals: GPU free <= 1 s after the click (0.3 s on the local backend); state back <= 3 s
after Get GPU. Last line: ``return_gpu_seconds: <median click-to-free>``
(``return_gpu_k8s_seconds`` on the fake cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tests' hub harness and fake cluster

from fakekube import FakeKube  # noqa: E402
from hubfixture import Hub, open_notebook, run_in_kernel, wait_for  # noqa: E402
from k8sfixture import CEPH_RBD, EXTRA_CONFIG, NAMESPACE, kubernetes_settings  # noqa: E402

NODE = "gpu-node-1"
PROFILES = [{"slug": "cpu", "default": True}, {"slug": "gpu-1", "gpus": 1}]

STATE = "import numpy as np\nstate = np.random.default_rng({seed}).random(50 * 2**20 // 8)\n"
CHECK = "print(round(float(state.sum()), 3))"


def gpu(user) -> dict:
    return user.session.get(user.server_url + "/gpulab/gpu", timeout=30).json()


def notebook_kernels(user, paths: list[str]) -> list[str]:
    """The kernels of the notebooks' sessions (new ones after a move to a new pod)."""
    sessions = user.session.get(user.server_url + "/api/sessions", timeout=30).json()
    by_path = {s["path"]: s["kernel"]["id"] for s in sessions}
    return [by_path[p] for p in paths]


@contextlib.contextmanager
def local_hub():
    hub = Hub({"gpus": {"ids": ["0"]}}).start()
    try:
        yield hub, "0"
    finally:
        hub.cleanup()


@contextlib.contextmanager
def cluster_hub():
    """A hub on the kubernetes backend against the fake cluster, as the tests run it."""
    scratch = Path(tempfile.mkdtemp(prefix="gpulab-bench-return-"))
    home = scratch / "home"
    home.mkdir()
    home.chmod(0o1777)
    scratch.chmod(0o755)
    extra = scratch / "extra_config.py"
    extra.write_text(EXTRA_CONFIG.format())
    image_env = {k: v for k, v in os.environ.items() if k != "HOME"}
    # the "image": gpulab's environment (its gpulab-singleuser) first on PATH
    image_env["PATH"] = f"{Path(sys.executable).parent}:{image_env.get('PATH', '/usr/bin:/bin')}"
    nodes = [{"name": NODE, "gpus": 1}]
    try:
        with FakeKube(nodes=nodes, run_containers=True, storage_classes=[CEPH_RBD],
                      image_env=image_env) as kube:  # fmt: skip
            namespaces = f"{kube.url}/api/v1/namespaces"
            requests.post(namespaces, json={"metadata": {"name": NAMESPACE}}, timeout=10)
            hub = Hub(
                {
                    "backend": "kubernetes",
                    "hub": {"extra_config": str(extra)},
                    "kubernetes": kubernetes_settings(
                        kube, home, "registry.example/gpulab/notebook:bench"
                    ),
                    "profiles": PROFILES,
                }
            ).start()
            try:
                yield hub, f"{NODE}/0"
            finally:
                hub.cleanup()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--backend", choices=("local", "kubernetes"), default="local")
    args = parser.parse_args()
    moves = args.backend == "kubernetes"

    with cluster_hub() if moves else local_hub() as (hub, gpu_id):
        user = hub.create_user("bench")
        free, restored, gets, stops = [], [], [], []
        for i in range(args.rounds + 1):  # round 0 warms caches up and is not counted
            user.spawn(profile="gpu-1")
            paths = [f"nb{k}.ipynb" for k in range(2)]
            kernels = [open_notebook(user, path) for path in paths]
            for seed, k in enumerate(kernels):
                run_in_kernel(user.server_url, k, user.token, STATE.format(seed=seed), 120)
            sums = [run_in_kernel(user.server_url, k, user.token, CHECK, 60) for k in kernels]

            def state_back(what: str) -> float:
                """Once the operation has ended and the variables are loaded: when."""
                wait_for(lambda: gpu(user)["operation"]["state"] == "done", 120, what, 0.02)
                wait_for(lambda: gpu(user)["restore"]["state"] != "restoring", 120, what, 0.02)
                return time.perf_counter()

            t0 = time.perf_counter()
            r = user.session.post(hub.api("/gpulab/gpu/return"), json={}, timeout=120)
            t_free = time.perf_counter() - t0
            assert r.status_code in (200, 202) and r.json()["released"] == [gpu_id], r.text
            assert hub.gpus()["free"] == 1
            detail = r.json()["operation"]["detail"]
            t_checkpoint = detail.get("release_seconds", 0)
            t_restored = state_back("the variables back on the CPU") - t0
            kernels = notebook_kernels(user, paths)
            back = [run_in_kernel(user.server_url, k, user.token, CHECK, 60) for k in kernels]
            assert back == sums, (back, sums)

            t0 = time.perf_counter()
            r = user.session.post(hub.api("/gpulab/gpu/get"), json={"gpus": 1}, timeout=60)
            assert r.status_code in (200, 202), r.text
            t_get = state_back("Get GPU") - t0
            kernels = notebook_kernels(user, paths)
            back = [run_in_kernel(user.server_url, k, user.token, CHECK, 60) for k in kernels]
            assert back == sums, (back, sums)

            # the reference: stop the server to free its GPU
            t0 = time.perf_counter()
            user.session.delete(hub.api("/users/bench/server"), timeout=120)
            wait_for(lambda: hub.gpus()["free"] == 1, 120, "the GPU to be free", 0.02)
            t_stop = time.perf_counter() - t0
            wait_for(lambda: not user.model()["servers"], 120, "the server to stop")

            if i == 0:
                continue
            free.append(t_free)
            restored.append(t_restored)
            gets.append(t_get)
            stops.append(t_stop)
            print(
                f"round {i}: free {t_free:.3f}s (kernels checkpointed and ended after "
                f"{t_checkpoint:.3f}s), state back on CPU {t_restored:.3f}s, "
                f"Get GPU with state {t_get:.3f}s; stop server {t_stop:.3f}s",
                flush=True,
            )

    med = statistics.median
    print(f"backend: {args.backend}" + (" (the fake cluster; a new pod per move)" * moves))
    print(f"median click -> GPU free in the ledger: {med(free):.3f} s (goal <= 1 s, 0.3 s local)")
    print(f"median click -> variables back on the CPU: {med(restored):.3f} s")
    print(f"median Get GPU -> variables back on the GPU: {med(gets):.3f} s (goal <= 3 s)")
    print(f"median stop server -> GPU free (reference, loses state): {med(stops):.3f} s")
    print(f"return_vs_stop_ratio: {med(free) / med(stops):.3f}")
    print(f"get_gpu_state_back_seconds: {med(gets):.3f}")
    print(f"return_gpu{'_k8s' * moves}_seconds: {med(free):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
