"""Return GPU and Get GPU for running servers, and GPU-aware idle reclaim.

The hub decides, the server carries out. Returning a server's GPUs:

1. record the operation (``gpu_operations``), so a hub restart can finish or undo it;
2. ask the server's extension to checkpoint its kernels and restart them without a GPU
   (``POST {server}/gpulab/internal/switch {"visible": ""}``); it answers once the old
   kernel processes are gone;
3. only then free the grants in the ledger. A GPU is therefore never free in the ledger
   while a process of the server can still use it.

Getting a GPU queues the request (first come, first served; spawns may not take GPUs the
queue is waiting for), reserves in the ledger, then asks the server to move its kernels
onto the granted devices and restore their variables. If the server cannot, its kernels
are moved back and the grant released, so nothing is held that is not used.

Where the spawner replaces the server instead (``gpu_switch_mode = "pod"``, the kubernetes
backend), the server checkpoints its kernels for its successor and shuts them down, the
spawner deletes its pod and waits until the watch has seen it gone (only then is a
returned GPU free), and starts a new pod on the same home with the new GPUs, or none;
that server starts the notebooks again and restores their variables.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections import defaultdict
from datetime import timedelta

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from gpulab.extensions.server import INTERNAL_SECRET_HEADER

from .app import context
from .ledger import GpuLedger, LedgerError, NoGpuFree, Operation, Waiter, utcnow
from .settings import Settings

log = logging.getLogger(__name__)


class SwitchError(Exception):
    """A Return/Get GPU that cannot be done; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str, **detail):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


OWNER = "user"
"""Who an operation's reason names when the server's owner asked for it: "returned by
user", "Get GPU by user" (an admin is "admin NAME"; the idle reclaim has its own)."""


def label(user: str, server: str) -> str:
    return f"{user}/{server}" if server else user


class GpuSwitch:
    def __init__(self, ledger: GpuLedger, settings: Settings):
        self.ledger = ledger
        self.settings = settings
        self._locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._waits: dict[tuple[str, str], asyncio.Task] = {}
        self._changed = asyncio.Event()
        self._status_changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the hub's, once someone waits
        ledger.on_change(self._ledger_changed)
        self._last_busy: dict[tuple[str, str], float] = {}
        self.settled = asyncio.Event()
        """Set once the operations a hub restart interrupted are finished or undone (at
        once on a fresh hub). New ones wait for it: settling clears the queue of GPU
        requests, and would cancel one made before."""

    # -- what a server holds -----------------------------------------------------------

    def status(self, spawner) -> dict:
        """What the server holds, the pool and its last operation, from the ledger's
        snapshot (no database read unless the ledger changed); ``etag`` names the answer."""
        user, server = spawner.user.name, spawner.name
        snap = self.ledger.snapshot()
        profile = self._profile(spawner)
        model = {
            "user": user,
            "server": server,
            "running": bool(spawner.ready),
            "gpus": [gpu.as_json() for gpu in snap.held_by(user, server)],
            "profile": profile.slug if profile else None,
            "profile_gpus": profile.gpus if profile else 0,
            "limit": self.ledger.user_limit(user),
            "free": snap.free,
            "total": len(snap.pool),
            "queue": len(snap.queue),
            "operation": self._op_json(snap.operations.get((user, server)), snap.queue),
            "switch_unavailable": unavailable(spawner) or None,
            "switch_mode": switch_mode(spawner),
        }
        digest = hashlib.blake2b(json.dumps(model, sort_keys=True).encode(), digest_size=8)
        model["etag"] = digest.hexdigest()
        return model

    async def status_change(self, spawner, etag: str, seconds: float) -> dict:
        """The server's status once it differs from the one named ``etag``, or after
        ``seconds`` (a server's extension waits here instead of polling)."""
        self._loop = asyncio.get_running_loop()
        deadline = time.monotonic() + seconds
        while True:
            changed = self._status_changed
            model = self.status(spawner)
            left = deadline - time.monotonic()
            if model["etag"] != etag or left <= 0:
                return model
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                pass

    def _ledger_changed(self) -> None:
        """After a ledger commit, in whichever thread made it: wake ``status_change``."""
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if self._loop is None:
            return  # nobody waits yet
        if here is self._loop:
            self._wake_status()
        else:
            self._loop.call_soon_threadsafe(self._wake_status)

    def _wake_status(self) -> None:
        self._status_changed.set()
        self._status_changed = asyncio.Event()

    def _op_json(self, op: Operation | None, queue: list[Waiter] | None = None) -> dict | None:
        if op is None:
            return None
        model = op.as_json()
        model["by_owner"] = op.reason.endswith(f" by {OWNER}")
        model["position"] = None
        if op.kind == "acquire" and op.state == "queued":
            waiting = [
                (w.user, w.server) for w in (self.ledger.queue() if queue is None else queue)
            ]
            if (op.user, op.server) in waiting:
                model["position"] = waiting.index((op.user, op.server)) + 1
                model["message"] = (
                    f"Waiting for {op.gpus} GPU{'s' * (op.gpus != 1)}: "
                    f"position {model['position']} in the queue"
                )
        return model

    def _profile(self, spawner):
        slug = getattr(spawner, "profile_slug", "") or None
        try:
            return self.settings.profile(slug)
        except Exception:  # noqa: BLE001 -- a profile removed from the settings since
            return None

    # -- the kernels' checkpoints ------------------------------------------------------

    async def checkpoint_request(self, spawner, method: str, path: str = "", body=None):
        """List, restore or delete the checkpoints of a running server's kernels (on its
        home, kept by its server: ``gpulab gpu checkpoints``)."""
        self._require_running(spawner)
        return await self._call(spawner, method, "checkpoints" + path, body)

    # -- Return GPU --------------------------------------------------------------------

    async def give_back(
        self,
        spawner,
        reason: str,
        interrupt: bool = False,
        force: bool = False,
        wait: bool = True,
    ) -> dict:
        """Return every GPU of a running server, keeping its kernels' state.

        Answers once the GPUs are free; for a server whose pod is replaced, the new pod
        starts after that, followed in the operation (at once with ``wait=False``: the
        caller may be talking through the pod that goes away)."""
        user, server = spawner.user.name, spawner.name
        key = (user, server)
        await self.settled.wait()
        async with self._locks[key]:
            held = [g.gpu_id for g in self.ledger.grants(user) if g.server == server]
            waiting = self._waits.get(key)
            if waiting is not None and not waiting.done():
                if self.ledger.operation(user, server).kind == "return":
                    return {
                        "released": [],
                        "message": f"{label(user, server)} is already returning its GPU",
                        "operation": self._op_json(self.ledger.operation(user, server)),
                    }
                raise SwitchError(
                    409, f"{label(user, server)} is still getting a GPU; cancel that first"
                )
            _require_switchable(spawner)
            if not held:
                return {
                    "released": [],
                    "message": f"{label(user, server)} holds no GPU: nothing to return",
                    "operation": self._op_json(self.ledger.operation(user, server)),
                }
            self._require_running(spawner)
            t0 = time.monotonic()
            self.ledger.begin_operation(
                user,
                server,
                "return",
                gpus=len(held),
                reason=reason,
                message="Checkpointing kernels…",
                detail={"gpu_ids": held},
            )
            if switch_mode(spawner) == "pod":
                # refusals (busy notebooks, other GPU processes) are answered here
                checkpoint = await self._checkpoint_for_move(spawner, interrupt, force)
                freed = asyncio.get_running_loop().create_future()
                task = asyncio.ensure_future(
                    self._return_by_pod(spawner, reason, checkpoint, t0, freed)
                )
                task.add_done_callback(_retrieved)  # its failure is in the operation
                self._waits[key] = task
            else:
                return await self._return_in_place(spawner, reason, interrupt, force, t0)
        if not wait:
            return {
                "released": [],
                "message": "Returning the GPU: your server moves to a new pod",
                "operation": self._op_json(self.ledger.operation(user, server)),
            }
        await asyncio.wait([freed, task], return_when=asyncio.FIRST_COMPLETED)
        if not freed.done():
            task.result()  # the SwitchError that stopped it
            raise SwitchError(500, "the return ended without freeing the GPU")
        released = freed.result()
        return {
            "released": released,
            "message": f"Returned GPU {', '.join(released)}; your server is moving to a "
            "new pod without a GPU",
            "operation": self._op_json(self.ledger.operation(user, server)),
        }

    async def _return_in_place(self, spawner, reason, interrupt, force, t0) -> dict:
        """The server moves its kernels off the GPU itself; it keeps running."""
        user, server = spawner.user.name, spawner.name
        try:
            result = await self._switch(spawner, "", interrupt=interrupt, force=force)
        except SwitchError as e:
            self.ledger.update_operation(user, server, state="failed", message=e.message)
            raise
        released = self.ledger.release(user, server, reason)
        seconds = round(time.monotonic() - t0, 3)
        spawner.gpus_changed([])
        self._wake()
        message = f"Returned GPU {', '.join(released)}; " + _where_kernels_run(result)
        result.update(gpu_ids=released, seconds=seconds)
        op = self.ledger.update_operation(
            user, server, state="done", message=message, detail=result
        )
        log.info("%s returned GPU(s) %s in %.3fs (%s)", (user, server), released, seconds, reason)
        return {"released": released, "message": message, "operation": self._op_json(op)}

    async def _return_by_pod(self, spawner, reason, checkpoint, t0, freed) -> None:
        """Delete the checkpointed GPU pod, free its GPUs, start a CPU pod on the same home."""
        user, server = spawner.user.name, spawner.name
        released: list[str] = []
        free_seconds = 0.0

        def gone() -> None:
            nonlocal free_seconds
            free_seconds = round(time.monotonic() - t0, 3)
            released.extend(self.ledger.release(user, server, reason))
            spawner.gpus_changed([])
            self._wake()
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
                e = SwitchError(500, f"the return failed: {_reason(e)}")
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
        log.info(
            "%s returned GPU(s) %s by a new pod in %.3fs (%s)", where, released, seconds, reason
        )

    async def _checkpoint_for_move(self, spawner, interrupt: bool, force: bool) -> dict:
        """The server checkpoints its kernels for its successor and shuts them down."""
        user, server = spawner.user.name, spawner.name
        body = {"interrupt": interrupt, "force": force}
        try:
            checkpoint = await self._call(spawner, "POST", "checkpoint", body)
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
            raise SwitchError(503, f"could not stop the server's pod: {_reason(e)}") from None
        gone()
        try:
            await spawner.recreate_pod(ids)
        except Exception as e:  # noqa: BLE001 -- the caller decides what comes next
            raise SwitchError(503, f"the new pod did not start: {_reason(e)}") from None
        result["new_pod"] = True
        return result

    async def _resume_in_place(self, spawner) -> None:
        """The move is off: the old server starts its checkpointed notebooks again."""
        try:
            await self._call(spawner, "POST", "resume", {}, timeout=30)
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

    # -- Get GPU -----------------------------------------------------------------------

    async def acquire(self, spawner, count: int, timeout: float | None, reason: str) -> dict:
        """Queue a request for GPUs; the returned operation is followed with ``status``."""
        user, server = spawner.user.name, spawner.name
        key = (user, server)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise SwitchError(400, f"gpus must be a whole number of 1 or more, got {count!r}")
        limit = self.settings.gpus.acquire_timeout
        if timeout is None:
            timeout = limit
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise SwitchError(400, f"timeout must be a number of seconds, got {timeout!r}")
        timeout = min(float(timeout), float(limit))
        _require_switchable(spawner)
        await self.settled.wait()
        async with self._locks[key]:
            waiting = self._waits.get(key)
            if waiting is not None and not waiting.done():
                if self.ledger.operation(user, server).kind == "return":
                    raise SwitchError(409, f"{label(user, server)} is still returning its GPU")
                return {"operation": self._op_json(self.ledger.operation(user, server))}
            held = [g.gpu_id for g in self.ledger.grants(user) if g.server == server]
            if held:
                if len(held) == count:
                    return {
                        "message": f"{label(user, server)} already holds GPU {', '.join(held)}",
                        "operation": self._op_json(self.ledger.operation(user, server)),
                    }
                raise SwitchError(
                    409, f"{label(user, server)} holds {len(held)} GPU(s); return them first"
                )
            self._require_running(spawner)
            groups = [g.name for g in spawner.user.groups]
            # a server's GPUs are on one node; a request that could never be granted is
            # refused now, not left in the queue until its timeout
            refused = self.ledger.never_granted(user, groups, count, {"Get GPU": count}, "Get GPU")
            if refused:
                raise SwitchError(*refused)
            before = self._returned_gpus(user, server)
            waiter = self.ledger.enqueue(user, server, count)
            try:
                gpus = self.ledger.reserve(
                    user, server, count, groups, reason, waiter=waiter, prefer=before
                )
            except NoGpuFree:
                gpus = None
            except LedgerError as e:
                self.ledger.dequeue(user, server)
                raise SwitchError(e.status, e.message_for(admin=spawner.user.admin)) from None
            deadline = utcnow() + timedelta(seconds=timeout)
            self.ledger.begin_operation(
                user,
                server,
                "acquire",
                state="queued" if gpus is None else "restoring",
                gpus=count,
                reason=reason,
                message="Waiting for a GPU" if gpus is None else "Moving your kernels to the GPU",
                deadline=deadline,
            )
            task = asyncio.ensure_future(
                self._acquire(spawner, count, groups, waiter, gpus, before)
            )
            self._waits[key] = task
            return {"operation": self._op_json(self.ledger.operation(user, server))}

    def cancel(self, spawner) -> dict:
        user, server = spawner.user.name, spawner.name
        task = self._waits.get((user, server))
        op = self.ledger.operation(user, server)
        if task is None or task.done() or op is None or op.state != "queued":
            return {
                "message": f"{label(user, server)} is not waiting for a GPU",
                "operation": self._op_json(op),
            }
        task.cancel()
        self.ledger.dequeue(user, server)
        op = self.ledger.update_operation(
            user, server, state="cancelled", message="Get GPU cancelled"
        )
        return {"message": "Get GPU cancelled", "operation": self._op_json(op)}

    def _returned_gpus(self, user: str, server: str) -> list[str]:
        """The GPUs the server's last Return GPU released: Get GPU takes them again when
        they are free (a kernel the CUDA driver parked goes back without remapping)."""
        op = self.ledger.operation(user, server)
        if op is None or op.kind != "return" or op.state != "done":
            return []
        return list(op.detail.get("gpu_ids") or [])

    async def _acquire(self, spawner, count, groups, waiter, gpus, before) -> None:
        user, server = spawner.user.name, spawner.name
        try:
            while gpus is None:
                op = self.ledger.operation(user, server)
                if op.deadline and utcnow() >= op.deadline:
                    self.ledger.dequeue(user, server)
                    waited = (op.deadline - op.started).total_seconds()
                    self.ledger.update_operation(
                        user,
                        server,
                        state="failed",
                        message=f"No GPU became free within {waited:.0f}s; try again later",
                    )
                    return
                if not spawner.ready:
                    self.ledger.dequeue(user, server)
                    self.ledger.update_operation(
                        user, server, state="cancelled", message="The server stopped"
                    )
                    return
                try:
                    gpus = self.ledger.reserve(
                        user, server, count, groups, op.reason, waiter=waiter, prefer=before
                    )
                except NoGpuFree:
                    await self._wait_change(0.5)
                except LedgerError as e:
                    self.ledger.dequeue(user, server)
                    self.ledger.update_operation(
                        user, server, state="failed", message=e.message_for(admin=False)
                    )
                    return
            await self._move_onto(spawner, [g.id for g in gpus])
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 -- recorded for the user, never lost in a task
            log.exception("Get GPU for %s failed", label(user, server))
            self.ledger.update_operation(user, server, state="failed", message=str(e))

    async def _move_onto(self, spawner, ids: list[str]) -> None:
        user, server = spawner.user.name, spawner.name
        spawner.gpus_changed(ids)
        self.ledger.update_operation(
            user,
            server,
            state="restoring",
            message=f"Granted GPU {', '.join(ids)}; restoring your kernels on it",
        )
        if switch_mode(spawner) == "pod":
            result = await self._onto_new_pod(spawner, ids)
            if result is None:
                return
        else:
            try:
                result = await self._switch(spawner, ",".join(ids), interrupt=True)
            except SwitchError as e:
                message = f"Could not move your kernels to GPU {', '.join(ids)}: {e.message}"
                await self._undo_grant(spawner, message)
                return
        restore = result.get("restore") or {}
        message = f"Got GPU {', '.join(ids)}. {restore.get('message', '')}".strip()
        result["gpu_ids"] = ids
        self.ledger.update_operation(user, server, state="done", message=message, detail=result)
        log.info("%s got GPU(s) %s", label(user, server), ids)

    async def _onto_new_pod(self, spawner, ids: list[str]) -> dict | None:
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
            self._wake()
            if not removed:  # the old server runs on, without a GPU
                self.ledger.update_operation(user, server, state="failed", message=message)
                return None
            try:
                await spawner.recreate_pod([])
            except Exception as again:  # noqa: BLE001
                await self._stop_server(spawner, f"{message}; nor without one: {_reason(again)}")
                return None
            self.ledger.update_operation(
                user, server, state="failed", message=f"{message}. It runs without a GPU again"
            )
            return None
        result["restore"] = {"message": "Your server moved to a new pod with it."}
        return result

    async def _undo_grant(self, spawner, message: str) -> None:
        """Give back a grant whose server could not use it, once no kernel has it."""
        user, server = spawner.user.name, spawner.name
        try:
            await self._switch(spawner, "", interrupt=True)
        except SwitchError as e:
            message += f"; the GPU stays granted, as the server may still use it ({e.message})"
        else:
            self.ledger.release(user, server, "Get GPU rolled back")
            spawner.gpus_changed([])
            self._wake()
        self.ledger.update_operation(user, server, state="failed", message=message)

    # -- talking to the server ---------------------------------------------------------

    def _require_running(self, spawner) -> None:
        if not spawner.ready or spawner.pending:
            state = spawner.pending or "not running"
            raise SwitchError(409, f"{label(spawner.user.name, spawner.name)}'s server is {state}")

    async def _call(self, spawner, method: str, path: str, body=None, timeout: float = 330):
        # 330 s: a kernel's checkpoint may take 300 s in the server, and the server's
        # relay of a Return or Get GPU (SWITCH_RELAY_TIMEOUT there) waits longer than this
        if not spawner.internal_secret:
            raise SwitchError(
                409,
                f"{label(spawner.user.name, spawner.name)}'s server was started by an older "
                "gpulab; restart it to return or get a GPU",
            )
        why = spawner.impostor()
        if why:
            raise SwitchError(502, f"not calling the server: {why}")
        url = spawner.server.url.rstrip("/") + "/gpulab/internal/" + path
        request = HTTPRequest(
            url,
            method=method,
            # the secret made for this server alone: the server is the user's process, so
            # nothing sent to it may be good for anything else (never a hub token)
            headers={
                INTERNAL_SECRET_HEADER: spawner.internal_secret,
                "Content-Type": "application/json",
            },
            body=None if body is None else json.dumps(body),
            request_timeout=timeout,
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            if e.response is None:
                raise SwitchError(504, f"the server did not answer in time ({e})") from None
            try:
                answer = json.loads(e.response.body)
                message = answer.pop("message")
            except (ValueError, KeyError, TypeError):
                message, answer = f"the server answered {e.code}", {}
            raise SwitchError(e.code, message, **answer) from None
        except OSError as e:
            raise SwitchError(502, f"cannot reach the server: {e}") from None
        return json.loads(response.body) if response.body else {}

    async def _switch(self, spawner, visible: str, interrupt=False, force=False) -> dict:
        body = {"visible": visible, "interrupt": interrupt, "force": force}
        body["wait_restore"] = bool(visible)  # Return answers once the GPU is free
        return await self._call(spawner, "POST", "switch", body)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), seconds)
        except TimeoutError:
            pass

    # -- after a hub restart -------------------------------------------------------------

    async def recover(self, find_spawner) -> None:
        """Finish or undo the operations a hub restart interrupted.

        A Return whose server already runs its kernels without the GPU is finished (the
        grant released); one whose server still has the GPU is undone (the GPU stays
        granted, as it is in use). A Get GPU that was waiting is cancelled (its request
        died with the hub); one that was moving kernels is finished or undone the same way.
        """
        self.ledger.clear_queue()
        for op in self.ledger.operations(active_only=True):
            spawner = find_spawner(op.user, op.server)
            where = label(op.user, op.server)
            if op.state == "queued" or spawner is None or not spawner.ready:
                why = "the hub restarted" if op.state == "queued" else "the server is gone"
                self.ledger.update_operation(
                    op.user, op.server, state="cancelled", message=f"Interrupted: {why}"
                )
                continue
            held = [g.gpu_id for g in self.ledger.grants(op.user) if g.server == op.server]
            if switch_mode(spawner) == "pod":
                await self._settle_pod(spawner, op, sorted(held))
                continue
            try:
                visible = await self._settled_devices(spawner)
            except SwitchError as e:
                log.warning("Cannot settle %s's %s after a restart: %s", where, op.kind, e)
                self.ledger.update_operation(
                    op.user, op.server, state="failed", message=f"Interrupted: {e.message}"
                )
                continue
            uses = {v for v in visible.split(",") if v}
            if op.kind == "return" and not uses:
                released = self.ledger.release(op.user, op.server, op.reason or "returned")
                spawner.gpus_changed([])
                message = f"Returned GPU {', '.join(released)} (finished after a hub restart)"
                self.ledger.update_operation(op.user, op.server, state="done", message=message)
            elif op.kind == "acquire" and held and uses == set(held):
                self.ledger.update_operation(
                    op.user, op.server, state="done", message="Got the GPU (after a hub restart)"
                )
            elif op.kind == "acquire":
                await self._undo_grant(spawner, "Interrupted by a hub restart; try again")
            else:
                self.ledger.update_operation(
                    op.user,
                    op.server,
                    state="failed",
                    message="Interrupted by a hub restart; the server kept its GPU",
                )
            log.info("Settled %s's interrupted %s after a restart", where, op.kind)

    async def _settle_pod(self, spawner, op: Operation, held: list[str]) -> None:
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
            if op.kind == "acquire":
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
            await self._stop_server(spawner, f"Interrupted by a hub restart: {_reason(e)}")
            return
        message = (
            f"Returned GPU {', '.join(released)} (finished after a hub restart)"
            if op.kind == "return"
            else "Got the GPU (after a hub restart)"
        )
        self.ledger.update_operation(user, server, state="done", message=message)

    async def _settled_devices(self, spawner, patience: float = 330) -> str:
        """The server's devices once a switch it may still be doing has finished."""
        deadline = time.monotonic() + patience
        while True:
            activity = await self._call(spawner, "GET", "activity", timeout=30)
            if not activity.get("switching") or time.monotonic() > deadline:
                return activity["visible"]
            await asyncio.sleep(0.2)

    # -- idle reclaim --------------------------------------------------------------------

    async def reclaim_idle(self, find_spawner) -> list[str]:
        """Return the GPUs of servers whose profile's ``idle_return`` has passed."""
        returned = []
        now = time.time()
        holders = {(g.user, g.server): g for g in self.ledger.grants()}
        for (user, server), grant in holders.items():
            spawner = find_spawner(user, server)
            if spawner is None or not spawner.ready or spawner.pending or unavailable(spawner):
                continue
            profile = self._profile(spawner)
            limit = profile.idle_return_seconds if profile else 0
            op = self.ledger.operation(user, server)
            if not limit or (op is not None and op.active):
                continue
            try:
                activity = await self._call(spawner, "GET", "activity", timeout=30)
            except SwitchError as e:
                log.warning("Idle check of %s failed: %s", label(user, server), e)
                continue
            key = (user, server)
            busy_gpu = (activity.get("gpu_utilization") or 0) > self.settings.gpus.idle_utilization
            if activity["busy_kernels"] or activity["restoring"] or busy_gpu:
                self._last_busy[key] = now
            since = max(
                grant.granted_at.timestamp(),
                activity.get("started") or 0,
                activity.get("last_activity") or 0,
                self._last_busy.get(key, 0),
                op.finished.timestamp() if op is not None and op.finished else 0,
            )
            if now - since < limit:
                continue
            idle = _duration(now - since)
            try:
                await self.give_back(spawner, f"reclaimed: GPU idle for {idle}")
            except SwitchError as e:
                log.warning("Could not reclaim %s's idle GPU: %s", label(user, server), e)
                continue
            self._last_busy.pop(key, None)
            returned.append(label(user, server))
        return returned

    async def run_background(self, app) -> None:
        """At hub start: settle interrupted operations, then check for idle GPUs forever."""

        def find_spawner(user: str, server: str):
            try:
                return app.users[user].spawners.get(server)
            except KeyError:  # the user was deleted
                return None

        try:
            await self.recover(find_spawner)
        except Exception:  # noqa: BLE001 -- the hub must run on
            log.exception("Settling interrupted GPU operations failed")
        finally:
            self.settled.set()
        while True:
            await asyncio.sleep(self.settings.gpus.reclaim_interval)
            try:
                await self.reclaim_idle(find_spawner)
            except Exception:  # noqa: BLE001 -- try again next round
                log.exception("Idle GPU check failed")


def unavailable(spawner) -> str:
    """Why this server's spawner cannot move it off and onto GPUs ("" if it can)."""
    return getattr(spawner, "gpu_switch_unavailable", "")


def _retrieved(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def switch_mode(spawner) -> str:
    """How this server's GPUs change while it runs: its kernels move ("kernels"), or the
    spawner replaces its pod ("pod")."""
    return getattr(spawner, "gpu_switch_mode", "kernels")


def _where_kernels_run(result: dict) -> str:
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


def _reason(e: BaseException) -> str:
    """What went wrong, in words (a tornado HTTPError's message, not its repr)."""
    return getattr(e, "log_message", None) or str(e) or type(e).__name__


def _require_switchable(spawner) -> None:
    why = unavailable(spawner)
    if why:
        raise SwitchError(409, why)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@functools.cache
def gpu_switch() -> GpuSwitch:
    """The hub's one GpuSwitch (over the ledger of ``context()``)."""
    ctx = context()
    return GpuSwitch(ctx.ledger, ctx.settings)
