"""Watches (event order, resuming from a resourceVersion, 410 Gone, bookmarks),
consistent lists, and namespace lifecycle."""

from __future__ import annotations

import asyncio
import time

import pytest
from kubernetes_asyncio import watch
from kubernetes_asyncio.client.rest import ApiException

from fakekube import FakeKube
from fakekube.tests.helpers import MERGE, core, eventually, phase_is, pod


async def test_watch_streams_added_modified_deleted_in_order() -> None:
    with FakeKube(nodes=[]) as kube:
        async with core(kube) as v1:
            start = (await v1.list_namespaced_config_map("default")).metadata.resource_version
            seen: list[tuple[str, str, str]] = []

            async def collect() -> None:
                async with watch.Watch() as w:
                    async for event in w.stream(
                        v1.list_namespaced_config_map,
                        "default",
                        resource_version=start,
                        label_selector="app=gpulab",
                        timeout_seconds=5,
                    ):
                        seen.append(
                            (
                                event["type"],
                                event["object"].metadata.name,
                                event["object"].metadata.resource_version,
                            )
                        )
                        if event["type"] == "DELETED":
                            return

            task = asyncio.create_task(collect())
            await v1.create_namespaced_config_map(
                "default",
                {"metadata": {"name": "cm", "labels": {"app": "gpulab"}}, "data": {"k": "1"}},
            )
            await v1.create_namespaced_config_map("default", {"metadata": {"name": "ignored"}})
            await v1.patch_namespaced_config_map("cm", "default", {"data": {"k": "2"}})
            await v1.delete_namespaced_config_map("cm", "default")
            await asyncio.wait_for(task, 10)
            assert [(t, n) for t, n, _ in seen] == [
                ("ADDED", "cm"),
                ("MODIFIED", "cm"),
                ("DELETED", "cm"),
            ]
            versions = [int(rv) for _, _, rv in seen]
            assert versions == sorted(versions) and len(set(versions)) == 3


async def test_watch_resumes_from_a_resource_version_and_expires_old_ones() -> None:
    with FakeKube(nodes=[], history_size=8) as kube:
        async with core(kube) as v1:
            first = await v1.create_namespaced_config_map("default", {"metadata": {"name": "one"}})
            await v1.create_namespaced_config_map("default", {"metadata": {"name": "two"}})
            await v1.create_namespaced_config_map("default", {"metadata": {"name": "three"}})
            async with watch.Watch() as w:
                events = [
                    (e["type"], e["object"].metadata.name)
                    async for e in w.stream(
                        v1.list_namespaced_config_map,
                        "default",
                        resource_version=first.metadata.resource_version,
                        timeout_seconds=1,
                    )
                ]
            assert events == [("ADDED", "two"), ("ADDED", "three")]

            # a label change that leaves the selector is a DELETED for that watch
            await v1.patch_namespaced_config_map(
                "two", "default", {"metadata": {"labels": {"keep": "yes"}}}
            )
            rv = (await v1.list_namespaced_config_map("default")).metadata.resource_version
            await v1.patch_namespaced_config_map(
                "two", "default", {"metadata": {"labels": {"keep": None}}}, _content_type=MERGE
            )
            async with watch.Watch() as w:
                events = [
                    (e["type"], e["object"].metadata.name)
                    async for e in w.stream(
                        v1.list_namespaced_config_map,
                        "default",
                        label_selector="keep=yes",
                        resource_version=rv,
                        timeout_seconds=1,
                    )
                ]
            assert events == [("DELETED", "two")]

            for i in range(10):  # push "one"'s version out of the history window
                await v1.create_namespaced_config_map(
                    "default", {"metadata": {"name": f"filler-{i}"}}
                )
            with pytest.raises(ApiException) as e:
                async with watch.Watch() as w:
                    async for _ in w.stream(
                        v1.list_namespaced_config_map,
                        "default",
                        resource_version=first.metadata.resource_version,
                        timeout_seconds=1,
                    ):
                        pass
            assert e.value.status == 410 and "Expired: too old resource version" in e.value.reason


async def test_watch_bookmarks_initial_state_and_timeout() -> None:
    with FakeKube(nodes=[], bookmark_interval=0.2) as kube:
        async with core(kube) as v1:
            await v1.create_namespaced_config_map("default", {"metadata": {"name": "cm"}})
            started = time.monotonic()
            async with watch.Watch() as w:
                events = [
                    e
                    async for e in w.stream(
                        v1.list_namespaced_config_map,
                        "default",
                        resource_version="0",
                        allow_watch_bookmarks=True,
                        timeout_seconds=1,
                    )
                ]
            assert time.monotonic() - started < 3  # timeoutSeconds ends the stream
            # resourceVersion "0": the current state first, as synthetic ADDED events
            assert [
                (e["type"], e["object"].metadata.name) for e in events if e["type"] == "ADDED"
            ] == [("ADDED", "cm"), ("ADDED", "kube-root-ca.crt")]
            bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
            assert bookmarks and bookmarks[0]["raw_object"]["kind"] == "ConfigMap"
            assert int(bookmarks[-1]["raw_object"]["metadata"]["resourceVersion"]) >= int(
                events[0]["object"].metadata.resource_version
            )


async def test_paginated_and_exact_lists_are_consistent_snapshots() -> None:
    with FakeKube(nodes=[]) as kube:
        async with core(kube) as v1:
            for i in range(5):
                await v1.create_namespaced_secret(
                    "default", {"metadata": {"name": f"s{i}", "labels": {"batch": "1"}}}
                )
            page = await v1.list_namespaced_secret("default", limit=2)
            assert [s.metadata.name for s in page.items] == [
                "s0",
                "s1",
            ] and page.metadata.remaining_item_count == 3
            snapshot = page.metadata.resource_version
            await v1.create_namespaced_secret("default", {"metadata": {"name": "s2a"}})
            await v1.delete_namespaced_secret("s3", "default")
            names = [s.metadata.name for s in page.items]
            token = page.metadata._continue
            while token:
                page = await v1.list_namespaced_secret("default", limit=2, _continue=token)
                names += [s.metadata.name for s in page.items]
                token = page.metadata._continue
            assert names == ["s0", "s1", "s2", "s3", "s4"]  # as of the first page
            exact = await v1.list_namespaced_secret(
                "default", resource_version=snapshot, resource_version_match="Exact"
            )
            assert [s.metadata.name for s in exact.items] == ["s0", "s1", "s2", "s3", "s4"]
            now = await v1.list_namespaced_secret("default", resource_version="0")
            assert [s.metadata.name for s in now.items] == ["s0", "s1", "s2", "s2a", "s4"]

            # the apiserver answers a deletecollection with the list of what it deleted
            # (the OpenAPI document says Status), so read the raw body
            raw = await v1.delete_collection_namespaced_secret(
                "default", label_selector="batch=1", _preload_content=False
            )
            removed = await raw.json()
            assert removed["kind"] == "SecretList"
            assert sorted(s["metadata"]["name"] for s in removed["items"]) == [
                "s0",
                "s1",
                "s2",
                "s4",
            ]
            left = await v1.list_namespaced_secret("default")
            assert [s.metadata.name for s in left.items] == ["s2a"]


async def test_namespaces_must_exist_and_deleting_one_removes_its_content() -> None:
    with FakeKube() as kube:
        async with core(kube) as v1:
            await v1.create_namespace({"metadata": {"name": "team-a"}})
            sa = await v1.read_namespaced_service_account("default", "team-a")
            assert sa.metadata.name == "default"
            held = pod("p", 1)
            held["metadata"]["finalizers"] = ["example.com/hold"]
            await v1.create_namespaced_pod("team-a", held)
            await eventually(lambda: phase_is(v1, "p", "Running", "team-a"), what="p running")
            raw = await v1.delete_namespace("team-a", _preload_content=False)
            answer = await raw.json()
            assert answer["kind"] == "Namespace" and answer["status"]["phase"] == "Terminating"
            # the pod's finalizer keeps it, and so its namespace, until it is removed
            await eventually(lambda: phase_is(v1, "p", "Succeeded", "team-a"), what="p stopped")
            stopped = await v1.read_namespaced_pod("p", "team-a")
            assert (
                stopped.metadata.deletion_timestamp
                and (await v1.read_namespace("team-a")).status.phase == "Terminating"
            )
            with pytest.raises(ApiException) as e:
                await v1.create_namespaced_config_map("team-a", {"metadata": {"name": "late"}})
            assert e.value.status == 403 and "because it is being terminated" in e.value.body
            await v1.patch_namespaced_pod(
                "p", "team-a", {"metadata": {"finalizers": None}}, _content_type=MERGE
            )

            async def gone() -> bool:
                try:
                    await v1.read_namespace("team-a")
                except ApiException as e:
                    return e.status == 404
                return False

            await eventually(gone, what="namespace team-a gone")
            with pytest.raises(ApiException) as e:
                await v1.delete_namespace("default")
            assert e.value.status == 403
