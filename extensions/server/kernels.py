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

Where the hub moves the whole server instead (the kubernetes backend replaces its pod),
``checkpoint_for_move`` does steps 1 and 2, writes what a new server needs to carry on
(``~/.gpulab/checkpoints/resume.json``: each notebook's path, kernel and checkpoint) and
shuts the kernels down; ``start_resume`` (run by the next server of the same name as it
starts, or by this one if the move is called off) starts a kernel for each notebook again
and restores its variables.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty

from . import gpuinfo

SOURCE = (Path(__file__).with_name("namespace.py")).read_text()
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "GPULAB_GPUS")
RESUME = "resume.json"
"""The notebooks a moved server's successor starts again (in the checkpoint folder)."""


class SwitchError(Exception):
    """A switch that cannot be done now; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, **detail):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


@dataclass
class KernelReport:
    kernel_id: str
    path: str
    saved: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    restored: list[str] = field(default_factory=list)
    note: str = ""
    loaded: bool = False
    """Its checkpoint was loaded into the kernel."""

    def as_json(self) -> dict:
        return {
            "kernel": self.kernel_id,
            "path": self.path,
            "saved": self.saved,
            "restored": self.restored,
            "failed": self.failed,
            "note": self.note,
        }


def visible_devices() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def _gone(pid: int) -> bool:
    """Has the process exited (a zombie has: its GPU memory is released)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def gpu_processes(visible: str, exclude: set[int]) -> list[dict]:
    """This account's processes computing on the given GPUs (NVML), except ``exclude``."""
    if not visible:
        return []
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 -- no NVIDIA driver: nothing can hold a GPU
        return []
    found = []
    try:
        for ident in visible.split(","):
            try:
                handle = gpuinfo.device(pynvml, ident)
                procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except (pynvml.NVMLError, ValueError):
                continue
            for p in procs:
                if p.pid in exclude or not _mine(p.pid):
                    continue
                cmd = _cmdline(p.pid)
                found.append({"pid": p.pid, "gpu": ident, "command": cmd})
    finally:
        pynvml.nvmlShutdown()
    return found


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
        self.restore: dict = {"state": "idle", "message": "", "kernels": []}
        self._lock = asyncio.Lock()
        self._restoring: asyncio.Task | None = None
        self.started = time.time()

    @property
    def km(self):
        return self.app.kernel_manager

    # -- what the hub asks -------------------------------------------------------------

    @property
    def switching(self) -> bool:
        """A switch or its restore is under way."""
        return self._lock.locked() or self._restoring is not None

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
        async with self._lock:
            if self._restoring is not None:
                await self._restoring  # never checkpoint a half-restored kernel
            before = visible_devices()
            if visible == before:
                return {"changed": False, "visible": visible, "kernels": []}
            t0 = time.monotonic()
            kernels = list(self.km.list_kernel_ids())
            paths = {k: s["path"] for k, s in (await self._sessions()).items()}
            pids, others, reports = await self._checkpoint(kernels, paths, interrupt, force)
            checkpointed = time.monotonic()
            self._set_visible(visible)
            restarts = {}
            for k in kernels:
                self.km.update_env(kernel_id=k, env={v: visible for v in GPU_VARIABLES})
                restarts[k] = asyncio.ensure_future(self.km.restart_kernel(k, now=True))
            for p in others:
                _terminate(p["pid"])
            await self._wait_gone([p for p in pids.values() if p] + [p["pid"] for p in others])
            released = time.monotonic()
            self.restore = {"state": "restoring", "message": "Restoring variables…", "kernels": []}
            starts = [restarts[r.kernel_id] for r in reports]
            files = [self._file(r.kernel_id) for r in reports]
            self._restoring = asyncio.ensure_future(self._restore_all(reports, starts, files))
            if wait_restore:
                await self._restoring
            return {
                "changed": True,
                "visible": visible,
                "previous": before,
                "path": "namespace",
                "kernels": [r.as_json() for r in reports],
                "checkpoint_seconds": round(checkpointed - t0, 3),
                "release_seconds": round(released - t0, 3),
                "restore": self.restore if wait_restore else None,
            }

    async def checkpoint_for_move(self, interrupt: bool = False, force: bool = False) -> dict:
        """Checkpoint every kernel for a new server on the same home, then shut them down.

        Once this answers, no process of this server uses its GPUs (the kernels and, with
        ``force``, the other GPU processes have exited) and ``resume.json`` names what the
        next server starts again.
        """
        async with self._lock:
            if self._restoring is not None:
                await self._restoring
            t0 = time.monotonic()
            sessions = await self._sessions()
            kernels = list(self.km.list_kernel_ids())
            paths = {k: s["path"] for k, s in sessions.items()}
            pids, others, reports = await self._checkpoint(kernels, paths, interrupt, force)
            notebooks = []
            for report in reports:
                session = sessions.get(report.kernel_id)
                if session is None:  # a kernel no notebook or console uses: not started again
                    continue
                notebooks.append(
                    {
                        **session,
                        "kernel_name": self.km.get_kernel(report.kernel_id).kernel_name,
                        "checkpoint": str(self._file(report.kernel_id)) if report.saved else "",
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
        manifest = self.pending_resume()
        if manifest is None:
            return False
        try:
            (self.dir / RESUME).replace(self.dir / (RESUME + ".done"))
        except FileNotFoundError:  # taken meanwhile
            return False
        self.restore = {"state": "restoring", "message": "Restoring variables…", "kernels": []}
        self._restoring = asyncio.ensure_future(self._resume(manifest))
        return True

    async def _resume(self, manifest: dict) -> None:
        """Start a kernel for each notebook of the manifest and restore its variables."""
        reports, starts, files = [], [], []
        for nb in manifest.get("notebooks", []):
            report = KernelReport("", nb.get("path", ""), nb.get("saved", []), nb.get("failed", {}))
            reports.append(report)
            starts.append(asyncio.ensure_future(self._start_session(nb, report)))
            files.append(Path(nb["checkpoint"]) if nb.get("checkpoint") else None)
        await self._restore_all(reports, starts, files)
        for report, file in zip(reports, files, strict=True):
            if report.loaded:  # its checkpoint's files are spent
                _remove_checkpoint(file)

    async def _start_session(self, nb: dict, report: KernelReport) -> None:
        model = await self.app.session_manager.create_session(
            path=nb.get("path"), name=nb.get("name"), type=nb.get("type"),
            kernel_name=nb.get("kernel_name"),
        )  # fmt: skip
        report.kernel_id = model["kernel"]["id"]

    # -- steps -------------------------------------------------------------------------

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
        account (only with ``force``; else a 409 names them) and each kernel's report."""
        before = visible_devices()
        await self._quiesce(kernels, paths, interrupt)
        pids = {k: self._pid(k) for k in kernels}
        others = gpu_processes(before, {p for p in pids.values() if p})
        if others and not force:
            listing = "; ".join(f"{p['pid']} {p['command']}" for p in others)
            raise SwitchError(
                409,
                f"processes outside your notebooks still use the GPU: {listing}. Stop "
                "them (or return with force, which ends them).",
                processes=others,
            )
        reports = await asyncio.gather(*(self._save(k, paths.get(k, "")) for k in kernels))
        return pids, others, list(reports)

    def _state(self, kernel_id: str) -> str:
        return getattr(self.km.get_kernel(kernel_id), "execution_state", "unknown")

    async def _quiesce(self, kernels: list[str], paths: dict[str, str], interrupt: bool) -> None:
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

    def _file(self, kernel_id: str) -> Path:
        return self.dir / f"{kernel_id}.pkl"

    async def _save(self, kernel_id: str, path: str) -> KernelReport:
        report = KernelReport(kernel_id, path)
        if not self._is_python(kernel_id):
            report.failed["*"] = "only the variables of Python kernels can be kept"
            return report
        target = self._file(kernel_id)
        await self._run(kernel_id, "save", str(target), f"checkpointing {path or kernel_id}")
        saved = json.loads(Path(str(target) + ".json").read_text())
        report.saved, report.failed = saved["saved"], saved["failed"]
        return report

    async def _run(self, kernel_id: str, func: str, arg: str, what: str, timeout=300) -> None:
        """Call ``namespace.py``'s ``func(arg)`` in the kernel, in a namespace of its own."""
        code = (
            "(lambda ns: (exec(compile(__import__('base64').b64decode("
            f"{_b64(SOURCE)!r}).decode(), '<gpulab>', 'exec'), ns), ns[{func!r}]({arg!r})))"
            "({'__name__': 'gpulab_kernel_state'})"
        )
        client = self.km.get_kernel(kernel_id).client()
        client.start_channels()
        try:
            await _connected(client, timeout=60)
            reply = await client.execute_interactive(
                code,
                silent=True,
                store_history=False,
                allow_stdin=False,
                timeout=timeout,
                output_hook=lambda msg: None,
            )
        except (TimeoutError, RuntimeError) as e:  # RuntimeError: the kernel died
            raise SwitchError(504, f"{what} did not finish: {e or 'timed out'}") from None
        finally:
            client.stop_channels()
        content = reply["content"]
        if content["status"] != "ok":
            raise SwitchError(
                500,
                f"{what} failed: {content.get('ename', 'error')}: {content.get('evalue', '')}",
            )

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
        ``reports[i]``), load its variables from its checkpoint ``files[i]``."""
        problems = []
        for report, start, file in zip(reports, starts, files, strict=True):
            try:
                await start
            except Exception as e:  # noqa: BLE001 -- reported to the user below
                report.note = f"the kernel did not start: {e}"
                problems.append(report.note)
                continue
            k = report.kernel_id
            if not report.saved or file is None:
                continue
            try:
                await self._run(k, "load", str(file), f"restoring {report.path}")
                loaded = json.loads(Path(str(file) + ".restored.json").read_text())
                report.restored = loaded["restored"]
                report.note = loaded.get("note", "")
                report.loaded = True
            except (SwitchError, OSError, ValueError) as e:
                report.note = f"variables not restored ({e}); they are kept in {file}"
                problems.append(report.note)
        self.restore = {
            "state": "failed" if problems else "done",
            "message": _summary(reports),
            "kernels": [r.as_json() for r in reports],
        }
        self._restoring = None


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


def _remove_checkpoint(path: Path) -> None:
    """A checkpoint's pickle, reports and tensor data files (tensors mapped from a data
    file stay readable after it is unlinked)."""
    for file in path.parent.glob(path.name + "*"):
        file.unlink(missing_ok=True)


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
