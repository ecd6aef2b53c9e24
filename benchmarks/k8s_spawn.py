"""Hub-side spawn time on the kubernetes backend, and the hub API under a big user base.

Runs a real hub against the project's fake Kubernetes API server (tests/fakekube) with
25 nodes of 8 GPUs, kubelets that start containers at once and run no process (one
small HTTP responder stands in for every notebook, as the hub only needs an answer on
the pod's port). Two phases, in one run:

1. ``--spawns`` spawns of a 1-GPU profile, all requested at once, timed from the spawn
   request to the hub calling the server ready (the POST returns then): gpulab's
   GpuKubeSpawner, and as the reference plain KubeSpawner asking for the same GPU,
   each on its own hub against the same cluster, both hubs holding the same ``--users``
   users (a hub's work per spawn grows with them). Every spawn must succeed. Before
   that, on each hub, ``--single`` spawns one after another: a spawn's time with nothing
   else going on, the nearest figure to the hub's own overhead. A second reference is
   KubeSpawner as zero-to-jupyterhub configures it by default, with a home claim per
   user made by the first spawn, as gpulab makes one (``..._vs_kubespawner_with_home``).
2. On gpulab's hub, with ``--users`` users and ``--servers`` servers running: latency
   of the hub API a lab page and the CLI use (``/gpulab/gpus``, ``/gpulab/gpu``,
   ``/gpulab/events``, ``/users/<name>``), sequentially, p50/p99.

    .venv/bin/python benchmarks/k8s_spawn.py [--spawns 100] [--single 20] [--users 1000]
        [--servers 200]

Goals (issue 5): p50 <= 200 ms, no failed spawn, API p99 <= 100 ms. Last line:
``k8s_spawn_overhead_p50_ms: <gpulab p50 in ms>``.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fakekube import FakeKube  # noqa: E402
from hubfixture import Hub, free_port, wait_for  # noqa: E402

NAMESPACE = "gpulab"
NODES, GPUS_PER_NODE = 25, 8
IMAGE = "registry.example/gpulab/notebook:bench"
CEPH_RBD = {
    "metadata": {"name": "ceph-rbd"},
    "provisioner": "rbd.csi.ceph.com",
    "parameters": {"clusterID": "bench", "pool": "rbd"},
    "allowVolumeExpansion": True,
}
CONFIG = """
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
# the spawn request returns when the server is ready: its duration is the spawn's
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 300}}
c.KubeSpawner.port = {port}
c.KubeSpawner.start_timeout = 300
c.KubeSpawner.http_timeout = 300
"""
PLAIN = """
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.image = {image!r}
c.KubeSpawner.namespace = {namespace!r}
c.KubeSpawner.extra_resource_limits = {{"nvidia.com/gpu": "1"}}
c.KubeSpawner.extra_resource_guarantees = {{"nvidia.com/gpu": "1"}}
"""


HOME = """
c.KubeSpawner.storage_pvc_ensure = True
c.KubeSpawner.pvc_name_template = "claim-{{username}}"
c.KubeSpawner.storage_class = "ceph-rbd"
c.KubeSpawner.storage_capacity = "10Gi"
c.KubeSpawner.volumes = [
    {{"name": "home", "persistentVolumeClaim": {{"claimName": "claim-{{username}}"}}}}
]
c.KubeSpawner.volume_mounts = [{{"name": "home", "mountPath": "/home/jovyan"}}]
"""
"""What zero-to-jupyterhub configures by default (``singleuser.storage.type: dynamic``): a
home claim per user, made by the first spawn, as gpulab makes one."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def start_hub(kube: FakeKube, scratch: Path, label: str, extra: str) -> Hub:
    config = scratch / f"{label}-config.py"
    config.write_text(extra)
    return Hub(
        {
            "backend": "kubernetes",
            "hub": {"extra_config": str(config)},
            "kubernetes": {
                "image": IMAGE,
                "namespace": NAMESPACE,
                "hub_connect_ip": "127.0.0.1",
                "kubeconfig": kube.kubeconfig,
            },
            "profiles": [{"slug": "cpu"}, {"slug": "gpu-1", "gpus": 1, "default": True}],
        }
    ).start()


def add_users(hub: Hub, names: list[str]) -> None:
    for i in range(0, len(names), 200):
        r = hub.admin.post(hub.api("/users"), json={"usernames": names[i : i + 200]}, timeout=120)
        assert r.status_code == 201, r.text


def spawn_burst(hub: Hub, label: str, batch: list[str], profile: str | None):
    """``batch``'s spawns at once on ``hub``, reported: the times, the failures, the hub's
    CPU seconds per spawn (``profile``: py-spy's record of the hub meanwhile)."""
    print(f"{label}: {len(batch)} spawns at once", flush=True)
    with profiling(hub, profile):
        times, failed, cpu = spawn_all(hub, batch)
    report(f"{label} spawn", times)
    print(f"  hub CPU per spawn: {cpu * 1000:.0f} ms", flush=True)
    return times, failed, cpu


def retire(hub: Hub, hubs: list[Hub], kube: FakeKube, batch: list[str]) -> None:
    """Stop ``batch``'s servers and the hub, and wait until the cluster has no pod left."""
    stop_all(hub, batch)
    hub.cleanup()
    hubs.remove(hub)
    no_pods(kube)


def no_pods(kube: FakeKube) -> None:
    def gone():
        r = requests.get(f"{kube.url}/api/v1/namespaces/{NAMESPACE}/pods", timeout=10)
        return not r.json()["items"]

    wait_for(gone, 120, "the reference's pods to go")


def spawn_all(hub: Hub, names: list[str]) -> tuple[list[float], list[str], float]:
    """Request every spawn at once: each one's seconds until ready, the failures, and
    the hub process's CPU seconds per spawn (the fake cluster shares this machine, so
    the latencies include its work; the hub's CPU time does not)."""
    hub_process = psutil.Process(hub.proc.pid)
    cpu_before = sum(hub_process.cpu_times()[:2])
    with ThreadPoolExecutor(len(names)) as pool:
        times, failures = tally(pool.map(lambda name: spawn(hub, name), names))
    return times, failures, (sum(hub_process.cpu_times()[:2]) - cpu_before) / len(names)


def spawn(hub: Hub, name: str) -> tuple[str, float, int, str]:
    """Spawn ``name``'s server: the seconds until the hub calls it ready, and the answer."""
    with requests.Session() as s:
        s.headers["Authorization"] = hub.admin.headers["Authorization"]
        t0 = time.perf_counter()
        r = s.post(hub.api(f"/users/{name}/server"), json={}, timeout=600)
        seconds = time.perf_counter() - t0
    return name, seconds, r.status_code, r.text[:200]


def tally(results) -> tuple[list[float], list[str]]:
    times, failures = [], []
    for name, seconds, status, text in results:
        if status == 201:
            times.append(seconds)
        else:
            failures.append(f"{name}: {status} {text}")
    return times, failures


def spawn_one_by_one(hub: Hub, names: list[str]) -> tuple[list[float], list[str]]:
    """Spawn each in turn, with nothing else going on, then stop them all: each spawn's
    seconds until ready, and the failures."""
    results = [spawn(hub, name) for name in names]
    stop_all(hub, names)
    return tally(results)


def stop_all(hub: Hub, names: list[str]) -> None:
    """Stop the servers of ``names`` and wait until the hub has them stopped."""
    with ThreadPoolExecutor(20) as pool:
        list(
            pool.map(lambda n: hub.admin.delete(hub.api(f"/users/{n}/server"), timeout=120), names)
        )

    def stopped() -> bool:
        r = hub.admin.get(hub.api("/users?state=active"), timeout=30)
        return not {u["name"] for u in r.json()} & set(names)

    wait_for(stopped, 120, "the servers to stop")


def api_latency(hub: Hub, users: list[str], running: list[str], requests_n: int) -> list[float]:
    paths = [
        lambda: "/gpulab/gpus",
        lambda: f"/gpulab/gpu?user={random.choice(running)}",
        lambda: "/gpulab/events?limit=50",
        lambda: f"/users/{random.choice(users)}",
    ]
    times = []
    with requests.Session() as s:
        s.headers.update(hub.admin.headers)
        for i in range(requests_n):
            url = hub.api(paths[i % len(paths)]())
            t0 = time.perf_counter()
            r = s.get(url, timeout=30)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, f"{url}: {r.status_code} {r.text[:200]}"
    return times


def errors(hub: Hub, n: int = 40) -> str:
    """The hub's error lines, to tell why spawns failed."""
    lines = hub.log_path.read_text(errors="replace").splitlines()
    keep = [i for i, line in enumerate(lines) if line.startswith("[E") and "log:" not in line]
    return "\n".join("\n".join(lines[i : i + 25]) for i in keep[:2])


@contextlib.contextmanager
def profiling(hub: Hub, path: str | None):
    """py-spy records the hub process meanwhile, into ``path`` (nothing without one)."""
    if not path:
        yield
        return
    # --nonblocking: py-spy would otherwise stop the hub at every sample, and slow it
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(hub.proc.pid),
         "--format", "raw", "--rate", "200", "--nonblocking", "--output", path],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # it writes the profile as it ends
        spy.wait(60)
        print(f"  hub profile: {path}", flush=True)


def report(label: str, times: list[float]) -> None:
    p50, p99 = percentile(times, 50) * 1000, percentile(times, 99) * 1000
    print(
        f"{label}: n={len(times)} p50={p50:.0f} ms p99={p99:.0f} ms max={max(times) * 1000:.0f} ms"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spawns", type=int, default=100)
    ap.add_argument("--single", type=int, default=20)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--servers", type=int, default=200)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument(
        "--profile",
        metavar="FILE",
        help="record gpulab's hub with py-spy during the spawns at once (collapsed stacks, "
        "for flame graphs; py-spy from PyPI; it samples without stopping the hub), and the "
        "reference's hub into FILE.plain",
    )
    args = ap.parse_args()
    if args.servers > NODES * GPUS_PER_NODE or not args.spawns <= args.servers <= args.users:
        ap.error(
            f"need spawns <= servers <= users, and servers <= {NODES * GPUS_PER_NODE} "
            "(the cluster's GPUs)"
        )

    scratch = Path(tempfile.mkdtemp(prefix="gpulab-bench-k8s-"))
    port = free_port()
    responder = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=scratch,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nodes = [
        {"name": f"gpu-node-{i}", "gpus": GPUS_PER_NODE, "labels": {"pool": "gpu"}}
        for i in range(1, NODES + 1)
    ]
    hubs: list[Hub] = []
    try:
        with FakeKube(nodes=nodes, storage_classes=[CEPH_RBD]) as kube:
            r = requests.post(
                f"{kube.url}/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}}, timeout=10
            )
            assert r.status_code == 201, r.text
            wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=1), 10, "responder")
            base = CONFIG.format(port=port)
            # both hubs hold the same users: the hub's work per spawn grows with them
            names = [f"user{i:04d}" for i in range(args.users)]
            batch = names[: args.spawns]
            single = [f"solo{i:03d}" for i in range(args.single)]

            plain = start_hub(
                kube, scratch, "plain", base + PLAIN.format(image=IMAGE, namespace=NAMESPACE)
            )
            hubs.append(plain)
            add_users(plain, single + names)
            print(f"plain KubeSpawner: {args.single} spawns one by one", flush=True)
            plain_single, plain_single_failed = spawn_one_by_one(plain, single)
            report("plain KubeSpawner spawn alone", plain_single)
            plain_times, plain_failed, plain_cpu = spawn_burst(
                plain, "plain KubeSpawner", batch, args.profile and f"{args.profile}.plain"
            )
            retire(plain, hubs, kube, batch)

            homes = start_hub(
                kube,
                scratch,
                "homes",
                base + (PLAIN + HOME).format(image=IMAGE, namespace=NAMESPACE),
            )
            hubs.append(homes)
            add_users(homes, names)
            homes_times, homes_failed, homes_cpu = spawn_burst(
                homes, "KubeSpawner with a home claim", batch, None
            )
            retire(homes, hubs, kube, batch)

            hub = start_hub(kube, scratch, "gpulab", base)
            hubs.append(hub)
            add_users(hub, single + names)
            print(f"gpulab GpuKubeSpawner: {args.single} spawns one by one", flush=True)
            alone, alone_failed = spawn_one_by_one(hub, single)
            report("gpulab GpuKubeSpawner spawn alone", alone)
            times, failed, cpu = spawn_burst(hub, "gpulab GpuKubeSpawner", batch, args.profile)
            if failed:
                print(errors(hub), flush=True)

            more = names[args.spawns : args.servers]
            print(f"{len(more)} more servers, {args.users} users: hub API latency", flush=True)
            _, more_failed, _ = spawn_all(hub, more) if more else ([], [], 0)
            running = sorted(set(hub.holders().values()))
            api = api_latency(hub, names, running, args.requests)
            report(f"hub API with {args.users} users, {len(running)} GPU servers", api)
    finally:
        for hub in hubs:
            hub.cleanup()
        responder.terminate()
        responder.wait()

    ours = alone_failed + failed + more_failed
    for failure in (plain_single_failed + plain_failed + homes_failed + ours)[:10]:
        print(f"failed: {failure}")
    p50 = percentile(times, 50) * 1000
    plain_p50 = percentile(plain_times, 50) * 1000
    alone_p50 = percentile(alone, 50) * 1000
    plain_alone_p50 = percentile(plain_single, 50) * 1000
    api_p99 = percentile(api, 99) * 1000
    print(f"spawn_failures: {len(ours)} (goal 0)")
    print(f"k8s_api_p99_ms: {api_p99:.1f} (goal <= 100)")
    print(f"k8s_hub_cpu_per_spawn_ratio_vs_kubespawner: {cpu / plain_cpu:.2f}")
    print(f"k8s_spawn_alone_p50_ms: {alone_p50:.0f}")
    print(f"k8s_spawn_alone_p50_ratio_vs_kubespawner: {alone_p50 / plain_alone_p50:.2f}")
    homes_p50 = percentile(homes_times, 50) * 1000
    print(f"k8s_hub_cpu_per_spawn_ratio_vs_kubespawner_with_home: {cpu / homes_cpu:.2f}")
    print(f"k8s_spawn_p50_ratio_vs_kubespawner_with_home: {p50 / homes_p50:.2f}")
    print(f"k8s_spawn_p50_ratio_vs_kubespawner: {p50 / plain_p50:.2f}")
    print(f"k8s_spawn_overhead_p50_ms: {p50:.0f}")
    return 0 if not (ours or plain_failed or plain_single_failed or homes_failed) else 1


if __name__ == "__main__":
    sys.exit(main())
