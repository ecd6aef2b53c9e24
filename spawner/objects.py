"""Kubernetes manifests gpulab emits, as pure functions of their inputs.

Here: the labels, annotations and quantities every manifest shares, and the objects of
a user's server (home claim, S3 Secret, GPU limits, node selector, tolerations, home
mount). A model's objects are in ``model_objects``, a workload's in
``workload_objects``.

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
