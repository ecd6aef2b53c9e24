"""``GpuLedger``: grants, the queue of Get GPU requests and Return GPU / Get GPU
operations, over the tables of :mod:`.tables`.

Every change runs in a ``BEGIN IMMEDIATE`` transaction. Reads take no lock: they run in
a deferred transaction on SQLite's write-ahead log, and what the hub asks of the ledger
most (a server's GPU status, from every open lab) comes from a ``Snapshot`` kept until
the next change.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import create_engine, delete, event, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from ..inventory import Gpu
from ..settings import GpuSettings
from .placement import by_node, choose_each
from .records import (
    WORKLOAD_PREFIX,
    Event,
    Grant,
    InvalidRequest,
    NoGpuFree,
    Operation,
    QuotaExceeded,
    Snapshot,
    Waiter,
    as_utc,
    utcnow,
)
from .tables import (
    ACCOUNTING,
    READ_ONLY,
    events_table,
    grants_table,
    metadata,
    operations_table,
    queue_table,
    sqlite_immediate_transactions,
    usage_table,
)
from .usage import Holding, Sample, UsageTotal

log = logging.getLogger(__name__)

FINAL_STATES = ("done", "failed", "cancelled")
"""States of an operation that has ended."""


class GpuLedger:
    """Grants GPUs from an inventory to (user, server) pairs, within quotas.

    ``version`` counts the changes this process committed (the hub is the ledger's one
    writer); ``on_change`` callbacks run after each, in the committing thread. ``clock``
    stamps every time the ledger writes (grants, events, usage, the queue, operations).
    """

    def __init__(
        self,
        url: str,
        inventory: Iterable[Gpu],
        quotas: GpuSettings | None = None,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.inventory = list(inventory)
        self.clock = clock
        self.quotas = quotas or GpuSettings()
        self.engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        path = url.split("///", 1)[-1] if url.startswith("sqlite:///") else ":memory:"
        if url.startswith("sqlite"):
            sqlite_immediate_transactions(self.engine)
        if path != ":memory:":
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            # Get GPU was stored as kind "acquire" before it was named "get" everywhere;
            # rename those so operations of an earlier version are still settled
            conn.execute(
                update(operations_table)
                .where(operations_table.c.kind == "acquire")
                .values(kind="get")
            )
            _add_usage_lengths(conn)
            self._account_earlier_grants(conn)
        if url.startswith("sqlite:///") and path != ":memory:":
            os.chmod(path, 0o600)  # grants name users; only the hub reads them
        self.version = 0
        self._snapshot: Snapshot | None = None
        self._on_change: list[Callable[[], None]] = []
        self._on_finished: list[Callable[[Operation], None]] = []
        self._on_dequeued: list[Callable[[Waiter, float], None]] = []
        event.listen(self.engine, "commit", self._committed)

    def _account_earlier_grants(self, conn: Connection) -> None:
        """Grants made before usage accounting (a ledger of an earlier version) get their
        holding, from the grant on."""
        accounted = set(
            conn.scalars(select(usage_table.c.gpu_id).where(usage_table.c.end.is_(None)))
        )
        models = {gpu.id: gpu.model for gpu in self.inventory}
        for grant in map(Grant.from_row, conn.execute(select(grants_table))):
            if grant.gpu_id not in accounted:
                conn.execute(
                    insert(usage_table).values(
                        gpu_id=grant.gpu_id,
                        gpu_model=models.get(grant.gpu_id, ""),
                        user=grant.user,
                        server=grant.server,
                        groups=json.dumps(grant.groups),
                        start=grant.granted_at,
                    )
                )

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every committed change (in the committing thread)."""
        self._on_change.append(callback)

    def on_operation_finished(self, callback: Callable[[Operation], None]) -> None:
        """Call ``callback(operation)`` once each Return or Get GPU ends (done, failed or
        cancelled), after the change is committed."""
        self._on_finished.append(callback)

    def on_queue_granted(self, callback: Callable[[Waiter, float], None]) -> None:
        """Call ``callback(waiter, seconds)`` when a request that waited in the queue is
        granted, after the grant is committed: ``seconds`` it waited."""
        self._on_dequeued.append(callback)

    def _committed(self, conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(READ_ONLY) or options.get(ACCOUNTING):
            return
        self.version += 1
        for callback in list(self._on_change):
            callback()

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for reads only: a deferred transaction, no write lock."""
        with self.engine.connect() as conn:
            yield conn.execution_options(**{READ_ONLY: True})

    def snapshot(self) -> Snapshot:
        """The pool, queue and operations as of the last change (read once per change)."""
        cached = self._snapshot
        if cached is not None and cached.version == self.version:
            return cached
        version = self.version  # a change while reading makes the next call read again
        with self._reading() as conn:
            grants = {g.gpu_id: g for g in map(Grant.from_row, conn.execute(select(grants_table)))}
            queue = self._queue(conn)
            operations = {
                (op.user, op.server): op
                for op in map(Operation.from_row, conn.execute(select(operations_table)))
            }
        pool = [(gpu, grants.get(gpu.id)) for gpu in self.inventory]
        self._snapshot = Snapshot(version, pool, queue, operations)
        return self._snapshot

    # -- queries -------------------------------------------------------------------

    def grants(self, user: str | None = None) -> list[Grant]:
        q = select(grants_table).order_by(grants_table.c.granted_at)
        if user is not None:
            q = q.where(grants_table.c.user == user)
        with self._reading() as conn:
            return [Grant.from_row(r) for r in conn.execute(q)]

    def pool(self) -> list[tuple[Gpu, Grant | None]]:
        """Every GPU of the inventory with its grant (None when free)."""
        by_gpu = {g.gpu_id: g for g in self.grants()}
        return [(gpu, by_gpu.get(gpu.id)) for gpu in self.inventory]

    def free_count(self) -> int:
        return sum(grant is None for _, grant in self.pool())

    def events(self, user: str | None = None, limit: int = 100) -> list[Event]:
        q = select(events_table).order_by(events_table.c.id.desc()).limit(limit)
        if user is not None:
            q = q.where(events_table.c.user == user)
        with self._reading() as conn:
            return [
                Event(r.at, r.action, r.user, r.server, r.gpu_id, r.reason) for r in conn.execute(q)
            ]

    def usage(self, start: datetime, end: datetime, user: str | None = None) -> list[Holding]:
        """Every holding of a GPU that overlaps ``start``..``end`` (open ones included),
        of ``user`` or everyone."""
        c = usage_table.c
        q = select(usage_table).where(c.start < end, or_(c.end.is_(None), c.end > start))
        if user is not None:
            q = q.where(c.user == user)
        with self._reading() as conn:
            return [Holding.from_row(r) for r in conn.execute(q.order_by(c.start, c.id))]

    def usage_totals(self, now: datetime) -> list[UsageTotal]:
        """All-time GPU-seconds held and busy by user, groups and profile: the ended
        holdings summed in SQL, the open ones counted until ``now``."""
        c = usage_table.c
        key = (c.user, c.groups, c.profile)
        ended = (
            select(*key, func.sum(c.held_seconds), func.sum(c.busy_seconds))
            .where(c.end.is_not(None))
            .group_by(*key)
        )
        totals: dict[tuple[str, str, str], list[float]] = {}
        with self._reading() as conn:
            for user, groups, profile, held, busy in conn.execute(ended):
                totals[(user, groups, profile)] = [held or 0.0, busy or 0.0]
            for row in conn.execute(select(usage_table).where(c.end.is_(None))):
                held = max(0.0, (now - as_utc(row.start)).total_seconds())
                sums = totals.setdefault((row.user, row.groups, row.profile), [0.0, 0.0])
                sums[0] += held
                sums[1] += row.busy_seconds
        return [
            UsageTotal(user, tuple(json.loads(groups)), profile, held, busy)
            for (user, groups, profile), (held, busy) in sorted(totals.items())
        ]

    def user_limit(self, user: str) -> int | None:
        limit = self.quotas.users.get(user, self.quotas.per_user)
        return None if limit is None or limit < 0 else limit

    def never_granted(
        self,
        user: str,
        groups: Iterable[str],
        total: int,
        one_node: dict[str, int],
        what: str,
    ) -> tuple[int, str] | None:
        """Why ``total`` GPUs for ``what`` could never be granted, however long it waited,
        as (HTTP status, message): more than the user's or a group's quota (403), than
        the pool, or than any node has for each part that runs on one node (``one_node``:
        its name -> its GPUs; 400). None when they could be."""
        limit = self.user_limit(user)
        if limit is not None and total > limit:
            return (
                403,
                f"GPU quota exceeded: {user} may hold {limit} GPU(s), {what} asks for {total}",
            )
        for group in groups:
            limit = self.quotas.groups.get(group)
            if limit is not None and total > limit:
                return 403, (
                    f"GPU quota exceeded: group {group} may hold {limit} GPU(s), {what} asks "
                    f"for {total}"
                )
        pool = len(self.inventory)
        if total > pool:
            has = f"has {pool}" if pool else "has no GPUs"
            return 400, f"{what} asks for {total} GPU(s); this hub {has}"
        biggest = max(Counter(gpu.node for gpu in self.inventory).values(), default=0)
        for where, count in one_node.items():
            if count > biggest:
                return (
                    400,
                    f"{where}: {count} GPUs on one node, but no node has more than {biggest}",
                )
        return None

    # -- changes -------------------------------------------------------------------

    def reserve(
        self,
        user: str,
        server: str,
        count: int,
        groups: Iterable[str] = (),
        reason: str = "spawn",
        waiter: int | None = None,
        prefer: Iterable[str] = (),
        profile: str = "",
    ) -> list[Gpu]:
        """Grant ``count`` GPUs to ``user``'s ``server``, atomically, or raise LedgerError.

        A server holds one set of GPUs: grants it already had are replaced. Requests
        waiting in the queue come first: ``waiter`` (the id ``enqueue`` gave) may only
        take GPUs at the head of the queue, and anyone else only GPUs the queue does not
        need. Of the free GPUs, those in ``prefer`` (the ones a server had before Return
        GPU) are taken first. ``profile``: the server's, for usage accounting.
        """
        chosen = self.reserve_many(user, [(server, count)], groups, reason, waiter, prefer, profile)
        return chosen[server]

    def reserve_many(
        self,
        user: str,
        wants: list[tuple[str, int]],
        groups: Iterable[str] = (),
        reason: str = "spawn",
        waiter: int | None = None,
        prefer: Iterable[str] = (),
        profile: str = "",
    ) -> dict[str, list[Gpu]]:
        """Grant each ``(server, count)`` of ``wants`` at once, or none of them.

        For a group of processes that only runs whole (a training job's replicas): each
        entry's GPUs share a node, the quotas count the total, and the queue rules of
        ``reserve`` apply to the total.
        """
        for _, count in wants:
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise InvalidRequest(
                    f"GPU count must be a whole number of 0 or more, got {count!r}"
                )
        groups = tuple(sorted(set(groups)))
        total = sum(count for _, count in wants)
        with self.engine.begin() as conn:
            for server, _ in wants:
                self._release(conn, user, server, "replaced by a new reservation")
            if total == 0:
                return {server: [] for server, _ in wants}
            held = [Grant.from_row(r) for r in conn.execute(select(grants_table))]
            self._check_quotas(user, groups, total, held)
            taken = {g.gpu_id for g in held}
            prefer = set(prefer)
            free = [gpu for gpu in self.inventory if gpu.id not in taken]
            free.sort(key=lambda gpu: gpu.id not in prefer)  # stable: inventory order after
            queue = [w for w in self._queue(conn) if w.id != waiter]
            ahead = [w for w in queue if waiter is None or w.id < waiter]
            promised = sum(w.count for w in ahead) if waiter is None else 0
            allowed = len(free) - promised >= total and not (waiter is not None and ahead)
            chosen = choose_each(free, wants) if allowed else None
            if chosen is None:
                holders: dict[str, int] = {}
                for g in held:
                    holders[g.user] = holders.get(g.user, 0) + 1
                spread = None
                if allowed:
                    spread = max(len(gpus) for gpus in by_node(free).values())
                raise NoGpuFree(total, len(free), len(self.inventory), holders, len(ahead), spread)
            now = self.clock()
            for server, gpus in chosen.items():
                for gpu in gpus:
                    conn.execute(
                        insert(grants_table).values(
                            gpu_id=gpu.id,
                            user=user,
                            server=server,
                            groups=json.dumps(groups),
                            granted_at=now,
                        )
                    )
                    conn.execute(
                        insert(usage_table).values(
                            gpu_id=gpu.id,
                            gpu_model=gpu.model,
                            user=user,
                            server=server,
                            groups=json.dumps(groups),
                            profile=profile,
                            start=now,
                        )
                    )
                if gpus:
                    self._record(conn, "grant", user, server, [g.id for g in gpus], reason)
            waited = None
            if waiter is not None:
                waited = conn.execute(select(queue_table).where(queue_table.c.id == waiter)).first()
                conn.execute(delete(queue_table).where(queue_table.c.id == waiter))
        if waited is not None:
            since = as_utc(waited.since)
            self._granted_from_queue(
                Waiter(waited.id, waited.user, waited.server, waited.count, since),
                max(0.0, (now - since).total_seconds()),
            )
        for server, gpus in chosen.items():
            if gpus:
                log.info(
                    "Granted GPU(s) %s to %s", ",".join(g.id for g in gpus), _label(user, server)
                )
        return chosen

    def _granted_from_queue(self, waiter: Waiter, seconds: float) -> None:
        for callback in list(self._on_dequeued):
            try:
                callback(waiter, seconds)
            except Exception:  # noqa: BLE001 -- an observer's fault is not the grant's
                log.exception("Reporting the grant of %s's queued request failed", waiter.user)

    def attach(self, user: str, server: str, pid: int, pid_started: str | None) -> None:
        """Record the process that holds a server's grants, for reconciliation."""
        with self.engine.begin() as conn:
            conn.execute(
                update(grants_table)
                .where(grants_table.c.user == user, grants_table.c.server == server)
                .values(pid=pid, pid_started=pid_started)
            )

    def release(self, user: str, server: str, reason: str = "stopped") -> list[str]:
        """Free every GPU the server holds; returns their ids (empty when it held none)."""
        with self.engine.begin() as conn:
            released = self._release(conn, user, server, reason)
        if released:
            log.info(
                "Released GPU(s) %s from %s (%s)", ",".join(released), _label(user, server), reason
            )
        return released

    def sample(self, samples: Iterable[Sample]) -> None:
        """Add a round of the hub's samples to the open holdings, in one transaction that
        wakes no one (``ACCOUNTING``: no grant, queue entry or operation changes)."""
        c = usage_table.c
        with self.engine.connect() as conn:
            conn.execution_options(**{ACCOUNTING: True})
            with conn.begin():
                for one in samples:
                    seconds = max(0.0, one.seconds)
                    utilization = min(100.0, max(0.0, one.utilization))
                    where = [c.user == one.user, c.server == one.server, c.end.is_(None)]
                    if one.gpu_id is not None:
                        where.append(c.gpu_id == one.gpu_id)
                    conn.execute(
                        update(usage_table)
                        .where(*where)
                        .values(
                            sampled_seconds=c.sampled_seconds + seconds,
                            busy_seconds=c.busy_seconds + (seconds if one.busy else 0.0),
                            utilization_seconds=c.utilization_seconds + seconds * utilization / 100,
                        )
                    )

    # -- the queue of Get GPU requests ---------------------------------------------------

    def enqueue(self, user: str, server: str, count: int) -> int:
        """Queue a request for ``count`` GPUs (replacing the server's earlier one); its id."""
        with self.engine.begin() as conn:
            where = (queue_table.c.user == user, queue_table.c.server == server)
            row = conn.execute(select(queue_table.c.id).where(*where)).first()
            if row is not None:
                conn.execute(update(queue_table).where(*where).values(count=count))
                return row.id
            result = conn.execute(
                insert(queue_table).values(
                    user=user, server=server, count=count, since=self.clock()
                )
            )
            return result.inserted_primary_key[0]

    def dequeue(self, user: str, server: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(queue_table).where(
                    queue_table.c.user == user, queue_table.c.server == server
                )
            )
            return result.rowcount > 0

    def queue(self) -> list[Waiter]:
        with self._reading() as conn:
            return self._queue(conn)

    def clear_queue(self) -> None:
        """Forget the servers' waiting requests (at hub start: their waiters are gone).

        Workloads' entries stay: their jobs are recorded and go on waiting.
        """
        with self.engine.begin() as conn:
            conn.execute(
                delete(queue_table).where(queue_table.c.server.not_like(WORKLOAD_PREFIX + "%"))
            )

    # -- Return GPU / Get GPU operations ------------------------------------------------

    def operation(self, user: str, server: str) -> Operation | None:
        q = select(operations_table).where(
            operations_table.c.user == user, operations_table.c.server == server
        )
        with self._reading() as conn:
            row = conn.execute(q).first()
        return None if row is None else Operation.from_row(row)

    def operations(self, active_only: bool = True) -> list[Operation]:
        q = select(operations_table)
        if active_only:
            q = q.where(operations_table.c.state.in_(Operation.ACTIVE))
        with self._reading() as conn:
            return [Operation.from_row(r) for r in conn.execute(q)]

    def begin_operation(self, user: str, server: str, kind: str, **fields) -> Operation:
        """Record a new operation for the server, replacing its previous one."""
        values = dict(
            user=user,
            server=server,
            kind=kind,
            state=fields.pop("state", "checkpointing"),
            gpus=fields.pop("gpus", 0),
            reason=fields.pop("reason", ""),
            message=fields.pop("message", ""),
            started=self.clock(),
            deadline=fields.pop("deadline", None),
            finished=None,
            detail=json.dumps(fields.pop("detail", {})),
        )
        with self.engine.begin() as conn:
            where = (operations_table.c.user == user, operations_table.c.server == server)
            conn.execute(delete(operations_table).where(*where))
            conn.execute(insert(operations_table).values(**values))
        return self.operation(user, server)

    def update_operation(self, user: str, server: str, **fields) -> Operation:
        if "detail" in fields:
            fields["detail"] = json.dumps(fields["detail"])
        ending = fields.get("state") in FINAL_STATES
        if ending:
            fields.setdefault("finished", self.clock())
        where = (operations_table.c.user == user, operations_table.c.server == server)
        with self.engine.begin() as conn:
            before = conn.scalar(select(operations_table.c.state).where(*where))
            conn.execute(update(operations_table).where(*where).values(**fields))
        op = self.operation(user, server)
        if ending and before not in FINAL_STATES and op is not None:
            for callback in list(self._on_finished):
                try:
                    callback(op)
                except Exception:  # noqa: BLE001 -- an observer's fault is not the operation's
                    log.exception(
                        "Reporting the end of %s's %s failed", _label(user, server), op.kind
                    )
        return op

    def reconcile(self, is_alive: Callable[[Grant], bool]) -> list[Grant]:
        """Release grants whose holder is gone (``is_alive`` says so); returns them."""
        dead = [g for g in self.grants() if not is_alive(g)]
        for g in dead:
            self.release(g.user, g.server, "holder gone")
        return dead

    # -- internals -----------------------------------------------------------------

    def _check_quotas(
        self, user: str, groups: tuple[str, ...], count: int, held: list[Grant]
    ) -> None:
        limit = self.user_limit(user)
        if limit is not None:
            mine = sum(g.user == user for g in held)
            if mine + count > limit:
                raise QuotaExceeded(
                    f"GPU quota exceeded: {user} may hold {limit} GPU(s), "
                    f"holds {mine} and asked for {count} more"
                )
        for group in groups:
            limit = self.quotas.groups.get(group)
            if limit is None:
                continue
            theirs = sum(group in g.groups for g in held)
            if theirs + count > limit:
                raise QuotaExceeded(
                    f"GPU quota exceeded: group {group} may hold {limit} GPU(s), "
                    f"its members hold {theirs} and {user} asked for {count} more"
                )

    def _queue(self, conn: Connection) -> list[Waiter]:
        rows = conn.execute(select(queue_table).order_by(queue_table.c.id))
        return [Waiter(r.id, r.user, r.server, r.count, as_utc(r.since)) for r in rows]

    def _release(self, conn: Connection, user: str, server: str, reason: str) -> list[str]:
        where = (grants_table.c.user == user, grants_table.c.server == server)
        ids = [r.gpu_id for r in conn.execute(select(grants_table.c.gpu_id).where(*where))]
        if ids:
            conn.execute(delete(grants_table).where(*where))
            self._record(conn, "release", user, server, ids, reason)
            c = usage_table.c
            now = self.clock()
            held = select(c.id, c.start).where(c.user == user, c.server == server, c.end.is_(None))
            for row in conn.execute(held).all():
                seconds = (now - as_utc(row.start)).total_seconds()
                conn.execute(
                    update(usage_table).where(c.id == row.id).values(end=now, held_seconds=seconds)
                )
        return ids

    def _record(
        self, conn: Connection, action: str, user: str, server: str, ids: list[str], reason: str
    ) -> None:
        now = self.clock()
        for gpu_id in ids:
            conn.execute(
                insert(events_table).values(
                    at=now, action=action, user=user, server=server, gpu_id=gpu_id, reason=reason
                )
            )


def _add_usage_lengths(conn: Connection) -> None:
    """A usage table made before holdings kept their length (``held_seconds``) gets the
    column, filled for the ended holdings (``create_all`` adds tables, not columns)."""
    columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(gpu_usage)")}
    if "held_seconds" in columns:
        return
    conn.exec_driver_sql("ALTER TABLE gpu_usage ADD COLUMN held_seconds FLOAT")
    conn.exec_driver_sql(
        'UPDATE gpu_usage SET held_seconds = (julianday("end") - julianday(start)) * 86400 '
        'WHERE "end" IS NOT NULL'
    )


def _label(user: str, server: str) -> str:
    return f"{user}/{server}" if server else user
