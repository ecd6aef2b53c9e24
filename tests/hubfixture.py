"""A real gpulab hub (JupyterHub + configurable-http-proxy) on free ports, for tests.

Everything is driven over HTTP as a client would: the hub REST API with tokens,
and each user's Jupyter server API (kernels over websockets) through the proxy.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import requests
import websocket
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.prefix) / "bin"


PORTS_FROM = 20000
"""Test ports come from below the kernel's ephemeral range (32768 up), where users'
servers take their random ports and every connection its local port."""
PORTS_PER_PROCESS = 1000
SLOTS = 12
"""Ranges of ``PORTS_PER_PROCESS`` ports from ``PORTS_FROM``: 20000..31999."""
_ports: range | None = None
_next_port: int | None = None
_slot_lock = None  # held open for the life of the process


def _port_range() -> range:
    """This test process's ports: the first range no other test process on this machine
    holds (a lock file each), from its parallel worker's number on. Two suites, or a
    module run beside the suite, never hand out the same ports."""
    global _slot_lock
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = int(worker) if worker.isdigit() else 0
    for i in range(SLOTS):
        slot = (first + i) % SLOTS
        lock = open(f"/tmp/gpulab-test-ports.{slot}.lock", "w")  # noqa: SIM115 -- kept open
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _slot_lock = lock
        start = PORTS_FROM + slot * PORTS_PER_PROCESS
        return range(start, start + PORTS_PER_PROCESS)
    raise RuntimeError(f"all {SLOTS} ranges of test ports are held by other test processes")


def free_port() -> int:
    """A port free just now, never one handed out before in this run: each test process
    counts up through a range of its own, below the ephemeral ports. (A port from the
    kernel, bound to port 0, could be handed again at once to any process: a hub's two
    ports once collided that way, and a port closed here could become another worker's
    server's before this one bound it.)"""
    global _ports, _next_port
    if _ports is None:
        _ports = _port_range()
        _next_port = _ports.start
    while _next_port < _ports.stop:
        port, _next_port = _next_port, _next_port + 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # something else holds it
        return port
    raise RuntimeError(f"no free port left in {_ports.start}..{_ports.stop - 1}")


def listening(port: int) -> str:
    """Which process listens on ``port`` (for a hub whose port another one answered)."""
    try:
        out = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError as e:  # no iproute2
        out = f"(ss: {e})"
    return f"listening on {port}: {out or 'nothing'}"


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # keep waiting, report the last failure
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


class Hub:
    """One hub process with its own data root, settings file and ports."""

    def __init__(self, settings: dict | None = None, unix_prefix: str | None = None):
        self.data_root = Path(tempfile.mkdtemp(prefix="gpulab-test-"))
        self.port, self.hub_port, self.proxy_api_port = free_port(), free_port(), free_port()
        self.unix_prefix = unix_prefix or f"glt{uuid.uuid4().hex[:4]}-"
        self.admin_password = "admin-" + uuid.uuid4().hex[:12]
        base = {
            "data_root": str(self.data_root),
            "hub": {
                "ip": "127.0.0.1",
                "port": self.port,
                "hub_port": self.hub_port,
                "proxy_api_port": self.proxy_api_port,
                "admin_users": ["admin"],
                "admin_password": self.admin_password,
            },
            "servers": {"unix_user_prefix": self.unix_prefix, "start_timeout": 60},
        }
        for key, value in (settings or {}).items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key].update(value)
            else:
                base[key] = value
        self.settings = base
        self.config_file = self.data_root / "gpulab.yaml"
        self.config_file.touch(mode=0o600)  # it holds the admin's password: root's alone
        self.config_file.write_text(yaml.safe_dump(base))
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_root / "hub.log"

    # -- process -------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GPULAB_", "JUPYTERHUB_"))}
        env["GPULAB_CONFIG"] = str(self.config_file)
        env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def launch(self) -> subprocess.Popen:
        """Start the hub process, its output into ``log_path``, without waiting for it."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                # as ``gpulab up`` starts it
                [str(BIN / "gpulab-hub"), "-f", str(REPO / "jupyterhub_config.py")],
                cwd=self.data_root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.proc

    def start(self) -> Hub:
        self.launch()

        token = self.data_root / "cli-token"

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            if not token.exists():  # written as the hub loads its configuration
                return False
            # this hub, not another process on its port: it knows its own CLI token
            auth = {"Authorization": f"token {token.read_text().strip()}"}
            return requests.get(self.api("/user"), headers=auth, timeout=2).status_code == 200

        try:
            wait_for(up, 60, "the hub to answer", interval=0.05)  # at once: tests race it
        except TimeoutError as e:
            raise RuntimeError(f"{e}\n{listening(self.port)}\n{self.log_tail()}") from None
        return self

    def kill(self) -> None:
        """SIGKILL the hub process only (the proxy and user servers live on)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        """Stop the hub, every server it left running, the proxy, and remove test accounts."""
        try:
            for user in self.admin.get(self.url + "/hub/api/users", timeout=10).json():
                for server in user.get("servers", {}):
                    self.admin.delete(
                        f"{self.url}/hub/api/users/{user['name']}/servers/{server}", timeout=30
                    )
        except Exception:
            pass
        self.stop()
        # the proxy, and the embedded registry of a hub that was killed
        for pidfile in (
            self.data_root / "jupyterhub-proxy.pid",
            self.data_root / "registry" / "registry.pid",
        ):
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text()), signal.SIGTERM)
                except (ValueError, ProcessLookupError):
                    pass
        for entry in pwd.getpwall():
            if entry.pw_name.startswith(self.unix_prefix):
                subprocess.run(["pkill", "-KILL", "-u", entry.pw_name], check=False)
                subprocess.run(["userdel", entry.pw_name], check=False, capture_output=True)
        for mount in mounts_under(self.data_root):  # homes with a quota
            subprocess.run(["umount", "--lazy", mount], check=False, capture_output=True)
        shutil.rmtree(self.data_root, ignore_errors=True)

    def log_tail(self, n: int = 60) -> str:
        return _tail(self.log_path, n)

    def server_log_tails(self, n: int = 60) -> dict[Path, str]:
        """The last lines of each user server's log (root-owned, under the data root)."""
        return {path: _tail(path, n) for path in sorted((self.data_root / "logs").glob("*.log"))}

    # -- clients -------------------------------------------------------------------

    @property
    def admin(self) -> requests.Session:
        """A session with the gpulab CLI service's token (an admin)."""
        s = requests.Session()
        s.headers["Authorization"] = f"token {(self.data_root / 'cli-token').read_text().strip()}"
        return s

    def api(self, path: str) -> str:
        return f"{self.url}/hub/api{path}"

    def create_user(self, name: str, admin: bool = False, groups: tuple[str, ...] = ()) -> User:
        creator = self.admin
        if admin:  # only a user with the admin flag (hub.admin_users) makes admins
            first = self.settings["hub"]["admin_users"][0]
            r = self.admin.post(
                self.api(f"/users/{first}/tokens"), json={"note": "test"}, timeout=10
            )
            creator = requests.Session()
            creator.headers["Authorization"] = f"token {r.json()['token']}"
        r = creator.post(self.api(f"/users/{name}"), json={"admin": admin}, timeout=10)
        assert r.status_code in (201, 409), r.text
        for group in groups:
            self.admin.post(self.api(f"/groups/{group}"), timeout=10)
            r = self.admin.post(
                self.api(f"/groups/{group}/users"), json={"users": [name]}, timeout=10
            )
            assert r.status_code == 200, r.text
        r = self.admin.post(self.api(f"/users/{name}/tokens"), json={"note": "test"}, timeout=10)
        assert r.status_code == 201, r.text
        return User(self, name, r.json()["token"])

    def gpus(self) -> dict:
        r = self.admin.get(self.api("/gpulab/gpus"), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def holders(self) -> dict[str, str]:
        """GPU id -> holding user, as the admin sees the pool."""
        return {g["id"]: g["user"] for g in self.gpus()["gpus"] if g["state"] == "held"}

    def unix_account(self, hub_name: str) -> str | None:
        """The unix account the hub made for ``hub_name`` (its comment names the user)."""
        from gpulab.hub.names import made_for

        found = [
            e.pw_name
            for e in pwd.getpwall()
            if e.pw_name.startswith(self.unix_prefix) and e.pw_gecos == made_for(hub_name)
        ]
        assert len(found) <= 1, f"{hub_name} has {len(found)} unix accounts: {found}"
        return found[0] if found else None

    def unix_pids(self, hub_name: str) -> list[int]:
        account = self.unix_account(hub_name)
        if account is None:
            return []
        out = subprocess.run(["pgrep", "-u", account], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    inside = [p for p in points if p == str(root) or p.startswith(f"{root}/")]
    return sorted(inside, key=len, reverse=True)


class User:
    """A hub user acting with their own API token."""

    def __init__(self, hub: Hub, name: str, token: str):
        self.hub, self.name, self.token = hub, name, token
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"

    def spawn(self, wait: bool = True, **options) -> requests.Response:
        r = self.session.post(self.hub.api(f"/users/{self.name}/server"), json=options, timeout=90)
        if wait and r.status_code in (201, 202):
            self.wait_ready()
        return r

    def stop(self) -> requests.Response:
        r = self.session.delete(self.hub.api(f"/users/{self.name}/server"), timeout=60)
        if r.status_code == 202:
            wait_for(lambda: not self.model()["servers"], 60, f"{self.name}'s server to stop")
        return r

    def model(self) -> dict:
        r = self.session.get(self.hub.api(f"/users/{self.name}"), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_ready(self, timeout: float = 90) -> None:
        def ready():
            server = self.model()["servers"].get("")
            if server is None:
                raise RuntimeError(f"{self.name}'s server is gone:\n{self.hub.log_tail()}")
            return server["ready"]

        wait_for(ready, timeout, f"{self.name}'s server to be ready")

    @property
    def server_url(self) -> str:
        return f"{self.hub.url}/user/{self.name}"

    def server_get(self, path: str) -> requests.Response:
        return self.session.get(self.server_url + path, timeout=30)

    def run(self, code: str, timeout: float = 60) -> str:
        """Run ``code`` in a fresh kernel on the user's server; return its stdout."""
        r = self.session.post(
            self.server_url + "/api/kernels", json={"name": "python3"}, timeout=60
        )
        assert r.status_code == 201, r.text
        kernel_id = r.json()["id"]
        try:
            return run_in_kernel(self.server_url, kernel_id, self.token, code, timeout)
        finally:
            self.session.delete(f"{self.server_url}/api/kernels/{kernel_id}", timeout=30)


def run_job(user, spec: dict, timeout: float = 120) -> tuple[dict, str]:
    """Submit ``spec`` as ``user`` and wait for it to end: (the job, its first replica's log)."""
    r = user.session.post(user.hub.api("/gpulab/jobs"), json=spec, timeout=30)
    assert r.status_code == 201, r.text
    url = user.hub.api(f"/gpulab/jobs/{spec['name']}")
    job = wait_for(
        lambda: (
            (j := user.session.get(url, timeout=30).json())["state"]
            in ("succeeded", "failed", "cancelled")
            and j
        ),
        timeout,
        f"job {spec['name']} to end",
    )
    return job, user.session.get(f"{url}/logs", timeout=30).text


def execute_request(code: str, session: str, store_history: bool = False) -> dict:
    """A kernel protocol execute_request for ``code``, as a notebook sends it over the
    kernel's websocket (its ``msg_id`` in ``["header"]``)."""
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "username": "test",
            "session": session,
            "msg_type": "execute_request",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": store_history,
            "user_expressions": {},
            "allow_stdin": False,
        },
        "channel": "shell",
    }


def kernel_messages(
    server_url: str, kernel_id: str, token: str, code: str, timeout: float
) -> list[dict]:
    """Run ``code`` in a kernel over its websocket, as a notebook does; the iopub
    messages it caused (stream, display_data, execute_result, error), in order."""
    ws_url = server_url.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
    ws = websocket.create_connection(
        ws_url, header=[f"Authorization: token {token}"], timeout=timeout
    )
    try:
        request = execute_request(code, uuid.uuid4().hex)
        msg_id = request["header"]["msg_id"]
        ws.send(json.dumps(request))
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status":
                if msg["content"]["execution_state"] == "idle":
                    return out
            elif msg["channel"] == "iopub":
                out.append(msg)
        raise TimeoutError(f"kernel did not finish within {timeout}s")
    finally:
        ws.close()


def run_in_kernel(server_url: str, kernel_id: str, token: str, code: str, timeout: float) -> str:
    """Run ``code`` in a kernel; its stdout. A kernel error raises RuntimeError."""
    out = []
    for msg in kernel_messages(server_url, kernel_id, token, code, timeout):
        # stderr (library warnings: absl's, once TensorFlow is installed) is not stdout
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise RuntimeError("kernel error: " + "\n".join(msg["content"]["traceback"]))
    return "".join(out)


def open_notebook(user, path: str) -> str:
    """A kernel session for a notebook, as JupyterLab makes one; the kernel id."""
    r = user.session.post(
        user.server_url + "/api/sessions",
        json={"path": path, "type": "notebook", "name": path, "kernel": {"name": "python3"}},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return r.json()["kernel"]["id"]


def run(user, kernel: str, code: str, timeout: float = 60) -> str:
    """Run ``code`` in the user's kernel ``kernel``; its stdout."""
    return run_in_kernel(user.server_url, kernel, user.token, code, timeout)


def tiny_wheel() -> bytes:
    """A real, minimal wheel: package ``gpulabprobe`` with ``VALUE = 42``."""
    return wheel("gpulabprobe", "1.0", {"gpulabprobe/__init__.py": "VALUE = 42\n"})


def wheel(name: str, version: str, files: dict[str, str], requires: tuple[str, ...] = ()) -> bytes:
    """A real wheel (``name-version-py3-none-any.whl``) of ``files``."""
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        **files,
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    records = [f"{path},," for path in files] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = "\n".join(records) + "\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return buf.getvalue()


# -- the gpulab CLI, run as a user runs it -------------------------------------------


def cli_env(hub, token: str) -> dict[str, str]:
    # wide enough that rich never wraps a table cell in the middle of what is asserted
    return {**hub.env, "GPULAB_URL": hub.url, "GPULAB_TOKEN": token, "COLUMNS": "250"}


def gpulab(hub, token: str, *args: str, stdin: str | None = None, cwd=None, timeout=180):
    return subprocess.run(
        [str(BIN / "gpulab"), *args],
        env=cli_env(hub, token),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def lines_with(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


def cells(line: str) -> list[str]:
    """The cells of one row of a rich table."""
    return [c.strip() for c in line.strip().strip("│┃").replace("┃", "│").split("│")]


# -- a small SavedModel ---------------------------------------------------------------

LINE_MODEL = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

class Line(tf.Module):
    def __init__(self, a, b):
        self.a = tf.Variable(a)
        self.b = tf.Variable(b)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        return {"y": self.a * x + self.b}

path, a, b = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
line = Line(a, b)
tf.saved_model.save(line, path, signatures={"serving_default": line.serve})
"""
"""``python -c LINE_MODEL PATH A B``: y = A*x + B saved at PATH, a SavedModel with a
``serving_default`` signature (input ``x``, output ``y``, float32 vectors)."""


def export_line(path, a: float = 0.5, b: float = 2.0, **run) -> None:
    """Export y = a*x + b to ``path`` with TensorFlow, in a process of its own."""
    run.setdefault("env", {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    subprocess.run(
        [sys.executable, "-c", LINE_MODEL, str(path), str(a), str(b)],
        check=True, capture_output=True, timeout=120, **run,
    )  # fmt: skip


def export_to_home(hub, user: str, path: str, a: float = 0.5, b: float = 2.0) -> str:
    """Export y = a*x + b as a SavedModel at ``path`` in the user's home, as the user; the
    folder appears whole (written beside it, then renamed), as a trainer should. Its path."""
    from gpulab.spawner.accounts import ensure_account

    account = ensure_account(hub.unix_prefix, user, hub.data_root)
    target = account.home / path
    staging = target.parent / f".{target.name}.partial"
    as_user = dict(user=account.uid, group=account.gid, cwd=str(account.home))
    home_env = {"PATH": os.environ["PATH"], "HOME": str(account.home)}
    subprocess.run(["mkdir", "-p", str(target.parent)], check=True, env=home_env, **as_user)
    export_line(staging, a, b, env=home_env, **as_user)
    os.rename(staging, target)
    return str(target)


# -- the suite's shared hubs -------------------------------------------------------

SHARED_SETTINGS = {
    "gpus": {"ids": ["0", "1", "2"], "per_user": 2, "users": {"lab": 4}, "groups": {"team": 1}},
}


def clean_hub(hub: Hub) -> None:
    """Stop every server so the next test starts from a free pool."""
    for user in hub.admin.get(hub.api("/users"), timeout=10).json():
        for server in user.get("servers", {}):
            hub.admin.delete(hub.api(f"/users/{user['name']}/servers/{server}"), timeout=60)
    wait_for(lambda: hub.gpus()["free"] == hub.gpus()["total"], 60, "every GPU to be free")
    wait_for(
        lambda: not any(u["servers"] for u in hub.admin.get(hub.api("/users"), timeout=10).json()),
        60,
        "every server to be stopped",
    )


def end_sharing(hub: Hub) -> None:
    """Revoke every share and share link on the hub, so users named alike in later tests
    start with servers nobody else may reach."""
    for user in hub.admin.get(hub.api("/users"), timeout=10).json():
        for server in user.get("servers", {}) or [""]:
            for kind in ("shares", "share-codes"):
                hub.admin.delete(hub.api(f"/{kind}/{user['name']}/{server}"), timeout=30)


def guest_session(hub, guest, owner: str) -> requests.Session:
    """A session of ``guest`` with a token for ``owner``'s default server alone."""
    access = f"access:servers!server={owner}/"
    r = guest.session.post(
        hub.api(f"/users/{guest.name}/tokens"), json={"scopes": [access]}, timeout=10
    )
    assert r.status_code == 201, r.text
    s = requests.Session()
    s.headers["Authorization"] = f"token {r.json()['token']}"
    return s


def predict_together(hub, user, model: str, count: int = 4) -> dict[int, object]:
    """``count`` predictions of ``model`` through the hub, sent at once from threads of
    their own: call ``i`` sends x = i; each call's answer (its JSON, or the error text)."""
    import threading

    start = threading.Barrier(count)
    answers: dict[int, object] = {}

    def call(i: int) -> None:
        session = requests.Session()
        session.headers.update(user.session.headers)
        start.wait()
        r = session.post(hub.api(f"/gpulab/models/{model}:predict"), json={"instances": [float(i)]})
        answers[i] = r.json() if r.status_code == 200 else r.text

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return answers
