"""The seam between workloads and a backend: what a runner is asked to do.

Jobs (and sweeps, which are jobs) are written once above it; a backend supplies a runner
that starts a replica's process, waits for it, stops it and reads its log back. The local
backend's is ``gpulab.spawner.local_runner.LocalRunner``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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

    def read_log(self, user: str, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        """Bytes of a log on the user's home from ``offset``; b"" when there is none."""
