"""Spawn latency: gpulab's LocalGpuSpawner vs JupyterHub's plain LocalProcessSpawner.

Runs two hubs side by side on this machine (as root), each with configurable-http-proxy,
and times N spawns each, alternating A/B so drift hits both alike. Both run
jupyterhub-singleuser from the same environment as the same unix account, each as its
hub starts it (gpulab's through its command, ``gpulab-singleuser``, which leaves jsonschema's IRI grammars
uncompiled). Two clocks start at the spawn request:

- "answers": the server process answers HTTP on its port (probed every 20 ms);
- "hub ready": the hub marks the server ready. JupyterHub finds that out by probing
  with exponential back-off (0.2 s doubling to 5 s, jittered), so this clock moves in
  steps of 1-3 s for plain JupyterHub; gpulab's spawner returns only once the server
  accepts connections, so the hub's first look finds it up (``spawn_ready_ratio``).

    .venv/bin/python benchmarks/spawn_local.py [--spawns 10]

Last line: ``spawn_ratio: <gpulab median / plain median>`` of "answers" (goal <= 1.1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.prefix) / "bin"
PREFIX = "glb-"
USER = "bench"
UNIX_USER = PREFIX + USER


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchHub:
    def __init__(
        self, label: str, root: Path, config: Path, env: dict, port: int, token: str, hub_user: str
    ):
        self.label, self.root, self.config, self.port = label, root, config, port
        self.env, self.hub_user = env, hub_user
        self.api = f"http://127.0.0.1:{port}/hub/api"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"
        self.proc = None

    def start(self):
        log = open(self.root / "hub.log", "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "jupyterhub"), "-f", str(self.config)],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.api + "/", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            raise SystemExit(f"{self.label} hub did not start; see {self.root / 'hub.log'}")
        r = self.session.post(f"{self.api}/users/{self.hub_user}", timeout=10)
        if r.status_code not in (201, 409):
            raise SystemExit(f"{self.label}: cannot create user: {r.status_code} {r.text}")

    def spawn_seconds(self, options: dict) -> tuple[float, float]:
        """(seconds until the server answers HTTP, seconds until the hub calls it ready)."""
        t0 = time.perf_counter()
        answered: list[float] = []
        prober = threading.Thread(target=probe_until_answering, args=(t0, answered))
        prober.start()
        r = self.session.post(f"{self.api}/users/{self.hub_user}/server", json=options, timeout=120)
        if r.status_code not in (201, 202):
            raise SystemExit(f"{self.label}: spawn failed: {r.status_code} {r.text}")
        while r.status_code == 202:
            model = self.session.get(f"{self.api}/users/{self.hub_user}", timeout=10).json()
            if model["servers"].get("", {}).get("ready"):
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        prober.join()
        self.stop_server()
        if not answered:
            raise SystemExit(f"{self.label}: never saw the server answer on its port")
        return answered[0], elapsed

    def stop_server(self):
        r = self.session.delete(f"{self.api}/users/{self.hub_user}/server", timeout=60)
        while r.status_code == 202:
            if not self.session.get(f"{self.api}/users/{self.hub_user}", timeout=10).json()[
                "servers"
            ]:
                break
            time.sleep(0.05)

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def listening_port(unix_user: str) -> int | None:
    """The TCP port a process of ``unix_user`` listens on (the single-user server)."""
    pids = {p.pid for p in psutil.process_iter(["username"]) if p.info["username"] == unix_user}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            return conn.laddr.port
    return None


def probe_until_answering(t0: float, answered: list[float], limit: float = 120) -> None:
    while time.perf_counter() - t0 < limit:
        port = listening_port(UNIX_USER)
        if port:
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=2, allow_redirects=False)
                answered.append(time.perf_counter() - t0)
                return
            except requests.ConnectionError:
                pass
        time.sleep(0.02)


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPULAB_", "JUPYTERHUB_"))}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def make_gpulab_hub(root: Path) -> BenchHub:
    port = free_port()
    settings = {
        "data_root": str(root),
        "hub": {
            "ip": "127.0.0.1",
            "port": port,
            "hub_port": free_port(),
            "proxy_api_port": free_port(),
            "admin_password": "bench-admin-pass",
        },
        "gpus": {"ids": ["0", "1"]},
        "servers": {"unix_user_prefix": PREFIX},
    }
    (root / "gpulab.yaml").touch(mode=0o600)  # it holds a password: the hub refuses it readable
    (root / "gpulab.yaml").write_text(yaml.safe_dump(settings))
    env = {**base_env(), "GPULAB_CONFIG": str(root / "gpulab.yaml")}
    token = os.urandom(16).hex()
    (root / "cli-token").write_text(token)  # the hub adopts an existing CLI token file
    (root / "cli-token").chmod(0o600)
    return BenchHub("gpulab", root, REPO / "jupyterhub_config.py", env, port, token, USER)


def make_plain_hub(root: Path) -> BenchHub:
    port, token = free_port(), os.urandom(16).hex()
    config = root / "jupyterhub_config.py"
    config.write_text(f"""
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_port = {free_port()}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.command = {[str(Path(sys.prefix) / "share/chp/node_modules/.bin/configurable-http-proxy")]!r}
c.ConfigurableHTTPProxy.pid_file = "{root}/proxy.pid"
c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/cookie_secret"
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = ["{BIN}/jupyterhub-singleuser"]
c.Spawner.default_url = "/lab"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["bench"]}}]
""")
    return BenchHub("plain", root, config, base_env(), port, token, UNIX_USER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: both spawners run the server as a separate unix account")

    roots = [Path(tempfile.mkdtemp(prefix="gpulab-bench-")) for _ in range(2)]
    hubs: list[BenchHub] = []
    try:
        gpulab = make_gpulab_hub(roots[0])
        gpulab.start()
        hubs.append(gpulab)
        gpulab.spawn_seconds({"profile": "gpu-1"})  # creates the unix account; warms caches
        plain = make_plain_hub(roots[1])
        plain.start()
        hubs.append(plain)
        plain.spawn_seconds({})  # warm-up, same as above

        times: dict[str, list[tuple[float, float]]] = {"gpulab": [], "plain": []}
        for i in range(args.spawns):
            times["gpulab"].append(gpulab.spawn_seconds({"profile": "gpu-1"}))
            times["plain"].append(plain.spawn_seconds({}))
            (ga, gr), (pa, pr) = times["gpulab"][-1], times["plain"][-1]
            print(
                f"spawn {i + 1}/{args.spawns}: answers gpulab {ga:.3f}s plain {pa:.3f}s | "
                f"hub ready gpulab {gr:.3f}s plain {pr:.3f}s",
                flush=True,
            )
        answers = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
        ready = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
        for label, key in (
            ("gpulab LocalGpuSpawner (1 GPU)", "gpulab"),
            ("JupyterHub LocalProcessSpawner", "plain"),
        ):
            print(
                f"{label}: median {answers[key]:.3f}s to answer, "
                f"{ready[key]:.3f}s to hub ready, over {args.spawns}"
            )
        print(f"spawn_ready_ratio: {ready['gpulab'] / ready['plain']:.3f}")
        print(f"spawn_ratio: {answers['gpulab'] / answers['plain']:.3f}")
    finally:
        for hub in hubs:
            hub.stop_server()
            hub.close()
        subprocess.run(["pkill", "-KILL", "-u", UNIX_USER], check=False)
        subprocess.run(["userdel", UNIX_USER], check=False, capture_output=True)
        for root in roots:
            for pidfile in root.glob("*proxy.pid"):
                try:
                    os.kill(int(pidfile.read_text()), signal.SIGTERM)
                except (ValueError, ProcessLookupError):
                    pass
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
