"""Return GPU and Get GPU latency on the local backend, with kernels holding 100 MB.

Starts a real hub (configured GPU ids, no driver needed), spawns a one-GPU server with
two notebook kernels holding 50 MB of numpy state each, then, N times (default 10):

- Return GPU through the API: time from the click until the ledger shows the GPU free
  (the API answers once it is), and until the variables are back in the kernels (on
  the CPU);
- Get GPU: time from the click until the kernels run on the GPU with their variables.

The reference, measured in the same run: freeing the GPU the way there was before,
stopping the server (which loses every variable).

    .venv/bin/python benchmarks/return_gpu.py [--rounds 10]

Goals: GPU free <= 1 s after the click (0.3 s on the local backend); state back <= 3 s
after Get GPU. Last line: ``return_gpu_seconds: <median click-to-free>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tests' hub harness

from hubfixture import Hub, run_in_kernel, wait_for  # noqa: E402

STATE = "import numpy as np\nstate = np.random.default_rng({seed}).random(50 * 2**20 // 8)\n"
CHECK = "print(round(float(state.sum()), 3))"


def notebook(user, path: str) -> str:
    r = user.session.post(
        user.server_url + "/api/sessions",
        json={"path": path, "type": "notebook", "name": path, "kernel": {"name": "python3"}},
        timeout=60,
    )
    r.raise_for_status()
    return r.json()["kernel"]["id"]


def gpu(user) -> dict:
    return user.session.get(user.server_url + "/gpulab/gpu", timeout=30).json()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    hub = Hub({"gpus": {"ids": ["0"]}}).start()
    try:
        user = hub.create_user("bench")
        free, restored, acquired, stops = [], [], [], []
        for i in range(args.rounds + 1):  # round 0 warms caches up and is not counted
            user.spawn(profile="gpu-1")
            kernels = [notebook(user, f"nb{k}.ipynb") for k in range(2)]
            for seed, k in enumerate(kernels):
                run_in_kernel(user.server_url, k, user.token, STATE.format(seed=seed), 120)
            sums = [run_in_kernel(user.server_url, k, user.token, CHECK, 60) for k in kernels]

            t0 = time.perf_counter()
            r = user.session.post(hub.api("/gpulab/gpu/return"), json={}, timeout=120)
            t_free = time.perf_counter() - t0
            assert r.status_code == 200 and r.json()["released"] == ["0"], r.text
            assert hub.gpus()["free"] == 1
            wait_for(lambda: gpu(user)["restore"]["state"] != "restoring", 120, "restore", 0.02)
            t_restored = time.perf_counter() - t0
            back = [run_in_kernel(user.server_url, k, user.token, CHECK, 60) for k in kernels]
            assert back == sums, (back, sums)

            t0 = time.perf_counter()
            r = user.session.post(hub.api("/gpulab/gpu/acquire"), json={"gpus": 1}, timeout=60)
            assert r.status_code in (200, 202), r.text
            wait_for(lambda: gpu(user)["operation"]["state"] == "done", 120, "Get GPU", 0.02)
            t_acquired = time.perf_counter() - t0
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
            acquired.append(t_acquired)
            stops.append(t_stop)
            print(
                f"round {i}: free {t_free:.3f}s, state back on CPU {t_restored:.3f}s, "
                f"Get GPU with state {t_acquired:.3f}s; stop server {t_stop:.3f}s",
                flush=True,
            )
    finally:
        hub.cleanup()

    med = statistics.median
    print(f"median click -> GPU free in the ledger: {med(free):.3f} s (goal <= 1 s, 0.3 s local)")
    print(f"median click -> variables back on the CPU: {med(restored):.3f} s")
    print(f"median Get GPU -> variables back on the GPU: {med(acquired):.3f} s (goal <= 3 s)")
    print(f"median stop server -> GPU free (reference, loses state): {med(stops):.3f} s")
    print(f"return_vs_stop_ratio: {med(free) / med(stops):.3f}")
    print(f"get_gpu_state_back_seconds: {med(acquired):.3f}")
    print(f"return_gpu_seconds: {med(free):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
