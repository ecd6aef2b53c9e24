"""The ledger's SQLite tables and how its engine takes locks.

Grants, events, usage, the Get GPU queue and each server's last operation, as SQLAlchemy core
tables. A grant's primary key is the GPU id, so the database itself refuses to hand one
GPU out twice. ``sqlite_immediate_transactions`` makes every transaction that may write
a ``BEGIN IMMEDIATE`` one, which serialises reservations across threads and processes;
a connection marked ``READ_ONLY`` runs a deferred transaction on the write-ahead log and
takes no lock.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, Text, event

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
    Column("pid_started", String(253), nullable=True),
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

# one row per GPU per holding: from its grant to its release (open while held), with
# what the hub's samples of the holder's utilisation saw meanwhile (usage accounting)
usage_table = Table(
    "gpu_usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("gpu_id", String(128), nullable=False),
    Column("gpu_model", String(255), nullable=False, default=""),
    Column("user", String(255), nullable=False, index=True),
    Column("server", String(255), nullable=False, default=""),
    Column("groups", Text, nullable=False, default="[]"),
    Column("profile", String(255), nullable=False, default=""),
    Column("start", DateTime(timezone=True), nullable=False, index=True),
    Column("end", DateTime(timezone=True), nullable=True, index=True),
    # end - start, written with the end: all-time totals sum it in SQL (hub/metrics.py)
    Column("held_seconds", Float, nullable=True),
    # seconds covered by samples, those the GPU was busy in, and the utilisation's
    # integral (GPU-seconds at 100%)
    Column("sampled_seconds", Float, nullable=False, default=0.0),
    Column("busy_seconds", Float, nullable=False, default=0.0),
    Column("utilization_seconds", Float, nullable=False, default=0.0),
)

queue_table = Table(
    "gpu_queue",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(255), nullable=False),
    Column("server", String(255), nullable=False, default=""),
    Column("count", Integer, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
)

# the last Return GPU / Get GPU of each server, so a hub restart can finish or undo it
operations_table = Table(
    "gpu_operations",
    metadata,
    Column("user", String(255), primary_key=True),
    Column("server", String(255), primary_key=True, default=""),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("gpus", Integer, nullable=False, default=0),
    Column("reason", Text, nullable=False, default=""),
    Column("message", Text, nullable=False, default=""),
    Column("started", DateTime(timezone=True), nullable=False),
    Column("deadline", DateTime(timezone=True), nullable=True),
    Column("finished", DateTime(timezone=True), nullable=True),
    Column("detail", Text, nullable=False, default="{}"),
)


READ_ONLY = "gpulab_read_only"
"""Execution option of a connection that only reads: its transaction takes no lock."""

ACCOUNTING = "gpulab_accounting"
"""Execution option of a connection that only adds to usage accounting: it writes, but
changes nothing anyone waits on (no grant, queue entry or operation)."""


def sqlite_immediate_transactions(engine) -> None:
    """Make every transaction that may write take SQLite's write lock up front (no lost
    updates); reads see a consistent snapshot of the write-ahead log without a lock."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below be the only one
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        # durable across a crash of the hub; a power loss ends every holder anyway
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql(
            "BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
        )
