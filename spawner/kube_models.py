"""Model serving on the kubernetes backend: each replica a Deployment of the official
``tensorflow/serving`` image, behind one Service per model.

The manifests come from ``gpulab.spawner.model_objects``. A replica's Deployment is pinned to
the node of its GPUs (the ledger grants them per node) and mounts the owner's home
claim read-only, where the model's version folders are; TF Serving's model config,
written by the hub, arrives through a ConfigMap (with its monitoring config and, for a
model with batching, its batching parameters), and a changed config (labels, version
policy) rolls the pod with a surge, so the replica serves throughout. New version
folders need no rollout: TF Serving looks for them every ``serving.poll``.

The hub follows each model's pods: a ready pod is asked for its model's status (on
its REST port, at its pod IP), and calls through the hub go to the ready ones; the
model's metrics are read from every replica's pod there. The raw ports are the pods' and
the Service's in the cluster; TF Serving itself asks for no token there (keep them
private with a NetworkPolicy).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import replace

from gpulab.hub.kube import api_call, core_api, namespace, owned_object
from gpulab.hub.workloads.model_spec import (
    METRICS_PATH,
    ModelError,
    ModelSpec,
    batching_config,
    monitoring_config,
)
from gpulab.hub.workloads.model_store import Deployment
from gpulab.hub.workloads.models import ModelManager

from . import model_objects, objects

log = logging.getLogger(__name__)

LABEL_MODEL = "gpulab.io/model-id"
LABEL_REPLICA = "gpulab.io/replica"
ANNOTATION_MODEL = "gpulab.io/model"


class KubeModels:
    def __init__(self, manager: ModelManager):
        self.manager = manager
        self.settings = manager.settings
        self.k8s = manager.settings.kubernetes
        self.namespace = namespace(self.k8s)
        self._tasks: dict[int, asyncio.Task] = {}
        self._endpoints: dict[int, tuple[list, list]] = {}
        self._replicas: dict[int, dict[int, tuple[str, int]]] = {}
        """Per model: each replica's REST address (its serving pod's, else that of another
        of its pods with an IP), by index."""

    # -- clients and names ---------------------------------------------------------------

    def _apis(self):
        from kubespawner.clients import shared_client

        return core_api(), shared_client("AppsV1Api")

    @staticmethod
    def _name(model: Deployment, index: int | None = None) -> str:
        base = f"gpulab-model-{model.id}"
        return base if index is None else f"{base}-{index}"

    def _annotations(self, model: Deployment) -> dict[str, str]:
        return {**objects.owner_annotations(model.user, ""), ANNOTATION_MODEL: model.name}

    async def _call(self, what: str, call, *args, missing_ok: bool = False, **kwargs):
        return await api_call(what, call, *args, error=ModelError, missing_ok=missing_ok, **kwargs)

    # -- the backend's part ----------------------------------------------------------------

    async def check(self, user: str, spec: ModelSpec) -> None:
        if spec.on_s3 and self.manager.s3 is None:
            raise ModelError(400, "base_path: this hub has no S3 storage configured")

    def _config_text(self, model: Deployment) -> str:
        """TF Serving's config as the pod sees it: the home claim's mount, or the folder
        the S3 sidecar fills."""
        spec = model.spec
        if spec.on_s3:
            folder = f"{self.settings.serving.sync_folder.rstrip('/')}/{model.name}"
            return self.manager.config_text(replace(spec, base_path=folder), "")
        return self.manager.config_text(spec, self.k8s.home_mount)

    async def _sources(self, model: Deployment) -> tuple[list, list, list]:
        """(volumes, TF Serving's mounts, sidecars) of the model's pods."""
        if not model.spec.on_s3:
            claim = await self._home_claim(model.user)
            volumes, mounts = model_objects.model_home_volume(claim, self.k8s.home_mount)
            return volumes, mounts, []
        secret = await self._owned(model.user, "secrets", "s3-credentials", "S3 keys")
        folder = self.settings.serving.sync_folder.rstrip("/")
        volumes, mounts = model_objects.model_sync_volume(folder)
        sync = model_objects.model_sync_container(
            self.k8s.image, self.k8s.image_pull_policy, model.spec.base_path, folder,
            model.name, self.settings.serving.poll_seconds, secret,
        )  # fmt: skip
        return volumes, mounts, [sync]

    @staticmethod
    def _more_files(model: Deployment) -> dict[str, str | None]:
        """The ConfigMap's files beside the model config: monitoring, batching."""
        return {
            "monitoring_text": monitoring_config(),
            "batching_text": batching_config(model.spec),
        }

    async def start(self, model: Deployment) -> None:
        core, apps = self._apis()
        sources = await self._sources(model)
        text = self._config_text(model)
        name, ns = self._name(model), self.namespace
        config_map = model_objects.model_config_map(
            name, ns, text, {}, self._annotations(model), **self._more_files(model)
        )
        await self._call("create the model's ConfigMap", core.create_namespaced_config_map,
                         ns, config_map)  # fmt: skip
        service = model_objects.model_service(
            name, ns, {LABEL_MODEL: str(model.id)}, {}, self._annotations(model)
        )
        await self._call("create the model's Service", core.create_namespaced_service, ns,
                         service)  # fmt: skip
        for record in model.replicas:
            await self._create_replica(apps, model, record, sources, text)
        self._follow(model)

    async def apply(self, model: Deployment, removed: list[dict], added: list[dict]) -> None:
        core, apps = self._apis()
        text = self._config_text(model)
        name, ns = self._name(model), self.namespace
        files = model_objects.model_config_map(name, ns, text, {}, {}, **self._more_files(model))
        await self._call(
            "update the model's ConfigMap", core.patch_namespaced_config_map, name, ns,
            {"data": files["data"]},
        )  # fmt: skip
        patch = {
            "spec": {"template": {"metadata": {"annotations": {
                model_objects.ANNOTATION_CONFIG_HASH: _hash(text)}}}}
        }  # fmt: skip
        gone = {r["index"] for r in removed}
        for record in model.replicas:
            if record["index"] in gone or record in added:
                continue
            await self._call("roll the model's pods", apps.patch_namespaced_deployment,
                             self._name(model, record["index"]), ns, patch)  # fmt: skip
        for record in removed:
            await self._delete_replica(apps, model, record["index"])
        if added:
            sources = await self._sources(model)
            for record in added:
                await self._create_replica(apps, model, record, sources, text)

    async def stop(self, model: Deployment) -> None:
        """Delete the model's objects and wait for its pods to be gone, so its GPUs go
        back to the ledger only once nothing uses them."""
        task = self._tasks.pop(model.id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        core, apps = self._apis()
        ns, name = self.namespace, self._name(model)
        for record in model.replicas:
            await self._delete_replica(apps, model, record["index"])
        await self._call("delete the model's Service", core.delete_namespaced_service, name,
                         ns, missing_ok=True)  # fmt: skip
        await self._call("delete the model's ConfigMap", core.delete_namespaced_config_map,
                         name, ns, missing_ok=True)  # fmt: skip
        for _ in range(120):
            pods = await self._pods(core, model, terminating=True)
            if not pods:
                break
            await asyncio.sleep(0.5)
        self._endpoints.pop(model.id, None)
        self._replicas.pop(model.id, None)

    async def resume(self, model: Deployment) -> None:
        self._follow(model)

    def endpoints(self, model: Deployment) -> tuple[list, list]:
        return self._endpoints.get(model.id, ([], []))

    def replica_endpoints(self, model: Deployment) -> dict[int, tuple[str, int]]:
        """The REST address of each replica that has a pod with an IP, by index."""
        return dict(self._replicas.get(model.id, {}))

    async def read_log(self, model: Deployment, index: int, offset: int) -> bytes:
        core, _ = self._apis()
        pods = [p for p in await self._pods(core, model) if _replica(p) == index]
        if not pods:
            return b""
        pod = max(pods, key=lambda p: p.metadata.creation_timestamp or 0)
        text = await self._call("read the model server's log", core.read_namespaced_pod_log,
                                pod.metadata.name, self.namespace)  # fmt: skip
        return (text or "").encode()[offset:]

    # -- replicas ---------------------------------------------------------------------------

    async def _create_replica(self, apps, model: Deployment, record: dict, sources: tuple,
                              text: str) -> None:  # fmt: skip
        spec = model.spec
        volumes, mounts, sidecars = sources
        serving = self.settings.serving
        node = {objects.HOSTNAME_LABEL: record["node"]} if record.get("node") else None
        body = model_objects.model_deployment(
            self._name(model, record["index"]),
            self.namespace,
            image=serving.gpu_image if spec.gpus else serving.image,
            pull_policy=self.k8s.image_pull_policy,
            model_name=model.name,
            config_map=self._name(model),
            config_hash=_hash(text),
            labels={},
            annotations={
                **self._annotations(model),
                objects.ANNOTATION_GPUS: ",".join(record["gpus"]),
            },
            pod_labels={LABEL_MODEL: str(model.id), LABEL_REPLICA: str(record["index"])},
            poll_seconds=serving.poll_seconds,
            start_seconds=int(serving.start_timeout_seconds),
            grpc_port=record["grpc"],
            rest_port=record["rest"],
            gpus=spec.gpus,
            gpu_resource=self.k8s.gpu_resource,
            node_selector=node,
            tolerations=objects.tolerations(self.k8s.gpu_tolerations) if spec.gpus else None,
            volumes=volumes,
            mounts=mounts,
            sidecars=sidecars,
            batching=spec.batching is not None,
            metrics_path=METRICS_PATH,
        )
        await self._call("create the model's Deployment", apps.create_namespaced_deployment,
                         self.namespace, body)  # fmt: skip

    async def _delete_replica(self, apps, model: Deployment, index: int) -> None:
        await self._call(
            "delete the model's Deployment",
            apps.delete_namespaced_deployment,
            self._name(model, index),
            self.namespace,
            body={"propagationPolicy": "Background", "gracePeriodSeconds": 5},
            missing_ok=True,
        )

    async def _home_claim(self, user: str) -> str:
        return await self._owned(user, "persistentvolumeclaims", "home", "home volume")

    async def _owned(self, user: str, kind: str, component: str, what: str) -> str:
        """The name of the user's own home claim or S3 Secret, made by the first start of
        their server."""
        core, _ = self._apis()
        name = await owned_object(core, self.namespace, user, kind, component, error=ModelError)
        if name is None:
            raise ModelError(
                400,
                f"{user} has no {what} in the cluster yet (it is made at the first start of "
                "their server); start it once, then deploy",
            )
        return name

    async def _pods(self, core, model: Deployment, terminating: bool = False) -> list:
        """The model's pods; ``terminating``: also those being deleted."""
        found = await self._call("list the model's pods", core.list_namespaced_pod,
                                 self.namespace, label_selector=f"{LABEL_MODEL}={model.id}")  # fmt: skip
        return [p for p in found.items if terminating or p.metadata.deletion_timestamp is None]

    # -- following the pods ------------------------------------------------------------------

    def _follow(self, model: Deployment) -> None:
        old = self._tasks.pop(model.id, None)
        if old is not None:
            old.cancel()
        self._tasks[model.id] = asyncio.ensure_future(self._watch(model.id))

    async def _watch(self, model_id: int) -> None:
        """Every second (a quarter while none serves): which replicas' pods are ready,
        what their servers report, and why the others are not."""
        manager = self.manager
        core, _ = self._apis()
        while True:
            model = manager.store.get_by_id(model_id)
            if model is None:
                return
            try:
                pods = await self._pods(core, model)
            except ModelError as e:
                log.warning("Model %s/%s: %s", model.user, model.name, e)
                await asyncio.sleep(2)
                continue
            ready, others, replicas = [], [], {}
            for record in model.replicas:
                index = record["index"]
                mine = [p for p in pods if _replica(p) == index]
                serving = [p for p in mine if _ready(p) and p.status.pod_ip]
                if serving:
                    pod = serving[0]
                    replicas[index] = (pod.status.pod_ip, record["rest"])
                    status = await manager.fetch_status(model, pod.status.pod_ip, record["rest"])
                    if status is not None and manager.note_versions(model, index, status):
                        ready.append((pod.status.pod_ip, record["rest"]))
                        continue
                for pod in mine:
                    if pod.status.pod_ip:
                        others.append((pod.status.pod_ip, record["rest"]))
                        replicas.setdefault(index, (pod.status.pod_ip, record["rest"]))
                state, message, restarts = _waiting(mine)
                if (state, message) != (record["state"], record["message"]) or (
                    restarts != record["restarts"]
                ):
                    manager.set_replica(
                        model_id, index, state=state, message=message, restarts=restarts
                    )
            self._endpoints[model_id] = (ready, others)
            self._replicas[model_id] = replicas
            await asyncio.sleep(1.0 if ready else 0.25)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _replica(pod) -> int | None:
    value = (pod.metadata.labels or {}).get(LABEL_REPLICA)
    return int(value) if value is not None and value.isdigit() else None


def _ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def _waiting(pods: list) -> tuple[str, str, int]:
    """(replica state, why it is not serving, container restarts) from its pods."""
    if not pods:
        return "starting", "creating its pod", 0
    pod = pods[-1]
    statuses = pod.status.container_statuses or []
    restarts = sum(s.restart_count or 0 for s in statuses)
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return "starting", f"not scheduled: {condition.message or condition.reason}", restarts
    for s in statuses:
        waiting = s.state.waiting if s.state else None
        if waiting is not None and waiting.reason not in (None, "ContainerCreating"):
            state = "restarting" if waiting.reason == "CrashLoopBackOff" else "starting"
            return state, f"{waiting.reason}: {waiting.message or ''}".strip(": "), restarts
    return "loading", "loading the model", restarts
