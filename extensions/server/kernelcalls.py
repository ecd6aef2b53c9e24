"""What a switch does to each kernel of the server, one at a time: read its process and
its execution state, wait until it is idle (or interrupt it), restart it, and call
``namespace.py``'s ``save``, ``load`` and ``set_gpus`` inside it, in a namespace of its
own: ``KernelCalls``. A kernel that dies while it is being called is noticed at once
(``KernelDied``, saying how it ended) rather than when the call times out.
"""

from __future__ import annotations

import asyncio
import errno
import json
import signal
import time
from pathlib import Path
from queue import Empty

from .checkpoints import Checkpoints
from .gate import KernelGate
from .processes import gone
from .records import KernelDied, KernelReport, SwitchError

SOURCE = (Path(__file__).with_name("namespace.py")).read_text()
BUSY_GRACE = 2.0
"""Seconds a switch waits for a notebook that is running code to finish a cell (no new
cell reaches it meanwhile) before it refuses, or interrupts it."""


class KernelCalls:
    """The kernels of ``serverapp``, as a switch handles them; their checkpoints are
    written to and read from ``checkpoints``."""

    def __init__(self, serverapp, checkpoints: Checkpoints, gate: KernelGate):
        self.app = serverapp
        self.checkpoints = checkpoints
        self.gate = gate
        self._saving: dict[str, Path] = {}
        """The checkpoints being written now, by kernel."""

    @property
    def km(self):
        return self.app.kernel_manager

    def state(self, kernel_id: str) -> str:
        return getattr(self.km.get_kernel(kernel_id), "execution_state", "unknown")

    def pid(self, kernel_id: str) -> int | None:
        provisioner = getattr(self.km.get_kernel(kernel_id), "provisioner", None)
        return getattr(provisioner, "pid", None)

    def is_python(self, kernel_id: str) -> bool:
        kernel = self.km.get_kernel(kernel_id)
        try:
            spec = self.km.kernel_spec_manager.get_kernel_spec(kernel.kernel_name)
        except Exception:  # noqa: BLE001 -- a kernel whose spec was removed meanwhile
            return False
        return spec.language.lower() == "python"

    def restart(self, kernel_id: str) -> asyncio.Future:
        return asyncio.ensure_future(self.km.restart_kernel(kernel_id, now=True))

    def busy(self, kernel_id: str) -> int:
        """How many cells the kernel has yet to answer: those its tabs sent that it has not
        answered (queued in it, or running), or 1 while it says it is busy (a cell of a
        client outside the gate, a cell its tab's connection closed under)."""
        unanswered = self.gate.unanswered(kernel_id, self.pid(kernel_id))
        return unanswered or int(self.state(kernel_id) == "busy")

    async def quiesce(self, kernels: list[str], paths: dict[str, str], interrupt: bool) -> None:
        """Until none of ``kernels`` runs code or has cells queued: a 409 naming the busy
        ones (their notebooks, ``paths``), unless asked to ``interrupt`` them."""
        # the gate holds every new cell: those already sent run while each takes a moment
        left = sum(self.busy(k) for k in kernels)
        deadline = time.monotonic() + BUSY_GRACE
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            now = sum(self.busy(k) for k in kernels)
            if now < left:  # a cell ended: the next gets its moment
                deadline = time.monotonic() + BUSY_GRACE
            left = now
        busy = [k for k in kernels if self.busy(k)]
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
        while any(self.busy(k) for k in busy):
            if time.monotonic() > deadline:
                raise SwitchError(409, f"{', '.join(names)} did not stop after an interrupt")
            await asyncio.sleep(0.05)

    # -- a kernel's variables ----------------------------------------------------------

    async def save(self, kernel_id: str, path: str) -> KernelReport:
        """Checkpoint the variables of the kernel (of notebook ``path``); its report."""
        report = KernelReport(kernel_id, path)
        if not self.is_python(kernel_id):
            report.failed["*"] = "only the variables of Python kernels can be kept"
            report.lost = "only the variables of Python kernels can be kept"
            return report
        try:
            target = self.checkpoints.new(kernel_id, path)
        except OSError as e:  # a full home or quota, a folder the user made unwritable
            raise SwitchError(
                507 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 500,
                f"checkpointing {path or kernel_id} failed: cannot write in "
                f"{self.checkpoints.folder} ({e.strerror}). Free some space in your home or "
                "grow it (gpulab storage resize SIZE), then try again; nothing was changed",
            ) from None
        self._saving[kernel_id] = target
        try:
            await self.run(kernel_id, "save", str(target), f"checkpointing {path or kernel_id}")
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

    async def load(self, kernel_id: str, file: Path, saved: list[str], what: str) -> dict:
        """Load checkpoint ``file`` into the kernel; what it reports it restored (all that
        was ``saved`` when it could not write its report)."""
        await self.run(kernel_id, "load", str(file), what)
        return _restored_report(file, saved)

    # -- calling namespace.py ----------------------------------------------------------

    async def run(self, kernel_id: str, func: str, arg: str, what: str, timeout=300) -> None:
        """Call ``namespace.py``'s ``func(arg)`` in the kernel, in a namespace of its own."""
        code = (
            "(lambda ns: (exec(compile(__import__('base64').b64decode("
            f"{_b64(SOURCE)!r}).decode(), '<gpulab>', 'exec'), ns), ns[{func!r}]({arg!r})))"
            "({'__name__': 'gpulab_kernel_state'})"
        )
        pid = self.pid(kernel_id)
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
        if pid is not None and (gone(pid) or self.pid(kernel_id) != pid):
            reason = _exit_status(self.km.get_kernel(kernel_id), pid)
            raise KernelDied(f"{what} did not finish: the kernel died ({reason})", reason)


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


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()
