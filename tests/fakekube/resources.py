"""The resource types the fake serves, with the per-type facts the apiserver keeps in
its registry strategies: group/version/kind, scope, field labels, status subresource,
whether ``metadata.generation`` is tracked and what DELETE returns. Every type is served at version ``v1``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceType:
    group: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    # field labels accepted by fieldSelector, besides metadata.name / metadata.namespace
    field_labels: frozenset[str] = frozenset()
    # writes to the main resource keep the old status; /status writes keep the rest
    status_subresource: bool = True
    # metadata.generation starts at 1 and is bumped on every spec change
    has_generation: bool = False
    # DELETE answers with the object (core types) rather than a Success Status
    return_deleted_object: bool = True
    version: str = "v1"

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """The name the store files objects under ("pods", "deployments.apps")."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def allows_field(self, name: str) -> bool:
        if name == "metadata.name" or (self.namespaced and name == "metadata.namespace"):
            return True
        return name in self.field_labels


def _fields(text: str) -> frozenset[str]:
    return frozenset(text.split())


POD_FIELDS = _fields(
    "spec.nodeName spec.restartPolicy spec.schedulerName spec.serviceAccountName "
    "spec.hostNetwork status.phase status.podIP status.podIPs status.nominatedNodeName"
)
EVENT_FIELDS = _fields(
    "involvedObject.kind involvedObject.namespace involvedObject.name involvedObject.uid "
    "involvedObject.apiVersion involvedObject.resourceVersion involvedObject.fieldPath "
    "reason reportingComponent source type"
)
WORKLOAD = {"has_generation": True, "return_deleted_object": False}

POD = ResourceType("", "pods", "Pod", True, ("po",), POD_FIELDS)
SERVICE = ResourceType("", "services", "Service", True, ("svc",))
NAMESPACE = ResourceType("", "namespaces", "Namespace", False, ("ns",), _fields("status.phase"))
SECRET = ResourceType("", "secrets", "Secret", True, (), _fields("type"), False)
CONFIGMAP = ResourceType("", "configmaps", "ConfigMap", True, ("cm",), status_subresource=False)
SERVICEACCOUNT = ResourceType(
    "", "serviceaccounts", "ServiceAccount", True, ("sa",), status_subresource=False
)
EVENT = ResourceType("", "events", "Event", True, ("ev",), EVENT_FIELDS, False)
NODE = ResourceType("", "nodes", "Node", False, ("no",), _fields("spec.unschedulable"))
PVC = ResourceType("", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",))
PV = ResourceType("", "persistentvolumes", "PersistentVolume", False, ("pv",))
DEPLOYMENT = ResourceType("apps", "deployments", "Deployment", True, ("deploy",), **WORKLOAD)
REPLICASET = ResourceType(
    "apps", "replicasets", "ReplicaSet", True, ("rs",), _fields("status.replicas"), **WORKLOAD
)
STORAGECLASS = ResourceType(
    "storage.k8s.io",
    "storageclasses",
    "StorageClass",
    False,
    ("sc",),
    status_subresource=False,
    return_deleted_object=False,
)

RBAC_GROUP = "rbac.authorization.k8s.io"
# policy objects: no status, DELETE answers a Success Status (see ``rbac``)
POLICY = {"status_subresource": False, "return_deleted_object": False}
ROLE = ResourceType(RBAC_GROUP, "roles", "Role", True, **POLICY)
ROLEBINDING = ResourceType(RBAC_GROUP, "rolebindings", "RoleBinding", True, **POLICY)
CLUSTERROLE = ResourceType(RBAC_GROUP, "clusterroles", "ClusterRole", False, **POLICY)
CLUSTERROLEBINDING = ResourceType(
    RBAC_GROUP, "clusterrolebindings", "ClusterRoleBinding", False, **POLICY
)

ALL = (POD, SERVICE, NAMESPACE, SECRET, CONFIGMAP, SERVICEACCOUNT, EVENT, NODE, PVC, PV)
ALL += (DEPLOYMENT, REPLICASET, STORAGECLASS)
ALL += (ROLE, ROLEBINDING, CLUSTERROLE, CLUSTERROLEBINDING)
BY_KEY = {rt.key: rt for rt in ALL}


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    rt = BY_KEY.get(f"{plural}.{group}" if group else plural)
    return rt if rt is not None and rt.version == version else None


def groups() -> dict[str, list[ResourceType]]:
    """API group name ("" for core) to the resource types it serves."""
    out: dict[str, list[ResourceType]] = {}
    for rt in ALL:
        out.setdefault(rt.group, []).append(rt)
    return out
