"""The seam between workloads and a backend: what a runner is asked to do.

Jobs (and sweeps, which are jobs) and model servers are written once above it; a
backend supplies a runner that starts a replica's process, waits for it, stops it and
reads its logs. The local backend's is ``gpulab.spawner.local_runner.LocalRunner``
(processes on loopback, which also reads and writes files of the user's home for local
model servers); the kubernetes backend's is ``gpulab.spawner.kube_runner.KubeRunner``
(each process a pod, each group a headless Service).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class WorkloadError(Exception):
    """A request about a workload that cannot be done; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class JobError(WorkloadError):
    """A job or sweep request that cannot be done; ``status`` is the HTTP status to answer."""


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
    name: str = ""
    """Which process of its group this is (``worker-0``, ``install``): a DNS label (a
    pod's hostname on Kubernetes)."""
    group: str = ""
    """The workload it belongs to (``job-5``), opened with ``Runner.open_group``."""
    gpus: tuple[str, ...] = ()
    """The ledger's GPU ids it was granted (``env`` already names them for a local
    process; a pod asks for as many)."""
    node: str = ""
    """The node those GPUs are on."""
    ports: tuple[int, ...] = ()
    """Ports it listens on (declared on a pod)."""
    image: str = ""
    """Its container image on Kubernetes; empty: the notebook image."""
    outputs: tuple[str, ...] = ()
    """Files it writes (relative to the home) that the hub reads back with ``read_log``
    once it ended (a job's metrics file)."""


class Started(Protocol):
    pid: int
    pid_started: str | None
    """With ``pid``, what identifies the process to ``Runner.adopt`` after a hub restart
    (a local process: its start time; a pod: pid 0 and the pod's name)."""

    async def wait(self) -> int:
        """The process's return code once it ends (negative: killed by that signal)."""


class Runner(Protocol):
    def base_env(self, user: str, layers=None) -> dict[str, str]:
        """The environment every process of ``user`` starts from; with ``layers`` (an
        environment snapshot prepared for it), that snapshot's packages under theirs."""

    def host(self, group: str, name: str) -> str:
        """The host name the other processes of ``group`` reach process ``name`` at."""

    async def open_group(self, user: str, group: str, env: dict[str, str]) -> None:
        """Before a group's processes start (again, after a hub restart): what they
        share; ``env``: the environment common to them."""

    async def close_group(self, user: str, group: str) -> None:
        """After the group's last process stopped: remove what ``open_group`` made."""

    async def start(self, user: str, launch: Launch) -> Started:
        """Start ``launch`` as ``user``; OSError when it cannot begin."""

    def adopt(self, user: str, log: str, pid: int | None, pid_started: str | None) -> Started:
        """A process an earlier hub started with ``log``, running or ended; ``wait`` gives
        how it ended."""

    async def stop(self, started: Started, grace: float) -> None:
        """Stop the process and everything it started: TERM, then KILL after ``grace``."""

    def read_log(self, user: str, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        """Bytes of a log on the user's home from ``offset``; b"" when there is none."""


class HomeRunner(Runner, Protocol):
    """A runner that also reads and writes the user's home from the hub (local model
    servers' configs)."""

    def write_file(self, user: str, path: str, data: bytes) -> None:
        """Replace a file on the user's home (relative path) with ``data``."""

    def list_dir(self, user: str, path: str) -> list[str]:
        """Names in a folder of the user's home; FileNotFoundError when there is none."""

    def is_file(self, user: str, path: str) -> bool:
        """Whether a regular file is at ``path`` on the user's home."""

    def listen_dir(self, user: str) -> tuple[Path, int]:
        """(a folder only the user's account can enter, for their servers' unix sockets,
        the uid that must listen there)."""


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
