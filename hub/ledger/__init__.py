"""The GPU ledger: the one authority for who holds which GPU.

Grants live in an SQLite database (SQLAlchemy core) so they outlive hub restarts.
A grant's primary key is the GPU id, so the database itself refuses to hand one
GPU out twice; every change runs in a ``BEGIN IMMEDIATE`` transaction, which
serialises reservations across threads and processes. Reads take no lock: they run in a
deferred transaction on SQLite's write-ahead log, and what the hub asks of the ledger
most (a server's GPU status, from every open lab) comes from a ``Snapshot`` kept until
the next change.

- :mod:`.records`: the record types (``Grant``, ``Waiter``, ``Operation``, ``Event``,
  ``Snapshot``) and the errors (``LedgerError`` and its subclasses);
- :mod:`.tables`: the tables, and the engine's locking (``BEGIN IMMEDIATE``);
- :mod:`.placement`: which free GPUs a reservation gets (one node per server, best fit);
- :mod:`.gpu_ledger`: ``GpuLedger``, grants, the Get GPU queue and operations;
- :mod:`.usage`: usage accounting, each GPU's holdings and their totals by period.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .records import (
    WORKLOAD_PREFIX,
    Grant,
    InvalidRequest,
    LedgerError,
    NoGpuFree,
    Operation,
    QuotaExceeded,
    Waiter,
    as_utc,
    is_workload,
    utcnow,
)

if TYPE_CHECKING:
    from .gpu_ledger import GpuLedger
    from .tables import sqlite_immediate_transactions


def __getattr__(name: str):
    # the ledger itself (SQLAlchemy) only when asked for: the client reads the records and
    # usage's groupings in users' environments, which have no SQLAlchemy
    if name == "GpuLedger":
        from .gpu_ledger import GpuLedger

        return GpuLedger
    if name == "sqlite_immediate_transactions":
        from .tables import sqlite_immediate_transactions

        return sqlite_immediate_transactions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "WORKLOAD_PREFIX",
    "GpuLedger",
    "Grant",
    "InvalidRequest",
    "LedgerError",
    "NoGpuFree",
    "Operation",
    "QuotaExceeded",
    "Waiter",
    "sqlite_immediate_transactions",
    "as_utc",
    "is_workload",
    "utcnow",
]
