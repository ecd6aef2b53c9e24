"""Model deployments as the hub records them (the ``models`` table), so they outlive
hub restarts."""

from __future__ import annotations

import json
import logging
import secrets
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
    delete,
    insert,
    select,
    update,
)

from gpulab.hub.ledger import as_utc, utcnow

from .model_spec import MODEL_PREFIX, ModelSpec

log = logging.getLogger(__name__)


# -- the record ----------------------------------------------------------------------------

metadata = MetaData()

models_table = Table(
    "models",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(255), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("spec", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("token", String(128), nullable=False),
    Column("replicas", Text, nullable=False, default="[]"),
    Column("versions", Text, nullable=False, default="[]"),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    UniqueConstraint("user", "name", name="one_model_name_per_user"),
)


@dataclass(frozen=True)
class Deployment:
    id: int
    user: str
    name: str
    spec: ModelSpec
    state: str
    """deploying, available, unavailable, failed"""
    message: str
    token: str
    replicas: list[dict]
    """Per replica: index, state, rest and grpc ports, gpus, pid, restarts, message."""
    versions: list[dict]
    """The versions a replica reports: version, state, error."""
    created: datetime
    updated: datetime

    @property
    def folder(self) -> str:
        """The deployment's config and logs, relative to the owner's home."""
        return f".gpulab/models/{self.name}"

    @property
    def config_path(self) -> str:
        return f"{self.folder}/models.config"

    @property
    def batching_path(self) -> str:
        """TF Serving's batching parameters of its replicas (with ``batching``)."""
        return f"{self.folder}/batching.config"

    @property
    def monitoring_path(self) -> str:
        """TF Serving's monitoring config of its replicas: their Prometheus metrics."""
        return f"{self.folder}/monitoring.config"

    def log_path(self, index: int) -> str:
        return f"{self.folder}/replica-{index}.log"

    def replica_key(self, index: int) -> str:
        return f"{MODEL_PREFIX}{self.id}/replica-{index}"

    def as_json(self, with_token: bool = False) -> dict:
        out = {
            "id": self.id,
            "name": self.name,
            "user": self.user,
            "state": self.state,
            "message": self.message,
            **self.spec.as_json(),
            "model_versions": self.versions,
            "replica_status": [
                {k: r.get(k) for k in ("index", "state", "restarts", "message", "gpus", "started")}
                | {"serving": r.get("serving") or []}
                | {
                    "rest": r.get("rest_socket") or f"http://127.0.0.1:{r['rest']}",
                    "grpc": r.get("grpc_socket") or f"127.0.0.1:{r['grpc']}",
                }
                for r in self.replicas
            ],
            "endpoints": {
                "predict": f"/hub/api/gpulab/models/{self.name}:predict",
                "tf_serving": f"/hub/api/gpulab/serving/{self.user}",
                "metrics": f"/hub/api/gpulab/models/{self.name}/metrics",
            },
            "logs": "~/" + self.folder,
            "created": self.created.isoformat(),
            "updated": self.updated.isoformat(),
        }
        if with_token:
            out["token"] = self.token
        return out


class ModelStore:
    def __init__(self, engine):
        self.engine = engine
        metadata.create_all(engine)

    def create(self, user: str, spec: ModelSpec, replicas: list[dict]) -> Deployment | None:
        """Record a new deployment; None when the user has a model of that name."""
        now = utcnow()
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(models_table.c.id).where(
                    models_table.c.user == user, models_table.c.name == spec.name
                )
            ).first()
            if exists:
                return None
            model_id = conn.execute(
                insert(models_table).values(
                    user=user,
                    name=spec.name,
                    spec=json.dumps(spec.as_json()),
                    state="deploying",
                    message="Starting model servers",
                    token=secrets.token_urlsafe(32),
                    replicas=json.dumps(replicas),
                    created=now,
                    updated=now,
                )
            ).inserted_primary_key[0]
        return self.get_by_id(model_id)

    def get_by_id(self, model_id: int) -> Deployment | None:
        return next(iter(self._rows(models_table.c.id == model_id)), None)

    def get(self, user: str, name: str) -> Deployment | None:
        where = (models_table.c.user == user, models_table.c.name == name)
        return next(iter(self._rows(*where)), None)

    def list(self, user: str | None = None) -> list[Deployment]:
        return self._rows(*(() if user is None else (models_table.c.user == user,)))

    def update(self, model_id: int, **fields) -> None:
        for key in ("replicas", "versions"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        if "spec" in fields:
            fields["spec"] = json.dumps(fields["spec"].as_json())
        fields["updated"] = utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(models_table).where(models_table.c.id == model_id).values(**fields))

    def delete(self, model_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(models_table).where(models_table.c.id == model_id))

    def _rows(self, *where) -> list[Deployment]:
        q = select(models_table).where(*where).order_by(models_table.c.id)
        with self.engine.connect() as conn:
            rows = list(conn.execute(q))
        return [
            Deployment(
                r.id,
                r.user,
                r.name,
                ModelSpec.from_json(json.loads(r.spec)),
                r.state,
                r.message,
                r.token,
                json.loads(r.replicas),
                json.loads(r.versions),
                as_utc(r.created),
                as_utc(r.updated),
            )
            for r in rows
        ]
