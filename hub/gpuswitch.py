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

How the kernels move is the mover's (``movers.py``): the server moves them itself, or
the spawner replaces its pod (``gpu_switch_mode = "pod"``, the kubernetes backend). The
calls to the server are in ``servercalls.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from .ledger import GpuLedger, LedgerError, NoGpuFree, Operation, Waiter, is_workload, utcnow
from .ledger.usage import Sample
from .movers import MOVERS, Mover
from .servercalls import (
    SwitchError,
    call_server,
    label,
    require_running,
    require_switchable,
    switch_mode,
    unavailable,
)
from .settings import Settings
from .utilization import ServerReported, Utilization, readings

log = logging.getLogger(__name__)


OWNER = "user"
"""Who an operation's reason names when the server's owner asked for it: "returned by
user", "Get GPU by user" (an admin is "admin NAME"; the idle reclaim has its own)."""


Clock = Callable[[], float]


class GpuSwitch:
    activity_timeout = 30.0
    """Seconds a round of the idle reclaim waits for one server to say what it does."""

    def __init__(
        self,
        ledger: GpuLedger,
        settings: Settings,
        clock: Clock = time.time,
        utilization: Utilization | None = None,
    ):
        self.ledger = ledger
        self.settings = settings
        self.clock = clock
        """The wall clock idle reclaim reads (seconds since the epoch, as the ledger's)."""
        self.utilization = utilization or ServerReported()
        """Where idle reclaim and usage accounting read how busy each GPU is."""
        self._locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._waits: dict[tuple[str, str], asyncio.Task] = {}
        self._changed = asyncio.Event()  # set (and replaced) at every ledger change
        self._loop: asyncio.AbstractEventLoop | None = None  # the hub's, once someone waits
        ledger.on_change(self._ledger_changed)
        self._last_busy: dict[tuple[str, str], float] = {}
        self._sampled: dict[tuple[str, str], float] = {}
        """When each server's utilisation was last sampled for usage accounting."""
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
            "operation": self.operation_json(snap.operations.get((user, server)), snap.queue),
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
            changed = self._changed
            model = self.status(spawner)
            left = deadline - time.monotonic()
            if model["etag"] != etag or left <= 0:
                return model
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                pass

    def _ledger_changed(self) -> None:
        """After a ledger commit, in whichever thread made it: wake ``status_change`` and
        the Get GPU requests waiting for a free GPU."""
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if self._loop is None:
            return  # nobody waits yet
        if here is self._loop:
            self._wake()
        else:
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def operation_json(
        self, op: Operation | None, queue: list[Waiter] | None = None
    ) -> dict | None:
        if op is None:
            return None
        model = op.as_json()
        model["by_owner"] = op.reason.endswith(f" by {OWNER}")
        model["position"] = None
        if op.kind == "get" and op.state == "queued":
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
        try:
            return self.settings.profile(_slug(spawner) or None)
        except Exception:  # noqa: BLE001 -- a profile removed from the settings since
            return None

    def _reclaim_profile(self, spawner, held: int):
        """The profile whose ``idle_return`` holds for a server's ``held`` GPUs: its own;
        for a server of a profile without GPUs that got some with Get GPU, the first
        profile that grants as many (else the first with GPUs at all), so a CPU profile
        is no way around the reclaim."""
        profile = self._profile(spawner)
        if profile is None or profile.gpus:
            return profile
        with_gpus = [p for p in self.settings.profiles if p.gpus]
        fits = [p for p in with_gpus if p.gpus >= held]
        return (fits or with_gpus or [profile])[0]

    def mover(self, spawner) -> Mover:
        """How this server's kernels move off and onto GPUs (``movers.py``)."""
        return MOVERS[switch_mode(spawner)](self)

    # -- the kernels' checkpoints ------------------------------------------------------

    async def checkpoint_request(self, spawner, method: str, path: str = "", body=None):
        """List, restore or delete the checkpoints of a running server's kernels (on its
        home, kept by its server: ``gpulab gpu checkpoints``)."""
        require_running(spawner)
        return await call_server(spawner, method, "checkpoints" + path, body)

    # -- Return GPU --------------------------------------------------------------------

    async def return_gpu(
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
                        "operation": self.operation_json(self.ledger.operation(user, server)),
                    }
                raise SwitchError(
                    409, f"{label(user, server)} is still getting a GPU; cancel that first"
                )
            require_switchable(spawner)
            if not held:
                return {
                    "released": [],
                    "message": f"{label(user, server)} holds no GPU: nothing to return",
                    "operation": self.operation_json(self.ledger.operation(user, server)),
                }
            require_running(spawner)
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
            returning = await self.mover(spawner).return_gpu(spawner, reason, interrupt, force, t0)
            if returning.result is not None:
                return returning.result
            freed, task = returning.freed, returning.task
            self._waits[key] = task
        if not wait:
            return {
                "released": [],
                "message": "Returning the GPU: your server moves to a new pod",
                "operation": self.operation_json(self.ledger.operation(user, server)),
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
            "operation": self.operation_json(self.ledger.operation(user, server)),
        }

    # -- Get GPU -----------------------------------------------------------------------

    async def get_gpu(self, spawner, count: int, timeout: float | None, reason: str) -> dict:
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
        require_switchable(spawner)
        await self.settled.wait()
        async with self._locks[key]:
            waiting = self._waits.get(key)
            if waiting is not None and not waiting.done():
                if self.ledger.operation(user, server).kind == "return":
                    raise SwitchError(409, f"{label(user, server)} is still returning its GPU")
                return {"operation": self.operation_json(self.ledger.operation(user, server))}
            held = [g.gpu_id for g in self.ledger.grants(user) if g.server == server]
            if held:
                if len(held) == count:
                    return {
                        "message": f"{label(user, server)} already holds GPU {', '.join(held)}",
                        "operation": self.operation_json(self.ledger.operation(user, server)),
                    }
                raise SwitchError(
                    409, f"{label(user, server)} holds {len(held)} GPU(s); return them first"
                )
            require_running(spawner)
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
                    user,
                    server,
                    count,
                    groups,
                    reason,
                    waiter=waiter,
                    prefer=before,
                    profile=_slug(spawner),
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
                "get",
                state="queued" if gpus is None else "restoring",
                gpus=count,
                reason=reason,
                message="Waiting for a GPU" if gpus is None else "Moving your kernels to the GPU",
                deadline=deadline,
            )
            task = asyncio.ensure_future(
                self._get_gpu(spawner, count, groups, waiter, gpus, before)
            )
            self._waits[key] = task
            return {"operation": self.operation_json(self.ledger.operation(user, server))}

    def cancel(self, spawner) -> dict:
        user, server = spawner.user.name, spawner.name
        task = self._waits.get((user, server))
        op = self.ledger.operation(user, server)
        if task is None or task.done() or op is None or op.state != "queued":
            return {
                "message": f"{label(user, server)} is not waiting for a GPU",
                "operation": self.operation_json(op),
            }
        task.cancel()
        self.ledger.dequeue(user, server)
        op = self.ledger.update_operation(
            user, server, state="cancelled", message="Get GPU cancelled"
        )
        return {"message": "Get GPU cancelled", "operation": self.operation_json(op)}

    def _returned_gpus(self, user: str, server: str) -> list[str]:
        """The GPUs the server's last Return GPU released: Get GPU takes them again when
        they are free (a kernel the CUDA driver parked goes back without remapping)."""
        op = self.ledger.operation(user, server)
        if op is None or op.kind != "return" or op.state != "done":
            return []
        return list(op.detail.get("gpu_ids") or [])

    async def _get_gpu(self, spawner, count, groups, waiter, gpus, before) -> None:
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
                        user,
                        server,
                        count,
                        groups,
                        op.reason,
                        waiter=waiter,
                        prefer=before,
                        profile=_slug(spawner),
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
        result = await self.mover(spawner).move_onto(spawner, ids)
        if result is None:
            return
        restore = result.get("restore") or {}
        message = f"Got GPU {', '.join(ids)}. {restore.get('message', '')}".strip()
        result["gpu_ids"] = ids
        self.ledger.update_operation(user, server, state="done", message=message, detail=result)
        log.info("%s got GPU(s) %s", label(user, server), ids)

    async def _wait_change(self, seconds: float) -> None:
        """Until the ledger changes (a GPU may be free), or ``seconds``."""
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._changed.wait(), seconds)
        except TimeoutError:
            pass

    # -- after a hub restart -------------------------------------------------------------

    async def recover(self, find_spawner) -> None:
        """Finish or undo the operations a hub restart interrupted: a Get GPU that was
        waiting is cancelled (its request died with the hub); the server's mover settles
        the others from what the server (or its pod) shows now."""
        self.ledger.clear_queue()
        for op in self.ledger.operations(active_only=True):
            spawner = find_spawner(op.user, op.server)
            if op.state == "queued" or spawner is None or not spawner.ready:
                why = "the hub restarted" if op.state == "queued" else "the server is gone"
                self.ledger.update_operation(
                    op.user, op.server, state="cancelled", message=f"Interrupted: {why}"
                )
                continue
            held = [g.gpu_id for g in self.ledger.grants(op.user) if g.server == op.server]
            await self.mover(spawner).settle(spawner, op, sorted(held))

    # -- idle reclaim --------------------------------------------------------------------

    async def reclaim_idle(self, find_spawner) -> list[str]:
        """Sample the utilisation of every server's GPUs (and of workload replicas', where
        the hub reads GPUs itself) for usage accounting, and return the GPUs of servers
        whose profile's ``idle_return`` has passed; while requests wait for more GPUs than
        are free, also those idle ``gpus.idle_return_when_queued`` (the idlest first, as
        many as the queue lacks)."""
        now = self.clock()
        holders: dict[tuple[str, str], list] = {}
        replicas: dict[tuple[str, str], list] = {}
        held = self.ledger.grants()
        for g in held:
            (replicas if is_workload(g.server) else holders).setdefault(
                (g.user, g.server), []
            ).append(g)
        for key in set(self._sampled) - set(holders) - set(replicas):
            del self._sampled[key]  # released since: its next grant is sampled afresh
        # the hub's own reading of every held GPU, once a round (none on kubernetes)
        read = self.utilization.read([g.gpu_id for g in held])
        samples: list[Sample] = []
        for key, grants in replicas.items():
            # a job's or model's replica: sampled where the hub reads the GPUs itself (it
            # has no server to ask), never reclaimed
            by_gpu = {g.gpu_id: read[g.gpu_id] for g in grants if g.gpu_id in read}
            samples += self._sample(key, grants[0], by_gpu, now)
        # every server at once: one that is slow to answer (its user controls it) holds up
        # no one else's sample or reclaim
        checks = await asyncio.gather(
            *(
                self._idle_check(find_spawner, key, grants, now, read, samples)
                for key, grants in holders.items()
            )
        )
        idle = [found for found in checks if found is not None]
        self.ledger.sample(samples)  # before any reclaim below closes a holding
        returned = []
        for server in idle:
            if server.seconds >= server.limit and await self._reclaim(server, ""):
                returned.append(label(*server.key))
        when_queued = self.settings.gpus.idle_return_when_queued_seconds
        snapshot = self.ledger.snapshot()
        short = sum(w.count for w in snapshot.queue) - snapshot.free
        if when_queued and short > 0:
            waited = f" while {short} more GPU(s) were waited for"
            for server in sorted(idle, key=lambda s: -s.seconds):
                if short <= 0:
                    break
                if (
                    server.seconds < min(server.limit, when_queued)
                    or server.seconds >= server.limit
                ):
                    continue  # not idle long enough; or already returned above
                if await self._reclaim(server, waited):
                    returned.append(label(*server.key))
                    short -= server.gpus
        return returned

    async def _idle_check(
        self, find_spawner, key, grants, now: float, read: dict[str, float], samples: list
    ) -> _Idle | None:
        """Sample a server's GPUs (into ``samples``; ``read``: the hub's own readings);
        how long it has been idle, if it may be reclaimed at all (its profile has an
        ``idle_return``)."""
        user, server = key
        grant = grants[0]
        spawner = find_spawner(user, server)
        if spawner is None or not spawner.ready or spawner.pending or unavailable(spawner):
            return None
        profile = self._reclaim_profile(spawner, len(grants))
        limit = profile.idle_return_seconds if profile else 0
        op = self.ledger.operation(user, server)
        if op is not None and op.active:
            return None
        try:
            activity = await asyncio.wait_for(self.activity(spawner), self.activity_timeout)
        except (SwitchError, TimeoutError) as e:
            log.warning("Idle check of %s failed: %s", label(user, server), e or "no answer")
            return None
        gpus = [g.gpu_id for g in grants]
        by_gpu = readings(read, gpus, activity.get("gpu_utilization"))
        samples += self._sample(key, grant, by_gpu, now)
        if not limit:
            return None
        busy_gpu = max(by_gpu.values(), default=0.0) > self.settings.gpus.idle_utilization
        if activity["busy_kernels"] or activity["restoring"] or busy_gpu:
            self._last_busy[key] = now
        since = max(
            grant.granted_at.timestamp(),
            activity.get("started") or 0,
            activity.get("last_activity") or 0,
            self._last_busy.get(key, 0),
            op.finished.timestamp() if op is not None and op.finished else 0,
        )
        return _Idle(key, spawner, now - since, limit, len(gpus))

    async def _reclaim(self, server: _Idle, why: str) -> bool:
        try:
            await self.return_gpu(
                server.spawner, f"reclaimed: GPU idle for {_duration(server.seconds)}{why}"
            )
        except SwitchError as e:
            log.warning("Could not reclaim %s's idle GPU: %s", label(*server.key), e)
            return False
        self._last_busy.pop(server.key, None)
        return True

    def _sample(
        self, key: tuple[str, str], grant, by_gpu: dict[str, float], now: float
    ) -> list[Sample]:
        """The time since the server's last sample (at most two rounds: a longer gap, a
        hub restart say, is not counted) at each GPU's utilisation seen now."""
        if not by_gpu:
            return []
        since = max(self._sampled.get(key, 0), grant.granted_at.timestamp())
        seconds = min(now - since, 2 * self.settings.gpus.reclaim_interval)
        self._sampled[key] = now
        if seconds <= 0:
            return []
        idle = self.settings.gpus.idle_utilization
        return [
            Sample(*key, seconds=seconds, utilization=u, busy=u > idle, gpu_id=gpu)
            for gpu, u in by_gpu.items()
        ]

    async def activity(self, spawner) -> dict:
        """What the server's extension says of its kernels: busy ones, the last activity,
        a restore under way, GPU utilisation (``GET /gpulab/activity``)."""
        return await call_server(spawner, "GET", "activity", timeout=30)

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


@dataclass(frozen=True)
class _Idle:
    """A server the idle reclaim may return the GPUs of: idle ``seconds``, its profile's
    ``limit`` (its ``idle_return``), how many GPUs it holds."""

    key: tuple[str, str]
    spawner: object
    seconds: float
    limit: float
    gpus: int


def _slug(spawner) -> str:
    """The slug of the profile the server was started with ("" when none was chosen)."""
    return getattr(spawner, "profile_slug", "") or ""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
