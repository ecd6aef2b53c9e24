"""The admission plugins a default kube-apiserver runs that change what clients see:

- NamespaceLifecycle: objects go into namespaces that exist (404 otherwise) and are
  not terminating (403).
- ServiceAccount: a pod's service account must exist (403); unless the pod or the
  account sets ``automountServiceAccountToken: false``, the pod gets the projected
  ``kube-api-access-<suffix>`` volume (token, ``kube-root-ca.crt``'s ``ca.crt``, the
  namespace), mounted read-only at ``/var/run/secrets/kubernetes.io/serviceaccount`` in
  every container.
- Priority: a ``priorityClassName`` must name a PriorityClass (this fake serves none,
  so any name other than the built-in ``system-*`` ones is refused, 403).
- DefaultStorageClass: a claim with no ``storageClassName`` gets the default class.
- StorageObjectInUseProtection: ``kubernetes.io/pvc-protection`` and
  ``kubernetes.io/pv-protection`` finalizers.
- PersistentVolumeClaimResize: a claim may only grow when it is bound and its class
  has ``allowVolumeExpansion: true`` (403 Forbidden otherwise).
"""

from __future__ import annotations

import random
from typing import Any

from . import errors
from .quantity import parse_quantity
from .resources import NAMESPACE, PVC, SERVICEACCOUNT, STORAGECLASS, ResourceType
from .store import Store

Obj = dict[str, Any]
IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")
_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"


def random_suffix(n: int = 5) -> str:
    """The alphabet ``utilrand.String`` uses for generateName and pod names."""
    return "".join(random.choice(_SUFFIX) for _ in range(n))


def namespace_lifecycle(store: Store, rt: ResourceType, obj: Obj) -> None:
    if not rt.namespaced:
        return
    name = obj["metadata"].get("name", "")
    ns = obj["metadata"]["namespace"]
    namespace = store.peek(NAMESPACE, "", ns)
    if namespace is None:
        raise errors.not_found("namespaces", ns)
    if namespace["metadata"].get("deletionTimestamp") and rt.kind != "Event":
        err = errors.forbidden(
            rt.plural,
            name,
            f"unable to create new content in namespace {ns} because it is being terminated",
            rt.group,
        )
        err.details["causes"] = [
            {
                "reason": "NamespaceTerminating",
                "message": f"namespace {ns} is being terminated",
                "field": "metadata.namespace",
            }
        ]
        raise err


TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def service_account(store: Store, pod: Obj) -> None:
    ns, account = pod["metadata"]["namespace"], pod["spec"]["serviceAccountName"]
    sa = store.peek(SERVICEACCOUNT, ns, account)
    if sa is None:
        raise errors.forbidden(
            "pods",
            pod["metadata"]["name"],
            f'error looking up service account {ns}/{account}: serviceaccount "{account}" not found',
        )
    spec = pod["spec"]
    automount = spec.get("automountServiceAccountToken")
    if automount is None:
        automount = sa.get("automountServiceAccountToken")
    if automount is False:
        return
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    if any(
        vm.get("mountPath") == TOKEN_MOUNT for c in containers for vm in c.get("volumeMounts") or []
    ):
        return  # the pod mounts a token of its own there
    name = f"kube-api-access-{random_suffix()}"
    spec.setdefault("volumes", []).append(
        {
            "name": name,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {
                                        "apiVersion": "v1",
                                        "fieldPath": "metadata.namespace",
                                    },
                                }
                            ]
                        }
                    },
                ],
            },
        }
    )
    for c in containers:
        c.setdefault("volumeMounts", []).append(
            {"name": name, "readOnly": True, "mountPath": TOKEN_MOUNT}
        )


def priority(pod: Obj) -> None:
    name = pod["spec"].get("priorityClassName")
    if not name:
        return
    if name in ("system-cluster-critical", "system-node-critical"):
        pod["spec"]["priority"] = 2000000000 if name == "system-cluster-critical" else 2000001000
        return
    raise errors.forbidden(
        "pods", pod["metadata"]["name"], f"no PriorityClass with name {name} was found"
    )


def default_storage_class(store: Store, pvc: Obj) -> None:
    spec = pvc["spec"]
    if "storageClassName" in spec and spec["storageClassName"] is not None:
        return
    defaults = [
        sc
        for sc in store.iter(STORAGECLASS)
        if (sc["metadata"].get("annotations") or {}).get(
            "storageclass.kubernetes.io/is-default-class"
        )
        == "true"
    ]
    if defaults:
        newest = max(
            defaults, key=lambda sc: (sc["metadata"]["creationTimestamp"], sc["metadata"]["name"])
        )
        spec["storageClassName"] = newest["metadata"]["name"]


def protection_finalizer(obj: Obj, finalizer: str) -> None:
    finalizers = obj["metadata"].setdefault("finalizers", [])
    if finalizer not in finalizers:
        finalizers.append(finalizer)


def pvc_resize(store: Store, old: Obj, new: Obj) -> None:
    old_size = parse_quantity(old["spec"]["resources"]["requests"]["storage"])
    new_size = parse_quantity(new["spec"]["resources"]["requests"]["storage"])
    if new_size <= old_size:
        return
    name = new["metadata"]["name"]
    if (old.get("status") or {}).get("phase") != "Bound":
        raise errors.forbidden(
            PVC.plural, name, "Only bound persistent volume claims can be expanded"
        )
    class_name = new["spec"].get("storageClassName") or ""
    sc = store.peek(STORAGECLASS, "", class_name) if class_name else None
    if (
        sc is None
        or class_name != (old["spec"].get("storageClassName") or "")
        or not sc.get("allowVolumeExpansion")
    ):
        raise errors.forbidden(
            PVC.plural,
            name,
            "only dynamically provisioned pvc can be resized and the storageclass that "
            "provisions the pvc must support resize",
        )
