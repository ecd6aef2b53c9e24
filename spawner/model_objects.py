"""Kubernetes manifests of model serving, as pure functions of their inputs.

A model replica is a Deployment of the ``tensorflow/serving`` image that reads the
model's TF Serving config from a ConfigMap, with the owner's home claim mounted
read-only or an S3 sidecar filling a scratch folder; a model's Service gives its gRPC
and REST ports over every replica's pods. Like ``objects`` (whose labels and helpers
these share), every builder returns a plain dict in the API's own JSON shape and
nothing here talks to a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping

from .objects import LABEL_COMPONENT, env_from_secret, gpu_limits

SERVING_GRPC_PORT = 8500
SERVING_REST_PORT = 8501
MODEL_CONFIG_KEY = "models.config"
ANNOTATION_CONFIG_HASH = "gpulab.io/model-config-hash"
"""On a model server's pod template: a hash of its config, so a changed config (labels,
version policy) rolls the pods."""

# TF Serving's image starts tensorflow_model_server itself; the config arrives in the
# environment (from the ConfigMap) and is written where the server reads it
_SERVE = (
    'config="/tmp/models-${HOSTNAME}.config"; printf "%s" "$GPULAB_MODEL_CONFIG" >"$config" '
    '&& exec tensorflow_model_server --model_config_file="$config" "$@"'
)


def model_config_map(
    name: str,
    namespace: str,
    config_text: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> dict:
    """A model's TF Serving config file (``ModelServerConfig`` text) as a ConfigMap."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, LABEL_COMPONENT: "model-config"},
            "annotations": dict(annotations),
        },
        "data": {MODEL_CONFIG_KEY: config_text},
    }


def model_service(
    name: str,
    namespace: str,
    selector: Mapping[str, str],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> dict:
    """The in-cluster address of a model: TF Serving's gRPC (8500) and REST (8501)
    ports over every replica's pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, LABEL_COMPONENT: "model"},
            "annotations": dict(annotations),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": dict(selector),
            "ports": [
                {
                    "name": "grpc",
                    "port": SERVING_GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                {
                    "name": "http",
                    "port": SERVING_REST_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                },
            ],  # fmt: skip
        },
    }


def model_deployment(
    name: str,
    namespace: str,
    *,
    image: str,
    pull_policy: str,
    model_name: str,
    config_map: str,
    config_hash: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    pod_labels: Mapping[str, str],
    poll_seconds: float = 1.0,
    start_seconds: int = 300,
    grpc_port: int = SERVING_GRPC_PORT,
    rest_port: int = SERVING_REST_PORT,
    gpus: int = 0,
    gpu_resource: str = "nvidia.com/gpu",
    node_selector: Mapping[str, str] | None = None,
    tolerations: list[dict] | None = None,
    volumes: list[dict] | None = None,
    mounts: list[dict] | None = None,
    env_from: list[dict] | None = None,
    sidecars: list[dict] | None = None,
) -> dict:
    """One replica of a model: a Deployment of the ``tensorflow/serving`` image (its GPU
    variant for a GPU replica) reading the ConfigMap's model config.

    Ready once the model's status answers on the REST port (TF Serving opens its ports
    after the first versions loaded); ``start_seconds`` is how long the first load may
    take before the kubelet restarts it. A config change rolls the pod with a surge, so
    the replica serves throughout.
    """
    poll = f"{poll_seconds:g}"
    status_path = f"/v1/models/{model_name}"
    container = {
        "name": "tensorflow-serving",
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["/bin/sh", "-c", _SERVE, "tensorflow_model_server"],
        "args": [
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            f"--model_config_file_poll_wait_seconds={poll}",
            f"--file_system_poll_wait_seconds={poll}",
        ],
        "env": [
            {
                "name": "GPULAB_MODEL_CONFIG",
                "valueFrom": {"configMapKeyRef": {"name": config_map, "key": MODEL_CONFIG_KEY}},
            }
        ],
        "ports": [
            {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"},
            {"name": "http", "containerPort": rest_port, "protocol": "TCP"},
        ],
        "startupProbe": {
            "httpGet": {"path": status_path, "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": max(1, start_seconds // 2),
        },
        "readinessProbe": {
            "httpGet": {"path": status_path, "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10},
        "resources": {"limits": gpu_limits(gpu_resource, gpus)} if gpus else {},
    }
    if env_from:
        container["envFrom"] = list(env_from)
    if mounts:
        container["volumeMounts"] = list(mounts)
    pod_spec: dict = {
        "containers": [container, *(sidecars or [])],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 10,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = list(tolerations)
    if volumes:
        pod_spec["volumes"] = list(volumes)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, LABEL_COMPONENT: "model"},
            "annotations": dict(annotations),
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(pod_labels)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": {**labels, **pod_labels, LABEL_COMPONENT: "model"},
                    "annotations": {**annotations, ANNOTATION_CONFIG_HASH: config_hash},
                },
                "spec": pod_spec,
            },
        },
    }


def model_home_volume(claim: str, mount_path: str) -> tuple[list[dict], list[dict]]:
    """The owner's home claim, read-only, for a model whose base path is on the home."""
    volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]
    mounts = [{"name": "home", "mountPath": mount_path, "readOnly": True}]
    return volumes, mounts


def model_sync_container(
    image: str,
    pull_policy: str,
    source: str,
    mount_path: str,
    model_name: str,
    poll_seconds: float,
    secret: str,
) -> dict:
    """A sidecar copying a model's versions from S3 to ``mount_path/model_name`` (a
    scratch volume shared with TF Serving, which reads no s3:// paths), with the
    owner's S3 keys."""
    return {
        "name": "s3-sync",
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["python", "-m", "gpulab.serving.sync", source,
                    f"{mount_path}/{model_name}", "--interval", f"{poll_seconds:g}"],
        "envFrom": env_from_secret(secret),
        "volumeMounts": [{"name": "models", "mountPath": mount_path}],
        "resources": {},
    }  # fmt: skip


def model_sync_volume(mount_path: str) -> tuple[list[dict], list[dict]]:
    """The scratch folder the S3 sidecar fills and TF Serving reads."""
    return [{"name": "models", "emptyDir": {}}], [
        {"name": "models", "mountPath": mount_path, "readOnly": True}
    ]
