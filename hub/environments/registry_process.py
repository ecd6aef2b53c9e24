"""The embedded image registry: Debian's ``docker-registry`` (distribution 2.8) run by
gpulab on loopback, with htpasswd (bcrypt) auth and its data under gpulab's data root.

Everything lives in one root-only folder::

    root/           0700
      config.yml    0600  the registry's configuration (it holds the upload secret)
      htpasswd      0600  the one user, ``gpulab``, its password hashed with bcrypt
      password      0600  that password, made once
      data/               the registry's storage
      registry.log        the registry's output, appended to
      registry.pid        the pid of the running registry

A registry that outlives the process that started it (the hub restarts) is adopted by
the next :meth:`EmbeddedRegistry.start` rather than started twice.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import yaml

from gpulab.hub.procinfo import live_args

from .registry import Registry, RegistryError

COMMAND = "/usr/bin/docker-registry"
LOG_TAIL = 2000
"""How much of the end of the registry's log an error quotes (characters)."""


@dataclass
class EmbeddedRegistry:
    root: Path
    """A folder only root may enter (made 0700 if missing), for all the registry's files."""
    port: int
    """The loopback port the registry listens on."""
    username: str = "gpulab"
    command: str = COMMAND
    """The ``docker-registry`` binary."""
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).absolute()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yml"

    @property
    def pid_path(self) -> Path:
        return self.root / "registry.pid"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    def password(self) -> str:
        """The registry user's password: made once, then read from ``root/password``."""
        self._make_root()
        path = self.root / "password"
        try:
            password = _read_private(path).strip()
        except FileNotFoundError:
            password = ""
        if not password:
            password = secrets.token_urlsafe(32)
            _write_private(path, password + "\n")
        return password

    def write_config(self) -> Path:
        """Write ``config.yml`` and ``htpasswd`` (both 0600); return the config's path."""
        # the registry checks the hash on every request; a random 256-bit password needs
        # no work factor to resist guessing, so the cheapest (~1 ms, not ~250 ms) will do
        hashed = bcrypt.hashpw(self.password().encode(), bcrypt.gensalt(rounds=4)).decode()
        _write_private(self.root / "htpasswd", f"{self.username}:{hashed}\n")
        data = self.root / "data"
        data.mkdir(mode=0o700, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {
                "level": "warn",
                "accesslog": {"disabled": True},  # a line per request, never rotated
            },
            "storage": {
                "filesystem": {"rootdirectory": str(data)},
                "delete": {"enabled": True},
            },
            "http": {
                "addr": f"127.0.0.1:{self.port}",
                "secret": secrets.token_hex(32),  # signs upload state; one registry, so any will do
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            "auth": {"htpasswd": {"realm": "gpulab", "path": str(self.root / "htpasswd")}},
        }
        _write_private(self.config_path, yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    def start(self) -> int:
        """Start the registry, or adopt the one an earlier start left running; its pid."""
        running = self.running_pid()
        if running is not None:
            if self._configured_port() == self.port:
                return running
            self.stop()  # it listens where gpulab no longer looks
        self.write_config()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "ab") as log:
            self._process = subprocess.Popen(
                [self.command, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # outlives the hub; the next start adopts it
            )
        _write_private(self.pid_path, f"{self._process.pid}\n")
        return self._process.pid

    def running_pid(self) -> int | None:
        """The pid of this registry (this config) running now, from the pid file."""
        try:
            pid = int(_read_private(self.pid_path).strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if self._is_registry(pid) else None

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the registry answers the API with gpulab's credentials."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return
            except RegistryError as e:
                if e.status != 503 or "cannot be reached" not in e.message:
                    raise RegistryError(e.status, f"{e.message}\n{self._log_tail()}") from None
                if self._exited():
                    raise RegistryError(
                        503,
                        f"the image registry at {self.url} exited as it started:\n{self._log_tail()}",
                    ) from None
                if time.monotonic() > deadline:
                    raise RegistryError(
                        503,
                        f"the image registry at {self.url} did not answer in {timeout:g} s:\n{self._log_tail()}",
                    ) from None
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """Stop the registry (TERM, then KILL after ``timeout`` seconds)."""
        pid = self._process.pid if self._process is not None else self.running_pid()
        if pid is not None and self._is_registry(pid):
            for sig, patience in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                if self._wait_gone(pid, patience):
                    break
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(0)
            self._process = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def client(self) -> Registry:
        return Registry(self.url, self.username, self.password())

    # -- helpers -----------------------------------------------------------------------

    def _make_root(self) -> None:
        """The root folder, owned by this account and 0700, not a link to elsewhere."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self.root)
        if not os.path.isdir(self.root) or os.path.islink(self.root) or st.st_uid != os.geteuid():
            raise RegistryError(
                503,
                f"{self.root} is not a folder of this account's own: the registry cannot keep its files there",
            )
        os.chmod(self.root, 0o700)

    def _configured_port(self) -> int | None:
        """The port the present ``config.yml`` names."""
        try:
            config = yaml.safe_load(_read_private(self.config_path))
            return int(str(config["http"]["addr"]).rpartition(":")[2])
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
            return None

    def _is_registry(self, pid: int) -> bool:
        """Whether ``pid`` is a live registry serving this config."""
        args = live_args(pid)
        return (
            args is not None
            and len(args) >= 3
            and os.path.basename(args[0]) == os.path.basename(self.command)
            and args[1:3] == ["serve", str(self.config_path)]
        )

    def _exited(self) -> bool:
        if self._process is not None:
            return self._process.poll() is not None
        return self.running_pid() is None

    def _wait_gone(self, pid: int, patience: float) -> bool:
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if self._process is not None and self._process.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(0.05)
                    return True
            elif live_args(pid) is None:
                return True
            else:
                time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, os.fstat(log.fileno()).st_size - LOG_TAIL))
                tail = log.read().decode(errors="replace").strip()
        except OSError:
            return f"(no log at {self.log_path})"
        return f"the end of {self.log_path}:\n{tail}" if tail else f"{self.log_path} is empty"


def _read_private(path: Path) -> str:
    """A file of the registry's own, never through a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as f:
        return f.read()


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` whole (a new file renamed over the old), mode 0600."""
    part = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
        raise
