"""TensorBoards this server runs for the lab: "Open TensorBoard here" on a folder, the
launcher's tile, a job's log folder.

One TensorBoard per folder, as the server's own child process (so as the server's
user), on a free loopback port from 6006 up; the browser reaches it through
jupyter-server-proxy at ``<server prefix>proxy/<port>/``, as the hub lets only the
server's owner (and whom they share it with) through. Asking again for a folder answers
the TensorBoard already running there. They end with the server.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .ports import free_loopback_port

PR_SET_PDEATHSIG = 1


class TensorBoardError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def end_with_parent() -> None:  # pragma: no cover -- runs in the child, before exec
    """In a child before exec: SIGTERM when the process that started it dies, however
    it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def tensorboard_binary() -> Path | None:
    """The ``tensorboard`` of this server's environment, else the one on PATH."""
    own = Path(sys.prefix) / "bin" / "tensorboard"
    if own.exists():
        return own
    found = shutil.which("tensorboard")
    return Path(found) if found else None


@dataclass
class Board:
    logdir: str
    """Relative to the server's root (the home); "" is the root itself."""
    port: int
    process: subprocess.Popen
    log: Path

    def model(self, base_url: str) -> dict:
        model = {
            "logdir": self.logdir,
            "port": self.port,
            "pid": self.process.pid,
            "url": f"{base_url.rstrip('/')}/proxy/{self.port}/",
            "state": "running" if self.running() else "exited",
        }
        if not self.running():
            model["message"] = self.last_line()
        return model

    def last_line(self) -> str:
        """Why it ended: its last line of output, or its exit status."""
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1][-300:] if lines else f"TensorBoard exited with {self.process.returncode}"

    def running(self) -> bool:
        return self.process.poll() is None


class TensorBoards:
    def __init__(self, root: str | Path, base_url: str):
        self.root = Path(root).resolve()
        self.base_url = base_url
        self.boards: dict[str, Board] = {}
        atexit.register(self.stop_all)

    def folder(self, logdir: object) -> tuple[str, Path]:
        """``logdir`` as (normal relative path, absolute folder) inside the root; else
        TensorBoardError 400 (not a string, outside the root) or 404 (no such folder)."""
        if not isinstance(logdir, str) or "\0" in logdir:
            raise TensorBoardError(400, '"logdir" must be a folder of your home, as a string')
        where = (self.root / logdir.lstrip("/")).resolve()
        if where != self.root and self.root not in where.parents:
            raise TensorBoardError(400, f"{logdir} is outside your home")
        if not where.is_dir():
            raise TensorBoardError(404, f"{logdir or 'your home'} is not a folder")
        relative = where.relative_to(self.root).as_posix()
        return ("" if relative == "." else relative), where

    def list(self) -> list[dict]:
        """Every TensorBoard started here; one that has ended says why, until its
        folder's next open."""
        return [b.model(self.base_url) for b in self.boards.values()]

    def open(self, logdir: object) -> tuple[dict, bool]:
        """The TensorBoard of ``logdir``, started now unless it runs: (its model, started)."""
        relative, where = self.folder(logdir)
        board = self.boards.get(relative)
        if board is not None and board.running():
            return board.model(self.base_url), False
        if board is not None:
            self._end(board)
        binary = tensorboard_binary()
        if binary is None:
            raise TensorBoardError(501, "TensorBoard is not installed in this server")
        taken = {b.port for b in self.boards.values() if b.running()}
        port = self._port(taken)
        if port is None:
            raise TensorBoardError(503, "no free port for another TensorBoard (6006-6105)")
        fd, log = tempfile.mkstemp(prefix=f"gpulab-tensorboard-{port}-", suffix=".log")
        with os.fdopen(fd, "wb") as out:
            process = subprocess.Popen(
                [str(binary), "--logdir", str(where), "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=where,
                preexec_fn=end_with_parent,  # noqa: PLW1509 -- prctl only, before exec
            )
        board = Board(relative, port, process, Path(log))
        self.boards[relative] = board
        return board.model(self.base_url), True

    def stop(self, port: int) -> bool:
        for relative, board in list(self.boards.items()):
            if board.port == port:
                self._end(board)
                del self.boards[relative]
                return True
        return False

    def stop_all(self) -> None:
        for board in self.boards.values():
            self._end(board)
        self.boards.clear()

    @staticmethod
    def _port(taken: set[int]) -> int | None:
        first = 6006
        while True:
            port = free_loopback_port(first, 6106 - first)
            if port is None or port not in taken:
                return port
            first = port + 1

    @staticmethod
    def _end(board: Board) -> None:
        if board.running():
            board.process.terminate()
            try:
                board.process.wait(5)
            except subprocess.TimeoutExpired:
                board.process.kill()
                board.process.wait()
        board.log.unlink(missing_ok=True)
