"""Environment snapshots, kept in the ledger's database: whose, their name, state, and
the image in the registry (its digest and layers) that holds them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    update,
)

from gpulab.hub.ledger import as_utc, utcnow

metadata = MetaData()

environments_table = Table(
    "environments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(255), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("repository", Text, nullable=False, default=""),
    Column("digest", String(80), nullable=False, default=""),
    Column("layers", Text, nullable=False, default="[]"),
    Column("parent", Text, nullable=False, default=""),
    Column("python", String(16), nullable=False, default=""),
    Column("base", Text, nullable=False, default=""),
    Column("packages", Text, nullable=False, default="[]"),
    Column("groups", Text, nullable=False, default="[]"),
    Column("size", Integer, nullable=False, default=0),
    Column("created", DateTime(timezone=True), nullable=False),
    UniqueConstraint("user", "name", name="one_environment_name_per_user"),
)

SAVING, READY, FAILED = "saving", "ready", "failed"


@dataclass
class LayerRecord:
    """One layer of a snapshot's image, as its manifest and config name it."""

    digest: str
    diff_id: str
    size: int
    prefix: str
    """Where its files sit in the image (``opt/gpulab/envs/<user>/<name>``)."""

    def as_json(self) -> dict:
        return {
            "digest": self.digest,
            "diff_id": self.diff_id,
            "size": self.size,
            "prefix": self.prefix,
        }


@dataclass
class Environment:
    id: int
    user: str
    name: str
    description: str
    state: str
    """saving, ready, failed"""
    message: str
    repository: str
    digest: str
    layers: list[LayerRecord]
    parent: str
    """The snapshot this one was saved on top of (``user/name``), or ""."""
    python: str
    base: str
    packages: list[dict]
    groups: list[str]
    size: int
    created: datetime

    @property
    def ref(self) -> str:
        """How other users name it: ``user/name``."""
        return f"{self.user}/{self.name}"

    @property
    def image(self) -> str:
        """The image, pinned by digest (``repository@sha256:...``), once it is saved."""
        return f"{self.repository}@{self.digest}" if self.digest else ""

    @classmethod
    def from_row(cls, r) -> Environment:
        return cls(
            r.id,
            r.user,
            r.name,
            r.description,
            r.state,
            r.message,
            r.repository,
            r.digest,
            [LayerRecord(**x) for x in json.loads(r.layers)],
            r.parent,
            r.python,
            r.base,
            json.loads(r.packages),
            json.loads(r.groups),
            r.size,
            as_utc(r.created),
        )


class EnvironmentStore:
    def __init__(self, engine):
        self.engine = engine
        metadata.create_all(engine)

    def _one(self, *where) -> Environment | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(environments_table).where(*where)).first()
        return Environment.from_row(row) if row else None

    def get(self, user: str, name: str) -> Environment | None:
        t = environments_table
        return self._one(t.c.user == user, t.c.name == name)

    def get_by_id(self, env_id: int) -> Environment | None:
        return self._one(environments_table.c.id == env_id)

    def list(self, user: str | None = None, groups: list[str] | None = None) -> list[Environment]:
        """Everyone's (``user`` None), or ``user``'s own and those shared with one of
        ``groups``."""
        t = environments_table
        query = select(t).order_by(t.c.user, t.c.name)
        if user is not None:  # the user's own, and others' shared with some group
            shared = and_(t.c.state == READY, t.c.groups != "[]") if groups else false()
            query = query.where(or_(t.c.user == user, shared))
        with self.engine.connect() as conn:
            rows = [Environment.from_row(r) for r in conn.execute(query)]
        if user is None or not groups:
            return rows
        return [
            e for e in rows if e.user == user or (e.state == READY and set(e.groups) & set(groups))
        ]

    def count(self, user: str) -> int:
        t = environments_table
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).where(t.c.user == user)).scalar_one()

    def add(
        self,
        user: str,
        name: str,
        description: str,
        repository: str,
        parent: str,
        groups: list[str],
    ) -> Environment | None:
        """Record a snapshot being saved; None when the user has one of that name (a
        failed one is replaced)."""
        t = environments_table
        with self.engine.begin() as conn:
            row = conn.execute(
                select(t.c.id, t.c.state).where(t.c.user == user, t.c.name == name)
            ).first()
            if row is not None:
                if row.state != FAILED:
                    return None
                conn.execute(delete(t).where(t.c.id == row.id))
            env_id = conn.execute(
                insert(t).values(
                    user=user,
                    name=name,
                    description=description,
                    state=SAVING,
                    message="Saving",
                    repository=repository,
                    parent=parent,
                    groups=json.dumps(groups),
                    created=utcnow(),
                )
            ).inserted_primary_key[0]
        return self.get_by_id(env_id)

    def update(self, env_id: int, **fields) -> None:
        for key in ("layers", "packages", "groups"):
            if key in fields:
                value = fields[key]
                fields[key] = json.dumps(
                    [x.as_json() if isinstance(x, LayerRecord) else x for x in value]
                )
        with self.engine.begin() as conn:
            conn.execute(
                update(environments_table).where(environments_table.c.id == env_id).values(**fields)
            )

    def delete(self, env_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(environments_table).where(environments_table.c.id == env_id))
