"""The workload controllers: Deployments run their pods through ReplicaSets and roll
out a changed template as their strategy says."""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes_asyncio import client, watch

from fakekube import FakeKube
from fakekube.tests.helpers import apis, eventually, is_true


async def test_deployments_run_pods_through_replicasets() -> None:
    with FakeKube(nodes=[{"name": "gpu-node-1", "gpus": 4}], run_containers=True) as kube:
        async with apis(kube) as api:
            v1, apps = client.CoreV1Api(api), client.AppsV1Api(api)
            template = {
                "metadata": {"labels": {"app": "serving"}},
                "spec": {"containers": [{"name": "tfs", "image": "tensorflow/serving:2.18.0"}]},
            }
            await apps.create_namespaced_deployment(
                "default",
                {
                    "metadata": {"name": "serving"},
                    "spec": {
                        "replicas": 2,
                        "selector": {"matchLabels": {"app": "serving"}},
                        "template": template,
                    },
                },
            )

            async def available() -> bool:
                d = await apps.read_namespaced_deployment("serving", "default")
                return (d.status.available_replicas or 0) == 2

            await eventually(available, what="deployment available")
            pods = await v1.list_namespaced_pod("default", label_selector="app=serving")
            assert len(pods.items) == 2 and all(
                p.metadata.owner_references[0].kind == "ReplicaSet" for p in pods.items
            )
            assert all(p.metadata.name.startswith("serving-") for p in pods.items)


async def _rollout(kube: FakeKube, strategy: dict[str, Any]) -> list[tuple[str, str]]:
    """Change a one-replica Deployment's template and return the pod events seen
    (type, pod name) from the first pod's creation until the rollout is complete."""
    async with apis(kube) as api:
        v1, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        template = {
            "metadata": {"labels": {"app": "model"}, "annotations": {"config": "1"}},
            "spec": {"containers": [{"name": "tfs", "image": "tensorflow/serving:2.18.0"}]},
        }
        body = {
            "metadata": {"name": "model"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "model"}},
                "strategy": strategy,
                "template": template,
            },
        }
        await apps.create_namespaced_deployment("default", body)

        async def settled(revision: str) -> bool:
            d = await apps.read_namespaced_deployment("model", "default")
            s = d.status
            return d.metadata.annotations.get("deployment.kubernetes.io/revision") == revision and (
                s.updated_replicas,
                s.ready_replicas,
                s.replicas,
            ) == (1, 1, 1)

        await eventually(lambda: settled("1"), what="first revision available")
        listed = await v1.list_namespaced_pod("default", label_selector="app=model")
        events: list[tuple[str, str]] = []

        async def follow() -> None:
            async with watch.Watch() as w:
                async for e in w.stream(
                    v1.list_namespaced_pod,
                    "default",
                    label_selector="app=model",
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=30,
                ):
                    events.append((e["type"], e["object"].metadata.name))

        task = asyncio.create_task(follow())
        try:
            patch = {"spec": {"template": {"metadata": {"annotations": {"config": "2"}}}}}
            await apps.patch_namespaced_deployment("model", "default", patch)
            await eventually(lambda: settled("2"), what="second revision available")
            (old,) = listed.items
            gone = ("DELETED", old.metadata.name)
            await eventually(
                lambda: is_true(gone in events), what="the watch to see the old pod go"
            )
        finally:
            task.cancel()
        (new,) = (await v1.list_namespaced_pod("default", label_selector="app=model")).items
        assert new.metadata.annotations["config"] == "2" and new.metadata.name != old.metadata.name
        return [e for e in events if e[0] in ("ADDED", "DELETED")]


async def test_a_rolling_update_starts_the_new_pod_before_the_old_one_goes() -> None:
    """A model's Deployment (maxSurge 1, maxUnavailable 0): no moment without a replica."""
    with FakeKube(nodes=[{"name": "node-1"}]) as kube:
        surge = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        events = await _rollout(kube, surge)
        added = [name for kind, name in events if kind == "ADDED"]
        deleted = [name for kind, name in events if kind == "DELETED"]
        assert len(added) == 1 and len(deleted) == 1
        assert events.index(("ADDED", added[0])) < events.index(("DELETED", deleted[0]))


async def test_recreate_removes_the_old_pod_before_the_new_one_starts() -> None:
    """The chart's hub Deployment (Recreate): never two hubs on one database."""
    with FakeKube(nodes=[{"name": "node-1"}]) as kube:
        events = await _rollout(kube, {"type": "Recreate"})
        added = [name for kind, name in events if kind == "ADDED"]
        deleted = [name for kind, name in events if kind == "DELETED"]
        assert len(added) == 1 and len(deleted) == 1
        assert events.index(("DELETED", deleted[0])) < events.index(("ADDED", added[0]))
