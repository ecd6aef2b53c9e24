"""KubeSpawner's own pod and event reflectors, as it runs them, on the fake."""

from __future__ import annotations

import time

import pytest
from kubernetes_asyncio import client, watch

from fakekube import FakeKube
from fakekube.tests.helpers import eventually, is_true, kubespawner_configured, pod


async def test_kubespawner_reflectors_follow_the_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubespawner.spawner import EventReflector, PodReflector

    with FakeKube() as kube, kubespawner_configured(kube, monkeypatch):
        pods = PodReflector(
            namespace="default", labels={"component": "singleuser-server"}, timeout_seconds=1
        )
        events = EventReflector(namespace="default", fields={"involvedObject.kind": "Pod"})
        try:
            await pods.start()
            await events.start()
            async with client.ApiClient() as api:
                v1 = client.CoreV1Api(api)
                body = pod("jupyter-alice", 1)
                body["metadata"]["labels"] = {"component": "singleuser-server"}
                await v1.create_namespaced_pod("default", body)

                async def cached_running() -> bool:
                    cached = pods.pods.get("default/jupyter-alice")
                    return bool(cached) and cached["status"]["phase"] == "Running"

                await eventually(cached_running, what="reflector sees the pod running")
                # the events come on their own watch, so they may arrive after the pod's status
                await eventually(
                    lambda: is_true(
                        {"Scheduled", "Started"} <= {e["reason"] for e in events.events}
                    ),
                    what="event reflector sees the pod scheduled and started",
                )
                assert all(e["involvedObject"]["name"] == "jupyter-alice" for e in events.events)
                assert all("lastTimestamp" in e and "eventTime" in e for e in events.events)
                assert all(e["lastTimestamp"] or e["eventTime"] for e in events.events)

                # a watch with timeoutSeconds ends when it says, events or not
                started = time.monotonic()
                async with watch.Watch() as w:
                    async for _ in w.stream(
                        v1.list_namespaced_pod,
                        "default",
                        label_selector="none=here",
                        timeout_seconds=1,
                    ):
                        pass
                assert 0.9 < time.monotonic() - started < 2

                # the reflectors outlive their 1 s watches and dropped streams
                assert kube.drop_watches() >= 1
                await v1.delete_namespaced_pod("jupyter-alice", "default", grace_period_seconds=0)
                await eventually(
                    lambda: is_true("default/jupyter-alice" not in pods.pods),
                    what="reflector drops the deleted pod",
                )
        finally:
            await pods.stop()
            await events.stop()
