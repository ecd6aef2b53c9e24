"""What the ledger hands out and refuses: its record types and its errors.

``Grant``, ``Waiter``, ``Operation`` and ``Event`` are rows of the ledger's tables as
frozen dataclasses, ``Snapshot`` the whole ledger as of one change; ``LedgerError`` and
its subclasses are the reservations it refuses, each with the HTTP status to answer
with. Times are UTC throughout (``utcnow``; ``as_utc`` puts back the zone SQLite drops).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..inventory import Gpu

WORKLOAD_PREFIX = "job/"
"""Grants and queue entries whose server starts with this belong to a job's replicas
(``job/<id>/<replica>``); a model's replicas hold ``model/<id>/replica-<n>``."""


def is_workload(server: str) -> bool:
    """Whether a grant's holder is a workload's replica, not a notebook server:
    JupyterHub server names never hold a ``/``."""
    return "/" in server


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(at: datetime | None) -> datetime | None:
    """SQLite drops the zone; the ledger only ever stores UTC."""
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


# -- errors ----------------------------------------------------------------------------


class LedgerError(Exception):
    """A reservation the ledger refuses; ``status`` is the HTTP status to answer with."""

    status = 409

    def message_for(self, admin: bool) -> str:
        return str(self)


class InvalidRequest(LedgerError):
    status = 400


class NoGpuFree(LedgerError):
    """Fewer GPUs are free than asked for (or the free ones are promised to the queue)."""

    def __init__(
        self,
        wanted: int,
        free: int,
        total: int,
        holders: dict[str, int],
        queued: int = 0,
        most_on_one_node: int | None = None,
    ):
        self.wanted, self.free, self.total, self.holders = wanted, free, total, holders
        self.queued = queued
        self.most_on_one_node = most_on_one_node
        """Set when enough GPUs are free, but spread over nodes so that none has enough."""
        super().__init__(self.message_for(admin=False))

    def message_for(self, admin: bool) -> str:
        base = f"not enough GPUs free: asked for {self.wanted}, {self.free} of {self.total} free"
        if self.most_on_one_node is not None:
            base += f", at most {self.most_on_one_node} on one node"
        if self.queued:
            base += f", {self.queued} request(s) waiting in the queue first"
        if self.total == 0:
            return f"asked for {self.wanted} GPU(s), but this hub has no GPUs"
        if admin and self.holders:
            held = ", ".join(f"{user} ({n})" for user, n in sorted(self.holders.items()))
            return f"{base}; {self.total - self.free} held by {held}"
        return base


class QuotaExceeded(LedgerError):
    status = 403


# -- records ---------------------------------------------------------------------------


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
        return cls(
            gpu_id=row.gpu_id,
            user=row.user,
            server=row.server,
            groups=tuple(json.loads(row.groups)),
            granted_at=as_utc(row.granted_at),
            pid=row.pid,
            pid_started=row.pid_started,
        )


@dataclass(frozen=True)
class Waiter:
    id: int
    user: str
    server: str
    count: int
    since: datetime


@dataclass(frozen=True)
class Operation:
    """A Return GPU or Get GPU of one server: ``kind`` return|get, ``state`` one of
    queued, checkpointing, restoring, done, failed, cancelled."""

    user: str
    server: str
    kind: str
    state: str
    gpus: int
    reason: str
    message: str
    started: datetime
    deadline: datetime | None
    finished: datetime | None
    detail: dict

    ACTIVE = ("queued", "checkpointing", "restoring")

    @property
    def active(self) -> bool:
        return self.state in self.ACTIVE

    @classmethod
    def from_row(cls, row) -> Operation:
        return cls(
            user=row.user,
            server=row.server,
            kind=row.kind,
            state=row.state,
            gpus=row.gpus,
            reason=row.reason,
            message=row.message,
            started=as_utc(row.started),
            deadline=as_utc(row.deadline),
            finished=as_utc(row.finished),
            detail=json.loads(row.detail),
        )

    def as_json(self) -> dict:
        return {
            "kind": self.kind,
            "state": self.state,
            "gpus": self.gpus,
            "reason": self.reason,
            "message": self.message,
            "started": self.started.isoformat(),
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "finished": self.finished.isoformat() if self.finished else None,
            "path": self.detail.get("path"),
            "detail": self.detail,
        }


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


@dataclass(frozen=True)
class Snapshot:
    """The ledger as of one ``version``: the pool, the queue and each server's last
    operation, read in one transaction."""

    version: int
    pool: list[tuple[Gpu, Grant | None]]
    queue: list[Waiter]
    operations: dict[tuple[str, str], Operation] = field(default_factory=dict)

    def held_by(self, user: str, server: str) -> list[Gpu]:
        return [gpu for gpu, g in self.pool if g and (g.user, g.server) == (user, server)]

    @property
    def free(self) -> int:
        return sum(g is None for _, g in self.pool)
