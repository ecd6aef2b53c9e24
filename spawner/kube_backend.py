"""The kubernetes backend: user servers, job and model replicas as pods, homes as claims
on Ceph RBD (ceph-csi), the GPUs those the nodes advertise (or configured slots)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpulab.hub.settings import Settings

if TYPE_CHECKING:
    from .backend import Check


class KubernetesBackend:
    name = "kubernetes"
    shares_machine = False  # users' pods share nothing with the hub's pod

    def __init__(self, settings: Settings):
        self.settings = settings

    def check(self) -> None:
        pass  # kubernetes.image is checked with the settings

    def inventory(self):
        from gpulab.hub.inventory import cluster_gpus, configured
        from gpulab.hub.kube import use_kubeconfig

        k8s = self.settings.kubernetes
        if k8s.kubeconfig:
            use_kubeconfig(k8s.kubeconfig)
        if self.settings.gpus.ids:
            return configured(self.settings.gpus.ids)
        return cluster_gpus(k8s.gpu_resource, k8s.gpu_type_label)

    def configure_hub(self, c, ctx) -> None:
        """User servers as pods: the hub listens where pods can reach it, and the ledger
        follows the pods (a pod deleted or evicted by hand frees its GPUs)."""
        from gpulab.hub.background import start_background

        s = self.settings
        c.JupyterHub.spawner_class = "gpulab-kubernetes"
        c.JupyterHub.hub_ip = "0.0.0.0"
        # The proxy runs beside the hub (in its pod) and reaches it on loopback, not
        # through the hub's Service, which would need the cluster network to hairpin a
        # pod's connection back to itself; user pods reach the hub at the Service.
        c.JupyterHub.hub_connect_ip = "127.0.0.1"
        c.Spawner.hub_connect_url = f"http://{s.kubernetes.hub_connect_ip}:{s.hub.hub_port}"
        start_background(lambda app: watch_pods(app, ctx))

    def settle(self, ledger):
        return []  # the pod watch frees the GPUs of pods that ended

    def job_runner(self):
        from .kube_runner import KubeRunner

        return KubeRunner(self.settings), "python"  # the image's

    def model_backend(self, manager):
        from .kube_models import KubeModels

        return KubeModels(manager)

    async def homes(self, user: str, running: bool):
        from gpulab.hub.storage.claims import claim_volumes

        return await claim_volumes(self.settings, user, running)

    def environments(self, ledger):
        from gpulab.hub.environments.manager import SnapshotError

        # a snapshot is made from the files of a user's home, which on a cluster are in
        # their pod's volume, not on the hub's machine
        raise SnapshotError(
            501,
            "environment snapshots are not available on the kubernetes backend yet: "
            "they are made and started from on the local backend",
        )

    def utilization(self):
        from gpulab.hub.utilization import ServerReported

        return ServerReported()  # the GPUs are on the nodes: each server reports its own

    def doctor(self) -> list[Check]:
        ids = self.settings.gpus.ids
        gpus = (
            ("OK", f"{len(ids)} configured GPU slot(s)")
            if ids
            else ("OK", "one slot per GPU the cluster's nodes advertise (see Kubernetes)")
        )
        return [("GPUs", gpus), ("Kubernetes", self._check_cluster())]

    def _check_cluster(self) -> tuple[str, str]:
        """The API answers; the namespace and the homes' StorageClass exist; nodes have GPUs."""
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.rest import ApiException

        from gpulab.hub.inventory import slots_of_nodes
        from gpulab.hub.kube import namespace, run_sync, use_kubeconfig

        k8s = self.settings.kubernetes
        ns = namespace(k8s)

        async def look(api) -> tuple[list[dict], list[tuple[str, str]]]:
            problems = []
            core, storage = client.CoreV1Api(api), client.StorageV1Api(api)
            nodes = await core.list_node(_request_timeout=10)
            try:
                await core.read_namespace(ns, _request_timeout=10)
            except ApiException as e:
                if e.status != 404:
                    raise
                problems.append(("FAIL", f"namespace {ns} does not exist"))
            try:
                sc = await storage.read_storage_class(k8s.storage_class, _request_timeout=10)
                if not sc.allow_volume_expansion:
                    problems.append(
                        (
                            "WARN",
                            f"StorageClass {k8s.storage_class} cannot expand: homes cannot grow",
                        )
                    )
            except ApiException as e:
                if e.status != 404:
                    raise
                problems.append(("FAIL", f"StorageClass {k8s.storage_class} does not exist"))
            return api.sanitize_for_serialization(nodes)["items"], problems

        try:
            if k8s.kubeconfig:
                use_kubeconfig(k8s.kubeconfig)
            nodes, problems = run_sync(look)
        except ApiException as e:
            return "FAIL", f"the Kubernetes API refused: {e.status} {e.reason}"
        except Exception as e:  # noqa: BLE001 -- no config, unreachable: say which
            return "FAIL", f"cannot reach the Kubernetes API: {e or type(e).__name__}"
        slots = slots_of_nodes(nodes, k8s.gpu_resource, k8s.gpu_type_label)
        on = len({g.node for g in slots})
        detail = [f"{len(slots)} GPU slot(s) on {on} of {len(nodes)} node(s), namespace {ns}"]
        detail += [text for _, text in problems]
        levels = [level for level, _ in problems]
        result = "FAIL" if "FAIL" in levels else "WARN" if levels or not slots else "OK"
        return result, "; ".join(detail)


async def watch_pods(app, ctx) -> None:
    """Follow the user servers' pods: the ledger frees the GPUs of a pod that ended."""
    from gpulab.hub.kube import core_api, namespace

    from .kube_grants import PodGrantWatcher

    def is_starting(user: str, server: str) -> bool:
        try:
            spawner = app.users[user].spawners.get(server)
        except KeyError:
            return False
        # spawning, or having its pod replaced (Return GPU / Get GPU)
        return spawner is not None and (spawner.pending == "spawn" or spawner.swapping)

    watcher = PodGrantWatcher(
        ctx.ledger, namespace(ctx.settings.kubernetes), is_starting, "component=singleuser-server"
    )
    await watcher.run(core_api())
