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
kernels are parked is ``GPULAB_KERNEL_CHECKPOINT``'s choice (see ``parking.py``); the
namespace checkpoint of step 2 is taken for them too, and used when the driver cannot
park or bring back a kernel.

Where the hub moves the whole server instead (the kubernetes backend replaces its pod),
``checkpoint_for_move`` does steps 1 and 2, writes what a new server needs to carry on
(``~/.gpulab/checkpoints/resume.json``: each notebook's path, kernel and checkpoint) and
shuts the kernels down; ``start_resume`` (run by the next server of the same name as it
starts, or by this one if the move is called off) starts a kernel for each notebook again
and restores its variables (``move.py``).

``KernelSwitch`` orders these steps, holds the kernels' cells at the gate meanwhile
(``gate.py``) and keeps the last restore's report. The steps on one kernel (its process,
the calls into it that save and load its variables) are in ``kernelcalls.py``, the
processes on the GPUs in ``processes.py``, what a switch reports in ``records.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from .checkpoints import CheckpointNotFound, Checkpoints, keep_from_environment
from .checkpoints import remove as remove_checkpoint
from .documents import save_open_documents
from .gate import INTERNAL, KernelGate
from .kernelcalls import KernelCalls
from .move import MOVING, EndAtOnce, pending_manifest, take_manifest, write_manifest
from .parking import Parking
from .processes import (
    GPU_VARIABLES,
    gpu_processes,
    on_gpus,
    set_visible,
    terminate,
    visible_devices,
    wait_gone,
)
from .records import KernelReport, SwitchError, summary


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
        self.calls = KernelCalls(serverapp, self.checkpoints, self.gate)
        self.parking = Parking(self.calls, self.checkpoints, self.log)
        self._end_at_once = EndAtOnce(self.log)
        """Ends the server on SIGTERM after its kernels moved."""
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
        """How much of the kernels' checkpoints is written so far (None: none is)."""
        return self.calls.saved_bytes()

    def parked(self) -> list[dict]:
        """The kernels the CUDA driver parked that still run (their notebooks, since when)."""
        return self.parking.listing()

    def kernels_busy(self) -> list[str]:
        return [k for k in self.km.list_kernel_ids() if self.calls.state(k) == "busy"]

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
            parked = [k for k in ids if self.parking.still_parked(k)]
            kernels = [k for k in ids if k not in parked]
            paths = {k: s["path"] for k, s in (await self._sessions()).items()}
            pids, others, reports, on_gpu = await self._checkpoint(kernels, paths, interrupt, force)
            checkpointed = time.monotonic()
            set_visible(visible)
            for k in ids:  # what a kernel (re)started from now on gets
                self.km.update_env(kernel_id=k, env={v: visible for v in GPU_VARIABLES})
            candidates = [] if visible else self.parking.candidates(reports, pids, on_gpu)
            chosen = {r.kernel_id for r in candidates}
            restarts = {
                r.kernel_id: self.calls.restart(r.kernel_id)
                for r in reports
                if r.kernel_id not in chosen
            }
            for p in others:
                terminate(p["pid"])
            for r in await self.parking.park(candidates, pids, on_gpu, before):  # those not parked
                restarts[r.kernel_id] = self.calls.restart(r.kernel_id)
            back = await self.parking.unpark(parked, visible, restarts)
            reports += back
            for r in reports:  # the cells sent them meanwhile would run without the variables
                if r.lost and r.kernel_id in restarts:
                    self.gate.refuse(r.kernel_id, f"{r.path or 'this kernel'}: {r.lost}")
            self.restore = {"state": "restoring", "message": "Restoring variables…", "kernels": []}
            starts = [restarts.get(r.kernel_id) or _done() for r in reports]
            files = [r.file if r.kernel_id in restarts else None for r in reports]
            try:
                await wait_gone(
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
        # co-edited documents: the server has the latest of each, the next one loads the file
        result.update(await save_open_documents(self.app))
        self._end_at_once.arm()
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
            write_manifest(self.dir, visible_devices(), notebooks)
            for k in kernels:  # while their tabs are still connected to hear it
                self.gate.refuse_now(k, MOVING)
            checkpointed = time.monotonic()
            for session in sessions.values():
                await self.app.session_manager.delete_session(session["id"])
            for k in self.km.list_kernel_ids():
                await self.km.shutdown_kernel(k, now=True)
            for p in others:
                terminate(p["pid"])
            await wait_gone([p for p in pids.values() if p] + [p["pid"] for p in others])
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
        elif not self.calls.is_python(kernel):
            raise SwitchError(409, f"{notebook}'s kernel is not a Python kernel")
        await self.calls.quiesce([kernel], {kernel: notebook}, interrupt=False)
        try:
            saved = json.loads(Path(f"{file}.json").read_text())["saved"]
        except (OSError, ValueError, KeyError) as e:
            raise SwitchError(409, f"checkpoint {file.name} cannot be read: {e}") from None
        try:
            loaded = await self.calls.load(kernel, file, saved, f"restoring {notebook}")
        except SwitchError as e:
            self.checkpoints.not_restored(file, e.message)
            raise
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

    def start_resume(self) -> bool:
        """Start the notebooks of a pending ``resume.json`` again, in the background.

        The manifest is renamed once read, so a later server does not restore the same
        variables again; the checkpoint files stay until they are restored.
        """
        self._end_at_once.disarm()  # if the move was called off: this server goes on
        manifest = pending_manifest(self.dir)
        if manifest is None or not take_manifest(self.dir):
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

    def _restore_then_open(self, reports, starts, files) -> asyncio.Task:
        """Restore in the background; the gate opens once it is over."""
        return self._then_open(self._restore_all(reports, starts, files))

    def _then_open(self, call) -> asyncio.Task:
        """Run ``call`` in the background with the gate closed until it is over."""
        self.gate.close()
        task = asyncio.ensure_future(call)
        task.add_done_callback(lambda _: self.gate.reopen(self.km))
        return task

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
        await self.calls.quiesce(kernels, paths, interrupt)
        pids = {k: self.calls.pid(k) for k in kernels}
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
            *(self.calls.save(k, paths.get(k, "")) for k in kernels), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:  # nothing changes: the others' checkpoints would only take room
            for r in results:
                if isinstance(r, KernelReport) and r.file is not None:
                    self.checkpoints.abandoned(r.file)
            raise errors[0]
        reports = [r for r in results if isinstance(r, KernelReport)]
        return pids, others, list(reports), on_gpu

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
            "message": summary(reports),
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
            loaded = await self.calls.load(k, file, report.saved, f"restoring {report.path}")
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


def _done() -> asyncio.Future:
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done
