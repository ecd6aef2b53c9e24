"""GPU usage accounting: who held which GPUs for how long, and how busy they were.

The ledger writes a ``Holding`` for each GPU of each grant (``gpu_usage``: from the grant
to its release) and adds the hub's samples of the holder's utilisation to the open ones
(``GpuLedger.sample``, every ``gpus.reclaim_interval``). ``summarize`` turns the holdings
that overlap a period into rows by user, group, profile, kind of holder, GPU model or day.

A holding cut by the period's ends counts the held seconds inside it; its sampled, busy
and utilisation seconds are taken in the same proportion (samples are kept as totals per
holding, not one by one). Workload replicas (jobs, models) are sampled only where the
hub reads the GPUs itself (``Backend.utilization``); elsewhere their rows have held
seconds and ``sampled_seconds`` 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .records import as_utc

GROUPINGS = ("user", "group", "profile", "kind", "gpu_model", "day")
"""What ``summarize`` can group by."""

NO_GROUP = ""
"""The group of a holder in no hub group."""


@dataclass(frozen=True)
class Sample:
    """``seconds`` of a server's GPUs (or of its GPU ``gpu_id`` alone) at ``utilization``
    percent, busy or idle as the idle reclaim judged it."""

    user: str
    server: str
    seconds: float
    utilization: float
    busy: bool
    gpu_id: str | None = None


@dataclass(frozen=True)
class UsageTotal:
    """All-time GPU-seconds held and busy of one user, groups and profile."""

    user: str
    groups: tuple[str, ...]
    profile: str
    held_seconds: float
    busy_seconds: float


@dataclass(frozen=True)
class Holding:
    gpu_id: str
    gpu_model: str
    user: str
    server: str
    groups: tuple[str, ...]
    profile: str
    start: datetime
    end: datetime | None
    """None while the GPU is still held."""
    sampled_seconds: float
    busy_seconds: float
    utilization_seconds: float

    @classmethod
    def from_row(cls, row) -> Holding:
        return cls(
            gpu_id=row.gpu_id,
            gpu_model=row.gpu_model,
            user=row.user,
            server=row.server,
            groups=tuple(json.loads(row.groups)),
            profile=row.profile,
            start=as_utc(row.start),
            end=as_utc(row.end),
            sampled_seconds=row.sampled_seconds,
            busy_seconds=row.busy_seconds,
            utilization_seconds=row.utilization_seconds,
        )

    @property
    def kind(self) -> str:
        """``server`` (a notebook server), ``job`` or ``model`` (a workload's replica)."""
        kind, slash, _ = self.server.partition("/")
        return kind if slash else "server"

    def keys(self, by: str) -> tuple[str, ...]:
        """The rows of grouping ``by`` this holding counts in (a user in two groups
        counts in both; ``day`` is split by ``summarize``)."""
        if by == "group":
            return self.groups or (NO_GROUP,)
        return (getattr(self, by),)


@dataclass
class Totals:
    held_seconds: float = 0.0
    sampled_seconds: float = 0.0
    busy_seconds: float = 0.0
    utilization_seconds: float = 0.0
    holdings: int = 0

    def add(self, holding: Holding, start: datetime, end: datetime, now: datetime) -> None:
        """Add the part of ``holding`` inside ``start``..``end``."""
        until = holding.end or now
        whole = (until - holding.start).total_seconds()
        inside = (min(until, end) - max(holding.start, start)).total_seconds()
        if inside <= 0 and not (whole == 0 and start <= holding.start < end):
            return
        share = inside / whole if whole > 0 else 0.0
        self.held_seconds += max(0.0, inside)
        self.sampled_seconds += holding.sampled_seconds * share
        self.busy_seconds += holding.busy_seconds * share
        self.utilization_seconds += holding.utilization_seconds * share
        self.holdings += 1

    def as_json(self) -> dict:
        busy_share = self.busy_seconds / self.sampled_seconds if self.sampled_seconds else None
        return {
            "held_seconds": round(self.held_seconds, 3),
            "sampled_seconds": round(self.sampled_seconds, 3),
            "busy_seconds": round(self.busy_seconds, 3),
            "idle_seconds": round(max(0.0, self.sampled_seconds - self.busy_seconds), 3),
            "utilization_seconds": round(self.utilization_seconds, 3),
            "busy_share": None if busy_share is None else round(busy_share, 4),
            "holdings": self.holdings,
        }


def days(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The UTC days that ``start``..``end`` covers, each cut to it."""
    day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    while day < end:
        following = day + timedelta(days=1)
        out.append((max(day, start), min(following, end)))
        day = following
    return out


def summarize(
    holdings: Iterable[Holding], start: datetime, end: datetime, by: str, now: datetime
) -> list[dict]:
    """Rows of totals for ``start``..``end`` grouped ``by`` one of ``GROUPINGS``, the
    busiest holders first (by day: in order of days)."""
    if by not in GROUPINGS:
        raise ValueError(f"by: one of {', '.join(GROUPINGS)}, not {by!r}")
    end = min(end, now)
    totals: dict[str, Totals] = {}
    holdings = list(holdings)
    if by == "day":
        for day_start, day_end in days(start, end):
            key = day_start.date().isoformat()
            for holding in holdings:
                totals.setdefault(key, Totals()).add(holding, day_start, day_end, now)
        rows = [{"day": key, **t.as_json()} for key, t in totals.items() if t.holdings]
        return sorted(rows, key=lambda row: row["day"])
    for holding in holdings:
        for key in holding.keys(by):
            totals.setdefault(key, Totals()).add(holding, start, end, now)
    rows = [{by: key, **t.as_json()} for key, t in totals.items() if t.holdings]
    return sorted(rows, key=lambda row: (-row["held_seconds"], row[by]))


def total(holdings: Iterable[Holding], start: datetime, end: datetime, now: datetime) -> dict:
    """All of ``holdings`` in ``start``..``end``, as one row."""
    totals = Totals()
    for holding in holdings:
        totals.add(holding, start, min(end, now), now)
    return totals.as_json()
