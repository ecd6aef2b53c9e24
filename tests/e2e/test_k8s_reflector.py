"""gpulab's ``WakingPodReflector`` on the fake cluster: a spawn or stop ends as soon as
the watch reports its pod running or gone."""

from __future__ import annotations

import asyncio
import time

import pytest
from kubernetes_asyncio import client

from fakekube import FakeKube
from fakekube.tests.helpers import kubespawner_configured, pod


async def test_the_spawners_pod_reflector_wakes_waiters_at_each_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What lets a spawn or stop end as soon as the watch reports its pod running or
    gone, rather than at KubeSpawner's next look (gpulab's ``WakingPodReflector``)."""
    from gpulab.spawner.kube_reflector import WakingPodReflector

    key = "default/jupyter-ada"
    with FakeKube() as kube, kubespawner_configured(kube, monkeypatch):
        pods = WakingPodReflector(
            namespace="default", labels={"component": "singleuser-server"}, timeout_seconds=1
        )
        try:
            await pods.start()
            async with client.ApiClient() as api:
                v1 = client.CoreV1Api(api)
                body = pod("jupyter-ada")
                body["metadata"]["labels"] = {"component": "singleuser-server"}
                news = pods.changed(key)
                await v1.create_namespaced_pod("default", body)
                await asyncio.wait_for(news, 10)
                assert key in pods.pods
                while pods.pods[key]["status"].get("phase") != "Running":
                    await asyncio.wait_for(pods.changed(key), 10)  # each news, no polling

                # a waiter that gives up is forgotten; the others still hear
                gave_up, news = pods.changed(key), pods.changed(key)
                gave_up.cancel()
                # across a dropped stream (a new list, then a new watch) too; the watch
                # ends by itself every second (timeout_seconds), so wait for an open one
                deadline = time.monotonic() + 10
                while not kube.drop_watches():
                    assert time.monotonic() < deadline, "the reflector opened no watch"
                    await asyncio.sleep(0.02)
                await v1.delete_namespaced_pod("jupyter-ada", "default", grace_period_seconds=0)
                await asyncio.wait_for(news, 10)
                while key in pods.pods:
                    await asyncio.wait_for(pods.changed(key), 10)
                other = pods.changed("default/jupyter-bob")
                assert not other.done()  # news of one pod wake only its own waiters
        finally:
            await pods.stop()
