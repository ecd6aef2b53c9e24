"""The server's GPUs and the processes on them, for a switch: ``CUDA_VISIBLE_DEVICES``
(and its kin) that what the server starts gets, the processes NVML sees computing on
the GPUs and whether they are this account's, and waiting until processes have exited,
which is when their GPU memory is free (read from ``/proc``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from .gpuinfo import compute_processes
from .records import SwitchError

GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "GPULAB_GPUS")


def visible_devices() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def set_visible(visible: str) -> None:
    """The GPUs kernels and terminals started from now on get."""
    for name in GPU_VARIABLES:
        os.environ[name] = visible


def gpu_ids(visible: str) -> list[str]:
    """The GPUs a ``CUDA_VISIBLE_DEVICES`` value names."""
    return [i for i in visible.split(",") if i]


def on_gpus(visible: str) -> dict[int, list[str]]:
    """The processes computing on the given GPUs (NVML), each with the GPUs it is on."""
    found: dict[int, list[str]] = {}
    for pid, ident in compute_processes(gpu_ids(visible)):
        found.setdefault(pid, []).append(ident)
    return found


def gpu_processes(on_gpu: dict[int, list[str]], exclude: set[int]) -> list[dict]:
    """This account's processes of ``on_gpu`` (``on_gpus``), except ``exclude``."""
    return [
        {"pid": pid, "gpu": ident, "command": _cmdline(pid)}
        for pid, idents in on_gpu.items()
        if pid not in exclude and _mine(pid)
        for ident in idents
    ]


def gone(pid: int) -> bool:
    """Has the process exited (a zombie has: its GPU memory is released)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def wait_gone(pids: list[int], timeout: float = 20) -> None:
    """Until every process of ``pids`` has exited; a 500 if one is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not all(gone(p) for p in pids):
        if time.monotonic() > deadline:
            left = [p for p in pids if not gone(p)]
            raise SwitchError(500, f"kernel process(es) {left} did not exit")
        await asyncio.sleep(0.01)


def terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _mine(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:200]
