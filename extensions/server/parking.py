"""Kernels parked with the CUDA driver (``cudackpt.py``): on a return, a kernel on the GPU
can keep its process running with everything in it, its GPU memory moved to host memory,
and Get GPU puts that memory back on a GPU. ``Parking`` parks and brings back kernels and
keeps what it needs to (``Parked``: the process, the GPUs it was on, its namespace
checkpoint for when the driver cannot bring it back); ``to_park`` is which kernels a
return parks (``GPULAB_KERNEL_CHECKPOINT``), ``gpu_pairs`` where their GPUs go.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .checkpoints import Checkpoints
from .cudackpt import run as run_cudackpt
from .gpuinfo import uuids
from .kernelcalls import KernelCalls
from .processes import gone, gpu_ids
from .records import KernelReport, SwitchError

CHECKPOINT_MODES = ("auto", "driver", "namespace")
"""``GPULAB_KERNEL_CHECKPOINT``: how a return keeps a kernel on the GPU (``to_park``)."""
PARK_TIMEOUT_MS = 10_000
"""How long the driver may wait for a kernel's GPU work to end before parking it."""


@dataclass
class Parked:
    """A kernel process whose GPU state the driver holds in host memory."""

    pid: int
    visible: str
    """Its ``CUDA_VISIBLE_DEVICES`` when it was parked."""
    gpus: list[str]
    """The UUIDs of the GPUs it was on."""
    server_gpus: list[str]
    """The UUIDs of the server's GPUs then, in ``visible``'s order."""
    path: str
    saved: list[str]
    """What its namespace checkpoint holds (for a fallback) and what it left out."""
    failed: dict[str, str]
    file: Path | None
    """That checkpoint."""
    since: float = field(default_factory=time.time)


def checkpoint_mode() -> str:
    mode = os.environ.get("GPULAB_KERNEL_CHECKPOINT", "auto")
    return mode if mode in CHECKPOINT_MODES else "auto"


def to_park(mode: str, reports: list[KernelReport], on_gpu: set[str]) -> list[KernelReport]:
    """The kernels a return asks the driver to park, of those using the GPU (``on_gpu``).

    - ``namespace``: none; every kernel restarts on the CPU with its variables;
    - ``auto`` (the default): those whose namespace checkpoint left something out (an
      open file, a generator, a kernel of another language), so that nothing is lost;
      the others restart on the CPU, where their tensors keep working;
    - ``driver``: all of them.
    """
    if mode == "namespace":
        return []
    return [r for r in reports if r.kernel_id in on_gpu and (mode == "driver" or r.failed)]


def gpu_pairs(before: list[str], on: list[str], new: list[str]) -> list[tuple[str, str]]:
    """Where a parked process's GPUs go at Get GPU (UUIDs, as the driver's restore takes
    them: a pair for each GPU it was ``on``). Each goes to the new GPU at its place among
    the server's GPUs ``before``, so a tensor on ``cuda:1`` is on the server's second GPU
    again; with another number of GPUs, in order. Empty when ``new`` has too few."""
    if len(new) < len(on):
        return []
    if len(new) == len(before) and set(on) <= set(before):
        return [(gpu, new[before.index(gpu)]) for gpu in on]
    return list(zip(on, new[: len(on)], strict=True))


class Parking:
    """The server's kernels parked with the driver, reached through ``calls``; a parked
    kernel's namespace checkpoint in ``checkpoints`` goes once it is back on a GPU."""

    def __init__(self, calls: KernelCalls, checkpoints: Checkpoints, log):
        self.calls = calls
        self.checkpoints = checkpoints
        self.log = log
        self._parked: dict[str, Parked] = {}
        self._no_driver = False
        """The driver said it cannot park kernels here (no driver, or an older one)."""
        self._background: set[asyncio.Task] = set()

    def listing(self) -> list[dict]:
        """The kernels the CUDA driver parked that still run (their notebooks, since when)."""
        out = []
        for k, p in list(self._parked.items()):
            if k not in self.calls.km:  # shut down since
                del self._parked[k]
            elif self.still_parked(k):
                out.append(
                    {"path": p.path, "since": datetime.fromtimestamp(p.since, UTC).isoformat()}
                )
        return out

    def still_parked(self, kernel_id: str) -> bool:
        """Is the kernel's process the one the driver parked (not since restarted)?"""
        parked = self._parked.get(kernel_id)
        if parked is not None and (self.calls.pid(kernel_id) != parked.pid or gone(parked.pid)):
            del self._parked[kernel_id]
            return False
        return parked is not None

    def candidates(self, reports, pids, on_gpu) -> list[KernelReport]:
        """The kernels a return parks: of ``reports``, as ``to_park`` chooses."""
        if self._no_driver:
            return []
        kernels = {k for k, pid in pids.items() if pid in on_gpu}
        return to_park(checkpoint_mode(), reports, kernels)

    async def park(self, candidates, pids, on_gpu, before: str) -> list[KernelReport]:
        """Park each candidate kernel with the driver; the reports of those it could not
        park (they restart on the CPU: their namespace checkpoint is taken)."""
        if not candidates:
            return []
        answers = await asyncio.gather(
            *(run_cudackpt("park", str(pids[r.kernel_id]), f"--timeout-ms={PARK_TIMEOUT_MS}")
              for r in candidates)
        )  # fmt: skip
        failed = []
        # the server's GPUs' UUIDs, read once: the GPUs each process is on are among them
        ids = gpu_ids(before)
        found = uuids(ids) if any(answer.get("ok") for answer in answers) else None
        uuid_of = dict(zip(ids, found, strict=True)) if found else {}
        for report, answer in zip(candidates, answers, strict=True):
            pid = pids[report.kernel_id]
            if answer.get("ok"):  # the driver released the GPU memory before it answered
                gpus = [uuid_of[i] for i in on_gpu[pid]] if uuid_of else []
                self._parked[report.kernel_id] = Parked(
                    pid, before, gpus, list(uuid_of.values()), report.path, report.saved,
                    report.failed, report.file,
                )  # fmt: skip
                report.kept_by = "driver"
                report.restored, report.failed = _all_names(report.saved, report.failed), {}
                try:  # what it starts from now on gets no GPU (it is idle: this is at once)
                    if self.calls.is_python(report.kernel_id):
                        await self.calls.run(report.kernel_id, "set_gpus", "", "hiding its GPU", 30)
                except SwitchError as e:
                    self.log.warning("gpulab: %s", e)
                report.note = (
                    f"{report.path or 'a kernel'} kept running with everything in it: its GPU "
                    "memory is parked in host memory, and its next GPU call waits for Get GPU"
                )
                continue
            self._no_driver = self._no_driver or bool(answer.get("unavailable"))
            why = answer.get("error", "")
            report.note = f"{report.path or 'a kernel'} could not be kept running ({why})"
            failed.append(report)
        return failed

    async def unpark(self, kernels: list[str], visible: str, restarts: dict) -> list:
        """Put each parked kernel's GPU state on the GPUs ``visible`` (Get GPU); one the
        driver cannot bring back restarts with its variables from its return's checkpoint
        (``restarts`` gets it). Their reports."""
        if not kernels:
            return []
        reports = []
        new = uuids(gpu_ids(visible)) if visible else None
        for k in kernels:
            parked = self._parked.pop(k)
            report = KernelReport(k, parked.path, kept_by="driver")
            reports.append(report)
            pairs = gpu_pairs(parked.server_gpus, parked.gpus, new or [])
            if pairs:
                # other GPUs than before: the driver wants a pair for each GPU it had
                moved = (
                    [f"--map={o}={n}" for o, n in pairs] if any(o != n for o, n in pairs) else []
                )
                answer = await run_cudackpt("unpark", str(parked.pid), *moved)
                if answer.get("ok"):
                    if parked.file is not None:  # its fallback, no longer needed
                        self.checkpoints.restored(parked.file)  # the process kept it all
                    report.restored = _all_names(parked.saved, parked.failed)
                    if visible != parked.visible and self.calls.is_python(k):  # once it is idle
                        self._later(self.calls.run(k, "set_gpus", visible, "showing its GPU", None))
                    report.note = f"{report.path or 'a kernel'}: its GPU memory is back on the GPU"
                    continue
                why = answer.get("error", "")
            else:
                why = f"it was on {len(parked.gpus)} GPU(s), and {visible or 'no GPU'} is given"
            report.kept_by = "namespace"
            report.saved, report.failed, report.file = parked.saved, parked.failed, parked.file
            report.note = (
                f"{report.path or 'a kernel'}: its GPU state could not be brought back ({why}); "
                "it restarted with its variables as they were at Return GPU, "
                f"{datetime.fromtimestamp(parked.since).strftime('%H:%M:%S')}"
            )
            restarts[k] = self.calls.restart(k)
        return reports

    def _later(self, call) -> None:
        """Run ``call`` in the background; a failure is logged."""

        def done(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None:
                self.log.warning("gpulab: %s", task.exception())

        task = asyncio.ensure_future(call)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(done)


def _all_names(saved: list[str], failed: dict[str, str]) -> list[str]:
    """A parked kernel's variables: all still there, pickled or not ("*": a kernel of
    another language, whose names are not known)."""
    return saved + [name for name in failed if name != "*"]
