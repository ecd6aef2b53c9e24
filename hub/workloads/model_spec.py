"""What a model deployment is: its spec as users write it (``ModelBody`` and
``ModelChanges``, pydantic models, see ``bodies``), checked, the config the model
servers read, and who may call it."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Literal

from google.protobuf import text_format
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gpulab.serving.batching import SETTABLE, BatchingConfigError, BatchingParameters
from gpulab.serving.config import ModelConfig
from gpulab.serving.monitoring import DEFAULT_PATH
from gpulab.serving.protos import message_class

from .bodies import Body, FieldError, SpecError, Wanted, shapes, shown, validated, whole
from .replica_http import socket_of
from .runner import WorkloadError
from .spec import home_path

if TYPE_CHECKING:
    from .model_store import Deployment


log = logging.getLogger(__name__)


MODEL_PREFIX = "model/"

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
MODEL_NAME_HELP = "1-40 letters, digits, '_', '-' and '.', starting with a letter or digit"
"""What TF Serving's own names use (``half_plus_two``, ``resnet-50``, ``bert.v2``), and what
a URL path segment and a file name (a replica's socket) hold as it is; the cluster's
objects are named after the deployment's id, not its name."""
ModelName = Annotated[str, Field(pattern=MODEL_NAME_RE.pattern), Wanted(MODEL_NAME_HELP)]
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
    batching: dict | None = None
    """TF Serving's batching parameters the deployment sets (``{}``: its defaults), or
    None: no batching."""

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
            "batching": _shown_batching(self.batching),
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
            batching=_batching(data.get("batching", False)),
        )


# -- what a client may send ------------------------------------------------------------------

MAX_VERSION = 2**62
MAX_REPLICAS = 64
"""The most replicas of a model any hub allows (``serving.max_replicas`` is at most this)."""
VERSIONS_HELP = "'latest', 'all', or a list of version numbers"
BASE_PATH_HELP = "the folder holding the model's numbered version folders"

Version = whole(0, MAX_VERSION)
Versions = Annotated[
    shapes(
        VERSIONS_HELP,
        string=Literal["latest", "all"],
        integer=Version,
        array=Annotated[list[Version], Field(min_length=1)],
    ),
    Wanted(VERSIONS_HELP),
    Field(description="latest (the newest `latest` of them), all, or the ones to serve."),
]
Labels = Annotated[
    dict[
        Annotated[
            str,
            Field(pattern=LABEL_RE.pattern),
            Wanted("a label: a letter, then letters, digits, _ or -"),
        ],
        Version,
    ],
    Field(description="Version labels (label: version number), each of a version served."),
]
Latest = Annotated[whole(1, 100), Field(description="With versions: latest, how many.")]
Access = Annotated[
    str,
    Field(pattern=r"^(private|public|group:.+)$", description=f"Who may call it: {ACCESS_HELP}."),
    Wanted(ACCESS_HELP),
]


def _base_path(value: str) -> str:
    """A home-relative folder, or an S3 prefix with its bucket."""
    if value.startswith("s3://"):
        bucket, _, _ = value[5:].partition("/")
        if not bucket:
            raise FieldError(f"{shown(value)} names no bucket (s3://BUCKET/PREFIX)")
        return value.rstrip("/")
    path = home_path(value)
    if not path:
        raise FieldError("give the model's folder, not the whole home")
    return path


Replicas = Annotated[int, Field(ge=1, le=MAX_REPLICAS, description="At most serving.max_replicas.")]


def _no_defaults(schema: dict) -> None:
    for prop in schema["properties"].values():
        prop.pop("default", None)


class _Served(Body):
    """What a deployment and a change share: replicas, at most the hub's
    ``serving.max_replicas`` (the validation context's ``max_replicas``)."""

    @field_validator("replicas", mode="wrap", check_fields=False)
    @classmethod
    def _at_most_max(cls, value: object, handler, info: ValidationInfo) -> int:
        most = (info.context or {}).get("max_replicas", MAX_REPLICAS)
        try:
            count = handler(value)
        except ValidationError:
            count = None
        if count is None or count > most:
            raise FieldError(f"a whole number from 1 to {most}", got=True)
        return count


def _no_default(schema: dict) -> None:
    """A field whose default is not a value a client sends (TF Serving decides it)."""
    schema.pop("default", None)


BATCHING_FIELDS = SETTABLE
MAX_BATCH_SIZE = 4096
BatchSize = whole(1, MAX_BATCH_SIZE)


class BatchingBody(Body):
    """TF Serving's batching parameters (its ``BatchingParameters``); one left out keeps
    TF Serving's default. Checked as TF Serving checks them."""

    max_batch_size: BatchSize = Field(1000, description="Rows in one call of the model.")
    batch_timeout_micros: whole(0, 10_000_000) = Field(
        0, description="How long the first request of a batch waits for others, in microseconds."
    )
    num_batch_threads: whole(1, 64) = Field(
        None,
        description="Batches run at once (default: the machine's CPUs).",
        json_schema_extra=_no_default,
    )
    max_enqueued_batches: whole(1, 10_000) = Field(
        10, description="Batches that may wait; a request beyond them is refused."
    )
    allowed_batch_sizes: Annotated[
        list[BatchSize], Field(min_length=1, max_length=64), Wanted("a list of batch sizes")
    ] = Field(
        None,
        description="Batch sizes run, increasing, the last max_batch_size; a batch is "
        "padded up to the next.",
        json_schema_extra=_no_default,
    )

    @model_validator(mode="after")
    def _as_tf_serving_checks(self) -> BatchingBody:
        try:
            BatchingParameters(**self.parameters()).check()
        except BatchingConfigError as e:
            # about allowed_batch_sizes (against max_batch_size), or the one it names first
            words = str(e)
            about = [n for n in BATCHING_FIELDS if words.startswith(n)]
            at = "allowed_batch_sizes" if "allowed_batch_sizes" in words else next(iter(about), "")
            raise FieldError(words, at=at) from None
        return self

    def parameters(self) -> dict:
        """The parameters given (the others keep TF Serving's defaults)."""
        given = self.model_dump(include=self.model_fields_set)
        if "allowed_batch_sizes" in given:
            given["allowed_batch_sizes"] = tuple(given["allowed_batch_sizes"])
        return given


BATCHING_HELP = (
    "true (TF Serving's defaults), false, or an object of batching parameters: "
    + ", ".join(BATCHING_FIELDS)
)
Batching = Annotated[
    shapes(BATCHING_HELP, boolean=bool, object=BatchingBody),
    Field(
        description="Run requests that arrive together as one call of the model (TF "
        "Serving's --enable_batching): true for TF Serving's batching parameters, or some "
        "of them."
    ),
]


class ModelBody(_Served):
    """A model deployment (docs/serving.md): a SavedModel's folder, served by replicas."""

    name: ModelName = Field(description=f"Unique per user: {MODEL_NAME_HELP}.")
    base_path: Annotated[
        str, Field(pattern=r"\S"), Wanted(BASE_PATH_HELP), AfterValidator(_base_path)
    ] = Field(description="Relative to the home, or s3://BUCKET/PREFIX: " + BASE_PATH_HELP + ".")
    versions: Versions = "latest"
    latest: Latest = 1
    labels: Labels = {}
    replicas: Replicas = 1
    gpus: whole(0, 16) = Field(0, description="GPUs per replica.")
    access: Access = "private"
    batching: Batching = False


class ModelChanges(_Served):
    """Changes to a deployed model; a field left out stays as it is."""

    model_config = ConfigDict(json_schema_extra=_no_defaults)
    versions: Versions = None
    latest: Latest = None
    labels: Labels = None
    replicas: Replicas = None
    access: Access = None

    @classmethod
    def check_fields(cls, data: dict) -> None:
        fixed = sorted(set(data) & {"name", "base_path", "gpus", "batching"})
        if fixed:
            raise FieldError(
                f"{', '.join(fixed)}: cannot change on a deployed model; undeploy it and deploy again"
            )
        super().check_fields(data)


def parse_model(body: object, max_replicas: int) -> ModelSpec:
    """A checked ModelSpec from a deploy request, or SpecError naming the field."""
    model = validated(ModelBody, body, "a model deployment is", max_replicas=max_replicas)
    return _apply(ModelSpec(name=model.name, base_path=model.base_path), model)


def parse_changes(spec: ModelSpec, body: object, max_replicas: int) -> ModelSpec:
    """``spec`` with the changes of a PATCH applied (versions, labels, replicas, access)."""
    changes = validated(ModelChanges, body, "changes to a model are", max_replicas=max_replicas)
    return _apply(spec, changes)


def _apply(spec: ModelSpec, body: ModelBody | ModelChanges) -> ModelSpec:
    """``spec`` with the fields ``body`` gives; labels must name versions it serves."""
    given = {k: getattr(body, k) for k in body.model_fields_set - {"name", "base_path"}}
    if "batching" in given:
        given["batching"] = _batching(given["batching"])
    policy, versions = spec.policy, spec.versions
    if "versions" in given:
        policy, versions = _policy(given.pop("versions"))
    if "labels" in given and policy == "specific":
        stray = [(k, v) for k, v in given["labels"].items() if v not in versions]
        if stray:
            label, version = stray[0]
            raise SpecError(
                f"labels.{label}: version {version} is not among the versions served "
                f"({', '.join(map(str, versions))})"
            )
    return replace(spec, policy=policy, versions=versions, **given)


def _policy(versions: str | int | list[int]) -> tuple[str, tuple[int, ...]]:
    """TF Serving's version policy and versions of what a body's ``versions`` says."""
    if isinstance(versions, str):
        return versions, ()
    return "specific", tuple(sorted({versions} if isinstance(versions, int) else set(versions)))


def serving_config(spec: ModelSpec, home: str) -> ModelConfig:
    """The TF Serving model config of a deployment, its base path made absolute (one on
    the home is relative to ``home``; an S3 or absolute one stays as it is)."""
    absolute = spec.on_s3 or spec.base_path.startswith("/")
    base = spec.base_path if absolute else f"{home.rstrip('/')}/{spec.base_path}"
    return ModelConfig(spec.name, base, spec.policy, spec.latest, spec.versions, spec.labels)


# -- batching and monitoring -----------------------------------------------------------------

METRICS_PATH = DEFAULT_PATH
"""Where every replica answers TF Serving's Prometheus metrics, on its REST API."""


def _batching(value: object) -> dict | None:
    """The batching parameters a body or a record says: None for false (no batching),
    ``{}`` for true (TF Serving's defaults), or those given."""
    if isinstance(value, BatchingBody):
        return value.model_dump(include=value.model_fields_set)
    if value is True:
        return {}
    return dict(value) if isinstance(value, dict) else None


def _shown_batching(params: dict | None) -> bool | dict:
    """``batching`` as a deployment body says it: false, true, or the parameters set."""
    if params is None:
        return False
    return dict(params) or True


def batching_config(spec: ModelSpec) -> str | None:
    """TF Serving's ``--batching_parameters_file`` of a deployment (``BatchingParameters``
    text), or None for one without batching."""
    if spec.batching is None:
        return None
    message = message_class("BatchingParameters")()
    for name, value in spec.batching.items():
        if name == "allowed_batch_sizes":
            message.allowed_batch_sizes.extend(value)
        else:
            getattr(message, name).value = value
    return text_format.MessageToString(message)


def monitoring_config() -> str:
    """TF Serving's ``--monitoring_config_file`` of every replica: its Prometheus metrics
    at ``METRICS_PATH``."""
    message = message_class("MonitoringConfig")()
    message.prometheus_config.enable = True
    message.prometheus_config.path = METRICS_PATH
    return text_format.MessageToString(message)
