"""Jobs, their replicas and their events, kept in the ledger's database.

A job's record outlives the hub and the job: its spec, state and reason, every
replica's state, restarts, exit code and address, and a log of what happened to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
    update,
)

from gpulab.hub.ledger import WORKLOAD_PREFIX, as_utc, utcnow

metadata = MetaData()

jobs_table = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(255), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("sweep", String(64), nullable=False, default=""),
    Column("groups", Text, nullable=False, default="[]"),
    Column("spec", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("waiter", Integer, nullable=True),
    Column("params", Text, nullable=False, default="{}"),
    Column("metrics", Text, nullable=False, default="{}"),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("started", DateTime(timezone=True), nullable=True),
    Column("finished", DateTime(timezone=True), nullable=True),
    UniqueConstraint("user", "name", name="one_job_name_per_user"),
)

replicas_table = Table(
    "job_replicas",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("restarts", Integer, nullable=False, default=0),
    Column("exit_code", Integer, nullable=True),
    Column("address", String(260), nullable=False, default=""),  # a DNS name and a port
    Column("gpus", Text, nullable=False, default="[]"),
    Column("pid", Integer, nullable=True),
    Column("pid_started", String(253), nullable=True),
    Column("message", Text, nullable=False, default=""),
    Column("started", DateTime(timezone=True), nullable=True),
    Column("finished", DateTime(timezone=True), nullable=True),
)

job_events_table = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), index=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("replica", String(64), nullable=False, default=""),
    Column("message", Text, nullable=False),
)

ACTIVE = ("queued", "starting", "running")
UNFINISHED_REPLICA = ("pending", "running", "restarting")
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Replica:
    name: str
    role: str
    index: int
    state: str
    """pending, running, restarting, succeeded, failed, stopped"""
    restarts: int
    exit_code: int | None
    address: str
    gpus: list[str]
    pid: int | None
    pid_started: str | None
    message: str
    started: datetime | None
    finished: datetime | None

    @classmethod
    def from_row(cls, r) -> Replica:
        return cls(
            r.name,
            r.role,
            r.idx,
            r.state,
            r.restarts,
            r.exit_code,
            r.address,
            json.loads(r.gpus),
            r.pid,
            r.pid_started,
            r.message,
            as_utc(r.started),
            as_utc(r.finished),
        )

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "role": self.role,
            "index": self.index,
            "state": self.state,
            "restarts": self.restarts,
            "exit_code": self.exit_code,
            "address": self.address,
            "gpus": self.gpus,
            "message": self.message,
            "started": _iso(self.started),
            "finished": _iso(self.finished),
        }


@dataclass(frozen=True)
class Job:
    id: int
    user: str
    name: str
    sweep: str
    groups: list[str]
    spec: dict
    state: str
    """queued, starting, running, succeeded, failed, cancelled"""
    message: str
    waiter: int | None
    params: dict
    metrics: dict
    created: datetime
    started: datetime | None
    finished: datetime | None
    replicas: list[Replica]

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def writing(self, log: str) -> bool:
        """Whether the log of replica ``log`` (or ``install``) may still grow: the job is
        active, or it ended (cancelled, say) and the replica's process is still being
        stopped and may still write its last lines."""
        if self.active:
            return True
        return any(r.name == log and r.state in UNFINISHED_REPLICA for r in self.replicas)

    @property
    def queue_key(self) -> str:
        """The job's entry in the ledger's queue while it waits for GPUs."""
        return f"{WORKLOAD_PREFIX}{self.id}"

    @property
    def group(self) -> str:
        """The job's name for its runner: what its replicas share (a headless Service
        on Kubernetes)."""
        return f"job-{self.id}"

    def replica_key(self, replica: str) -> str:
        """Whose grant the ledger records for one replica's GPUs."""
        return f"{WORKLOAD_PREFIX}{self.id}/{replica}"

    @property
    def log_dir(self) -> str:
        """The job's logs, relative to its user's home."""
        return f".gpulab/jobs/{self.id}-{self.name}"

    def log_path(self, replica: str) -> str:
        """A replica's log (or ``install``'s), relative to the home."""
        return f"{self.log_dir}/{replica}.log"

    @property
    def metrics_path(self) -> str:
        return f"{self.log_dir}/metrics.json"

    @property
    def site_dir(self) -> str:
        """Where the job's own package is installed, relative to the home."""
        return f"{self.log_dir}/site-packages"

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "user": self.user,
            "sweep": self.sweep or None,
            "framework": self.spec.get("framework"),
            "state": self.state,
            "message": self.message,
            "gpus": sum(
                g.get("count", 1) * g.get("gpus", 0) for g in self.spec.get("replicas", {}).values()
            ),
            "params": self.params,
            "metrics": self.metrics,
            "created": _iso(self.created),
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "logs": "~/" + self.log_dir,
            "replicas": [r.as_json() for r in self.replicas],
            "spec": self.spec,
        }


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


class JobStore:
    def __init__(self, engine):
        self.engine = engine
        metadata.create_all(engine)

    def create(
        self,
        user: str,
        name: str,
        spec: dict,
        replicas: list[tuple[str, str, int]],
        groups: list[str],
        sweep: str = "",
        params: dict | None = None,
    ) -> Job | None:
        """Record a new queued job; None when the user already has a job of that name."""
        now = utcnow()
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(jobs_table.c.id).where(jobs_table.c.user == user, jobs_table.c.name == name)
            ).first()
            if exists:
                return None
            job_id = conn.execute(
                insert(jobs_table).values(
                    user=user,
                    name=name,
                    sweep=sweep,
                    groups=json.dumps(groups),
                    spec=json.dumps(spec),
                    state="queued",
                    message="Waiting to start",
                    params=json.dumps(params or {}),
                    created=now,
                )
            ).inserted_primary_key[0]
            for replica, role, index in replicas:
                conn.execute(
                    insert(replicas_table).values(
                        job_id=job_id, name=replica, role=role, idx=index, state="pending"
                    )
                )
            conn.execute(
                insert(job_events_table).values(job_id=job_id, at=now, message="Submitted")
            )
        return self.get_by_id(job_id)

    def get_by_id(self, job_id: int) -> Job | None:
        return next(iter(self._jobs(jobs_table.c.id == job_id)), None)

    def get(self, user: str, name: str) -> Job | None:
        return next(iter(self._jobs(jobs_table.c.user == user, jobs_table.c.name == name)), None)

    def list(self, user: str | None = None, sweep: str | None = None) -> list[Job]:
        where = []
        if user is not None:
            where.append(jobs_table.c.user == user)
        if sweep is not None:
            where.append(jobs_table.c.sweep == sweep)
        return self._jobs(*where)

    def active(self) -> list[Job]:
        return self._jobs(jobs_table.c.state.in_(ACTIVE))

    def update(self, job_id: int, event: str = "", **fields) -> None:
        """Change the job's fields, and record ``event`` with them (one transaction)."""
        for key in ("metrics", "params"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        if fields.get("state") in FINISHED:
            fields.setdefault("finished", utcnow())
        with self.engine.begin() as conn:
            conn.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(**fields))
            if event:
                self._event(conn, job_id, event)

    def update_replica(self, job_id: int, name: str, event: str = "", **fields) -> None:
        self.update_replicas(job_id, {name: fields}, event)

    def update_replicas(self, job_id: int, changes: dict[str, dict], event: str = "") -> None:
        """Change several replicas' fields at once; ``event`` is recorded for each."""
        with self.engine.begin() as conn:
            for name, fields in changes.items():
                if "gpus" in fields:
                    fields = {**fields, "gpus": json.dumps(fields["gpus"])}
                conn.execute(
                    update(replicas_table)
                    .where(replicas_table.c.job_id == job_id, replicas_table.c.name == name)
                    .values(**fields)
                )
                if event:
                    self._event(conn, job_id, event, name)

    def stop_replicas(self, job: Job, state: str, message: str = "") -> None:
        """Mark the job's replicas that had not ended ``state`` (``stopped``), now, saying
        why in ``message``."""
        now = utcnow()
        changes = {
            r.name: {"state": state, "finished": now, **({"message": message} if message else {})}
            for r in job.replicas
            if r.state in UNFINISHED_REPLICA
        }
        if changes:
            self.update_replicas(job.id, changes)

    def event(self, job_id: int, message: str, replica: str = "") -> None:
        with self.engine.begin() as conn:
            self._event(conn, job_id, message, replica)

    def _event(self, conn, job_id: int, message: str, replica: str = "") -> None:
        conn.execute(
            insert(job_events_table).values(
                job_id=job_id, at=utcnow(), replica=replica, message=message
            )
        )

    def events(self, job_id: int) -> list[dict]:
        q = (
            select(job_events_table)
            .where(job_events_table.c.job_id == job_id)
            .order_by(job_events_table.c.id)
        )
        with self.engine.connect() as conn:
            return [
                {"at": as_utc(r.at).isoformat(), "replica": r.replica or None, "message": r.message}
                for r in conn.execute(q)
            ]

    def delete(self, job_id: int) -> None:
        with self.engine.begin() as conn:
            for table in (job_events_table, replicas_table):
                conn.execute(delete(table).where(table.c.job_id == job_id))
            conn.execute(delete(jobs_table).where(jobs_table.c.id == job_id))

    def _jobs(self, *where) -> list[Job]:
        with self.engine.connect() as conn:
            rows = list(conn.execute(select(jobs_table).where(*where).order_by(jobs_table.c.id)))
            ids = [r.id for r in rows]
            replicas: dict[int, list[Replica]] = {i: [] for i in ids}
            if ids:
                q = select(replicas_table).where(replicas_table.c.job_id.in_(ids))
                for r in conn.execute(q):
                    replicas[r.job_id].append(Replica.from_row(r))
        jobs = []
        for r in rows:
            reps = sorted(replicas[r.id], key=_replica_order)
            jobs.append(
                Job(
                    r.id,
                    r.user,
                    r.name,
                    r.sweep,
                    json.loads(r.groups),
                    json.loads(r.spec),
                    r.state,
                    r.message,
                    r.waiter,
                    json.loads(r.params),
                    json.loads(r.metrics),
                    as_utc(r.created),
                    as_utc(r.started),
                    as_utc(r.finished),
                    reps,
                )
            )
        return jobs


ROLE_ORDER = {"chief": 0, "worker": 1, "ps": 2, "evaluator": 3}


def _replica_order(r: Replica) -> tuple[int, int]:
    return ROLE_ORDER.get(r.role, 9), r.index
