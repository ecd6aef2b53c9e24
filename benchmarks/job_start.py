"""Job start latency: submit to every replica running, vs starting the same processes by hand.

The job is a 4-replica TensorFlow job (chief + ps with a GPU each, 2 workers); the clock
stops when all four replicas have run their first line (each writes a marker file on
the home), so it counts the API, the gang reservation, the environment, the start and
the interpreter's start-up. Two halves, in one run:

1. The fake cluster (tests/fakekube, its kubelet running each pod's command as a local
   process): a hub on the kubernetes backend makes the job's Service, Secret and four
   pods; by hand, the same four commands are four pods POSTed straight to the same API
   server, as ``kubectl create`` would.
2. The local backend (one hub on this machine, as root, two configured GPU ids): by hand,
   the same four commands started with ``subprocess.Popen`` as the same unix account,
   from the same home, with the same interpreter.

Rounds alternate gpulab and by hand so drift hits both alike; each job is cancelled
afterwards.

    .venv/bin/python benchmarks/job_start.py [--rounds 10]

Last line: ``job_start_ratio: <gpulab median / by-hand median>`` of the local backend;
the fake cluster's ratio is the line before it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fakekube import FakeKube  # noqa: E402
from hubfixture import Hub, wait_for  # noqa: E402
from k8sfixture import CEPH_RBD, NAMESPACE, NOBODY, kubernetes_settings  # noqa: E402

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


def job_spec(name: str, markers: Path) -> dict:
    return {
        "name": name,
        "framework": "tensorflow",
        "script": "start.py",
        "args": [str(markers), "x"],
        "replicas": {"chief": {"gpus": 1}, "worker": 2, "ps": {"gpus": 1}},
    }


def report(label: str, ours: list[float], theirs: list[float], reference: str) -> float:
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{label}: gpulab submit -> {REPLICAS} replicas running: median {a * 1000:.1f} ms")
    print(f"{label}: {reference} -> {REPLICAS} running: median {b * 1000:.1f} ms")
    return a / b


def timed_rounds(label: str, rounds: int, user, home: Path, uid: int, gid: int, by_hand):
    """Each round: gpulab submits the job, then ``by_hand(markers, n)`` starts the same
    four commands (it returns how to end them); both timed until the four markers are
    there. Round 0 warms both up. The per-round seconds, (gpulab, by hand)."""
    ours, theirs = [], []
    for n in range(rounds + 1):
        markers = fresh(home / f"g{n}", uid, gid)
        t0 = time.monotonic()
        r = user.session.post(user.hub.api("/gpulab/jobs"), json=job_spec(f"bench-{n}", markers),
                              timeout=30)  # fmt: skip
        r.raise_for_status()
        took = wait_markers(markers, t0)
        user.session.post(user.hub.api(f"/gpulab/jobs/bench-{n}/cancel"), timeout=120)
        markers_hand = fresh(home / f"h{n}", uid, gid)
        t0 = time.monotonic()
        end = by_hand(markers_hand, n)
        took_hand = wait_markers(markers_hand, t0)
        end()
        if n == 0:
            continue
        ours.append(took)
        theirs.append(took_hand)
        print(f"{label} round {n}: gpulab {took * 1000:7.1f} ms   "
              f"by hand {took_hand * 1000:7.1f} ms", flush=True)  # fmt: skip
    return ours, theirs


def cluster_half(rounds: int) -> tuple[list[float], list[float]]:
    scratch = Path(tempfile.mkdtemp(prefix="gpulab-bench-jobs-"))
    home = scratch / "home"
    home.mkdir()
    home.chmod(0o1777)
    (home / "start.py").write_text(CODE)
    shims = scratch / "bin"
    shims.mkdir()
    (shims / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (shims / "python").chmod(0o755)
    scratch.chmod(0o755)
    image_env = {k: v for k, v in os.environ.items() if k != "HOME"}
    image_env["PATH"] = f"{shims}:{image_env['PATH']}"
    nodes = [{"name": "gpu-node-1", "gpus": 2}]
    with FakeKube(nodes=nodes, run_containers=True, storage_classes=[CEPH_RBD],
                  image_env=image_env) as kube:  # fmt: skip
        api = f"{kube.url}/api/v1/namespaces"
        requests.post(api, json={"metadata": {"name": NAMESPACE}}, timeout=10).raise_for_status()
        claim = {
            "metadata": {"name": "home-bench", "labels": {"gpulab.io/component": "home"},
                         "annotations": {"gpulab.io/user": "bench", "gpulab.io/server": ""}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "ceph-rbd",
                     "resources": {"requests": {"storage": "1Gi"}}},
        }  # fmt: skip
        pods = f"{api}/{NAMESPACE}/pods"
        requests.post(f"{api}/{NAMESPACE}/persistentvolumeclaims", json=claim, timeout=10)
        hub = Hub(
            {
                "backend": "kubernetes",
                "kubernetes": kubernetes_settings(
                    kube, home, "registry.example/gpulab/notebook:bench"
                ),
            }
        ).start()
        try:

            def by_hand(markers: Path, n: int):
                for i in range(REPLICAS):
                    pod = {
                        "metadata": {"name": f"hand-{n}-{i}"},
                        "spec": {
                            "restartPolicy": "Never",
                            "securityContext": {"runAsUser": NOBODY, "runAsGroup": NOBODY},
                            "containers": [{
                                "name": "main", "image": "registry.example/gpulab/notebook:bench",
                                "command": ["python", "start.py", str(markers), f"r{i}"],
                                "workingDir": str(home), "env": [{"name": "HOME", "value": str(home)}],
                                "resources": {"limits": {"nvidia.com/gpu": "1"}} if i < 2 else {},
                            }],
                        },
                    }  # fmt: skip
                    requests.post(pods, json=pod, timeout=10).raise_for_status()

                def end() -> None:
                    for i in range(REPLICAS):
                        requests.delete(
                            f"{pods}/hand-{n}-{i}", json={"gracePeriodSeconds": 0}, timeout=10
                        )
                    wait_for(
                        lambda: not requests.get(pods, timeout=10).json()["items"], 60, "pods gone"
                    )

                return end

            user = hub.create_user("bench")
            return timed_rounds("fake cluster", rounds, user, home, NOBODY, NOBODY, by_hand)
        finally:
            hub.cleanup()


def local_half(rounds: int) -> tuple[list[float], list[float]]:
    from gpulab.spawner.accounts import ensure_account
    from gpulab.spawner.local_runner import python

    hub = Hub({"gpus": {"ids": ["0", "1"]}}).start()
    try:
        user = hub.create_user("bench")
        account = ensure_account(hub.unix_prefix, "bench", hub.data_root)
        script = account.home / "start.py"
        script.write_text(CODE)
        os.chown(script, account.uid, account.gid)
        env = {
            "HOME": str(account.home),
            "USER": account.name,
            "PATH": f"{Path(sys.prefix) / 'bin'}:/usr/bin:/bin",
        }

        def by_hand(markers: Path, n: int):
            procs = [
                subprocess.Popen(
                    [python(), str(script), str(markers), f"worker-{i}"],
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

            def end() -> None:
                for p in procs:
                    p.kill()
                    p.wait()
                wait_for(lambda: hub.gpus()["free"] == 2, 30, "the job's GPUs to be free")

            return end

        return timed_rounds("local", rounds, user, account.home, account.uid, account.gid, by_hand)
    finally:
        hub.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: replicas run as the user's own unix account")
    cluster = report("fake cluster", *cluster_half(args.rounds), "4 pods created by hand")
    local = report("local", *local_half(args.rounds), "4 x Popen by hand")
    print(f"job_start_k8s_ratio: {cluster:.2f}")
    print(f"job_start_ratio: {local:.2f}")


if __name__ == "__main__":
    main()
