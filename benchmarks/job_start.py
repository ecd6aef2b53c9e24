"""Job start latency: submit to every replica running, vs starting the same processes by hand.

One hub on this machine (as root, local backend, two configured GPU ids). Each round:

- gpulab: POST a 4-replica TensorFlow job (chief + ps with a GPU each, 2 workers); the clock stops when all
  four replica processes have run their first line (each writes a marker file on the
  home), so it counts the API, the gang reservation, the environment, the process start
  and the interpreter's start-up;
- by hand: the same four commands started with ``subprocess.Popen`` as the same unix
  account, from the same home, with the same interpreter; the clock stops the same way.

Rounds alternate the two so drift hits both alike; each job is cancelled afterwards.

    .venv/bin/python benchmarks/job_start.py [--rounds 10]

Last line: ``job_start_ratio: <gpulab median / by-hand median>``. The fake-cluster half
of the issue's benchmark waits for the Kubernetes job runner.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from hubfixture import Hub, wait_for  # noqa: E402

REPLICAS = 4
CODE = (
    "import os, sys, time\n"
    "open(os.path.join(sys.argv[1], os.environ.get('GPULAB_REPLICA', sys.argv[2])), 'w').close()\n"
    "time.sleep(60)\n"
)


def wait_markers(folder: Path, t0: float, limit: float = 60) -> float:
    deadline = t0 + limit
    while time.monotonic() < deadline:
        if len(list(folder.iterdir())) >= REPLICAS:
            return time.monotonic() - t0
        time.sleep(0.002)
    raise TimeoutError(f"only {len(list(folder.iterdir()))} of {REPLICAS} replicas started")


def fresh(folder: Path, uid: int, gid: int) -> Path:
    folder.mkdir(parents=True, exist_ok=False)
    os.chown(folder, uid, gid)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: replicas run as the user's own unix account")

    from gpulab.spawner.accounts import ensure_account
    from gpulab.spawner.local_runner import python

    hub = Hub({"gpus": {"ids": ["0", "1"]}}).start()
    try:
        user = hub.create_user("bench")
        account = ensure_account(hub.unix_prefix, "bench", hub.data_root)
        script = account.home / "start.py"
        script.write_text(CODE)
        os.chown(script, account.uid, account.gid)
        ours, theirs = [], []
        for n in range(args.rounds + 1):  # round 0 warms both up
            # gpulab
            markers = fresh(account.home / f"g{n}", account.uid, account.gid)
            spec = {
                "name": f"bench-{n}",
                "framework": "tensorflow",
                "script": "start.py",
                "args": [str(markers), "x"],
                "replicas": {"chief": {"gpus": 1}, "worker": 2, "ps": {"gpus": 1}},
            }
            t0 = time.monotonic()
            r = user.session.post(hub.api("/gpulab/jobs"), json=spec, timeout=30)
            r.raise_for_status()
            took = wait_markers(markers, t0)
            user.session.post(hub.api(f"/gpulab/jobs/bench-{n}/cancel"), timeout=60)
            # by hand
            markers_hand = fresh(account.home / f"h{n}", account.uid, account.gid)
            env = {
                "HOME": str(account.home),
                "USER": account.name,
                "PATH": f"{Path(sys.prefix) / 'bin'}:/usr/bin:/bin",
            }
            t0 = time.monotonic()
            procs = [
                subprocess.Popen(
                    [python(), str(script), str(markers_hand), f"worker-{i}"],
                    cwd=account.home,
                    env=env,
                    user=account.uid,
                    group=account.gid,
                    extra_groups=[],
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for i in range(REPLICAS)
            ]
            took_hand = wait_markers(markers_hand, t0)
            for p in procs:
                p.kill()
                p.wait()
            wait_for(lambda: hub.gpus()["free"] == 2, 30, "the job's GPUs to be free")
            if n == 0:
                continue
            ours.append(took)
            theirs.append(took_hand)
            print(f"round {n}: gpulab {took * 1000:7.1f} ms   by hand {took_hand * 1000:7.1f} ms")
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"gpulab  submit -> {REPLICAS} replicas running: median {a * 1000:.1f} ms")
        print(f"by hand start  -> {REPLICAS} processes running: median {b * 1000:.1f} ms")
        print(f"job_start_ratio: {a / b:.2f}")
    finally:
        hub.cleanup()


if __name__ == "__main__":
    main()
