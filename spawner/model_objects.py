"""Kubernetes manifests of model serving, as pure functions of their inputs.

A model replica is a Deployment of the ``tensorflow/serving`` image that reads the
model's TF Serving config files (model, monitoring, batching) from a ConfigMap, with
the owner's home claim mounted
read-only or an S3 sidecar filling a scratch folder; a model's Service gives its gRPC
and REST ports over every replica's pods. Like ``objects`` (whose labels and helpers
these share), every builder returns a plain dict in the API's own JSON shape and
nothing here talks to a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpulab.serving.monitoring import DEFAULT_PATH

from .objects import LABEL_COMPONENT, env_from_secret, gpu_limits

SERVING_GRPC_PORT = 8500
SERVING_REST_PORT = 8501
MODEL_CONFIG_KEY = "models.config"
MONITORING_CONFIG_KEY = "monitoring.config"
BATCHING_CONFIG_KEY = "batching.config"
ANNOTATION_CONFIG_HASH = "gpulab.io/model-config-hash"
"""On a model server's pod template: a hash of its config, so a changed config (labels,
version policy) rolls the pods."""

_FILES = {
    MODEL_CONFIG_KEY: ("GPULAB_MODEL_CONFIG", "--model_config_file"),
    MONITORING_CONFIG_KEY: ("GPULAB_MONITORING_CONFIG", "--monitoring_config_file"),
    BATCHING_CONFIG_KEY: ("GPULAB_BATCHING_CONFIG", "--batching_parameters_file"),
}
"""Each file of a model's ConfigMap: the environment variable that carries it into the
container, and the flag of ``tensorflow_model_server`` that reads it."""


def _serve(keys: list[str]) -> str:
    """The container's shell line: TF Serving's image starts tensorflow_model_server
    itself; each of the ConfigMap's files arrives in the environment and is written where
    the server reads it, the flag naming it."""
    writes, flags = [], []
    for key in keys:
        env, flag = _FILES[key]
        path = f"/tmp/{key.removesuffix('.config')}-${{HOSTNAME}}.config"
        writes.append(f'printf "%s" "${env}" >"{path}"')
        flags.append(f'{flag}="{path}"')
    return f'{" && ".join(writes)} && exec tensorflow_model_server {" ".join(flags)} "$@"'


def model_config_map(
    name: str,
    namespace: str,
    config_text: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    *,
    monitoring_text: str,
    batching_text: str | None = None,
) -> dict:
    """A model's TF Serving config files as a ConfigMap: its model config
    (``ModelServerConfig`` text), its monitoring config (``MonitoringConfig``) and, for
    a model with batching, its batching parameters (``BatchingParameters``)."""
    data = {MODEL_CONFIG_KEY: config_text, MONITORING_CONFIG_KEY: monitoring_text}
    if batching_text is not None:
        data[BATCHING_CONFIG_KEY] = batching_text
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, LABEL_COMPONENT: "model-config"},
            "annotations": dict(annotations),
        },
        "data": data,
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
    batching: bool = False,
    metrics_path: str = DEFAULT_PATH,
) -> dict:
    """One replica of a model: a Deployment of the ``tensorflow/serving`` image (its GPU
    variant for a GPU replica) reading the ConfigMap's model and monitoring configs and,
    with ``batching``, its batching parameters (``--enable_batching``).

    Ready once the model's status answers on the REST port (TF Serving opens its ports
    after the first versions loaded); ``start_seconds`` is how long the first load may
    take before the kubelet restarts it. A config change rolls the pod with a surge, so
    the replica serves throughout. The pod carries the ``prometheus.io`` annotations of
    its metrics (``metrics_path`` on the REST port, as the monitoring config says), so a
    Prometheus set up for TF Serving's pods scrapes it.
    """
    poll = f"{poll_seconds:g}"
    status_path = f"/v1/models/{model_name}"
    files = [MODEL_CONFIG_KEY, MONITORING_CONFIG_KEY] + ([BATCHING_CONFIG_KEY] if batching else [])
    container = {
        "name": "tensorflow-serving",
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["/bin/sh", "-c", _serve(files), "tensorflow_model_server"],
        "args": [
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            f"--model_config_file_poll_wait_seconds={poll}",
            f"--file_system_poll_wait_seconds={poll}",
            *(["--enable_batching"] if batching else []),
        ],
        "env": [
            {
                "name": _FILES[key][0],
                "valueFrom": {"configMapKeyRef": {"name": config_map, "key": key}},
            }
            for key in files
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
                    "annotations": {
                        **annotations,
                        ANNOTATION_CONFIG_HASH: config_hash,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(rest_port),
                        "prometheus.io/path": metrics_path,
                    },
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
