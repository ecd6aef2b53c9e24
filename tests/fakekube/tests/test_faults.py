"""Injected faults: failing and delayed requests, watches cut mid-stream."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import requests
from kubernetes_asyncio import watch
from kubernetes_asyncio.client.rest import ApiException

from fakekube import FakeKube
from fakekube.tests.helpers import core, eventually, is_true, pod


async def test_injected_failures_answer_as_an_apiserver_does() -> None:
    with FakeKube(nodes=[]) as kube:
        async with core(kube) as v1:
            # a client that retries a 500 gets through once the fault is spent
            failing = kube.faults.fail("create", "pods", status=500, times=2)
            attempts = []
            for _ in range(3):
                try:
                    await v1.create_namespaced_pod("default", pod("p"))
                    break
                except ApiException as e:
                    attempts.append(e)
            assert [e.status for e in attempts] == [500, 500] and failing.hits == 2
            assert '"reason":"InternalError"' in attempts[0].body
            assert "Internal error occurred: fakekube: injected fault" in attempts[0].body
            # one that gives up sees a clear Status
            kube.faults.fail("patch", "pods", status=409, times=None)
            for _ in range(3):
                with pytest.raises(ApiException) as e:
                    await v1.patch_namespaced_pod(
                        "p", "default", {"metadata": {"labels": {"a": "b"}}}
                    )
            assert e.value.status == 409 and '"reason":"Conflict"' in e.value.body
            assert (
                'Operation cannot be fulfilled on pods \\"p\\": the object has been modified'
                in e.value.body
            )

            # 429 as priority and fairness answers it, plain text with Retry-After
            kube.faults.fail("list", "pods", status=429, retry_after=3)
            answer = await asyncio.to_thread(
                requests.get, f"{kube.url}/api/v1/namespaces/default/pods", timeout=5
            )
            assert answer.status_code == 429 and answer.headers["Retry-After"] == "3"
            assert answer.text == "Too many requests, please try again later.\n"
            assert len((await v1.list_namespaced_pod("default")).items) == 1  # spent

            # rules match their verb, resource and namespace only
            kube.faults.fail("get", "pods", namespace="elsewhere", times=None)
            kube.faults.fail("get", "pods/status", times=None)
            assert (await v1.read_namespaced_pod("p", "default")).metadata.name == "p"
            with pytest.raises(ApiException):
                await v1.read_namespaced_pod_status("p", "default")

            # delays hold a request before it is answered
            slow = kube.faults.delay("*", "*", 0.5, times=1)
            started = time.monotonic()
            await v1.list_namespaced_config_map("default")
            assert time.monotonic() - started >= 0.5 and slow.hits == 1
            kube.faults.clear()
            await v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"a": "b"}}})
            with pytest.raises(ValueError):
                kube.faults.fail("get", "pods", status=418)


async def test_dropped_watches_are_cut_mid_stream() -> None:
    with FakeKube(nodes=[]) as kube:
        async with core(kube) as v1:
            seen: list[str] = []

            async def follow() -> None:
                async with watch.Watch() as w:
                    async for event in w.stream(
                        v1.list_namespaced_config_map, "default", timeout_seconds=30
                    ):
                        seen.append(event["object"].metadata.name)

            task = asyncio.create_task(follow())
            await eventually(
                lambda: is_true(seen == ["kube-root-ca.crt"]), what="the watch to start"
            )
            assert kube.drop_watches() == 1
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(task, 5)  # not a clean end: the client must notice
            assert kube.drop_watches() == 0
