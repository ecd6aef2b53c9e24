"""Model serving in the hub: deploy a user's SavedModel behind model servers, keep them
running, and say where to call them.

A deployment is a model name, a base path of numbered version folders (TF Serving's
layout) on the user's home or in their bucket, a version policy and labels, a number of
replicas and GPUs per replica. Each replica is one model server (``gpulab.serving``,
TF Serving's REST and gRPC APIs) run through the backend's runner as the user, on
loopback ports the hub gives it, with a token it demands on every call. The hub writes
the deployment as TF Serving's model config file on the home; the servers re-read it
and look for new version folders every ``serving.poll``, so a new version or a label
change reaches them without a restart and without a failed request.

The manager watches every replica: it asks each for its model's status to know which
answer, restarts one that exits (with a growing pause) and gives a deployment's GPUs
back only when it is undeployed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import secrets
import time
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
from tornado.httpclient import HTTPClientError, HTTPRequest

from gpulab.hub.app import context
from gpulab.hub.inventory import visible_devices_env
from gpulab.hub.ledger import GpuLedger, LedgerError, NoGpuFree, QuotaExceeded, _utc, utcnow
from gpulab.serving.config import ModelConfig

from .replica_http import MAX_SOCKET_PATH, ReplicaHTTPClient, socket_of, unix_address
from .runner import HomeRunner, Launch, PortPool, WorkloadError, last_line
from .spec import NAME_RE, SpecError, home_path

log = logging.getLogger(__name__)

MODEL_PREFIX = "model/"
"""Ledger grants of a deployment's replicas: ``model/<id>/replica-<n>``."""
LABEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
ACCESS_HELP = "private, public (anyone with the model's token) or group:NAME"
TOKEN_HEADER = "Authorization"


def token_header(model: Deployment, host: str) -> dict[str, str]:
    """The model's token, for a replica at ``host`` that asks for it: one on a unix socket
    whose listener the hub checks is the owner's (``replica_http``). Anywhere else (a pod
    IP on Kubernetes, where TF Serving asks for none, and which another pod may hold
    once the replica is gone) it is not sent."""
    return {TOKEN_HEADER: f"Bearer {model.token}"} if socket_of(host) else {}


class ModelError(WorkloadError):
    """A request about models that cannot be done; ``status`` is the HTTP status."""


# -- what a deployment is ------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec(ModelConfig):
    """A deployment: TF Serving's config of the model (``base_path`` relative to the
    owner's home, or ``s3://bucket/prefix``), and how it is served."""

    replicas: int = 1
    gpus: int = 0
    """GPUs per replica."""
    access: str = "private"

    @property
    def on_s3(self) -> bool:
        return self.base_path.startswith("s3://")

    def as_json(self) -> dict:
        versions: object = self.policy if self.policy != "specific" else list(self.versions)
        return {
            "name": self.name,
            "base_path": self.base_path,
            "versions": versions,
            "latest": self.latest,
            "labels": dict(self.labels),
            "replicas": self.replicas,
            "gpus": self.gpus,
            "access": self.access,
        }

    @classmethod
    def from_json(cls, data: dict) -> ModelSpec:
        versions = data.get("versions", "latest")
        policy = versions if isinstance(versions, str) else "specific"
        return cls(
            name=data["name"],
            base_path=data["base_path"],
            policy=policy,
            latest=data.get("latest", 1),
            versions=tuple(versions) if policy == "specific" else (),
            labels=dict(data.get("labels", {})),
            replicas=data.get("replicas", 1),
            gpus=data.get("gpus", 0),
            access=data.get("access", "private"),
        )


DEPLOY_FIELDS = ("name", "base_path", "versions", "latest", "labels", "replicas", "gpus", "access")
CHANGE_FIELDS = ("versions", "latest", "labels", "replicas", "access")


def parse_model(body: object, max_replicas: int) -> ModelSpec:
    """A checked ModelSpec from a deploy request, or SpecError naming the field."""
    if not isinstance(body, dict):
        raise SpecError("a model deployment is a JSON object")
    _known(body, DEPLOY_FIELDS)
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(
            f"name: 1-40 lower-case letters, digits and '-', starting with a letter (got {name!r})"
        )
    raw_path = body.get("base_path")
    if not isinstance(raw_path, str) or not raw_path.strip():
        raise SpecError("base_path: the folder holding the model's numbered version folders")
    if raw_path.startswith("s3://"):
        bucket, _, _ = raw_path[5:].partition("/")
        if not bucket:
            raise SpecError(f"base_path: {raw_path!r} names no bucket (s3://BUCKET/PREFIX)")
        base_path = raw_path.rstrip("/")
    else:
        base_path = home_path(raw_path, "base_path")
        if not base_path:
            raise SpecError("base_path: give the model's folder, not the whole home")
    spec = ModelSpec(name=name, base_path=base_path)
    return _apply(spec, body, max_replicas, gpus=True)


def parse_changes(spec: ModelSpec, body: object, max_replicas: int) -> ModelSpec:
    """``spec`` with the changes of a PATCH applied (versions, labels, replicas, access)."""
    if not isinstance(body, dict):
        raise SpecError("changes to a model are a JSON object")
    fixed = sorted(set(body) & {"name", "base_path", "gpus"})
    if fixed:
        raise SpecError(
            f"{', '.join(fixed)}: cannot change on a deployed model; undeploy it and deploy again"
        )
    _known(body, CHANGE_FIELDS)
    return _apply(spec, body, max_replicas, gpus=False)


def _known(body: dict, fields: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise SpecError(f"unknown field(s): {', '.join(unknown)}; known: {', '.join(fields)}")


def _apply(spec: ModelSpec, body: dict, max_replicas: int, gpus: bool) -> ModelSpec:
    policy, latest, versions = spec.policy, spec.latest, spec.versions
    if "versions" in body:
        raw = body["versions"]
        if raw in ("latest", "all"):
            policy, versions = raw, ()
        else:
            items = [raw] if isinstance(raw, int) and not isinstance(raw, bool) else raw
            if (
                not isinstance(items, list)
                or not items
                or any(
                    isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 2**62
                    for v in items
                )
            ):
                raise SpecError(
                    f"versions: 'latest', 'all', or a list of version numbers (got {raw!r})"
                )
            policy, versions = "specific", tuple(sorted(set(items)))
    if "latest" in body:
        latest = _whole(body["latest"], "latest", 1, 100)
    labels = spec.labels
    if "labels" in body:
        raw = body["labels"]
        if not isinstance(raw, dict):
            raise SpecError("labels: an object of label: version number")
        labels = {}
        for label, version in raw.items():
            if not LABEL_RE.match(str(label)):
                raise SpecError(
                    f"labels: {label!r} is not a label (a letter, then letters, digits, _ or -)"
                )
            labels[str(label)] = _whole(version, f"labels.{label}", 0, 2**62)
        if policy == "specific":
            stray = {k: v for k, v in labels.items() if v not in versions}
            if stray:
                label, version = next(iter(stray.items()))
                raise SpecError(
                    f"labels.{label}: version {version} is not among the versions served "
                    f"({', '.join(map(str, versions))})"
                )
    replicas = spec.replicas
    if "replicas" in body:
        replicas = _whole(body["replicas"], "replicas", 1, max_replicas)
    count = spec.gpus
    if gpus and "gpus" in body:
        count = _whole(body["gpus"], "gpus", 0, 16)
    access = spec.access
    if "access" in body:
        access = body["access"]
        if not isinstance(access, str) or not (
            access in ("private", "public")
            or (access.startswith("group:") and len(access) > len("group:"))
        ):
            raise SpecError(f"access: {ACCESS_HELP} (got {access!r})")
    return ModelSpec(
        spec.name, spec.base_path, policy, latest, versions, labels, replicas, count, access
    )


def _whole(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{where}: a whole number from {low} to {high} (got {value!r})")
    return value


def serving_config(spec: ModelSpec, home: str) -> ModelConfig:
    """The TF Serving model config of a deployment, its base path made absolute (one on
    the home is relative to ``home``; an S3 or absolute one stays as it is)."""
    absolute = spec.on_s3 or spec.base_path.startswith("/")
    base = spec.base_path if absolute else f"{home.rstrip('/')}/{spec.base_path}"
    return ModelConfig(spec.name, base, spec.policy, spec.latest, spec.versions, spec.labels)


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
                | {
                    "rest": r.get("rest_socket") or f"http://127.0.0.1:{r['rest']}",
                    "grpc": r.get("grpc_socket") or f"127.0.0.1:{r['grpc']}",
                }
                for r in self.replicas
            ],
            "endpoints": {
                "predict": f"/hub/api/gpulab/models/{self.name}:predict",
                "tf_serving": f"/hub/api/gpulab/serving/{self.user}",
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
                _utc(r.created),
                _utc(r.updated),
            )
            for r in rows
        ]


# -- the manager ---------------------------------------------------------------------------


def new_replicas(first: int, count: int, port) -> list[dict]:
    """Records of replicas ``first``.. ``first + count - 1``, each with its ports."""
    return [
        {"index": i, "state": "starting", "rest": port(), "grpc": port(), "gpus": [],
         "node": "", "pid": None, "pid_started": None, "restarts": 0, "message": "",
         "started": None}
        for i in range(first, first + count)
    ]  # fmt: skip


class ModelManager:
    """Deployments, their GPUs and who may call them, over a backend that runs the
    replicas (``LocalModels`` here, ``gpulab.spawner.kube_models.KubeModels`` on
    Kubernetes)."""

    def __init__(self, ledger: GpuLedger, settings, backend=None):
        self.ledger = ledger
        self.settings = settings
        self.store = ModelStore(ledger.engine)
        self.backend = backend
        self._ports = PortPool()
        self._turn: dict[int, int] = {}
        self._http = ReplicaHTTPClient()  # checks whom it reaches before sending the token
        self.taken_over = asyncio.Event()
        """Set once the servers an earlier hub process started are supervised again (at
        once on a fresh hub). Changes wait for it: a model undeployed before would keep
        a server no one stops, and a new one could be given a port still in use."""

    # -- requests ------------------------------------------------------------------------

    def parse(self, body: object) -> ModelSpec:
        try:
            return parse_model(body, self.settings.serving.max_replicas)
        except SpecError as e:
            raise ModelError(400, str(e)) from None

    def get(self, user: str, name: str) -> Deployment:
        model = self.store.get(user, name)
        if model is None:
            raise ModelError(404, f"{user} has no model named {name}")
        return model

    def may_call(self, model: Deployment, user: str | None, groups: list[str], admin: bool,
                 token: str | None) -> bool:  # fmt: skip
        """Whether a caller may send requests to the model: its owner and admins always;
        members of its group when shared with one; anyone with its token when public."""
        if admin or (user is not None and user == model.user):
            return True
        access = model.spec.access
        if access.startswith("group:") and access[len("group:") :] in groups:
            return user is not None
        if access == "public" and token:
            return secrets.compare_digest(token, model.token)
        return False

    async def deploy(self, user: str, groups: list[str], spec: ModelSpec) -> Deployment:
        if self.backend is None:
            raise ModelError(
                501, f"model serving does not run on the {self.settings.backend} backend"
            )
        await self.taken_over.wait()
        await self.backend.check(user, spec)
        replicas = new_replicas(0, spec.replicas, self._ports.take)
        model = self.store.create(user, spec, replicas)
        if model is None:
            self._free_ports(replicas)
            raise ModelError(
                409, f"{user} already has a model named {spec.name}; undeploy it first"
            )
        if spec.gpus:
            try:
                self._fits(user, groups, spec)
                self._grant(model, replicas, groups)
            except ModelError:
                self.store.delete(model.id)
                self._free_ports(replicas)
                raise
            self.store.update(model.id, replicas=replicas)
        model = self.store.get_by_id(model.id)
        try:
            await self.backend.start(model)
        except ModelError:
            await self._forget(model)
            raise
        log.info("Model %s/%s deployed (%d replicas)", user, spec.name, spec.replicas)
        return self.store.get_by_id(model.id)

    def _fits(self, user: str, groups: list[str], spec: ModelSpec) -> None:
        refused = self.ledger.never_granted(
            user, groups, spec.gpus * spec.replicas, {"gpus": spec.gpus}, "the model"
        )
        if refused:
            raise ModelError(*refused)

    def _grant(self, model: Deployment, replicas: list[dict], groups: list[str]) -> None:
        wants = [(model.replica_key(r["index"]), model.spec.gpus) for r in replicas]
        try:
            granted = self.ledger.reserve_many(model.user, wants, groups, f"model {model.name}")
        except QuotaExceeded as e:
            raise ModelError(403, str(e)) from None
        except NoGpuFree as e:
            raise ModelError(409, f"no GPU free for the model: {e.message_for(False)}") from None
        except LedgerError as e:
            raise ModelError(409, str(e)) from None
        for r in replicas:
            gpus = granted.get(model.replica_key(r["index"]), [])
            r["gpus"] = [g.id for g in gpus]
            r["node"] = gpus[0].node if gpus else ""

    async def update(self, model: Deployment, body: object, groups: list[str]) -> Deployment:
        """Change versions, labels, access or the replica count of a deployed model,
        without a failed request: replicas are added or removed, and the others take the
        new config."""
        model = await self._current(model)
        try:
            spec = parse_changes(model.spec, body, self.settings.serving.max_replicas)
        except SpecError as e:
            raise ModelError(400, str(e)) from None
        await self.backend.check(model.user, spec)
        replicas = [dict(r) for r in model.replicas]
        added = new_replicas(len(replicas), max(0, spec.replicas - len(replicas)), self._ports.take)
        if added and spec.gpus:
            try:
                self._fits(model.user, groups, spec)
                self._grant(model, added, groups)
            except ModelError:
                self._free_ports(added)
                raise
        removed = replicas[spec.replicas :]
        self.store.update(model.id, spec=spec, replicas=replicas[: spec.replicas] + added)
        current = self.store.get_by_id(model.id)
        await self.backend.apply(current, removed, added)
        for r in removed:
            self.ledger.release(model.user, model.replica_key(r["index"]), "replicas reduced")
            self._free_ports([r])
        return self.store.get_by_id(model.id)

    async def undeploy(self, model: Deployment) -> None:
        model = await self._current(model)
        await self.backend.stop(model)
        await self._forget(model)
        log.info("Model %s/%s undeployed", model.user, model.name)

    async def _current(self, model: Deployment) -> Deployment:
        """``model`` as it stands once the hub supervises its servers."""
        await self.taken_over.wait()
        current = self.store.get_by_id(model.id)
        if current is None:
            raise ModelError(404, f"{model.user} has no model named {model.name}")
        return current

    async def _forget(self, model: Deployment) -> None:
        for r in model.replicas:
            self.ledger.release(
                model.user, model.replica_key(r["index"]), f"model {model.name} undeployed"
            )
        self._free_ports(model.replicas)
        self._turn.pop(model.id, None)
        self.store.delete(model.id)

    async def read_log(self, model: Deployment, index: int, offset: int = 0) -> bytes:
        if not any(r["index"] == index for r in model.replicas):
            raise ModelError(404, f"model {model.name} has no replica {index}")
        return await self.backend.read_log(model, index, offset)

    def targets(self, model: Deployment) -> list[tuple[str, int]]:
        """(host, REST port) of the replicas to send a call to, in the order to try
        them: the ready ones taking turns, then the others (one may be ready by now)."""
        ready, others = self.backend.endpoints(model)
        if ready:
            turn = self._turn.get(model.id, 0) % len(ready)
            self._turn[model.id] = turn + 1
            ready = ready[turn:] + ready[:turn]
        return ready + others

    # -- what backends share --------------------------------------------------------------

    async def fetch_status(self, model: Deployment, host: str, port: int) -> list[dict] | None:
        """A replica's versions of the model (TF Serving's status), or None when it does
        not answer yet."""
        request = HTTPRequest(
            f"http://{host}:{port}/v1/models/{model.name}",
            headers=token_header(model, host),
            request_timeout=3,
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
        except (OSError, HTTPClientError):
            return None
        if response.code == 404:
            return []
        if response.code != 200:
            return None
        try:
            data = json.loads(response.body)
        except ValueError:
            return None
        out = []
        for item in data.get("model_version_status", []):
            status = item.get("status", {})
            failed = status.get("error_code", "OK") != "OK"
            out.append(
                {
                    "version": int(item.get("version", 0)),
                    "state": item.get("state", ""),
                    "error": status.get("error_message", "") if failed else "",
                }
            )
        return out

    def note_versions(self, model: Deployment, index: int, versions: list[dict]) -> bool:
        """Record what a replica reported; whether it serves."""
        record = next((r for r in model.replicas if r["index"] == index), None)
        ready = any(v["state"] == "AVAILABLE" for v in versions)
        if record is None:
            return ready
        failed = [v for v in versions if v["error"]]
        if ready:
            serving = ", ".join(str(v["version"]) for v in versions if v["state"] == "AVAILABLE")
            state, message = "available", f"serving version {serving}"
        elif failed:
            v = failed[0]
            state, message = "failed", f"version {v['version']} did not load: {v['error']}"
        else:
            loading = [str(v["version"]) for v in versions if v["state"] in ("START", "LOADING")]
            state = "loading"
            message = f"loading version {', '.join(loading)}" if loading else "looking for versions"
        if record["state"] != state or record["message"] != message:
            self.set_replica(model.id, index, state=state, message=message)
        if versions != model.versions and (ready or index == 0):
            self.store.update(model.id, versions=versions)
        return ready

    def set_replica(self, model_id: int, index: int, **fields) -> None:
        """Change a replica's record, and the model's state and message with it."""
        model = self.store.get_by_id(model_id)
        if model is None:
            return
        replicas = [dict(r) for r in model.replicas]
        for r in replicas:
            if r["index"] == index:
                r.update(fields)
        states = [r["state"] for r in replicas]
        if "available" in states:
            state = "available"
            up = states.count("available")
            message = (
                f"{up} of {len(states)} replicas serving"
                if up < len(states)
                else next(r["message"] for r in replicas if r["state"] == "available")
            )
        elif all(s == "failed" for s in states):
            state, message = "failed", replicas[0]["message"]
        elif model.state in ("available", "unavailable"):
            state, message = "unavailable", replicas[0]["message"]
        else:
            state, message = "deploying", replicas[0]["message"]
        self.store.update(model_id, replicas=replicas, state=state, message=message)

    def config_text(self, spec: ModelSpec, home: str) -> str:
        """TF Serving's model config file for a deployment whose owner's home is ``home``."""
        from gpulab.serving.config import to_text

        return to_text([serving_config(spec, home)])

    def _free_ports(self, replicas: list[dict]) -> None:
        for r in replicas:
            self._ports.release(r["rest"], r["grpc"])

    # -- after a hub restart -------------------------------------------------------------

    async def run_background(self) -> None:
        """At hub start: take over the model servers an earlier hub process started."""
        if self.backend is None:
            self.taken_over.set()
            return
        try:
            held = {(g.user, g.server) for g in self.ledger.grants()}
            for model in self.store.list():
                await self._take_over(model, held)
        except Exception:  # noqa: BLE001 -- the hub must run on
            log.exception("Taking over model servers after a restart failed")
        finally:
            self.taken_over.set()

    async def _take_over(self, model: Deployment, held: set) -> None:
        """Supervise one model's servers again. A failure is this model's alone: the
        others are still taken over (one left out would have no one to stop its servers)."""
        try:
            for r in model.replicas:
                self._ports.hold(r["rest"], r["grpc"])
                if r["gpus"] and (model.user, model.replica_key(r["index"])) not in held:
                    try:
                        self._grant(model, [r], [])
                    except ModelError as e:
                        self.set_replica(model.id, r["index"], state="failed", message=str(e))
                        continue
                    self.set_replica(model.id, r["index"], gpus=r["gpus"], node=r["node"])
            await self.backend.resume(self.store.get_by_id(model.id))
            log.info("Model %s/%s: supervised again after a hub restart", model.user,
                     model.name)  # fmt: skip
        except Exception:  # noqa: BLE001 -- the hub must run on
            log.exception("Taking over model %s/%s after a restart failed", model.user, model.name)


@dataclass
class _Live:
    """What the hub knows of one running replica, between status polls."""

    rest: tuple[str, int]
    """The (host, port) the hub calls its REST API at (a ``unix_address``)."""
    ready: bool = False
    started: object = None
    task: asyncio.Task | None = None


class LocalModels:
    """Replicas as model server processes through the workload runner: as the owner's
    account, restarted when they exit; the config on the home. A replica listens on unix
    sockets (REST and gRPC) in a folder only its owner can enter (``listen_dir``), never
    on a loopback port another account could bind first or call."""

    def __init__(self, manager: ModelManager, runner: HomeRunner, python: str = "python"):
        self.manager = manager
        self.runner = runner
        self.python = python
        self.settings = manager.settings
        self._live: dict[int, dict[int, _Live]] = {}
        self._dirs: dict[str, tuple[str, int]] = {}

    async def check(self, user: str, spec: ModelSpec) -> None:
        try:
            folder, _ = await asyncio.to_thread(self._listen_dir, user)
        except OSError as e:
            raise ModelError(
                500, f"cannot make the folder of {user}'s model sockets: {e}"
            ) from None
        longest = len(self._socket(folder, spec.name, spec.replicas - 1, "rest"))
        if longest > MAX_SOCKET_PATH:
            raise ModelError(
                400,
                f"name: too long for its replicas' sockets in {folder} (a socket path holds "
                f"{MAX_SOCKET_PATH} characters); use at most "
                f"{len(spec.name) - longest + MAX_SOCKET_PATH} characters",
            )
        if not spec.on_s3:
            await asyncio.to_thread(self._check_base_path, user, spec)

    def _listen_dir(self, user: str) -> tuple[str, int]:
        """(the folder of the user's replicas' sockets, the uid that must listen there),
        made or tightened again now."""
        folder, uid = self.runner.listen_dir(user)
        self._dirs[user] = (str(folder), uid)
        return self._dirs[user]

    @staticmethod
    def _socket(folder: str, name: str, index: int, api: str) -> str:
        return f"{folder}/{name}-{index}.{api}"

    def _sockets(self, model: Deployment, index: int) -> tuple[str, str, int]:
        """(REST socket, gRPC socket, the owner's uid) of a replica."""
        folder, uid = self._dirs.get(model.user) or self._listen_dir(model.user)
        rest, grpc = (self._socket(folder, model.name, index, api) for api in ("rest", "grpc"))
        return rest, grpc, uid

    def _check_base_path(self, user: str, spec: ModelSpec) -> None:
        """Refuse a base path that holds no SavedModel version the policy would serve."""
        shown = f"~/{spec.base_path}"
        try:
            names = self.runner.list_dir(user, spec.base_path)
        except FileNotFoundError:
            raise ModelError(400, f"base_path: {shown} is not a folder in your home") from None
        numbers = sorted(int(n) for n in names if n.isdigit())
        if not numbers:
            raise ModelError(
                400,
                f"base_path: {shown} holds no numbered version folder (TF Serving's layout: "
                f"{shown}/1/saved_model.pb)",
            )
        served = spec.aspired(numbers)
        if spec.policy == "specific":
            missing = sorted(set(spec.versions) - set(numbers))
            if missing:
                raise ModelError(
                    400,
                    f"versions: {shown} has no version {', '.join(map(str, missing))} (found "
                    f"{', '.join(map(str, numbers))})",
                )
        for version in served:
            if not self.runner.is_file(user, f"{spec.base_path}/{version}/saved_model.pb"):
                raise ModelError(
                    400,
                    f"base_path: {shown}/{version} is not a SavedModel (it has no saved_model.pb)",
                )
        for label, version in spec.labels.items():
            if version not in served:
                raise ModelError(
                    400,
                    f"labels.{label}: version {version} is not among the versions served "
                    f"({', '.join(map(str, served))})",
                )

    async def start(self, model: Deployment) -> None:
        await self._write_config(model, model.spec)
        for r in model.replicas:
            self._start_replica(model, r["index"])

    async def apply(self, model: Deployment, removed: list[dict], added: list[dict]) -> None:
        """The servers re-read the new config within ``serving.poll``."""
        await self._write_config(model, model.spec)
        for r in removed:
            await self._stop_replica(model, r["index"])
        for r in added:
            self._start_replica(model, r["index"])

    async def stop(self, model: Deployment) -> None:
        indices = set(self._live.get(model.id, {})) | {r["index"] for r in model.replicas}
        for index in sorted(indices):
            await self._stop_replica(model, index)
        self._live.pop(model.id, None)

    async def resume(self, model: Deployment) -> None:
        for r in model.replicas:
            adopted = None
            if r.get("pid"):  # still running, or its end is seen at once and it restarts
                adopted = self.runner.adopt(
                    model.user, model.log_path(r["index"]), r["pid"], r.get("pid_started")
                )
            self._start_replica(model, r["index"], adopted)

    def endpoints(self, model: Deployment) -> tuple[list, list]:
        live = self._live.get(model.id)
        if live is None:  # not taken over yet after a hub restart: its servers run on
            running = [self._sockets(model, r["index"]) for r in model.replicas if r.get("pid")]
            return [unix_address(rest, uid) for rest, _, uid in running], []
        ready = [live[i].rest for i in sorted(live) if live[i].ready]
        others = [live[i].rest for i in sorted(live) if not live[i].ready]
        return ready, others

    async def read_log(self, model: Deployment, index: int, offset: int) -> bytes:
        return await asyncio.to_thread(
            self.runner.read_log, model.user, model.log_path(index), offset
        )

    # -- one replica -------------------------------------------------------------------

    def _start_replica(self, model: Deployment, index: int, adopted=None) -> None:
        self._listen_dir(model.user)  # the owner's uid as it is now, not as cached
        rest, grpc, uid = self._sockets(model, index)
        self._show_sockets(model.id, index, rest, grpc)
        # an adopted process is known at once: a stop before the task's first step ends it
        live = _Live(rest=unix_address(rest, uid), started=adopted)
        self._live.setdefault(model.id, {})[index] = live
        live.task = asyncio.ensure_future(self._keep_running(model.id, index, live, adopted))

    def _show_sockets(self, model_id: int, index: int, rest: str, grpc: str) -> None:
        """Record a replica's sockets, for its owner to call (``replica_status``)."""
        current = self.manager.store.get_by_id(model_id)
        if current is None:
            return
        shown = {"rest_socket": f"unix:{rest}", "grpc_socket": f"unix:{grpc}"}
        replicas = [dict(r, **shown) if r["index"] == index else r for r in current.replicas]
        if replicas != current.replicas:
            self.manager.store.update(model_id, replicas=replicas)

    async def _stop_replica(self, model: Deployment, index: int) -> None:
        grace = self.settings.jobs.stop_grace_seconds
        live = self._live.get(model.id, {}).pop(index, None)
        stopped = None
        if live is not None:
            if live.task is not None:
                live.task.cancel()
                await asyncio.gather(live.task, return_exceptions=True)
            if live.started is not None:
                await self.runner.stop(live.started, grace)
                stopped = live.started.pid
        # and the process its record names, should no task know it (not taken over after a
        # hub restart): an undeployed replica's server must not run on
        current = self.manager.store.get_by_id(model.id) or model
        record = next((r for r in current.replicas if r["index"] == index), None)
        if record is not None and record.get("pid") and record["pid"] != stopped:
            log_path = model.log_path(index)
            recorded = self.runner.adopt(
                model.user, log_path, record["pid"], record.get("pid_started")
            )
            await self.runner.stop(recorded, grace)

    async def _keep_running(self, model_id: int, index: int, live: _Live, adopted) -> None:
        """Run one replica for as long as the model is deployed: start it, follow its
        status, and start it again when it exits."""
        manager = self.manager
        restarts = 0
        while True:
            model = manager.store.get_by_id(model_id)
            if model is None:
                return
            record = next((r for r in model.replicas if r["index"] == index), None)
            if record is None:
                return
            if adopted is not None:
                live.started, adopted = adopted, None
            else:
                try:
                    live.started = await self._launch(model, record, restarts)
                except OSError as e:
                    manager.set_replica(model_id, index, state="failed", message=str(e))
                    return
            began = time.monotonic()
            waiter = asyncio.ensure_future(live.started.wait())
            try:
                await self._follow(model_id, index, live, waiter, began)
            finally:
                if not waiter.done():
                    waiter.cancel()
            returncode = waiter.result() if not waiter.cancelled() else -9
            live.ready = False
            if time.monotonic() - began > 60:
                restarts = 0  # it ran a good while: start the backoff afresh
            restarts += 1
            delay = min(self.settings.jobs.restart_backoff_seconds * 2 ** (restarts - 1), 60.0)
            code = 128 - returncode if returncode < 0 else returncode
            tail = last_line(self.runner, model.user, model.log_path(index))
            manager.set_replica(
                model_id,
                index,
                state="restarting",
                restarts=record["restarts"] + 1,
                message=f"exited with code {code}"
                + (f": {tail}" if tail else "")
                + f"; restarting in {delay:g}s",
            )
            await asyncio.sleep(delay)

    async def _launch(self, model: Deployment, record: dict, restarts: int):
        env = self.runner.base_env(model.user)
        await asyncio.to_thread(self._listen_dir, model.user)  # closed again, should it be open
        rest, grpc, _ = self._sockets(model, record["index"])
        home = env["HOME"]
        s3 = context().s3
        if s3 is not None:
            account = await asyncio.to_thread(s3.ensure, model.user)
            env.update(account.env())
        poll = f"{self.settings.serving.poll_seconds:g}"
        env.update(
            visible_devices_env(record["gpus"]),
            GPULAB_SERVING_TOKEN=model.token,
            GPULAB_MODEL=model.name,
            PYTHONUNBUFFERED="1",
            TF_CPP_MIN_LOG_LEVEL="1",
        )
        launch = Launch(
            argv=[
                self.python, "-m", "gpulab.serving",
                "--port", "0", "--grpc_socket_path", grpc, "--rest_api_socket_path", rest,
                "--model_config_file", f"{home}/{model.config_path}",
                "--model_config_file_poll_wait_seconds", poll,
                "--file_system_poll_wait_seconds", poll,
                "--cache_dir", f"{home}/{model.folder}/cache",
            ],
            env=env,
            workdir="",
            log=model.log_path(record["index"]),
            header=f"==> gpulab: model {model.name}, replica {record['index']}, start "
            f"{restarts + 1}, {utcnow():%Y-%m-%d %H:%M:%S} UTC",
        )  # fmt: skip
        started = await self.runner.start(model.user, launch)
        if record["gpus"]:
            self.manager.ledger.attach(
                model.user, model.replica_key(record["index"]), started.pid, started.pid_started
            )
        self.manager.set_replica(
            model.id,
            record["index"],
            state="loading",
            pid=started.pid,
            pid_started=started.pid_started,
            started=utcnow().isoformat(),
            message="loading the model",
        )
        return started

    async def _follow(self, model_id: int, index: int, live: _Live, waiter, began: float) -> None:
        """Ask the replica for its model's status until its process ends: often while it
        loads, every few seconds once it serves."""
        manager = self.manager
        timeout = self.settings.serving.start_timeout_seconds
        while not waiter.done():
            model = manager.store.get_by_id(model_id)
            if model is None:
                return
            status = await manager.fetch_status(model, *live.rest)
            if status is not None:
                live.ready = manager.note_versions(model, index, status)
            elif time.monotonic() - began > timeout:
                manager.set_replica(
                    model_id, index, message=f"did not answer within {timeout:g}s of starting"
                )
                await self.runner.stop(live.started, self.settings.jobs.stop_grace_seconds)
            else:
                live.ready = False
            await asyncio.wait([waiter], timeout=2.0 if live.ready else 0.25)

    async def _write_config(self, model: Deployment, spec: ModelSpec) -> None:
        home = self.runner.base_env(model.user)["HOME"]
        text = self.manager.config_text(spec, home)
        try:  # never blocks: homefs replaces whatever the owner put there, or says why not
            await asyncio.to_thread(
                self.runner.write_file, model.user, model.config_path, text.encode()
            )
        except OSError as e:
            raise ModelError(
                409, f"cannot write the model config ~/{model.config_path}: {e.strerror}"
            ) from None


@functools.cache
def model_manager() -> ModelManager:
    """The hub's one ModelManager, over the ledger of ``context()``, with the backend's
    way of running replicas."""
    ctx = context()
    manager = ModelManager(ctx.ledger, ctx.settings)
    manager.backend = ctx.backend.model_backend(manager)
    return manager
