"""Environment snapshots against rebuilding: save a user's ~500 MB of packages, start from it.

Runs as root on the local backend, in one run:

- the wheels: ``pip download`` of the packages (none of them in the base, the user
  environment's ``requirements/user-env.txt``) with the user environment's Python, into a
  cache kept between runs;
- rebuilding, timed (``rebuild_s``): ``pip install --no-index --find-links WHEELS --prefix``
  an empty folder, what making that environment again costs;
- a gpulab hub of its own (temporary data root, its own ports): a hub user whose unix
  account installs the same packages with ``pip install --user`` (not timed), then saves
  their environment as a snapshot, timed from the request until it is ready
  (``snapshot_s``);
- spawns, timed until the hub says the server is ready: from the base, from the snapshot
  the first time (the hub pulls and unpacks its layer: "cold"; the unpacked layer is
  removed before each cold run) and again (unpacked already: "warm"); medians over
  ``--runs``. A job started from the snapshot imports the first package, from the
  snapshot's layer.

    .venv/bin/python benchmarks/env_snapshot.py [--wheels DIR] [--packages P ...] [--small]

Then ``spawn_overhead_s`` (warm - base; goal <= 3 s), ``spawn_overhead_cold_s`` (cold -
base), and last ``snapshot_speedup: <rebuild_s / snapshot_s>`` (goal >= 10).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests
import yaml

from gpulab.hub.environments.registry_process import EmbeddedRegistry
from gpulab.spawner.userenv import default_root

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.prefix) / "bin"
PYTHON = default_root() / "python" / "bin" / "python"
PREFIX = "gle-"
USER = "envbench"
UNIX_USER = PREFIX + USER
SNAPSHOT = "bench"
PROFILE = {"profile": "cpu"}
WHEELS = Path("/var/tmp/gpulab-bench-wheels")
# 560 MB installed over the base (Python 3.11): big shared libraries (pyarrow, polars)
# and many small files (scipy, scikit-learn and their compiled modules)
PACKAGES = ["scipy", "scikit-learn", "pyarrow", "polars"]
SMALL = ["tabulate", "toolz"]
# run by a job started from the snapshot: imports the first package, says from where
IMPORT_CHECK = """
import importlib, importlib.metadata as md, sys
dist = md.distribution(sys.argv[1])
tops = sorted(t for t, d in md.packages_distributions().items() if dist.metadata["Name"] in d)
module = importlib.import_module(next(t for t in tops if not t.startswith("_")))
print("imported", module.__name__, dist.version, "from", module.__file__)
"""
WAIT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def tree_size(path: Path) -> int:
    """Bytes in the regular files under ``path`` (links not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


# -- wheels and rebuilding -------------------------------------------------------------


def pip(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The user environment's pip; a failure ends the benchmark with pip's own words."""
    result = subprocess.run(
        [str(PYTHON), "-m", "pip", *args],
        env=env,
        capture_output=True,
        text=True,
        **kwargs,
    )
    if result.returncode != 0:
        raise SystemExit(f"pip {args[0]} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return result


def install_args(wheels: Path, packages: list[str]) -> list[str]:
    """One pip install for the rebuild and the user alike: from the wheels (and what the
    machine's pip configuration adds), pip's environment variables and per-user
    configuration left out."""
    return [
        "install", "--isolated", "--no-index", "--find-links", str(wheels), "--no-cache-dir",
        "--disable-pip-version-check", "--quiet", *packages,
    ]  # fmt: skip


def download(wheels: Path, packages: list[str]) -> None:
    """The packages' wheels (and their dependencies') in ``wheels``, readable by the
    bench account."""
    wheels.mkdir(mode=0o755, parents=True, exist_ok=True)
    pip("download", "--only-binary=:all:", "--quiet", "-d", str(wheels), *packages)
    wheels.chmod(wheels.stat().st_mode | 0o555)
    for wheel in wheels.iterdir():
        wheel.chmod(wheel.stat().st_mode | 0o444)
    for folder in [wheels, *wheels.parents]:
        if not folder.stat().st_mode & 0o001:
            raise SystemExit(
                f"{folder} is not searchable by other accounts: the bench account cannot "
                f"read the wheels; pick a --wheels folder such as {WHEELS}"
            )


def rebuild(wheels: Path, packages: list[str], prefix: Path) -> float:
    """Seconds pip takes to install ``packages`` from the wheels into the empty ``prefix``."""
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}  # root's own ~/.local counts for nothing
    t0 = time.perf_counter()
    pip(*install_args(wheels, packages), "--prefix", str(prefix), env=env, cwd=prefix)
    return time.perf_counter() - t0


def install_as_user(account: pwd.struct_passwd, wheels: Path, packages: list[str]) -> None:
    """``pip install --user`` run by the bench account, into its ``~/.local``."""
    home = account.pw_dir
    env = {
        "HOME": home,
        "USER": account.pw_name,
        "PYTHONUSERBASE": os.path.join(home, ".local"),
        "PATH": "/usr/bin:/bin",
    }
    as_user = [
        "setpriv",
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--clear-groups",
    ]
    result = subprocess.run(
        [*as_user, str(PYTHON), "-m", "pip", *install_args(wheels, packages), "--user"],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(
            f"pip install --user as {account.pw_name} failed:\n{result.stderr[-3000:]}"
        )


# -- the hub ---------------------------------------------------------------------------


class BenchHub:
    """A gpulab hub of the benchmark's own, as spawn_local.py starts it, and its API."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        settings = {
            "data_root": str(root),
            "hub": {
                "ip": "127.0.0.1",
                "port": self.port,
                "hub_port": free_port(),
                "proxy_api_port": free_port(),
                "admin_password": "bench-admin-pass",
            },
            "gpus": {"ids": ["0", "1"]},
            "servers": {"unix_user_prefix": PREFIX},
        }
        config = root / "gpulab.yaml"
        config.touch(mode=0o600)  # it holds a password: the hub refuses it readable
        config.write_text(yaml.safe_dump(settings))
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("GPULAB_", "JUPYTERHUB_"))
        }
        self.env["PATH"] = f"{BIN}:{self.env.get('PATH', '/usr/bin:/bin')}"
        self.env["GPULAB_CONFIG"] = str(config)
        token = os.urandom(16).hex()
        (root / "cli-token").write_text(token)  # the hub adopts an existing CLI token file
        (root / "cli-token").chmod(0o600)
        self.api = f"http://127.0.0.1:{self.port}/hub/api"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / "hub.log", "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "jupyterhub"), "-f", str(REPO / "jupyterhub_config.py")],
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
            self.fail("the hub did not start")
        r = self.session.post(f"{self.api}/users/{USER}", timeout=10)
        if r.status_code not in (201, 409):
            self.fail(f"cannot create user {USER}: {r.status_code} {r.text}")

    def fail(self, what: str):
        raise SystemExit(f"{what}; see {self.root / 'hub.log'}")

    def gpulab(self, method: str, path: str, **kwargs) -> requests.Response:
        """A gpulab API call for the bench user (the CLI token is an admin's)."""
        return self.session.request(
            method, f"{self.api}/gpulab{path}", params={"user": USER}, timeout=60, **kwargs
        )

    def server(self) -> dict | None:
        r = self.session.get(f"{self.api}/users/{USER}", timeout=10)
        return r.json()["servers"].get("")

    def spawn_seconds(self, options: dict) -> float:
        """Seconds from the spawn request until the hub says the server is ready."""
        t0 = time.perf_counter()
        r = self.session.post(f"{self.api}/users/{USER}/server", json=options, timeout=WAIT)
        if r.status_code not in (201, 202):
            self.fail(f"spawn {options} failed: {r.status_code} {r.text}")
        while r.status_code == 202:
            server = self.server()
            if server is None:
                self.fail(f"the spawn {options} failed")
            if server["ready"]:
                break
            if time.perf_counter() - t0 > WAIT:
                self.fail(f"the spawn {options} was not ready in {WAIT} s")
            time.sleep(0.02)
        return time.perf_counter() - t0

    def stop_server(self) -> None:
        r = self.session.delete(f"{self.api}/users/{USER}/server", timeout=60)
        deadline = time.monotonic() + 120
        while r.status_code == 202 and self.server() is not None:
            if time.monotonic() > deadline:
                self.fail("the server did not stop")
            time.sleep(0.05)

    def save(self, name: str) -> tuple[float, dict]:
        """Seconds from the save request until the snapshot is ready, and the snapshot."""
        t0 = time.perf_counter()
        r = self.gpulab("POST", "/environments", json={"name": name})
        if r.status_code != 202:
            self.fail(f"saving {name} was refused: {r.status_code} {r.text}")
        while True:
            env = self.gpulab("GET", f"/environments/{name}").json()
            if env.get("state") != "saving":
                break
            if time.perf_counter() - t0 > WAIT:
                self.fail(f"saving {name} took over {WAIT} s")
            time.sleep(0.1)
        elapsed = time.perf_counter() - t0
        if env.get("state") != "ready":
            self.fail(f"saving {name} failed: {env}")
        return elapsed, env

    def delete(self, name: str) -> None:
        r = self.gpulab("DELETE", f"/environments/{name}")
        if r.status_code != 204:
            self.fail(f"deleting {name} failed: {r.status_code} {r.text}")

    def job_output(self, name: str, spec: dict) -> tuple[str, str]:
        """The state a job ends in, and its log."""
        r = self.gpulab("POST", "/jobs", json={"name": name, **spec})
        if r.status_code != 201:
            self.fail(f"job {name} was refused: {r.status_code} {r.text}")
        deadline = time.monotonic() + WAIT
        while (state := self.gpulab("GET", f"/jobs/{name}").json()["state"]) not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            if time.monotonic() > deadline:
                self.fail(f"job {name} did not end in {WAIT} s")
            time.sleep(0.2)
        return state, self.gpulab("GET", f"/jobs/{name}/logs").text

    def forget_unpacked(self) -> None:
        """Remove the layers the hub unpacked, so that the next spawn pulls them again."""
        for layer in (self.root / "environments" / "layers").glob("*"):
            shutil.rmtree(layer)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        registry = self.root / "registry"
        if (registry / "registry.pid").exists():  # the hub stops it as it ends; if not
            try:
                EmbeddedRegistry(registry, int((registry / "port").read_text())).stop()
            except (OSError, ValueError):
                pass
        pidfile = self.root / "jupyterhub-proxy.pid"
        try:
            proxy = psutil.Process(int(pidfile.read_text()))
            if "configurable-http-proxy" in " ".join(proxy.cmdline()):
                proxy.terminate()
        except (OSError, ValueError, psutil.Error):
            pass


def end_account() -> None:
    """Kill what the bench account still runs, then remove it."""
    try:
        uid = pwd.getpwnam(UNIX_USER).pw_uid
    except KeyError:
        return
    for proc in psutil.process_iter(["uids"]):
        if proc.info["uids"] and proc.info["uids"].real == uid:
            try:
                proc.kill()
            except psutil.Error:
                pass
    subprocess.run(["userdel", UNIX_USER], check=False, capture_output=True)


# -- the run ---------------------------------------------------------------------------


def spawn_medians(hub: BenchHub, runs: int) -> dict[str, float]:
    """Median spawn seconds from the base, from the snapshot with its layer still to
    unpack ("cold": the unpacked layer is removed first) and unpacked ("warm"), in rounds
    of one each, so that drift on the machine hits all three alike."""
    snapshot = {**PROFILE, "environment": SNAPSHOT}
    kinds = {"base": PROFILE, "cold": snapshot, "warm": snapshot}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for i in range(runs):
        for kind, options in kinds.items():
            if kind == "cold":
                hub.forget_unpacked()
            times[kind].append(hub.spawn_seconds(options))
            hub.stop_server()
        print(
            f"spawns {i + 1}/{runs}: "
            + ", ".join(f"{kind} {t[-1]:.3f} s" for kind, t in times.items()),
            flush=True,
        )
    return {kind: statistics.median(t) for kind, t in times.items()}


def check_import(hub: BenchHub, package: str) -> None:
    command = ["python", "-c", IMPORT_CHECK, package]
    state, log = hub.job_output("import-check", {"environment": SNAPSHOT, "command": command})
    line = next((x for x in log.splitlines() if x.startswith("imported ")), "")
    layers = str(hub.root / "environments" / "layers")
    if state != "succeeded" or layers not in line:
        hub.fail(f"the job from the snapshot did not import {package} from it ({state}):\n{log}")
    print(f"job from snapshot {SNAPSHOT}: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=WHEELS, help=f"wheel cache ({WHEELS})")
    parser.add_argument("--packages", nargs="+", help=f"default: {' '.join(PACKAGES)}")
    parser.add_argument("--small", action="store_true", help=f"{' '.join(SMALL)}: a quick check")
    parser.add_argument("--runs", type=int, default=2, help="spawns of each kind (2)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the hub runs the user's server as a unix account of its own")
    if not PYTHON.is_file():
        raise SystemExit(f"no user environment at {default_root()}: make it with scripts/install")
    if args.runs < 1:
        raise SystemExit("--runs must be 1 or more")
    packages = args.packages or (SMALL if args.small else PACKAGES)
    wheels = args.wheels.resolve()

    download(wheels, packages)
    print(f"packages: {' '.join(packages)} (wheels in {wheels})", flush=True)
    fresh = Path(tempfile.mkdtemp(prefix="gpulab-bench-rebuild-"))
    root = Path(tempfile.mkdtemp(prefix="gpulab-bench-"))
    hub = BenchHub(root)
    end_account()  # one a killed run left: its home was in that run's data root
    try:
        rebuild_s = rebuild(wheels, packages, fresh)
        print(f"rebuild_s: {rebuild_s:.3f} (pip install --prefix, {megabytes(tree_size(fresh))})")

        hub.start()
        first = hub.spawn_seconds(PROFILE)  # makes the unix account and its home
        hub.stop_server()
        warmup, _ = hub.save("warm-up")  # starts the hub's registry, before any timing
        hub.delete("warm-up")
        print(f"first spawn {first:.3f} s, first (empty) save {warmup:.3f} s: not counted")
        account = pwd.getpwnam(UNIX_USER)
        install_as_user(account, wheels, packages)
        user_layer = tree_size(Path(account.pw_dir) / ".local")
        print(f"installed size: {megabytes(user_layer)} in ~/.local of {UNIX_USER}", flush=True)

        snapshot_s, env = hub.save(SNAPSHOT)
        print(f"snapshot_s: {snapshot_s:.3f}")
        print(f"snapshot compressed size: {megabytes(env['size'])} ({env['message']})", flush=True)

        medians = spawn_medians(hub, args.runs)
        base_s, cold_s, warm_s = medians["base"], medians["cold"], medians["warm"]
        check_import(hub, packages[0])

        print(f"rebuild_s: {rebuild_s:.3f}")
        print(f"snapshot_s: {snapshot_s:.3f}")
        print(f"installed_size_mb: {user_layer / 1e6:.1f}")
        print(f"snapshot_size_mb: {env['size'] / 1e6:.1f}")
        print(f"spawn_base_s: {base_s:.3f} (median of {args.runs})")
        print(f"spawn_snapshot_cold_s: {cold_s:.3f} (median of {args.runs})")
        print(f"spawn_snapshot_warm_s: {warm_s:.3f} (median of {args.runs})")
        print(f"spawn_overhead_s: {warm_s - base_s:.3f}")
        print(f"spawn_overhead_cold_s: {cold_s - base_s:.3f}")
        print(f"snapshot_speedup: {rebuild_s / snapshot_s:.2f}")
    finally:
        if hub.proc is not None:
            try:
                hub.stop_server()
            except (requests.RequestException, SystemExit):
                pass
        hub.close()
        end_account()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(fresh, ignore_errors=True)


if __name__ == "__main__":
    main()
