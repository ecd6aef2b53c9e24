"""Kubernetes manifests gpulab emits, as pure functions of their inputs.

Every builder returns a plain dict in the API's own JSON shape (what ``kubectl get -o
json`` shows), so tests compare them with literal dicts and validate them against the
Kubernetes OpenAPI schemas. Nothing here talks to a cluster.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from gpulab.hub.settings import Profile

ANNOTATION_USER = "gpulab.io/user"
ANNOTATION_SERVER = "gpulab.io/server"
ANNOTATION_GPUS = "gpulab.io/gpus"
"""On a server's pod: the ledger's GPU ids it runs with (comma separated)."""
LABEL_COMPONENT = "gpulab.io/component"
HOSTNAME_LABEL = "kubernetes.io/hostname"

_BINARY = [("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)]


def quantity(n_bytes: int) -> str:
    """Bytes as a Kubernetes quantity: ``10Gi`` when a binary unit divides it, else bytes."""
    for suffix, unit in _BINARY:
        if n_bytes % unit == 0:
            return f"{n_bytes // unit}{suffix}"
    return str(n_bytes)


def parse_quantity(text: str) -> int:
    """A storage quantity (``10Gi``, ``500M``, ``1073741824``) -> bytes."""
    units = {s: u for s, u in _BINARY} | {"T": 10**12, "G": 10**9, "M": 10**6, "k": 10**3}
    for suffix, unit in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * unit)
    return int(float(text))


def owner_annotations(user: str, server: str) -> dict[str, str]:
    """Who an object belongs to, in annotations (hub user names need not be valid labels)."""
    return {ANNOTATION_USER: user, ANNOTATION_SERVER: server}


def gpu_limits(resource: str, count: int) -> dict[str, str]:
    """The container limits that request ``count`` GPUs; none for a CPU server."""
    return {resource: str(count)} if count else {}


def node_selector(
    profile: Profile, gpu_type_label: str, node: str = "", gpus: bool = True
) -> dict[str, str]:
    """Labels the server's node must have: the profile's, its GPU type (unless it runs
    without its GPUs, after Return GPU), and the node the ledger granted the GPUs on."""
    selector = dict(profile.node_selector)
    if profile.gpu_type and gpus:
        selector[gpu_type_label] = profile.gpu_type
    if node:
        selector[HOSTNAME_LABEL] = node
    return selector


def tolerations(wanted: list[dict]) -> list[dict]:
    """Tolerations (a profile's, ``kubernetes.gpu_tolerations``) with the API's defaults
    spelled out."""
    out = []
    for t in wanted:
        item = {"operator": t.get("operator", "Equal"), **t}
        if item["operator"] == "Exists":
            item.pop("value", None)
        out.append(item)
    return out


def home_pvc(
    name: str,
    namespace: str,
    size_bytes: int,
    storage_class: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> dict:
    """A user's home volume: one ReadWriteOnce claim on the RBD StorageClass."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, LABEL_COMPONENT: "home"},
            "annotations": dict(annotations),
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class,
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": quantity(size_bytes)}},
        },
    }


def pvc_resize_patch(size_bytes: int) -> dict:
    """A merge patch growing a claim to ``size_bytes`` (the class must allow expansion)."""
    return {"spec": {"resources": {"requests": {"storage": quantity(size_bytes)}}}}


def env_secret(
    name: str,
    namespace: str,
    env: Mapping[str, str],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    component: str = "s3-credentials",
    owner: Mapping[str, str] | None = None,
) -> dict:
    """A Secret holding environment variables (the user's S3 keys; a workload's shared
    environment, owned by its Service), for ``envFrom``."""
    metadata = {
        "name": name,
        "namespace": namespace,
        "labels": {**labels, LABEL_COMPONENT: component},
        "annotations": dict(annotations),
    }
    if owner:
        metadata["ownerReferences"] = [dict(owner)]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(env.items())},
    }


def home_volume(claim: str, mount_path: str) -> tuple[list[dict], list[dict]]:
    """The pod's volume for the home claim and the container's mount of it."""
    volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": claim}}]
    mounts = [{"name": "home", "mountPath": mount_path}]
    return volumes, mounts


def env_from_secret(name: str) -> list[dict]:
    return [{"secretRef": {"name": name}}]


# -- model serving ----------------------------------------------------------------------

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


# -- workloads: a training job's processes ------------------------------------------------

LABEL_GROUP = "gpulab.io/group"
"""On a workload's pods: the group they belong to (``job-5``), which its Service selects."""
LABEL_PROCESS = "gpulab.io/process"
"""On a workload's pod: which process of its group it is (``worker-0``, ``install``)."""

# The pod's shell: $1 log (relative to $HOME), $2 header, $3 working folder (relative),
# $4 files to hand back (space separated), then the command. Output goes both to the log
# on the home (kept with the user's files) and to the container log (which the hub
# follows), through a pipe beside the log (/tmp may not be writable); tee ignores the
# stop's TERM so the last lines are kept. TERM is passed on to the command (the runtime
# signals only the container's first process). After the command, the files to hand
# back (64 KiB at most each) are printed base64 on the container log alone.
WORKLOAD_SCRIPT = """log=$HOME/$1 header=$2 workdir=$3 outputs=$4
shift 4
mkdir -p -- "${log%/*}" || exit 2
fifo=$log.$$.pipe
mkfifo -m 600 -- "$fifo" || exit 2
( trap '' TERM INT; exec tee -a -- "$log" ) <"$fifo" &
tee_pid=$!
exec 3>&1 >"$fifo" 2>&1
rm -f -- "$fifo"
[ -z "$header" ] || printf '%s\\n' "$header"
code=2
if [ -z "$workdir" ] || cd -- "$HOME/$workdir"; then
  "$@" &
  child=$!
  trap 'kill -TERM "$child" 2>/dev/null' TERM INT
  wait "$child"
  code=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done
else
  echo "gpulab: cannot enter ~/$workdir"
fi
exec >&3 2>&3 3>&-
wait "$tee_pid"
for f in $outputs; do
  [ -f "$HOME/$f" ] && [ "$(wc -c <"$HOME/$f")" -le 65536 ] &&
    printf '%s %s %s\\n' "==> gpulab: file" "$f" "$(base64 <"$HOME/$f" | tr -d '\\n')"
done
exit "$code"
"""
HANDED_BACK = "==> gpulab: file "
"""How a workload pod's shell prints a file it hands back, on its container log."""


def _literal(text: str) -> str:
    """``text`` as the kubelet passes it on: ``$(VAR)`` in commands and values is expanded
    unless written ``$$(VAR)``."""
    return text.replace("$", "$$")


def owner_reference(api_version: str, kind: str, name: str, uid: str) -> dict:
    """An ``ownerReferences`` entry: the object goes when its owner is deleted."""
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}


def workload_service(
    name: str,
    namespace: str,
    group: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
) -> dict:
    """The headless Service of a workload's pods: a pod with hostname ``worker-0`` is
    ``worker-0.<name>.<namespace>.svc.<cluster domain>``, published before it is ready
    (a job's processes look each other up while they start)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, LABEL_COMPONENT: "workload", LABEL_GROUP: group},
            "annotations": dict(annotations),
        },
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_GROUP: group},
            "publishNotReadyAddresses": True,
        },
    }


def workload_pod(
    generate_name: str,
    namespace: str,
    *,
    group: str,
    process: str,
    subdomain: str,
    image: str,
    pull_policy: str,
    argv: list[str],
    log: str,
    header: str = "",
    workdir: str = "",
    outputs: tuple[str, ...] = (),
    env: Mapping[str, str],
    env_secret: str = "",
    home_claim: str,
    home_mount: str,
    uid: int | None,
    gid: int | None,
    gpus: int = 0,
    gpu_resource: str = "nvidia.com/gpu",
    node: str = "",
    ports: tuple[int, ...] = (),
    tolerations: list[dict] | None = None,
    grace_seconds: int = 5,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    owner: Mapping[str, str] | None = None,
) -> dict:
    """One process of a workload (a job's replica, or its package install) as a pod.

    It runs once (``restartPolicy: Never``: the job's restart policy makes a new pod), as
    ``uid``/``gid`` on the user's home claim, with ``gpus`` of ``gpu_resource`` on the
    node the ledger granted them on. Its hostname is ``process`` in the group's headless
    Service ``subdomain``. ``env`` is set literally (``$`` is not expanded) over the
    group's shared Secret ``env_secret``.
    """
    container: dict = {
        "name": "main",
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["/bin/sh", "-c", _literal(WORKLOAD_SCRIPT), "gpulab-workload"],
        "args": [_literal(a) for a in [log, header, workdir, " ".join(outputs), *argv]],
        "env": [{"name": k, "value": _literal(v)} for k, v in sorted(env.items())],
        "workingDir": home_mount,
        "volumeMounts": [{"name": "home", "mountPath": home_mount}],
        "resources": {"limits": gpu_limits(gpu_resource, gpus)} if gpus else {},
    }
    if env_secret:
        container["envFrom"] = env_from_secret(env_secret)
    if ports:
        container["ports"] = [{"containerPort": p, "protocol": "TCP"} for p in ports]
    security: dict = {}
    if uid is not None:
        security["runAsUser"] = uid
    if gid is not None:
        security.update(runAsGroup=gid, fsGroup=gid)
    pod_spec: dict = {
        "hostname": process,
        "subdomain": subdomain,
        "containers": [container],
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace_seconds,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "volumes": [{"name": "home", "persistentVolumeClaim": {"claimName": home_claim}}],
    }
    if security:
        pod_spec["securityContext"] = security
    if node:
        pod_spec["nodeSelector"] = {HOSTNAME_LABEL: node}
    if tolerations:
        pod_spec["tolerations"] = list(tolerations)
    metadata: dict = {
        "generateName": generate_name,
        "namespace": namespace,
        "labels": {
            **labels,
            LABEL_COMPONENT: "workload",
            LABEL_GROUP: group,
            LABEL_PROCESS: process,
        },
        "annotations": dict(annotations),
    }
    if owner:
        metadata["ownerReferences"] = [dict(owner)]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
