"""How a running server's kernels get off and onto GPUs, for ``GpuSwitch``.

- ``KernelMover`` (the local backend): the server moves its kernels itself: it
  checkpoints them and restarts them on the new devices (or none), and keeps running.
- ``PodMover`` (``gpu_switch_mode = "pod"``, the kubernetes backend): the server
  checkpoints its kernels for its successor and shuts them down, the spawner deletes its
  pod and waits until the watch has seen it gone (only then is a returned GPU free), and
  starts a new pod on the same home with the new GPUs, or none; that server starts the
  notebooks again and restores their variables.

Each records what it did in the server's operation (``ledger.update_operation``); the
switch decides what to do and when (locks, queue, settling after a restart).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .ledger import Operation
from .servercalls import SwitchError, call_server, label, reason, switch_devices

if TYPE_CHECKING:
    from .gpuswitch import GpuSwitch

log = logging.getLogger(__name__)


@dataclass
class Returning:
    """A Return GPU under way: done (``result``), or going on in ``task``, with ``freed``
    set to the released GPUs once they are free."""

    result: dict | None = None
    freed: asyncio.Future | None = None
    task: asyncio.Task | None = None


class Mover(ABC):
    def __init__(self, switch: GpuSwitch):
        self.switch = switch
        self.ledger = switch.ledger

    @abstractmethod
    async def return_gpu(
        self, spawner, why: str, interrupt: bool, force: bool, t0: float
    ) -> Returning:
        """Take the server's kernels off its GPUs (refusals raise ``SwitchError``)."""

    @abstractmethod
    async def move_onto(self, spawner, ids: list[str]) -> dict | None:
        """Move the server's kernels onto the granted GPUs ``ids``: the result, or None
        when it could not be done (recorded in the operation, the grant freed)."""

    @abstractmethod
    async def settle(self, spawner, op: Operation, held: list[str]) -> None:
        """Finish or undo ``op``, which a hub restart interrupted."""


class KernelMover(Mover):
    async def return_gpu(
        self, spawner, why: str, interrupt: bool, force: bool, t0: float
    ) -> Returning:
        user, server = spawner.user.name, spawner.name
        try:
            result = await switch_devices(spawner, "", interrupt=interrupt, force=force)
        except SwitchError as e:
            self.ledger.update_operation(user, server, state="failed", message=e.message)
            raise
        released = self.ledger.release(user, server, why)
        seconds = round(time.monotonic() - t0, 3)
        spawner.gpus_changed([])
        message = f"Returned GPU {', '.join(released)}; " + where_kernels_run(result)
        # the GPU is free once the kernels let go of it: at the end, here
        result.update(gpu_ids=released, seconds=seconds, free_seconds=seconds)
        op = self.ledger.update_operation(
            user, server, state="done", message=message, detail=result
        )
        log.info("%s returned GPU(s) %s in %.3fs (%s)", (user, server), released, seconds, why)
        return Returning(
            {"released": released, "message": message, "operation": self.switch.operation_json(op)}
        )

    async def move_onto(self, spawner, ids: list[str]) -> dict | None:
        try:
            return await switch_devices(spawner, ",".join(ids), interrupt=True)
        except SwitchError as e:
            message = f"Could not move your kernels to GPU {', '.join(ids)}: {e.message}"
            await self.undo_grant(spawner, message)
            return None

    async def undo_grant(self, spawner, message: str) -> None:
        """Give back a grant whose server could not use it, once no kernel has it."""
        user, server = spawner.user.name, spawner.name
        try:
            await switch_devices(spawner, "", interrupt=True)
        except SwitchError as e:
            message += f"; the GPU stays granted, as the server may still use it ({e.message})"
        else:
            self.ledger.release(user, server, "Get GPU rolled back")
            spawner.gpus_changed([])
        self.ledger.update_operation(user, server, state="failed", message=message)

    async def settle(self, spawner, op: Operation, held: list[str]) -> None:
        """A Return whose server already runs its kernels without the GPU is finished (the
        grant released); one whose server still has the GPU is undone (the GPU stays
        granted, as it is in use). A Get GPU that was moving kernels likewise."""
        where = label(op.user, op.server)
        try:
            visible = await self._settled_devices(spawner)
        except SwitchError as e:
            log.warning("Cannot settle %s's %s after a restart: %s", where, op.kind, e)
            self.ledger.update_operation(
                op.user, op.server, state="failed", message=f"Interrupted: {e.message}"
            )
            return
        uses = {v for v in visible.split(",") if v}
        if op.kind == "return" and not uses:
            released = self.ledger.release(op.user, op.server, op.reason or "returned")
            spawner.gpus_changed([])
            message = f"Returned GPU {', '.join(released)} (finished after a hub restart)"
            self.ledger.update_operation(op.user, op.server, state="done", message=message)
        elif op.kind == "get" and held and uses == set(held):
            self.ledger.update_operation(
                op.user, op.server, state="done", message="Got the GPU (after a hub restart)"
            )
        elif op.kind == "get":
            await self.undo_grant(spawner, "Interrupted by a hub restart; try again")
        else:
            self.ledger.update_operation(
                op.user,
                op.server,
                state="failed",
                message="Interrupted by a hub restart; the server kept its GPU",
            )
        log.info("Settled %s's interrupted %s after a restart", where, op.kind)

    async def _settled_devices(self, spawner, patience: float = 330) -> str:
        """The server's devices once a switch it may still be doing has finished."""
        deadline = time.monotonic() + patience
        while True:
            activity = await call_server(spawner, "GET", "activity", timeout=30)
            if not activity.get("switching") or time.monotonic() > deadline:
                return activity["visible"]
            await asyncio.sleep(0.2)


class PodMover(Mover):
    async def return_gpu(
        self, spawner, why: str, interrupt: bool, force: bool, t0: float
    ) -> Returning:
        # refusals (busy notebooks, other GPU processes) are answered here
        checkpoint = await self._checkpoint_for_move(spawner, interrupt, force)
        freed = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._return_by_pod(spawner, why, checkpoint, t0, freed))
        task.add_done_callback(_retrieved)  # its failure is in the operation
        return Returning(freed=freed, task=task)

    async def _return_by_pod(self, spawner, why, checkpoint, t0, freed) -> None:
        """Delete the checkpointed GPU pod, free its GPUs, start a CPU pod on the same home."""
        user, server = spawner.user.name, spawner.name
        released: list[str] = []
        free_seconds = 0.0

        def gone() -> None:
            nonlocal free_seconds
            free_seconds = round(time.monotonic() - t0, 3)
            released.extend(self.ledger.release(user, server, why))
            spawner.gpus_changed([])
            freed.set_result(released)
            self.ledger.update_operation(
                user,
                server,
                state="restoring",
                message=f"GPU {', '.join(released)} is free; starting your server without a GPU",
            )

        try:
            result = await self._replace_pod(spawner, [], checkpoint, gone)
        except Exception as e:
            if not isinstance(e, SwitchError):
                log.exception("Return GPU of %s failed", label(user, server))
                e = SwitchError(500, f"the return failed: {reason(e)}")
            if not released:  # nothing changed: the server runs on with its GPU
                self.ledger.update_operation(user, server, state="failed", message=e.message)
                raise e from None
            await self._stop_server(spawner, f"Returned GPU {', '.join(released)}, but {e.message}")
            return
        seconds = round(time.monotonic() - t0, 3)
        result.update(gpu_ids=released, seconds=seconds, free_seconds=free_seconds)
        message = (
            f"Returned GPU {', '.join(released)}; your server moved to a new pod without a "
            "GPU, and your notebooks with it"
        )
        self.ledger.update_operation(user, server, state="done", message=message, detail=result)
        where = label(user, server)
        log.info("%s returned GPU(s) %s by a new pod in %.3fs (%s)", where, released, seconds, why)

    async def move_onto(self, spawner, ids: list[str]) -> dict | None:
        """Get GPU by a new pod; None when it could not be done (recorded, grant freed)."""
        user, server = spawner.user.name, spawner.name
        removed = False

        def gone() -> None:
            nonlocal removed
            removed = True
            self.ledger.update_operation(
                user, server, message=f"Starting your server on GPU {', '.join(ids)}"
            )

        try:
            checkpoint = await self._checkpoint_for_move(spawner, True, False)
            result = await self._replace_pod(spawner, ids, checkpoint, gone)
        except SwitchError as e:
            message = f"Could not move your server to GPU {', '.join(ids)}: {e.message}"
            self.ledger.release(user, server, "Get GPU rolled back")
            spawner.gpus_changed([])
            if not removed:  # the old server runs on, without a GPU
                self.ledger.update_operation(user, server, state="failed", message=message)
                return None
            try:
                await spawner.recreate_pod([])
            except Exception as again:  # noqa: BLE001
                await self._stop_server(spawner, f"{message}; nor without one: {reason(again)}")
                return None
            self.ledger.update_operation(
                user, server, state="failed", message=f"{message}. It runs without a GPU again"
            )
            return None
        result["restore"] = {"message": "Your server moved to a new pod with it."}
        return result

    async def settle(self, spawner, op: Operation, held: list[str]) -> None:
        """A pod replacement the hub did not see through: the pod there now decides.

        The old pod still there (not being deleted): the server carries on in it, its
        notebooks started again. The new one: the hub follows it. None: the server is
        stopped for the hub, its GPUs freed; its notebooks come back when it starts.
        """
        user, server = op.user, op.server
        try:
            on_pod = await spawner.pod_gpus()
        except Exception as e:  # noqa: BLE001 -- the server's next poll settles it
            log.warning("Cannot settle %s's %s: %s", label(user, server), op.kind, e)
            self.ledger.update_operation(user, server, state="failed", message="Interrupted")
            return
        old = held if op.kind == "return" else []
        if on_pod is None:
            self.ledger.release(user, server, "its pod is gone")
            await self._stop_server(spawner, "Interrupted by a hub restart while moving")
            return
        if on_pod == old:  # the move did not get as far as deleting the pod
            if op.kind == "get":
                self.ledger.release(user, server, "Get GPU rolled back")
                spawner.gpus_changed([])
            await self._resume_in_place(spawner)
            message = "Interrupted by a hub restart; " + (
                "the server kept its GPU" if op.kind == "return" else "try again"
            )
            self.ledger.update_operation(user, server, state="failed", message=message)
            return
        released = self.ledger.release(user, server, op.reason) if op.kind == "return" else []
        spawner.gpus_changed(on_pod)
        try:
            await spawner.adopt_pod(timeout=spawner.start_timeout)
        except Exception as e:  # noqa: BLE001
            await self._stop_server(spawner, f"Interrupted by a hub restart: {reason(e)}")
            return
        message = (
            f"Returned GPU {', '.join(released)} (finished after a hub restart)"
            if op.kind == "return"
            else "Got the GPU (after a hub restart)"
        )
        self.ledger.update_operation(user, server, state="done", message=message)

    async def _checkpoint_for_move(self, spawner, interrupt: bool, force: bool) -> dict:
        """The server checkpoints its kernels for its successor and shuts them down."""
        user, server = spawner.user.name, spawner.name
        body = {"interrupt": interrupt, "force": force}
        try:
            checkpoint = await call_server(spawner, "POST", "checkpoint", body)
        except SwitchError as e:
            self.ledger.update_operation(user, server, state="failed", message=e.message)
            raise
        self.ledger.update_operation(
            user,
            server,
            message="Kernels checkpointed; stopping the server's pod",
            detail={**self.ledger.operation(user, server).detail, **checkpoint},
        )
        return checkpoint

    async def _replace_pod(self, spawner, ids: list[str], checkpoint: dict, gone) -> dict:
        """Move the checkpointed server to a new pod with GPUs ``ids``: delete its pod
        (``gone()`` once the watch saw it go), start the new one. A SwitchError before
        ``gone()``: the old server runs on as it was, its notebooks started again."""
        result = {**self.ledger.operation(spawner.user.name, spawner.name).detail, **checkpoint}
        try:
            await spawner.remove_pod()
        except Exception as e:  # noqa: BLE001 -- the pod is still there: carry on in it
            await self._resume_in_place(spawner)
            raise SwitchError(503, f"could not stop the server's pod: {reason(e)}") from None
        gone()
        try:
            await spawner.recreate_pod(ids)
        except Exception as e:  # noqa: BLE001 -- the caller decides what comes next
            raise SwitchError(503, f"the new pod did not start: {reason(e)}") from None
        result["new_pod"] = True
        return result

    async def _resume_in_place(self, spawner) -> None:
        """The move is off: the old server starts its checkpointed notebooks again."""
        try:
            await call_server(spawner, "POST", "resume", {}, timeout=30)
        except SwitchError as e:
            where = label(spawner.user.name, spawner.name)
            log.warning("%s could not start its notebooks again: %s", where, e.message)

    async def _stop_server(self, spawner, message: str) -> None:
        """No pod could be started: stop the server for the hub, so it can be started
        again (its notebooks' variables come back then, from the checkpoint)."""
        user, server = spawner.user.name, spawner.name
        log.error("Stopping %s: %s", label(user, server), message)
        try:
            await spawner.user.stop(server)
        except Exception:  # noqa: BLE001 -- recorded below either way
            log.exception("Stopping %s failed", label(user, server))
        self.ledger.update_operation(
            user,
            server,
            state="failed",
            message=f"{message}. Start your server again: your notebooks and their "
            "variables come back when it starts",
        )


MOVERS: dict[str, type[Mover]] = {"kernels": KernelMover, "pod": PodMover}
"""The mover for each ``gpu_switch_mode`` a spawner declares."""


def where_kernels_run(result: dict) -> str:
    """After a return: the kernels on the CPU, and those the CUDA driver parked."""
    parked = [k.get("path") or "a kernel" for k in result.get("kernels", [])
              if k.get("kept_by") == "driver"]  # fmt: skip
    if not parked:
        return "your kernels now run on the CPU"
    which = ", ".join(parked)
    if result.get("path") == "driver":
        return f"your kernels keep running ({which}): their GPU memory waits in host memory for Get GPU"
    return (
        f"your kernels now run on the CPU, but for {which}: kept running, its GPU memory waits in "
        "host memory for Get GPU"
    )


def _retrieved(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
