"""TF Serving's model configuration: which models a server loads, from where, which
versions and labels.

The file is TF Serving's own ``--model_config_file`` (a ``ModelServerConfig`` in protobuf
text format), so the same file drives gpulab's model server on the local backend and the
official ``tensorflow/serving`` image on Kubernetes. Only the protos are imported here,
never TensorFlow, so the hub can write and read these files cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


class ConfigError(ValueError):
    """A model config that cannot be served; the message says which field."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    """A folder (or ``s3://bucket/prefix``) holding numbered version folders."""
    policy: str = "latest"
    """``latest`` (the newest ``latest`` versions), ``all``, or ``specific``."""
    latest: int = 1
    versions: tuple[int, ...] = ()
    """For ``specific``: the versions to serve."""
    labels: dict[str, int] = field(default_factory=dict)
    """Version labels, e.g. ``{"stable": 1, "canary": 2}``."""

    def aspired(self, available: list[int]) -> list[int]:
        """Of the versions found under the base path, the ones to serve."""
        found = sorted(set(available))
        if self.policy == "all":
            return found
        if self.policy == "specific":
            return [v for v in found if v in self.versions]
        return found[-self.latest :] if self.latest > 0 else []

    def describe_policy(self) -> str:
        if self.policy == "specific":
            return "versions " + ", ".join(str(v) for v in self.versions)
        if self.policy == "all":
            return "all versions"
        return "the latest version" if self.latest == 1 else f"the latest {self.latest} versions"


def to_proto(models: list[ModelConfig]) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    for m in models:
        item = config.model_config_list.config.add()
        item.name = m.name
        item.base_path = m.base_path
        item.model_platform = "tensorflow"
        policy = item.model_version_policy
        if m.policy == "all":
            policy.all.SetInParent()
        elif m.policy == "specific":
            policy.specific.versions.extend(m.versions)
        else:
            policy.latest.num_versions = m.latest
        for label, version in sorted(m.labels.items()):
            item.version_labels[label] = version
    return config


def to_text(models: list[ModelConfig]) -> str:
    """The ``--model_config_file`` text TF Serving reads for ``models``."""
    return text_format.MessageToString(to_proto(models))


def parse_text(text: str) -> list[ModelConfig]:
    """The models of a ``--model_config_file``; ConfigError for what TF Serving refuses."""
    try:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise ConfigError(f"the model config is not a ModelServerConfig: {e}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError("the model config needs a model_config_list")
    models = []
    for item in config.model_config_list.config:
        if not item.name:
            raise ConfigError("a model in the config has no name")
        if not item.base_path:
            raise ConfigError(f"model {item.name} has no base_path")
        if item.model_platform not in ("", "tensorflow"):
            raise ConfigError(
                f"model {item.name}: model_platform {item.model_platform!r} is not served; "
                "only tensorflow"
            )
        choice = item.model_version_policy.WhichOneof("policy_choice")
        policy, latest, versions = "latest", 1, ()
        if choice == "all":
            policy = "all"
        elif choice == "specific":
            policy, versions = "specific", tuple(item.model_version_policy.specific.versions)
            if not versions:
                raise ConfigError(f"model {item.name}: a specific policy names no version")
        elif choice == "latest":
            latest = item.model_version_policy.latest.num_versions or 1
        models.append(
            ModelConfig(
                item.name, item.base_path, policy, latest, versions, dict(item.version_labels)
            )
        )
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError("the model config names a model twice")
    return models
