"""The seam between workloads and a backend: what a runner is asked to do.

Jobs (and sweeps, which are jobs) and model servers are written once above it; a
backend supplies a runner that starts a replica's process, waits for it, stops it and
reads and writes files of the user's home for it. The local backend's is
``gpulab.spawner.local_runner.LocalRunner``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Protocol


class WorkloadError(Exception):
    """A request about a workload that cannot be done; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Launch:
    """One process to start for a user."""

    argv: list[str]
    env: dict[str, str]
    workdir: str
    """Relative to the user's home ("" for the home)."""
    log: str
    """The log file, relative to the home; appended to."""
    header: str = ""
    """A line written at the top of this start's output."""


class Started(Protocol):
    pid: int
    pid_started: str | None

    async def wait(self) -> int:
        """The process's return code once it ends (negative: killed by that signal)."""


class Runner(Protocol):
    def base_env(self, user: str) -> dict[str, str]:
        """The environment every process of ``user`` starts from."""

    async def start(self, user: str, launch: Launch) -> Started:
        """Start ``launch`` as ``user``; OSError when it cannot begin."""

    def adopt(self, user: str, log: str, pid: int | None, pid_started: str | None) -> Started:
        """A process an earlier hub started with ``log``, running or ended; ``wait`` gives
        how it ended."""

    async def stop(self, started: Started, grace: float) -> None:
        """Stop the process and everything it started: TERM, then KILL after ``grace``."""

    def write_file(self, user: str, path: str, data: bytes) -> None:
        """Replace a file on the user's home (relative path) with ``data``."""

    def list_dir(self, user: str, path: str) -> list[str]:
        """Names in a folder of the user's home; FileNotFoundError when there is none."""

    def is_file(self, user: str, path: str) -> bool:
        """Whether a regular file is at ``path`` on the user's home."""

    def read_log(self, user: str, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        """Bytes of a log on the user's home from ``offset``; b"" when there is none."""


class PortPool:
    """Loopback ports for replicas: free on this machine when given out, and never
    given to two replicas while one holds it."""

    def __init__(self):
        self._held: set[int] = set()

    def take(self) -> int:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in self._held:
                self._held.add(port)
                return port

    def hold(self, *ports: int) -> None:
        """Ports a replica already has (one an earlier hub process started)."""
        self._held.update(ports)

    def release(self, *ports: int) -> None:
        self._held.difference_update(ports)


def last_line(runner: Runner, user: str, log: str) -> str:
    """The last line a process wrote to its log (not gpulab's own headers), for a
    reason to show."""
    tail = runner.read_log(user, log, 0)[-8192:]
    for line in reversed(tail.decode(errors="replace").splitlines()):
        if line.strip() and not line.startswith("==> gpulab:"):
            return line.strip()[:300]
    return ""
