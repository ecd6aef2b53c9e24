"""The GPU ledger: the one authority for who holds which GPU.

Grants live in an SQLite database (SQLAlchemy core) so they outlive hub restarts.
A grant's primary key is the GPU id, so the database itself refuses to hand one
GPU out twice; every change runs in a ``BEGIN IMMEDIATE`` transaction, which
serialises reservations across threads and processes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection

from .inventory import Gpu
from .settings import GpuSettings

log = logging.getLogger(__name__)

metadata = MetaData()

grants_table = Table(
    "gpu_grants",
    metadata,
    Column("gpu_id", String(128), primary_key=True),
    Column("user", String(255), nullable=False, index=True),
    Column("server", String(255), nullable=False, default=""),
    Column("groups", Text, nullable=False, default="[]"),
    Column("granted_at", DateTime(timezone=True), nullable=False),
    Column("pid", Integer, nullable=True),
    Column("pid_started", String(32), nullable=True),
)

events_table = Table(
    "gpu_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("action", String(32), nullable=False),
    Column("user", String(255), nullable=False, index=True),
    Column("server", String(255), nullable=False, default=""),
    Column("gpu_id", String(128), nullable=False),
    Column("reason", Text, nullable=False, default=""),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class LedgerError(Exception):
    """A reservation the ledger refuses; ``status`` is the HTTP status to answer with."""

    status = 409

    def message_for(self, admin: bool) -> str:
        return str(self)


class InvalidRequest(LedgerError):
    status = 400


class NoGpuFree(LedgerError):
    """Fewer GPUs are free than asked for."""

    def __init__(self, wanted: int, free: int, total: int, holders: dict[str, int]):
        self.wanted, self.free, self.total, self.holders = wanted, free, total, holders
        super().__init__(self.message_for(admin=False))

    def message_for(self, admin: bool) -> str:
        base = f"not enough GPUs free: asked for {self.wanted}, {self.free} of {self.total} free"
        if self.total == 0:
            return f"asked for {self.wanted} GPU(s), but this hub has no GPUs"
        if admin and self.holders:
            held = ", ".join(f"{user} ({n})" for user, n in sorted(self.holders.items()))
            return f"{base}; {self.total - self.free} held by {held}"
        return base


class QuotaExceeded(LedgerError):
    status = 403


@dataclass(frozen=True)
class Grant:
    gpu_id: str
    user: str
    server: str
    groups: tuple[str, ...]
    granted_at: datetime
    pid: int | None = None
    pid_started: str | None = None

    @classmethod
    def from_row(cls, row) -> Grant:
        granted_at = row.granted_at
        if granted_at.tzinfo is None:  # SQLite drops the zone; we only ever store UTC
            granted_at = granted_at.replace(tzinfo=UTC)
        return cls(
            gpu_id=row.gpu_id,
            user=row.user,
            server=row.server,
            groups=tuple(json.loads(row.groups)),
            granted_at=granted_at,
            pid=row.pid,
            pid_started=row.pid_started,
        )


@dataclass(frozen=True)
class Event:
    at: datetime
    action: str
    user: str
    server: str
    gpu_id: str
    reason: str

    def as_json(self) -> dict:
        return {
            "at": self.at.replace(tzinfo=self.at.tzinfo or UTC).isoformat(),
            "action": self.action,
            "user": self.user,
            "server": self.server,
            "gpu": self.gpu_id,
            "reason": self.reason,
        }


class GpuLedger:
    """Grants GPUs from an inventory to (user, server) pairs, within quotas."""

    def __init__(self, url: str, inventory: Iterable[Gpu], quotas: GpuSettings | None = None):
        self.inventory = list(inventory)
        self.quotas = quotas or GpuSettings()
        self.engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        path = url.split("///", 1)[-1] if url.startswith("sqlite:///") else ":memory:"
        if url.startswith("sqlite"):
            _sqlite_immediate_transactions(self.engine)
        if path != ":memory:":
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        metadata.create_all(self.engine)
        if url.startswith("sqlite:///") and path != ":memory:":
            os.chmod(path, 0o600)  # grants name users; only the hub reads them

    # -- queries -------------------------------------------------------------------

    def grants(self, user: str | None = None) -> list[Grant]:
        q = select(grants_table).order_by(grants_table.c.granted_at)
        if user is not None:
            q = q.where(grants_table.c.user == user)
        with self.engine.connect() as conn:
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
        with self.engine.connect() as conn:
            return [
                Event(r.at, r.action, r.user, r.server, r.gpu_id, r.reason) for r in conn.execute(q)
            ]

    def user_limit(self, user: str) -> int | None:
        limit = self.quotas.users.get(user, self.quotas.per_user)
        return None if limit is None or limit < 0 else limit

    # -- changes -------------------------------------------------------------------

    def reserve(self, user: str, server: str, count: int, groups: Iterable[str] = ()) -> list[Gpu]:
        """Grant ``count`` GPUs to ``user``'s ``server``, atomically, or raise LedgerError.

        A server holds one set of GPUs: grants it already had are replaced.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidRequest(f"GPU count must be a whole number of 0 or more, got {count!r}")
        groups = tuple(sorted(set(groups)))
        with self.engine.begin() as conn:
            self._release(conn, user, server, "replaced by a new reservation")
            if count == 0:
                return []
            held = [Grant.from_row(r) for r in conn.execute(select(grants_table))]
            self._check_quotas(user, groups, count, held)
            taken = {g.gpu_id for g in held}
            free = [gpu for gpu in self.inventory if gpu.id not in taken]
            if len(free) < count:
                holders: dict[str, int] = {}
                for g in held:
                    holders[g.user] = holders.get(g.user, 0) + 1
                raise NoGpuFree(count, len(free), len(self.inventory), holders)
            chosen = free[:count]
            now = utcnow()
            for gpu in chosen:
                conn.execute(
                    insert(grants_table).values(
                        gpu_id=gpu.id,
                        user=user,
                        server=server,
                        groups=json.dumps(groups),
                        granted_at=now,
                    )
                )
            self._record(conn, "grant", user, server, [g.id for g in chosen], "spawn")
        log.info("Granted GPU(s) %s to %s", ",".join(g.id for g in chosen), _label(user, server))
        return chosen

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

    def _release(self, conn: Connection, user: str, server: str, reason: str) -> list[str]:
        where = (grants_table.c.user == user, grants_table.c.server == server)
        ids = [r.gpu_id for r in conn.execute(select(grants_table.c.gpu_id).where(*where))]
        if ids:
            conn.execute(delete(grants_table).where(*where))
            self._record(conn, "release", user, server, ids, reason)
        return ids

    def _record(
        self, conn: Connection, action: str, user: str, server: str, ids: list[str], reason: str
    ) -> None:
        now = utcnow()
        for gpu_id in ids:
            conn.execute(
                insert(events_table).values(
                    at=now, action=action, user=user, server=server, gpu_id=gpu_id, reason=reason
                )
            )


def _label(user: str, server: str) -> str:
    return f"{user}/{server}" if server else user


def _sqlite_immediate_transactions(engine) -> None:
    """Make every transaction take SQLite's write lock up front (no lost updates)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below be the only one
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
