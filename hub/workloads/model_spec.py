"""What a model deployment is: its spec as users write it (checked), the config the
model servers read, and who may call it."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpulab.serving.config import ModelConfig

from .replica_http import socket_of
from .runner import WorkloadError
from .spec import NAME_RE, SpecError, home_path

if TYPE_CHECKING:
    from .model_store import Deployment


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
