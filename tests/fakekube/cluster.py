"""Everything that lives on the FakeKube event loop: the store, the registry, the event
recorder, the node inventory and the simulated control plane and kubelets.

A fresh cluster looks like one made by kubeadm: namespaces ``default``,
``kube-system``, ``kube-public``, ``kube-node-lease`` (each with its ``default``
ServiceAccount and ``kube-root-ca.crt`` ConfigMap), the ``kubernetes`` Service in
``default`` (10.96.0.1:443), the bootstrap RBAC policy (see ``rbac``), and one Ready
Node per inventory entry. Besides the kubeadm pieces, ``dns`` stands in for CoreDNS
(pod hostname records only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .controller import Controller
from .dns import ClusterDns
from .events import EventRecorder
from .gc import GarbageCollector, NamespaceController
from .kubelet import Kubelet
from .rbac import Tokens
from .rbac import bootstrap as rbac_bootstrap
from .registry import Registry
from .resources import NAMESPACE, NODE, SERVICE, STORAGECLASS
from .scheduler import Scheduler
from .storage import StorageController
from .store import Store
from .workloads import DeploymentController, ReplicaSetController

KUBERNETES_VERSION = "v1.33.1"


@dataclass
class NodeSpec:
    """One node of the inventory.

    ``gpus``: how many of the cluster's GPU resource (``nvidia.com/gpu`` unless
    FakeKube was given another ``gpu_resource``) the node advertises, as the NVIDIA
    device plugin would; ``resources``: further extended resources (name -> count);
    ``cpu``/``memory``: capacity (quantities); ``labels``/``taints``: as on a Node.
    """

    name: str
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)
    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110
    resources: dict[str, Any] = field(default_factory=dict)
    unschedulable: bool = False

    @classmethod
    def of(cls, value: NodeSpec | dict[str, Any]) -> NodeSpec:
        return value if isinstance(value, NodeSpec) else cls(**value)


class Cluster:
    def __init__(
        self,
        nodes: list[NodeSpec],
        *,
        gpu_resource: str,
        run_containers: bool,
        restart_backoff: float,
        history_size: int,
        root: Path,
        image_env: dict[str, str],
        storage_classes: list[dict[str, Any]],
        ca_pem: str,
        tokens: Tokens,
        rbd_images: Any = None,
    ):
        self.store = Store(history_size)
        self.registry = Registry(self.store, ca_pem)
        self.tokens = tokens
        # (host, port) of the HTTPS API, for in-cluster clients in pods; set once served
        self.apiserver: tuple[str, int] | None = None
        self.recorder = EventRecorder(self.registry)
        self.nodes = nodes
        self.gpu_resource = gpu_resource
        self.storage_classes = storage_classes
        self.rbd_images = rbd_images
        self.dns = ClusterDns(self, root / "hosts")
        self.kubelet = Kubelet(self, root, run_containers, restart_backoff, image_env)
        self.controllers: list[Controller] = [
            Scheduler(self),
            self.kubelet,
            self.dns,
            StorageController(self),
            ReplicaSetController(self),
            DeploymentController(self),
            GarbageCollector(self),
            NamespaceController(self),
        ]

    def _node(self, spec: NodeSpec) -> None:
        labels = {
            "kubernetes.io/hostname": spec.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
            **spec.labels,
        }
        body: dict[str, Any] = {
            "metadata": {
                "name": spec.name,
                "labels": labels,
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": {},
        }
        if spec.taints:
            body["spec"]["taints"] = [dict(t) for t in spec.taints]
        if spec.unschedulable:
            body["spec"]["unschedulable"] = True
        node = self.registry.create(NODE, "", body)
        capacity = {
            "cpu": spec.cpu,
            "memory": spec.memory,
            "pods": str(spec.pods),
            "ephemeral-storage": "100Gi",
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
        }
        if spec.gpus:
            capacity[self.gpu_resource] = str(spec.gpus)
        capacity.update({k: str(v) for k, v in spec.resources.items()})
        node["status"] = {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [
                {
                    "type": t,
                    "status": "False",
                    "reason": r,
                    "message": m,
                    "lastHeartbeatTime": node["metadata"]["creationTimestamp"],
                    "lastTransitionTime": node["metadata"]["creationTimestamp"],
                }
                for t, r, m in (
                    (
                        "MemoryPressure",
                        "KubeletHasSufficientMemory",
                        "kubelet has sufficient memory available",
                    ),
                    ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                    (
                        "PIDPressure",
                        "KubeletHasSufficientPID",
                        "kubelet has sufficient PID available",
                    ),
                )
            ]
            + [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": node["metadata"]["creationTimestamp"],
                    "lastTransitionTime": node["metadata"]["creationTimestamp"],
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": spec.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": node["metadata"]["uid"],
                "containerRuntimeVersion": "containerd://1.7.27",
                "kernelVersion": "6.1.0",
                "kubeProxyVersion": KUBERNETES_VERSION,
                "kubeletVersion": KUBERNETES_VERSION,
                "machineID": node["metadata"]["uid"].replace("-", ""),
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": node["metadata"]["uid"],
            },
        }
        self.registry.write_status(NODE, node)

    def bootstrap(self) -> None:
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.registry.create(NAMESPACE, "", {"metadata": {"name": name}})
        self.registry.create(
            SERVICE,
            "default",
            {
                "metadata": {
                    "name": "kubernetes",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "clusterIP": "10.96.0.1",
                    "ports": [
                        {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}
                    ],
                },
            },
        )
        rbac_bootstrap(self.registry)
        for spec in self.nodes:
            self._node(spec)
        for sc in self.storage_classes:
            self.registry.create(
                STORAGECLASS, "", {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", **sc}
            )

    def start(self) -> None:
        self.bootstrap()
        for controller in self.controllers:
            controller.start()

    async def stop(self) -> None:
        for controller in self.controllers:
            await controller.stop()
        self.store.close_watchers()
