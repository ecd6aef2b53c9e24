"""Move a server's kernels between GPU sets without losing their variables.

``KernelSwitch.switch(visible)`` is what "Return GPU" (``visible=""``) and "Get GPU"
(``visible="1"``) do inside a user's server:

1. refuse if a kernel is busy (unless asked to interrupt it), or if a process outside
   the notebooks still computes on the GPU (seen through NVML, when there is one);
2. checkpoint every Python kernel's variables to ``~/.gpulab/checkpoints/<kernel>.pkl``
   (``namespace.py`` runs inside the kernel); a kernel that cannot be checkpointed
   stops the switch, so nothing is lost;
3. set ``CUDA_VISIBLE_DEVICES`` for new kernels and terminals, restart every kernel with
   it (same kernel ids: open notebooks stay connected) and wait until the old kernel
   processes are gone, which is when their GPU memory is free;
4. restore each kernel's variables into its new process, in the background when the
   caller only waits for the GPU to be free.

On a return, a kernel on the GPU can instead be *parked* with the CUDA driver's process
checkpoint API (``cudackpt.py``): its process keeps running with everything in it, its
GPU memory moved to host memory, and Get GPU puts that memory back on a GPU. Which
kernels are parked is ``GPULAB_KERNEL_CHECKPOINT``'s choice (see ``to_park``); the
namespace checkpoint of step 2 is taken for them too, and used when the driver cannot
park or bring back a kernel.

Where the hub moves the whole server instead (the kubernetes backend replaces its pod),
``checkpoint_for_move`` does steps 1 and 2, writes what a new server needs to carry on
(``~/.gpulab/checkpoints/resume.json``: each notebook's path, kernel and checkpoint) and
shuts the kernels down; ``start_resume`` (run by the next server of the same name as it
starts, or by this one if the move is called off) starts a kernel for each notebook again
and restores its variables.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty

from . import cudackpt, gpuinfo
from .checkpoints import CheckpointNotFound, Checkpoints, keep_from_environment
from .checkpoints import remove as remove_checkpoint
from .gate import INTERNAL, KernelGate

SOURCE = (Path(__file__).with_name("namespace.py")).read_text()
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "GPULAB_GPUS")
RESUME = "resume.json"
"""The notebooks a moved server's successor starts again (in the checkpoint folder)."""
CHECKPOINT_MODES = ("auto", "driver", "namespace")
"""``GPULAB_KERNEL_CHECKPOINT``: how a return keeps a kernel on the GPU (``to_park``)."""
PARK_TIMEOUT_MS = 10_000
"""How long the driver may wait for a kernel's GPU work to end before parking it."""
BUSY_GRACE = 2.0
"""Seconds a switch waits for a notebook that is running code to finish (no new cell
reaches it meanwhile) before it refuses, or interrupts it."""
MOVING = (
    "your server is moving to a new pod with its variables; run it again once this page "
    "has reloaded"
)
"""Why a cell sent while the server's kernels were checkpointed for a move was not run."""


class SwitchError(Exception):
    """A switch that cannot be done now; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, **detail):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


class KernelDied(SwitchError):
    """The kernel's process exited while the server waited for its answer; ``reason``
    says how it ended."""

    def __init__(self, message: str, reason: str):
        super().__init__(500, message)
        self.reason = reason


@dataclass
class KernelReport:
    kernel_id: str
    path: str
    saved: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    restored: list[str] = field(default_factory=list)
    note: str = ""
    lost: str = ""
    """Why the kernel restarts without its variables ("": it keeps them)."""
    kept_by: str = "namespace"
    """``namespace``: its variables went through a checkpoint file and a new process;
    ``driver``: its process kept running, parked by the CUDA driver."""
    file: Path | None = None
    """Its checkpoint, if one holds its variables."""

    def as_json(self) -> dict:
        return {
            "kernel": self.kernel_id,
            "path": self.path,
            "kept_by": self.kept_by,
            "saved": self.saved,
            "restored": self.restored,
            "failed": self.failed,
            "note": self.note,
        }


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


def visible_devices() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def _gone(pid: int) -> bool:
    """Has the process exited (a zombie has: its GPU memory is released)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def on_gpus(visible: str) -> dict[int, list[str]]:
    """The processes computing on the given GPUs (NVML), each with the GPUs it is on."""
    found: dict[int, list[str]] = {}
    for pid, ident in gpuinfo.compute_processes(_ids(visible)):
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


def _ids(visible: str) -> list[str]:
    return [i for i in visible.split(",") if i]


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


class KernelSwitch:
    """Checkpoint, re-target and restore the kernels of one Jupyter server."""

    def __init__(self, serverapp, checkpoint_dir: Path | None = None):
        self.app = serverapp
        self.log = serverapp.log
        self.dir = checkpoint_dir or Path.home() / ".gpulab" / "checkpoints"
        self.checkpoints = Checkpoints(self.dir, keep_from_environment())
        self.restore: dict = {"state": "idle", "message": "", "kernels": []}
        self.gate = KernelGate(self.log)
        """Holds what users send the kernels while a switch or a resume runs."""
        self._lock = asyncio.Lock()
        self._restoring: asyncio.Task | None = None
        self._parked: dict[str, Parked] = {}
        self._sigterm = None
        """The server's own SIGTERM handler while ours ends it at once (after a move)."""
        self._background: set[asyncio.Task] = set()
        self._no_driver = False
        """The driver said it cannot park kernels here (no driver, or an older one)."""
        self._saving: dict[str, Path] = {}
        """The checkpoints being written now, by kernel."""
        self.started = time.time()

    @property
    def km(self):
        return self.app.kernel_manager

    # -- what the hub asks -------------------------------------------------------------

    @property
    def switching(self) -> bool:
        """A switch or its restore is under way."""
        return self._lock.locked() or self._restoring is not None

    def saved_bytes(self) -> int | None:
        """How much of the kernels' checkpoints is written so far, while they are being
        written (the pickles and the data files of their big tensors); else None."""
        if not self._saving:
            return None
        total = 0
        for pickle in list(self._saving.values()):
            files = [
                pickle.with_name(pickle.name + ".tmp"),
                pickle,  # once written
                *pickle.parent.glob(pickle.name + ".*.data"),
            ]
            for file in files:
                try:
                    total += file.stat().st_size
                except OSError:  # not there (yet, or any more)
                    continue
        return total

    def parked(self) -> list[dict]:
        """The kernels the CUDA driver parked that still run (their notebooks, since when)."""
        out = []
        for k, p in list(self._parked.items()):
            if k not in self.km:  # shut down since
                del self._parked[k]
            elif self._still_parked(k):
                out.append(
                    {"path": p.path, "since": datetime.fromtimestamp(p.since, UTC).isoformat()}
                )
        return out

    def kernels_busy(self) -> list[str]:
        return [k for k in self.km.list_kernel_ids() if self._state(k) == "busy"]

    def last_activity(self) -> float | None:
        """Seconds since the epoch of the newest kernel message (None: no kernels)."""
        times = [
            getattr(self.km.get_kernel(k), "last_activity", None) for k in self.km.list_kernel_ids()
        ]
        times = [t.timestamp() for t in times if t is not None]
        return max(times) if times else None

    async def switch(
        self, visible: str, interrupt: bool = False, force: bool = False, wait_restore: bool = True
    ) -> dict:
        """Move the kernels onto ``visible``. What users send the kernels from now on waits
        at the gate until their variables are back (the restore holds it closed too)."""
        with self.gate.holding(self.km):
            return await self._switch(visible, interrupt, force, wait_restore)

    async def _switch(self, visible: str, interrupt: bool, force: bool, wait_restore: bool) -> dict:
        async with self._lock:
            if self._restoring is not None:
                await self._restoring  # never checkpoint a half-restored kernel
            before = visible_devices()
            if visible == before:
                return {"changed": False, "visible": visible, "kernels": []}
            t0 = time.monotonic()
            ids = list(self.km.list_kernel_ids())
            parked = [k for k in ids if self._still_parked(k)]
            kernels = [k for k in ids if k not in parked]
            paths = {k: s["path"] for k, s in (await self._sessions()).items()}
            pids, others, reports, on_gpu = await self._checkpoint(kernels, paths, interrupt, force)
            checkpointed = time.monotonic()
            self._set_visible(visible)
            for k in ids:  # what a kernel (re)started from now on gets
                self.km.update_env(kernel_id=k, env={v: visible for v in GPU_VARIABLES})
            candidates = [] if visible else self._candidates(reports, pids, on_gpu)
            chosen = {r.kernel_id for r in candidates}
            restarts = {
                r.kernel_id: self._restart(r.kernel_id)
                for r in reports
                if r.kernel_id not in chosen
            }
            for p in others:
                _terminate(p["pid"])
            for r in await self._park(candidates, pids, on_gpu, before):  # those not parked
                restarts[r.kernel_id] = self._restart(r.kernel_id)
            back = await self._unpark(parked, visible, restarts)
            reports += back
            for r in reports:  # the cells sent them meanwhile would run without the variables
                if r.lost and r.kernel_id in restarts:
                    self.gate.refuse(r.kernel_id, f"{r.path or 'this kernel'}: {r.lost}")
            self.restore = {"state": "restoring", "message": "Restoring variables…", "kernels": []}
            starts = [restarts.get(r.kernel_id) or _done() for r in reports]
            files = [r.file if r.kernel_id in restarts else None for r in reports]
            try:
                await self._wait_gone(
                    [pids[k] for k in restarts if pids.get(k)] + [p["pid"] for p in others]
                )
            finally:  # the kernels restarted: their variables come back, whatever else failed
                for k in restarts:
                    self.gate.restarted(k)
                self._restoring = self._restore_then_open(reports, starts, files)
            released = time.monotonic()
            if wait_restore:
                await self._restoring
            ways = {r.kept_by for r in reports}
            return {
                "changed": True,
                "visible": visible,
                "previous": before,
                "path": ways.pop() if len(ways) == 1 else "mixed" if ways else "namespace",
                "kernels": [r.as_json() for r in reports],
                "checkpoint_seconds": round(checkpointed - t0, 3),
                "release_seconds": round(released - t0, 3),
                "restore": self.restore if wait_restore else None,
            }

    async def checkpoint_for_move(self, interrupt: bool = False, force: bool = False) -> dict:
        """Checkpoint every kernel for a new server on the same home, then shut them down.

        Once this answers, no process of this server uses its GPUs (the kernels and, with
        ``force``, the other GPU processes have exited) and ``resume.json`` names what the
        next server starts again. Cells sent meanwhile are answered that the server is
        moving (the page reloads from the new server, where they can be run again).
        """
        with self.gate.holding(self.km):
            result = await self._checkpoint_for_move(interrupt, force)
        self._end_at_once_on_sigterm()
        return result

    async def _checkpoint_for_move(self, interrupt: bool, force: bool) -> dict:
        async with self._lock:
            if self._restoring is not None:
                await self._restoring
            t0 = time.monotonic()
            sessions = await self._sessions()
            kernels = list(self.km.list_kernel_ids())
            paths = {k: s["path"] for k, s in sessions.items()}
            pids, others, reports, _ = await self._checkpoint(kernels, paths, interrupt, force)
            notebooks = []
            for report in reports:
                session = sessions.get(report.kernel_id)
                if session is None:  # a kernel no notebook or console uses: not started again
                    continue
                notebooks.append(
                    {
                        **session,
                        "kernel_name": self.km.get_kernel(report.kernel_id).kernel_name,
                        "checkpoint": str(report.file) if report.file else "",
                        "saved": report.saved,
                        "failed": report.failed,
                    }
                )
            manifest = {
                **_whose(),
                "written": datetime.now(UTC).isoformat(),
                "visible": visible_devices(),
                "notebooks": notebooks,
            }
            _write_json(self.dir / RESUME, manifest)
            for k in kernels:  # while their tabs are still connected to hear it
                self.gate.refuse_now(k, MOVING)
            checkpointed = time.monotonic()
            for session in sessions.values():
                await self.app.session_manager.delete_session(session["id"])
            for k in self.km.list_kernel_ids():
                await self.km.shutdown_kernel(k, now=True)
            for p in others:
                _terminate(p["pid"])
            await self._wait_gone([p for p in pids.values() if p] + [p["pid"] for p in others])
            return {
                "path": "namespace",
                "kernels": [r.as_json() for r in reports],
                "notebooks": len(notebooks),
                "checkpoint_seconds": round(checkpointed - t0, 3),
                "release_seconds": round(time.monotonic() - t0, 3),
            }

    # -- checkpoints, on request ------------------------------------------------------

    def delete_checkpoint(self, ident: str) -> None:
        """Remove a checkpoint (its owner's choice); 404 unless there is one, 409 while a
        switch may be writing or reading it."""
        file = self._checkpoint_file(ident)
        if self.switching:
            raise SwitchError(409, "a Return or Get GPU is under way: try again once it is over")
        remove_checkpoint(file)

    async def restore_checkpoint(self, ident: str, notebook: str = "") -> dict:
        """Load checkpoint ``ident`` into the kernel of ``notebook`` (default: the notebook
        it was taken from), starting one for it if none runs. Its cells wait meanwhile."""
        file = self._checkpoint_file(ident)
        notebook = notebook or self.checkpoints.record(file).get("notebook", "")
        if not notebook:
            raise SwitchError(
                400, f"checkpoint {ident} was not taken from a notebook: name the notebook to "
                "restore it into",
            )  # fmt: skip
        with self.gate.holding(self.km):
            async with self._lock:
                if self._restoring is not None:
                    await self._restoring
                return await self._restore_into(file, notebook)

    async def _restore_into(self, file: Path, notebook: str) -> dict:
        sessions = await self._sessions()
        kernel = next((k for k, s in sessions.items() if s["path"] == notebook), None)
        if kernel is None:  # not open: its notebook gets a kernel, as a resumed one does
            report = KernelReport("", notebook)
            await self._start_session(
                {"path": notebook, "name": notebook, "type": "notebook"}, report
            )
            kernel = report.kernel_id
        elif not self._is_python(kernel):
            raise SwitchError(409, f"{notebook}'s kernel is not a Python kernel")
        await self._quiesce([kernel], {kernel: notebook}, interrupt=False)
        try:
            saved = json.loads(Path(f"{file}.json").read_text())["saved"]
        except (OSError, ValueError, KeyError) as e:
            raise SwitchError(409, f"checkpoint {file.name} cannot be read: {e}") from None
        try:
            await self._run(kernel, "load", str(file), f"restoring {notebook}")
        except SwitchError as e:
            self.checkpoints.not_restored(file, e.message)
            raise
        loaded = _restored_report(file, saved)
        self.checkpoints.restored(file)
        restored = loaded["restored"]
        message = f"Restored {len(restored)} variable{'s' * (len(restored) != 1)} into {notebook}"
        if loaded.get("note"):
            message += f"; {loaded['note']}"
        return {"notebook": notebook, "kernel": kernel, "restored": restored, "message": message}

    def _checkpoint_file(self, ident: str) -> Path:
        try:
            return self.checkpoints.file(ident)
        except CheckpointNotFound as e:
            raise SwitchError(404, str(e)) from None

    def pending_resume(self) -> dict | None:
        """The manifest a server of this name left for its successor, if any."""
        try:
            manifest = json.loads((self.dir / RESUME).read_text())
        except (OSError, ValueError):
            return None
        if {k: manifest.get(k, "") for k in ("user", "server")} != _whose():
            return None  # another server's (named servers share the home)
        return manifest

    def start_resume(self) -> bool:
        """Start the notebooks of a pending ``resume.json`` again, in the background.

        The manifest is renamed once read, so a later server does not restore the same
        variables again; the checkpoint files stay until they are restored.
        """
        if self._sigterm is not None:  # the move was called off: this server goes on
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None
        manifest = self.pending_resume()
        if manifest is None:
            return False
        try:
            (self.dir / RESUME).replace(self.dir / (RESUME + ".done"))
        except FileNotFoundError:  # taken meanwhile
            return False
        self.restore = {"state": "restoring", "message": "Restoring variables…", "kernels": []}
        # a tab that reconnects meanwhile: its cells wait for the variables
        self._restoring = self._then_open(self._resume(manifest))
        return True

    async def _resume(self, manifest: dict) -> None:
        """Start a kernel for each notebook of the manifest and restore its variables."""
        INTERNAL.set(True)  # in this task only: its kernel starts go through the gate
        reports, starts, files = [], [], []
        for nb in manifest.get("notebooks", []):
            report = KernelReport("", nb.get("path", ""), nb.get("saved", []), nb.get("failed", {}))
            reports.append(report)
            starts.append(asyncio.ensure_future(self._start_session(nb, report)))
            files.append(Path(nb["checkpoint"]) if nb.get("checkpoint") else None)
        await self._restore_all(reports, starts, files)

    async def _start_session(self, nb: dict, report: KernelReport) -> None:
        model = await self.app.session_manager.create_session(
            path=nb.get("path"), name=nb.get("name"), type=nb.get("type"),
            kernel_name=nb.get("kernel_name"),
        )  # fmt: skip
        report.kernel_id = model["kernel"]["id"]

    # -- steps -------------------------------------------------------------------------

    def _end_at_once_on_sigterm(self) -> None:
        """Once the kernels are checkpointed and gone for a move, the pod's end need not
        wait for the Jupyter server's own shutdown (most of a second): nothing is left to
        save (files are written whole or not at all), and the GPU is freed once it is gone."""
        if self._sigterm is None:
            self._sigterm = signal.getsignal(signal.SIGTERM)

        def end(signum, frame) -> None:
            self.log.info("gpulab: ending at once: the kernels moved to a new server")
            for handler in self.log.handlers:
                handler.flush()
            os._exit(0)

        signal.signal(signal.SIGTERM, end)

    def _restore_then_open(self, reports, starts, files) -> asyncio.Task:
        """Restore in the background; the gate opens once it is over."""
        return self._then_open(self._restore_all(reports, starts, files))

    def _then_open(self, call) -> asyncio.Task:
        """Run ``call`` in the background with the gate closed until it is over."""
        self.gate.close()
        task = asyncio.ensure_future(call)
        task.add_done_callback(lambda _: self.gate.reopen(self.km))
        return task

    def _later(self, call) -> None:
        """Run ``call`` in the background; a failure is logged."""

        def done(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None:
                self.log.warning("gpulab: %s", task.exception())

        task = asyncio.ensure_future(call)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(done)

    def _restart(self, kernel_id: str) -> asyncio.Future:
        return asyncio.ensure_future(self.km.restart_kernel(kernel_id, now=True))

    def _still_parked(self, kernel_id: str) -> bool:
        """Is the kernel's process the one the driver parked (not since restarted)?"""
        parked = self._parked.get(kernel_id)
        if parked is not None and (self._pid(kernel_id) != parked.pid or _gone(parked.pid)):
            del self._parked[kernel_id]
            return False
        return parked is not None

    def _candidates(self, reports, pids, on_gpu) -> list[KernelReport]:
        """The kernels a return parks: of ``reports``, as ``to_park`` chooses."""
        if self._no_driver:
            return []
        kernels = {k for k, pid in pids.items() if pid in on_gpu}
        return to_park(checkpoint_mode(), reports, kernels)

    async def _park(self, candidates, pids, on_gpu, before: str) -> list[KernelReport]:
        """Park each candidate kernel with the driver; the reports of those it could not
        park (they restart on the CPU: their namespace checkpoint is taken)."""
        if not candidates:
            return []
        answers = await asyncio.gather(
            *(cudackpt.run("park", str(pids[r.kernel_id]), f"--timeout-ms={PARK_TIMEOUT_MS}")
              for r in candidates)
        )  # fmt: skip
        failed = []
        # the server's GPUs' UUIDs, read once: the GPUs each process is on are among them
        ids = _ids(before)
        found = gpuinfo.uuids(ids) if any(answer.get("ok") for answer in answers) else None
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
                    if self._is_python(report.kernel_id):
                        await self._run(report.kernel_id, "set_gpus", "", "hiding its GPU", 30)
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

    async def _unpark(self, kernels: list[str], visible: str, restarts: dict) -> list:
        """Put each parked kernel's GPU state on the GPUs ``visible`` (Get GPU); one the
        driver cannot bring back restarts with its variables from its return's checkpoint
        (``restarts`` gets it). Their reports."""
        if not kernels:
            return []
        reports = []
        new = gpuinfo.uuids(_ids(visible)) if visible else None
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
                answer = await cudackpt.run("unpark", str(parked.pid), *moved)
                if answer.get("ok"):
                    if parked.file is not None:  # its fallback, no longer needed
                        self.checkpoints.restored(parked.file)  # the process kept it all
                    report.restored = _all_names(parked.saved, parked.failed)
                    if visible != parked.visible and self._is_python(k):  # once it is idle
                        self._later(self._run(k, "set_gpus", visible, "showing its GPU", None))
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
            restarts[k] = self._restart(k)
        return reports

    async def _sessions(self) -> dict[str, dict]:
        """The open notebooks' (and consoles') sessions by kernel id."""
        out = {}
        for s in await self.app.session_manager.list_sessions():
            if s.get("kernel"):
                out[s["kernel"]["id"]] = {
                    "id": s["id"],
                    "path": s.get("path", ""),
                    "name": s.get("name", ""),
                    "type": s.get("type", "notebook"),
                }
        return out

    async def _checkpoint(self, kernels, paths, interrupt, force):
        """Quiesce and checkpoint ``kernels``: their pids, the other GPU processes of this
        account (only with ``force``; else a 409 names them), each kernel's report, and
        the GPUs each process on them is on (``on_gpus``)."""
        await self._quiesce(kernels, paths, interrupt)
        pids = {k: self._pid(k) for k in kernels}
        on_gpu = on_gpus(visible_devices())
        others = gpu_processes(on_gpu, {p for p in pids.values() if p})
        if others and not force:
            listing = "; ".join(f"{p['pid']} {p['command']}" for p in others)
            raise SwitchError(
                409,
                f"processes outside your notebooks still use the GPU: {listing}. Stop "
                "them (or return with force, which ends them).",
                processes=others,
            )
        results = await asyncio.gather(
            *(self._save(k, paths.get(k, "")) for k in kernels), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:  # nothing changes: the others' checkpoints would only take room
            for r in results:
                if isinstance(r, KernelReport) and r.file is not None:
                    self.checkpoints.abandoned(r.file)
            raise errors[0]
        reports = [r for r in results if isinstance(r, KernelReport)]
        return pids, others, list(reports), on_gpu

    def _state(self, kernel_id: str) -> str:
        return getattr(self.km.get_kernel(kernel_id), "execution_state", "unknown")

    async def _quiesce(self, kernels: list[str], paths: dict[str, str], interrupt: bool) -> None:
        # the gate holds every new cell: a cell that was already running gets a moment to end
        deadline = time.monotonic() + BUSY_GRACE
        while any(self._state(k) == "busy" for k in kernels) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        busy = [k for k in kernels if self._state(k) == "busy"]
        if not busy:
            return
        names = [paths.get(k) or k for k in busy]
        if not interrupt:
            raise SwitchError(
                409,
                f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} still running code: "
                "wait for it, or interrupt it and return the GPU",
                busy=names,
            )
        for k in busy:
            await self.km.interrupt_kernel(k)
        deadline = time.monotonic() + 15
        while any(self._state(k) == "busy" for k in busy):
            if time.monotonic() > deadline:
                raise SwitchError(409, f"{', '.join(names)} did not stop after an interrupt")
            await asyncio.sleep(0.05)

    def _pid(self, kernel_id: str) -> int | None:
        provisioner = getattr(self.km.get_kernel(kernel_id), "provisioner", None)
        return getattr(provisioner, "pid", None)

    def _is_python(self, kernel_id: str) -> bool:
        kernel = self.km.get_kernel(kernel_id)
        try:
            spec = self.km.kernel_spec_manager.get_kernel_spec(kernel.kernel_name)
        except Exception:  # noqa: BLE001 -- a kernel whose spec was removed meanwhile
            return False
        return spec.language.lower() == "python"

    async def _save(self, kernel_id: str, path: str) -> KernelReport:
        report = KernelReport(kernel_id, path)
        if not self._is_python(kernel_id):
            report.failed["*"] = "only the variables of Python kernels can be kept"
            report.lost = "only the variables of Python kernels can be kept"
            return report
        try:
            target = self.checkpoints.new(kernel_id, path)
        except OSError as e:  # a full home or quota, a folder the user made unwritable
            raise SwitchError(
                507 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 500,
                f"checkpointing {path or kernel_id} failed: cannot write in {self.dir} "
                f"({e.strerror}). Free some space in your home or grow it (gpulab storage "
                "resize SIZE), then try again; nothing was changed",
            ) from None
        self._saving[kernel_id] = target
        try:
            await self._run(kernel_id, "save", str(target), f"checkpointing {path or kernel_id}")
        except KernelDied as e:  # what it held went with it: nothing is left to save
            self.checkpoints.abandoned(target)
            report.note = (
                f"{path or 'a kernel'}: its kernel died while its variables were being saved "
                f"({e.reason}); it restarted without them"
            )
            report.lost = (
                f"its kernel died while its variables were being saved ({e.reason}); it "
                "restarted without them"
            )
            return report
        except BaseException:
            self.checkpoints.abandoned(target)  # the kernel and its variables stay as they were
            raise
        finally:
            self._saving.pop(kernel_id, None)
        saved = json.loads(Path(str(target) + ".json").read_text())
        report.saved, report.failed = saved["saved"], saved["failed"]
        report.file = target if self.checkpoints.saved(target) else None
        return report

    async def _run(self, kernel_id: str, func: str, arg: str, what: str, timeout=300) -> None:
        """Call ``namespace.py``'s ``func(arg)`` in the kernel, in a namespace of its own."""
        code = (
            "(lambda ns: (exec(compile(__import__('base64').b64decode("
            f"{_b64(SOURCE)!r}).decode(), '<gpulab>', 'exec'), ns), ns[{func!r}]({arg!r})))"
            "({'__name__': 'gpulab_kernel_state'})"
        )
        pid = self._pid(kernel_id)
        client = self.km.get_kernel(kernel_id).client()
        client.start_channels()

        async def call() -> dict:
            await _connected(client, timeout=60)
            return await client.execute_interactive(
                code,
                silent=True,
                store_history=False,
                allow_stdin=False,
                timeout=timeout,
                output_hook=lambda msg: None,
            )

        try:
            reply = await self._unless_it_dies(kernel_id, pid, what, call())
        except (TimeoutError, RuntimeError) as e:  # RuntimeError: the kernel died
            self._if_it_died(kernel_id, pid, what)
            raise SwitchError(504, f"{what} did not finish: {e or 'timed out'}") from None
        finally:
            client.stop_channels()
        content = reply["content"]
        if content["status"] == "ok":
            return
        if content.get("ename") == "NoRoomForCheckpoint":  # 507 Insufficient Storage
            raise SwitchError(
                507,
                f"{what} failed: {content.get('evalue')}. Free some space in your home or "
                "grow it (gpulab storage resize SIZE), then try again; nothing was changed",
            )
        raise SwitchError(500, f"{what} failed: {_why(content)}")

    async def _unless_it_dies(self, kernel_id: str, pid: int | None, what: str, call):
        """``call``'s answer; KernelDied as soon as the kernel process ``pid`` has exited
        (nothing would ever answer: an out-of-memory kill while pickling, say), also when
        the server's restarter has already started a new one."""
        task = asyncio.ensure_future(call)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.1)
                if done:
                    return task.result()
                self._if_it_died(kernel_id, pid, what)
        finally:
            task.cancel()

    def _if_it_died(self, kernel_id: str, pid: int | None, what: str) -> None:
        """KernelDied, saying how, if the kernel process ``pid`` has exited."""
        if pid is not None and (_gone(pid) or self._pid(kernel_id) != pid):
            reason = _exit_status(self.km.get_kernel(kernel_id), pid)
            raise KernelDied(f"{what} did not finish: the kernel died ({reason})", reason)

    def _set_visible(self, visible: str) -> None:
        for name in GPU_VARIABLES:
            os.environ[name] = visible

    async def _wait_gone(self, pids: list[int], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not all(_gone(p) for p in pids):
            if time.monotonic() > deadline:
                left = [p for p in pids if not _gone(p)]
                raise SwitchError(500, f"kernel process(es) {left} did not exit")
            await asyncio.sleep(0.01)

    async def _restore_all(
        self, reports: list[KernelReport], starts: list, files: list[Path | None]
    ) -> None:
        """Once each report's kernel has (re)started (``starts[i]``, a future, for
        ``reports[i]``), load its variables from its checkpoint ``files[i]``: every kernel
        at once, each as soon as it has started."""
        problems = await asyncio.gather(
            *(self._restore_one(*each) for each in zip(reports, starts, files, strict=True))
        )
        self.restore = {
            "state": "failed" if any(problems) else "done",
            "message": _summary(reports),
            "kernels": [r.as_json() for r in reports],
        }
        self._restoring = None

    async def _restore_one(self, report: KernelReport, start, file: Path | None) -> bool:
        """Restore one kernel (see ``_restore_all``); whether that failed."""
        try:
            await start
        except Exception as e:  # noqa: BLE001 -- reported to the user
            report.note = f"the kernel did not start: {e}"
            self.gate.refuse(report.kernel_id, f"{report.path or 'this kernel'}: {report.note}")
            return True
        k = report.kernel_id
        if not report.saved or file is None:
            return False
        try:
            await self._run(k, "load", str(file), f"restoring {report.path}")
            loaded = _restored_report(file, report.saved)
            report.restored = loaded["restored"]
            report.note = loaded.get("note", "")
        except (SwitchError, OSError, ValueError) as e:
            report.note = (
                f"variables not restored ({e}); they are kept in {file} (gpulab gpu "
                f"checkpoints restore {file.name.removesuffix('.pkl')})"
            )
            self.checkpoints.not_restored(file, str(e))
            self.gate.refuse(k, f"{report.path or 'this kernel'}: {report.note}")
            return True
        self.checkpoints.restored(file)  # verified: older ones of the notebook beyond a few go
        return False


async def _connected(client, timeout: float) -> None:
    """Until the kernel answers ``client`` and its IOPub messages reach it: before that,
    the "idle" that ends a call could be missed, and the call would wait out its timeout.

    A new IOPub subscription takes a moment to connect, and what the kernel publishes
    before is lost to it, so ``kernel_info`` requests are sent until one's status
    message arrives: 10 ms apart at first (jupyter_client's ``wait_for_ready`` waits
    0.2 s for it, the time a Return GPU has in all). Their replies are left on the shell
    channel, where calls skip what answers other requests."""
    deadline = time.monotonic() + timeout
    wait = 0.01
    while True:
        client.kernel_info()
        try:
            await client.iopub_channel.get_msg(timeout=wait)
            return
        except Empty:
            pass
        if not await client.is_alive():
            raise RuntimeError("the kernel died")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the kernel did not answer in {timeout:.0f} s")
        wait = min(wait * 2, 0.5)


def _why(content: dict) -> str:
    """What a kernel's reply that is not "ok" says went wrong, never an empty reason."""
    if content.get("status") == "aborted":
        return "the kernel aborted the request (an earlier request to it had failed)"
    name, value = content.get("ename") or "", content.get("evalue") or ""
    if name and value:
        return f"{name}: {value}"
    if name or value:
        return name or value
    return f"the kernel answered {content.get('status') or 'with no status'} and no reason"


def _restored_report(file: Path, saved: list[str]) -> dict:
    """What the kernel's ``load`` of checkpoint ``file`` reported; it restored all that
    was ``saved`` when it could not write its report (a home full since the checkpoint)."""
    try:
        return json.loads(Path(str(file) + ".restored.json").read_text())
    except FileNotFoundError:
        return {"restored": saved, "note": "the home is full: free some space in it"}


def _exit_status(kernel, pid: int) -> str:
    """How the kernel process ``pid`` ended, in words ("killed by SIGKILL", ...)."""
    process = getattr(getattr(kernel, "provisioner", None), "process", None)
    code = process.poll() if process is not None and process.pid == pid else None
    if code is None:
        return "its process exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _all_names(saved: list[str], failed: dict[str, str]) -> list[str]:
    """A parked kernel's variables: all still there, pickled or not ("*": a kernel of
    another language, whose names are not known)."""
    return saved + [name for name in failed if name != "*"]


def _done() -> asyncio.Future:
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


def _summary(reports: list[KernelReport]) -> str:
    restored = sum(len(r.restored) for r in reports)
    notebooks = sum(bool(r.restored) for r in reports)
    parts = [f"Restored {restored} variable{'s' * (restored != 1)}"]
    if notebooks:
        parts[0] += f" in {notebooks} notebook{'s' * (notebooks != 1)}"
    failed = [f"{name} ({why})" for r in reports for name, why in r.failed.items()]
    if failed:
        parts.append("not saved: " + ", ".join(failed))
    notes = [r.note for r in reports if r.note]
    return "; ".join(parts + notes)


def _whose() -> dict[str, str]:
    return {
        "user": os.environ.get("JUPYTERHUB_USER", ""),
        "server": os.environ.get("JUPYTERHUB_SERVER_NAME", ""),
    }


def _write_json(path: Path, data: dict) -> None:
    """Write ``path`` whole or not at all (a new server may read it at any moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
