"""Defaulting, as the apiserver applies ``SetDefaults_*`` (``pkg/apis/*/v1/defaults.go``)
and the registry strategies' ``PrepareForCreate`` to incoming objects, so that what a
client reads back has the same shape as from a real cluster (``restartPolicy:
Always``, ``terminationGracePeriodSeconds: 30``, container ``requests`` copied from
``limits``, Service ``type``, ...).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from .quantity import parse_quantity
from .resources import RBAC_GROUP

Obj = dict[str, Any]


def _container(c: Obj) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    image = c.get("image") or ""
    tag = image.rsplit("/", 1)[-1]
    if "imagePullPolicy" not in c:
        latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
        c["imagePullPolicy"] = "Always" if latest else "IfNotPresent"
    resources = c.setdefault("resources", {})
    limits = resources.get("limits") or {}
    if limits:
        requests = resources.setdefault("requests", {})
        for name, value in limits.items():
            requests.setdefault(name, value)
    for port in c.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for env in c.get("env") or []:
        ref = (env.get("valueFrom") or {}).get("fieldRef")
        if ref is not None:
            ref.setdefault("apiVersion", "v1")


def pod_spec(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = spec["serviceAccount"] = account
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if isinstance(c, dict):
            _container(c)
    for volume in spec.get("volumes") or []:
        for source in ("secret", "configMap"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", 420)


def _template(obj: Obj) -> None:
    template = obj.setdefault("spec", {}).setdefault("template", {})
    template.setdefault("metadata", {})
    pod_spec(template.setdefault("spec", {}))


def qos_class(spec: Obj) -> str:
    """``qos.GetPodQOS``: Guaranteed, Burstable or BestEffort from cpu/memory."""
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    any_set, guaranteed = False, True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        for name in ("cpu", "memory"):
            if name in req or name in lim:
                any_set = True
            if name not in lim or parse_quantity(req.get(name, lim[name])) != parse_quantity(
                lim[name]
            ):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def pod(obj: Obj, creating: bool) -> None:
    pod_spec(obj.setdefault("spec", {}))
    tolerations = obj["spec"].setdefault("tolerations", [])
    if creating:
        # DefaultTolerationSeconds admission plugin
        for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
            if not any(
                t.get("key") == key and t.get("effect") in (None, "", "NoExecute")
                for t in tolerations
            ):
                tolerations.append(
                    {
                        "key": key,
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 300,
                    }
                )
        obj["status"] = {"phase": "Pending", "qosClass": qos_class(obj["spec"])}


def service(obj: Obj, creating: bool) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        if "port" in port:
            port.setdefault("targetPort", port["port"])
    if creating:
        obj["status"] = {"loadBalancer": {}}


def secret(obj: Obj, creating: bool) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def namespace(obj: Obj, creating: bool) -> None:
    meta = obj["metadata"]
    meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    if creating:
        obj["status"] = {"phase": "Active"}


def pvc(obj: Obj, creating: bool) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("volumeMode", "Filesystem")
    if creating:
        obj["status"] = {"phase": "Pending"}


def pv(obj: Obj, creating: bool) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
    spec.setdefault("volumeMode", "Filesystem")
    if creating:
        obj["status"] = {"phase": "Pending"}


def deployment(obj: Obj, creating: bool) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxSurge", "25%")
        rolling.setdefault("maxUnavailable", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    _template(obj)
    if creating:
        obj["status"] = {}


def replicaset(obj: Obj, creating: bool) -> None:
    obj.setdefault("spec", {}).setdefault("replicas", 1)
    _template(obj)
    if creating:
        obj["status"] = {"replicas": 0}


def storageclass(obj: Obj, creating: bool) -> None:
    obj.setdefault("reclaimPolicy", "Delete")
    obj.setdefault("volumeBindingMode", "Immediate")


def event(obj: Obj, creating: bool) -> None:
    obj.setdefault("type", "Normal")


def role_binding(obj: Obj, creating: bool) -> None:
    """rbac/v1 ``SetDefaults_RoleBinding`` / ``_ClusterRoleBinding`` / ``_Subject``: the
    roleRef's apiGroup, and a User or Group subject's, default to the RBAC group."""
    ref = obj.setdefault("roleRef", {})
    if isinstance(ref, dict) and not ref.get("apiGroup"):
        ref["apiGroup"] = RBAC_GROUP
    for subject in obj.get("subjects") or []:
        if (
            isinstance(subject, dict)
            and not subject.get("apiGroup")
            and subject.get("kind") in ("User", "Group")
        ):
            subject["apiGroup"] = RBAC_GROUP


DEFAULTERS: dict[str, Callable[[Obj, bool], None]] = {
    "Pod": pod,
    "Service": service,
    "Secret": secret,
    "Namespace": namespace,
    "PersistentVolumeClaim": pvc,
    "PersistentVolume": pv,
    "Deployment": deployment,
    "ReplicaSet": replicaset,
    "StorageClass": storageclass,
    "Event": event,
    "RoleBinding": role_binding,
    "ClusterRoleBinding": role_binding,
}


def apply(kind: str, obj: Obj, creating: bool) -> None:
    if kind in DEFAULTERS:
        DEFAULTERS[kind](obj, creating)
