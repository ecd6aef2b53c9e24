"""fakekube against the real clients: what KubeSpawner and gpulab will see.

Every test drives the fake over HTTP with kubernetes_asyncio (the client KubeSpawner
uses), or with KubeSpawner's own reflectors, and asserts what a real cluster answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import pytest
import requests
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.config import kube_config

from fakekube import FakeKube
from fakekube.dns import HEADER
from fakekube.protobuf import field as pb
from hubfixture import free_port

MERGE = "application/merge-patch+json"


@asynccontextmanager
async def core(kube: FakeKube) -> AsyncIterator[client.CoreV1Api]:
    conf = client.Configuration(host=kube.url)
    async with client.ApiClient(configuration=conf) as api:
        yield client.CoreV1Api(api)


@asynccontextmanager
async def apis(kube: FakeKube) -> AsyncIterator[client.ApiClient]:
    conf = client.Configuration(host=kube.url)
    async with client.ApiClient(configuration=conf) as api:
        yield api


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 10, what: str = ""
) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


def pod(name: str, gpus: int = 0, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "notebook",
        "image": "quay.io/jupyter/base-notebook:2025-01-01",
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return {
        "metadata": {"name": name, "labels": {"app": "gpulab"}},
        "spec": {"containers": [container], **spec},
    }


async def phase_of(v1: client.CoreV1Api, name: str, ns: str = "default") -> str:
    return (await v1.read_namespaced_pod(name, ns)).status.phase


# -- API semantics ----------------------------------------------------------------------


async def test_create_get_list_patch_delete_roundtrip() -> None:
    with FakeKube(nodes=[]) as kube:  # no node: the pods stay unscheduled
        async with core(kube) as v1:
            created = await v1.create_namespaced_pod(
                "default",
                {
                    **pod(""),
                    "metadata": {
                        "generateName": "jupyter-",
                        "labels": {"app": "gpulab", "tier": "a"},
                    },
                },
            )
            name = created.metadata.name
            assert name.startswith("jupyter-") and len(name) == len("jupyter-") + 5
            assert created.metadata.uid and created.metadata.creation_timestamp
            assert created.status.phase == "Pending" and created.status.qos_class == "BestEffort"
            # defaults the apiserver fills in
            assert (
                created.spec.restart_policy == "Always"
                and created.spec.termination_grace_period_seconds == 30
            )
            assert created.spec.containers[0].image_pull_policy == "IfNotPresent"

            got = await v1.read_namespaced_pod(name, "default")
            assert got.metadata.uid == created.metadata.uid

            await v1.create_namespaced_pod(
                "default",
                {
                    **pod("other"),
                    "metadata": {"name": "other", "labels": {"app": "gpulab", "tier": "b"}},
                },
            )
            listed = await v1.list_namespaced_pod("default", label_selector="tier=a")
            assert [p.metadata.name for p in listed.items] == [name]
            assert int(listed.metadata.resource_version) >= int(created.metadata.resource_version)

            patched = await v1.patch_namespaced_pod(
                name,
                "default",
                {"metadata": {"labels": {"tier": None, "user": "alice"}}},
                _content_type=MERGE,
            )
            assert patched.metadata.labels == {"app": "gpulab", "user": "alice"}
            assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)

            # a write that changes nothing keeps the resourceVersion, as the apiserver does
            again = await v1.patch_namespaced_pod(
                name, "default", {"metadata": {"labels": {"user": "alice"}}}, _content_type=MERGE
            )
            assert (
                again.metadata.resource_version
                == (await v1.read_namespaced_pod(name, "default")).metadata.resource_version
            )

            # what the pod owns goes with it (the garbage collector)
            owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": created.metadata.uid}
            await v1.create_namespaced_secret(
                "default", {"metadata": {"name": "owned", "ownerReferences": [owner]}}
            )
            await v1.delete_namespaced_pod(name, "default")  # unscheduled: deleted at once
            with pytest.raises(ApiException) as gone:
                await v1.read_namespaced_pod(name, "default")
            assert gone.value.status == 404

            async def collected() -> bool:
                names = {
                    s.metadata.name for s in (await v1.list_namespaced_secret("default")).items
                }
                return "owned" not in names

            await eventually(collected, what="the owned secret collected")


async def test_errors_are_status_objects_with_the_real_codes() -> None:
    with FakeKube(nodes=[]) as kube:
        async with core(kube) as v1:
            with pytest.raises(ApiException) as e:
                await v1.read_namespaced_pod("nope", "default")
            assert e.value.status == 404
            body = __import__("json").loads(e.value.body)
            assert body == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": 'pods "nope" not found',
                "reason": "NotFound",
                "details": {"name": "nope", "kind": "pods"},
                "code": 404,
            }

            with pytest.raises(ApiException) as e:
                await v1.create_namespaced_pod("team-a", pod("p"))
            assert e.value.status == 404 and 'namespaces \\"team-a\\" not found' in e.value.body

            await v1.create_namespaced_pod("default", pod("p"))
            with pytest.raises(ApiException) as e:
                await v1.create_namespaced_pod("default", pod("p"))
            assert e.value.status == 409 and '"reason":"AlreadyExists"' in e.value.body

            with pytest.raises(ApiException) as e:
                await v1.create_namespaced_pod(
                    "default", {"metadata": {"name": "empty"}, "spec": {"containers": []}}
                )
            assert e.value.status == 422
            assert (
                '"message":"Pod \\"empty\\" is invalid: spec.containers: Required value"'
                in e.value.body
            )
            assert (
                '"causes":[{"reason":"FieldValueRequired","message":"Required value","field":"spec.containers"}]'
                in e.value.body
            )

            with pytest.raises(ApiException) as e:
                await v1.create_namespaced_pod("default", pod("Not_A_Name"))
            assert e.value.status == 422 and "a lowercase RFC 1123 subdomain" in e.value.body

            with pytest.raises(ApiException) as e:
                await v1.create_namespaced_pod(
                    "default", {"metadata": {}, "spec": pod("x")["spec"]}
                )
            assert e.value.status == 422 and "name or generateName is required" in e.value.body

            # JSON null decodes to a zero quantity, which a claim may not request
            nothing = claim("home", "1Gi", None)
            nothing["spec"]["resources"]["requests"]["storage"] = None
            with pytest.raises(ApiException) as e:
                await v1.create_namespaced_persistent_volume_claim("default", nothing)
            assert e.value.status == 422
            assert (
                'spec.resources[storage]: Invalid value: \\"0\\": must be greater than zero'
                in e.value.body
            )

            # optimistic concurrency: a replace with a stale resourceVersion is a Conflict
            current = await v1.read_namespaced_pod("p", "default")
            stale = current.metadata.resource_version
            await v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"v": "2"}}})
            current.metadata.resource_version = stale
            current.metadata.labels = {"v": "3"}
            with pytest.raises(ApiException) as e:
                await v1.replace_namespaced_pod("p", "default", current)
            assert e.value.status == 409 and '"reason":"Conflict"' in e.value.body
            assert "the object has been modified" in e.value.body

            # pod spec is immutable apart from images and a few fields
            fresh = await v1.read_namespaced_pod("p", "default")
            fresh.spec.restart_policy = "Never"
            with pytest.raises(ApiException) as e:
                await v1.replace_namespaced_pod("p", "default", fresh)
            assert e.value.status == 422 and "pod updates may not change fields" in e.value.body


async def test_label_and_field_selectors() -> None:
    with FakeKube() as kube:
        async with core(kube) as v1:
            for name, labels in (
                ("a", {"tier": "gpu", "user": "alice"}),
                ("b", {"tier": "cpu"}),
                ("c", {}),
            ):
                await v1.create_namespaced_config_map(
                    "default", {"metadata": {"name": name, "labels": labels}}
                )

            async def names(**kw: Any) -> list[str]:
                listed = await v1.list_namespaced_config_map("default", **kw)
                return [
                    m.metadata.name for m in listed.items if m.metadata.name != "kube-root-ca.crt"
                ]

            assert await names(label_selector="tier=gpu") == ["a"]
            assert await names(label_selector="tier==cpu") == ["b"]
            assert await names(label_selector="tier!=gpu") == ["b", "c"]
            assert await names(label_selector="tier in (gpu,cpu)") == ["a", "b"]
            assert await names(label_selector="tier notin (gpu)") == ["b", "c"]
            assert await names(label_selector="user") == ["a"]
            assert await names(label_selector="!user,tier") == ["b"]
            assert await names(field_selector="metadata.name=b") == ["b"]
            assert await names(field_selector="metadata.name!=b,metadata.namespace=default") == [
                "a",
                "c",
            ]
            with pytest.raises(ApiException) as e:
                await names(label_selector="tier in (gpu")
            assert e.value.status == 400

            await v1.create_namespaced_pod("default", pod("running", 1))
            await v1.create_namespaced_pod("default", pod("waiting", 5))
            await eventually(
                lambda: v1.list_namespaced_pod("default", field_selector="status.phase=Running"),
                what="a running pod",
            )
            running = await v1.list_namespaced_pod("default", field_selector="status.phase=Running")
            assert [p.metadata.name for p in running.items] == ["running"]
            on_node = await v1.list_namespaced_pod(
                "default", field_selector="spec.nodeName=gpu-node-1"
            )
            assert [p.metadata.name for p in on_node.items] == ["running"]
            everywhere = await v1.list_pod_for_all_namespaces(field_selector="status.phase=Pending")
            assert [p.metadata.name for p in everywhere.items] == ["waiting"]
            with pytest.raises(ApiException) as e:
                await v1.list_namespaced_pod("default", field_selector="spec.image=x")
            assert e.value.status == 400 and "field label not supported: spec.image" in e.value.body


async def test_merge_strategic_and_json_patches() -> None:
    with FakeKube(nodes=[]) as kube:
        async with core(kube) as v1:
            body = pod("p")
            body["spec"]["containers"][0]["env"] = [
                {"name": "A", "value": "1"},
                {"name": "B", "value": "2"},
            ]
            body["spec"]["containers"].append({"name": "sidecar", "image": "busybox:1.36"})
            await v1.create_namespaced_pod("default", body)
            # strategic merge: containers merge by name, env by name
            patched = await v1.patch_namespaced_pod(
                "p",
                "default",
                {
                    "spec": {
                        "containers": [
                            {
                                "name": "notebook",
                                "image": "quay.io/jupyter/base-notebook:2025-02-01",
                            }
                        ]
                    }
                },
            )
            images = {c.name: c.image for c in patched.spec.containers}
            assert images == {
                "notebook": "quay.io/jupyter/base-notebook:2025-02-01",
                "sidecar": "busybox:1.36",
            }
            assert [(e.name, e.value) for e in patched.spec.containers[0].env] == [
                ("A", "1"),
                ("B", "2"),
            ]

            await v1.create_namespaced_secret(
                "default", {"metadata": {"name": "s"}, "stringData": {"token": "abc"}}
            )
            secret = await v1.read_namespaced_secret("s", "default")
            assert secret.data == {"token": "YWJj"} and secret.type == "Opaque"

            dep = {
                "metadata": {"name": "d"},
                "spec": {
                    "selector": {"matchLabels": {"app": "d"}},
                    "template": {
                        "metadata": {"labels": {"app": "d"}},
                        "spec": {
                            "containers": [
                                {"name": "c", "image": "x:1", "env": [{"name": "A", "value": "1"}]}
                            ]
                        },
                    },
                },
            }
            apps = client.AppsV1Api(v1.api_client)
            await apps.create_namespaced_deployment("default", dep)
            patched_dep = await apps.patch_namespaced_deployment(
                "d",
                "default",
                {
                    "spec": {
                        "template": {
                            "spec": {
                                "containers": [
                                    {
                                        "name": "c",
                                        "env": [
                                            {"name": "B", "value": "2"},
                                            {"name": "A", "$patch": "delete"},
                                        ],
                                    }
                                ]
                            }
                        }
                    }
                },
            )
            assert [
                (e.name, e.value) for e in patched_dep.spec.template.spec.containers[0].env
            ] == [("B", "2")]
            assert patched_dep.metadata.generation == 2

            # JSON patch, including a failing test operation
            patched = await v1.patch_namespaced_pod(
                "p", "default", [{"op": "add", "path": "/metadata/labels/owner", "value": "bob"}]
            )
            assert patched.metadata.labels["owner"] == "bob"
            with pytest.raises(ApiException) as e:
                await v1.patch_namespaced_pod(
                    "p",
                    "default",
                    [{"op": "test", "path": "/metadata/labels/owner", "value": "eve"}],
                )
            assert e.value.status == 422


# -- watches ----------------------------------------------------------------------------


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
            await eventually(lambda: _phase_is(v1, "p", "Running", "team-a"), what="p running")
            raw = await v1.delete_namespace("team-a", _preload_content=False)
            answer = await raw.json()
            assert answer["kind"] == "Namespace" and answer["status"]["phase"] == "Terminating"
            # the pod's finalizer keeps it, and so its namespace, until it is removed
            await eventually(lambda: _phase_is(v1, "p", "Succeeded", "team-a"), what="p stopped")
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


async def _phase_is(v1: client.CoreV1Api, name: str, phase: str, ns: str = "default") -> bool:
    try:
        return await phase_of(v1, name, ns) == phase
    except ApiException:
        return False


async def test_discovery_and_version() -> None:
    with FakeKube(nodes=[]) as kube:
        async with apis(kube) as api:
            version = await client.VersionApi(api).get_code()
            assert version.git_version.startswith("v1.")
            groups = await client.ApisApi(api).get_api_versions()
            assert {"apps", "batch", "storage.k8s.io"} <= {g.name for g in groups.groups}
            core_resources = await client.CoreV1Api(api).get_api_resources()
            by_name = {r.name: r for r in core_resources.resources}
            assert by_name["pods"].namespaced and by_name["persistentvolumes"].namespaced is False
            assert "pods/log" in by_name and "watch" in by_name["events"].verbs
        assert requests.get(f"{kube.url}/api", timeout=5).json()["versions"] == ["v1"]


# -- scheduling and pods ------------------------------------------------------------


async def test_gpu_pods_fit_queue_and_start_when_a_gpu_frees() -> None:
    nodes = [{"name": "gpu-node-1", "gpus": 1}, {"name": "gpu-node-2", "gpus": 1}]
    with FakeKube(nodes=nodes) as kube:
        async with core(kube) as v1:
            node = await v1.read_node("gpu-node-1")
            assert (
                node.status.allocatable["nvidia.com/gpu"] == "1"
                and node.status.capacity["nvidia.com/gpu"] == "1"
            )
            await v1.create_namespaced_pod("default", pod("alice", 1))
            await v1.create_namespaced_pod("default", pod("bob", 1))
            await eventually(lambda: _phase_is(v1, "alice", "Running"), what="alice running")
            await eventually(lambda: _phase_is(v1, "bob", "Running"), what="bob running")
            alice = await v1.read_namespaced_pod("alice", "default")
            bob = await v1.read_namespaced_pod("bob", "default")
            assert {alice.spec.node_name, bob.spec.node_name} == {"gpu-node-1", "gpu-node-2"}
            assert alice.status.pod_ip == "127.0.0.1" and alice.status.host_ip == "127.0.0.1"
            status = alice.status.container_statuses[0]
            assert status.ready and status.started and status.state.running.started_at
            assert {c.type: c.status for c in alice.status.conditions} == {
                "PodReadyToStartContainers": "True",
                "Initialized": "True",
                "Ready": "True",
                "ContainersReady": "True",
                "PodScheduled": "True",
            }
            # limits-only GPU requests are defaulted to requests, as the apiserver does
            assert alice.spec.containers[0].resources.requests == {"nvidia.com/gpu": "1"}

            await v1.create_namespaced_pod("default", pod("carol", 1))

            async def unschedulable() -> Any:
                carol = await v1.read_namespaced_pod("carol", "default")
                return next(
                    (
                        c
                        for c in carol.status.conditions or []
                        if c.type == "PodScheduled" and c.status == "False"
                    ),
                    None,
                )

            condition = await eventually(unschedulable, what="carol unschedulable")
            assert condition.reason == "Unschedulable"
            expected = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
            assert condition.message.startswith(expected)
            events = await v1.list_namespaced_event(
                "default", field_selector="involvedObject.name=carol,reason=FailedScheduling"
            )
            assert len(events.items) == 1 and events.items[0].type == "Warning"
            assert (
                events.items[0].message.startswith(expected)
                and events.items[0].involved_object.kind == "Pod"
            )

            gpu_of_alice = alice.spec.node_name
            await v1.delete_namespaced_pod("alice", "default", grace_period_seconds=1)
            await eventually(lambda: _phase_is(v1, "carol", "Running"), what="carol running")
            carol = await v1.read_namespaced_pod("carol", "default")
            assert carol.spec.node_name == gpu_of_alice
            with pytest.raises(ApiException):
                await v1.read_namespaced_pod("alice", "default")


async def test_node_selectors_taints_and_extra_resources() -> None:
    nodes = [
        {
            "name": "a100",
            "gpus": 2,
            "labels": {"gpu-type": "a100"},
            "taints": [{"key": "dedicated", "value": "training", "effect": "NoSchedule"}],
        },
        {
            "name": "t4",
            "gpus": 2,
            "labels": {"gpu-type": "t4"},
            "resources": {"example.com/vgpu": 4},
        },
    ]
    with FakeKube(nodes=nodes) as kube:
        async with core(kube) as v1:
            await v1.create_namespaced_pod(
                "default", pod("wants-a100", 1, nodeSelector={"gpu-type": "a100"})
            )
            tolerating = pod(
                "tolerates",
                1,
                nodeSelector={"gpu-type": "a100"},
                tolerations=[
                    {
                        "key": "dedicated",
                        "operator": "Equal",
                        "value": "training",
                        "effect": "NoSchedule",
                    }
                ],
            )
            await v1.create_namespaced_pod("default", tolerating)
            vgpu = pod("vgpu")
            vgpu["spec"]["containers"][0]["resources"] = {"limits": {"example.com/vgpu": 5}}
            await v1.create_namespaced_pod("default", vgpu)

            async def message(name: str) -> str | None:
                p = await v1.read_namespaced_pod(name, "default")
                return next(
                    (
                        c.message
                        for c in p.status.conditions or []
                        if c.type == "PodScheduled" and c.status == "False"
                    ),
                    None,
                )

            text = await eventually(lambda: message("wants-a100"), what="wants-a100 unschedulable")
            assert text.startswith(
                "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: training}."
            )
            assert "Preemption is not helpful for scheduling" in text
            await eventually(
                lambda: _phase_is(v1, "tolerates", "Running"), what="tolerating pod running"
            )
            assert (await v1.read_namespaced_pod("tolerates", "default")).spec.node_name == "a100"
            text = await eventually(lambda: message("vgpu"), what="vgpu unschedulable")
            # each node reports the first filter it fails: the taint on a100, resources on t4
            assert text.startswith(
                "0/2 nodes are available: 1 Insufficient example.com/vgpu, 1 node(s) had untolerated taint {dedicated: training}."
            )


async def test_pod_with_a_missing_claim_waits_for_it() -> None:
    rbd = {
        "metadata": {"name": "rbd"},
        "provisioner": "rbd.csi.ceph.com",
        "parameters": {"clusterID": "ceph", "pool": "rbd"},
    }
    with FakeKube(storage_classes=[rbd]) as kube:
        async with core(kube) as v1:
            body = pod(
                "needs-home",
                volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "home-alice"}}],
            )
            body["spec"]["containers"][0]["volumeMounts"] = [
                {"name": "home", "mountPath": "/home/jovyan"}
            ]
            await v1.create_namespaced_pod("default", body)

            async def failed_scheduling() -> Any:
                events = await v1.list_namespaced_event(
                    "default",
                    field_selector="involvedObject.name=needs-home,reason=FailedScheduling",
                )
                return events.items

            events = await eventually(failed_scheduling, what="FailedScheduling")
            assert events[0].message.startswith(
                '0/1 nodes are available: persistentvolumeclaim "home-alice" not found.'
            )
            assert await phase_of(v1, "needs-home") == "Pending"
            await v1.create_namespaced_persistent_volume_claim(
                "default",
                {
                    "metadata": {"name": "home-alice"},
                    "spec": {
                        "storageClassName": "rbd",
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                },
            )
            await eventually(
                lambda: _phase_is(v1, "needs-home", "Running"),
                what="pod running once its claim is bound",
            )


async def test_simulated_containers_exit_and_restart_by_policy() -> None:
    with FakeKube(restart_backoff=0.2) as kube:
        async with core(kube) as v1:
            await v1.create_namespaced_pod("default", pod("once", restartPolicy="Never"))
            await v1.create_namespaced_pod("default", pod("again", restartPolicy="OnFailure"))
            await eventually(lambda: _phase_is(v1, "once", "Running"), what="once running")
            await eventually(lambda: _phase_is(v1, "again", "Running"), what="again running")
            kube.exit_container("default", "once", 3)
            await eventually(lambda: _phase_is(v1, "once", "Failed"), what="once failed")
            terminated = (
                (await v1.read_namespaced_pod("once", "default"))
                .status.container_statuses[0]
                .state.terminated
            )
            assert terminated.exit_code == 3 and terminated.reason == "Error"

            kube.exit_container("default", "again", 1)

            async def restarted() -> bool:
                status = (
                    await v1.read_namespaced_pod("again", "default")
                ).status.container_statuses[0]
                return status.restart_count == 1 and status.state.running is not None

            await eventually(restarted, what="again restarted")
            status = (await v1.read_namespaced_pod("again", "default")).status.container_statuses[0]
            assert status.last_state.terminated.exit_code == 1
            kube.exit_container("default", "again", 0)
            await eventually(lambda: _phase_is(v1, "again", "Succeeded"), what="again succeeded")


async def test_running_a_real_process_that_serves_http() -> None:
    port = free_port()
    with FakeKube(run_containers=True) as kube:
        workdir = os.path.join(kube.workdir, "home-alice")
        os.makedirs(workdir)
        with open(os.path.join(workdir, "hello.txt"), "w") as f:
            f.write("hello from the pod\n")
        async with core(kube) as v1:
            await v1.create_namespaced_secret(
                "default", {"metadata": {"name": "alice-token"}, "stringData": {"token": "s3cret"}}
            )
            body = pod("server", 1, terminationGracePeriodSeconds=5)
            body["spec"]["containers"][0].update(
                {
                    "command": ["sh", "-c"],
                    "args": [
                        'printf %s "$TOKEN" > token.txt && exec "$(PYTHON)" -m http.server "$(PORT)" --bind 127.0.0.1'
                    ],
                    "workingDir": workdir,
                    "env": [
                        {"name": "PYTHON", "value": sys.executable},
                        {"name": "PORT", "value": str(port)},
                        {
                            "name": "TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "alice-token", "key": "token"}},
                        },
                    ],
                    "ports": [{"containerPort": port, "name": "http"}],
                    "readinessProbe": {
                        "httpGet": {"path": "/hello.txt", "port": "http"},
                        "periodSeconds": 1,
                    },
                }
            )
            await v1.create_namespaced_pod("default", body)

            async def ready() -> bool:
                p = await v1.read_namespaced_pod("server", "default")
                return bool(p.status.container_statuses) and p.status.container_statuses[0].ready

            await eventually(ready, timeout=15, what="server ready")
            answer = await asyncio.to_thread(
                requests.get, f"http://127.0.0.1:{port}/hello.txt", timeout=5
            )
            assert answer.text == "hello from the pod\n"
            token = await asyncio.to_thread(
                requests.get, f"http://127.0.0.1:{port}/token.txt", timeout=5
            )
            assert token.text == "s3cret"
            logs = await v1.read_namespaced_pod_log("server", "default")
            assert "GET /hello.txt" in logs
            pid = kube.pod_pids("default", "server")["notebook"]

            final: dict[str, Any] = {}

            async def follow() -> None:
                async with watch.Watch() as w:
                    async for e in w.stream(
                        v1.list_namespaced_pod,
                        "default",
                        field_selector="metadata.name=server",
                        timeout_seconds=10,
                    ):
                        if e["type"] == "DELETED":
                            final.update(e["raw_object"])
                            return

            watcher = asyncio.create_task(follow())
            await asyncio.sleep(0.1)
            deleting = await v1.delete_namespaced_pod("server", "default")
            assert (
                deleting.metadata.deletion_timestamp is not None
                and deleting.metadata.deletion_grace_period_seconds == 5
            )
            await asyncio.wait_for(watcher, 10)
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
            terminated = final["status"]["containerStatuses"][0]["state"]["terminated"]
            assert terminated["exitCode"] == 143  # SIGTERM
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://127.0.0.1:{port}/hello.txt", timeout=2)

            failing = pod("fails", restartPolicy="Never")
            failing["spec"]["containers"][0]["command"] = [
                sys.executable,
                "-c",
                "import sys; print('bye'); sys.exit(3)",
            ]
            await v1.create_namespaced_pod("default", failing)
            await eventually(lambda: _phase_is(v1, "fails", "Failed"), what="fails failed")
            status = (await v1.read_namespaced_pod("fails", "default")).status.container_statuses[0]
            assert status.state.terminated.exit_code == 3
            assert await v1.read_namespaced_pod_log("fails", "default") == "bye\n"

            # stopping FakeKube kills what still runs, even what ignores SIGTERM
            stubborn = pod("stubborn")
            stubborn["spec"]["containers"][0]["command"] = [
                "sh",
                "-c",
                'trap "" TERM; echo "$HOME $PWD"; while :; do sleep 0.1; done',
            ]
            await v1.create_namespaced_pod("default", stubborn)
            await eventually(lambda: _phase_is(v1, "stubborn", "Running"), what="stubborn running")
            # HOME from the user's passwd entry, a working directory of the pod's own
            home, cwd = (
                await eventually(
                    lambda: v1.read_namespaced_pod_log("stubborn", "default"), what="log"
                )
            ).split()
            assert home == pwd.getpwuid(os.geteuid()).pw_dir and cwd.startswith(str(kube.workdir))
            # as KubeSpawner makes them: only args (the image's entrypoint runs them)
            nobody = pod("nobody", restartPolicy="Never", securityContext={"runAsUser": 65534})
            nobody["spec"]["containers"][0]["args"] = [
                "sh",
                "-c",
                'echo "$(id -u) $HOME" > out; cat out',
            ]
            await v1.create_namespaced_pod("default", nobody)
            await eventually(lambda: _phase_is(v1, "nobody", "Succeeded"), what="nobody done")
            assert (
                await v1.read_namespaced_pod_log("nobody", "default")
                == f"65534 {pwd.getpwuid(65534).pw_dir}\n"
            )
            stubborn_pid = kube.pod_pids("default", "stubborn")["notebook"]
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2
    with pytest.raises(ProcessLookupError):
        os.kill(stubborn_pid, 0)


def _command_pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    body = pod(name, restartPolicy="Never", **spec)
    body["spec"]["containers"][0]["command"] = command
    return body


async def test_following_a_log_streams_until_the_container_exits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with FakeKube(run_containers=True) as kube:
        go = os.path.join(kube.workdir, "go")
        talker = _command_pod(
            "talker",
            [
                sys.executable,
                "-c",
                "import os, time\n"
                "print('first', flush=True)\n"
                f"while not os.path.exists({go!r}): time.sleep(0.02)\n"
                "print('second', flush=True)",
            ],
        )
        async with core(kube) as v1:
            await v1.create_namespaced_pod("default", talker)
            await eventually(lambda: _phase_is(v1, "talker", "Running"), what="talker running")
            resp = await v1.read_namespaced_pod_log(
                "talker", "default", follow=True, _preload_content=False
            )
            assert resp.headers["Content-Type"].startswith("text/plain")
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            # what was logged before the request, then what is written after it
            assert await asyncio.wait_for(resp.content.readline(), 10) == b"first\n"
            open(go, "w").close()
            assert await asyncio.wait_for(resp.content.read(), 10) == b"second\n"  # then EOF
            resp.release()
            await eventually(lambda: _phase_is(v1, "talker", "Succeeded"), what="talker done")
            # a terminated container: its whole log, and the stream ends
            done = await v1.read_namespaced_pod_log(
                "talker", "default", follow=True, _preload_content=False
            )
            assert await asyncio.wait_for(done.read(), 5) == b"first\nsecond\n"

            # before streaming, the same errors as without follow
            missing = pod("unmounted")
            missing["spec"]["volumes"] = [{"name": "v", "secret": {"secretName": "nope"}}]
            await v1.create_namespaced_pod("default", missing)
            with pytest.raises(ApiException) as e:
                await v1.read_namespaced_pod_log("unmounted", "default", follow=True)
            assert e.value.status == 400 and "is waiting to start: ContainerCreating" in str(
                e.value.body
            )
            unset = pod("unset")
            unset["spec"]["containers"][0]["env"] = [
                {"name": "T", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}
            ]
            await v1.create_namespaced_pod("default", unset)

            async def config_error() -> bool:
                try:
                    await v1.read_namespaced_pod_log("unset", "default", follow=True)
                except ApiException as e:
                    return "CreateContainerConfigError" in str(e.body) and e.status == 400
                return False

            await eventually(config_error, what="the kubelet's waiting reason")
            with pytest.raises(ApiException) as e:
                await v1.read_namespaced_pod_log("absent", "default", follow=True)
            assert e.value.status == 404
            with pytest.raises(ApiException) as e:
                await v1.read_namespaced_pod_log("talker", "default", follow="yes")
            assert e.value.status == 400

            # a client that leaves mid-stream: the server side ends without errors
            chatty = _command_pod("chatty", ["sh", "-c", "while :; do echo tick; sleep 0.05; done"])
            await v1.create_namespaced_pod("default", chatty)
            await eventually(lambda: _phase_is(v1, "chatty", "Running"), what="chatty running")
            caplog.set_level("WARNING")
            async with aiohttp.ClientSession() as session:
                async with session.get(
                    f"{kube.url}/api/v1/namespaces/default/pods/chatty/log?follow=1"
                ) as left:
                    assert await asyncio.wait_for(left.content.readline(), 5) == b"tick\n"
            await asyncio.sleep(0.5)
            assert [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []
            # and a deleted pod ends the stream of a container that would run on
            still = await v1.read_namespaced_pod_log(
                "chatty", "default", follow=True, _preload_content=False
            )
            await v1.delete_namespaced_pod("chatty", "default", grace_period_seconds=1)
            assert (await asyncio.wait_for(still.read(), 10)).startswith(b"tick\n")


async def test_a_command_that_cannot_run_is_a_start_error() -> None:
    with FakeKube(run_containers=True) as kube:
        async with core(kube) as v1:
            await v1.create_namespaced_pod("default", _command_pod("lost", ["no-such-tool"]))
            await v1.create_namespaced_pod(
                "default",
                _command_pod("relative", ["./missing.sh"], securityContext={"runAsUser": 65534}),
            )
            for name, detail in (
                ("lost", 'exec: "no-such-tool": executable file not found in $PATH'),
                ("relative", 'exec: "./missing.sh": stat ./missing.sh: no such file or directory'),
            ):
                await eventually(lambda n=name: _phase_is(v1, n, "Failed"), what=f"{name} failed")
                status = (await v1.read_namespaced_pod(name, "default")).status
                terminated = status.container_statuses[0].state.terminated
                assert (terminated.exit_code, terminated.reason) == (128, "StartError")
                assert terminated.message == (
                    "failed to create containerd task: failed to create shim task: OCI runtime "
                    "create failed: runc create failed: unable to start container process: "
                    f"{detail}: unknown"
                )


# -- cluster DNS ---------------------------------------------------------------------------


def _dns_pod(name: str, subdomain: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    body = pod(name, hostname=name, subdomain=subdomain, **spec)
    body["metadata"]["labels"] = labels
    return body


def _records(kube: FakeKube) -> set[str]:
    """The full names in the hosts file; blank lines are a rewrite's padding."""
    with open(kube.hosts_file) as f:
        records = f.read().split(HEADER + "\n", 1)[1]
    return {line.split("\t")[1].split()[0] for line in records.splitlines() if line}


async def test_cluster_dns_records_of_services_and_headless_pods() -> None:
    with FakeKube() as kube:  # simulated containers: Ready once started, podIP 127.0.0.1
        with open("/etc/hosts") as f:
            host_hosts = f.read()
        inode = os.stat(kube.hosts_file).st_ino
        train = {"job": "train"}
        async with core(kube) as v1:
            await v1.create_namespace({"metadata": {"name": "team-b"}})
            for ns, name, spec in (
                ("default", "trainers", {"clusterIP": "None", "selector": train}),
                (
                    "default",
                    "lenient",
                    {"clusterIP": "None", "selector": train, "publishNotReadyAddresses": True},
                ),
                ("default", "plain", {"selector": train, "ports": [{"port": 80}]}),
                ("default", "manual", {"clusterIP": "None"}),  # no selector
                ("team-b", "trainers", {"clusterIP": "None", "selector": {"job": "b"}}),
            ):
                await v1.create_namespaced_service(ns, {"metadata": {"name": name}, "spec": spec})
            unready = {
                "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
            }
            for ns, body in (
                ("default", _dns_pod("w-0", "trainers", train)),
                ("default", _dns_pod("w-1", "trainers", train)),
                ("default", _dns_pod("other", "trainers", {"job": "other"})),  # not selected
                ("default", _dns_pod("p-0", "plain", train)),  # not headless
                ("default", _dns_pod("m-0", "manual", train)),
                ("default", _dns_pod("gone", "nosvc", train)),
                ("team-b", _dns_pod("w-0", "trainers", train)),  # that one selects job=b
                ("team-b", _dns_pod("b-0", "trainers", {"job": "b"})),
            ):
                await v1.create_namespaced_pod(ns, body)
            nohost = pod("nohost", subdomain="trainers")
            nohost["metadata"]["labels"] = train
            await v1.create_namespaced_pod("default", nohost)
            # no Secret: the container waits (CreateContainerConfigError), the pod has an
            # IP but is not Ready; only publishNotReadyAddresses publishes it
            for name, subdomain in (("u-0", "trainers"), ("l-0", "lenient")):
                body = _dns_pod(name, subdomain, train)
                body["spec"]["containers"][0].update(unready)
                await v1.create_namespaced_pod("default", body)

            async def records_are(expected: set[str]) -> bool:
                return _records(kube) == expected

            full = "svc.cluster.local"
            # every Service with a cluster IP has its own name too (127.0.0.1 here)
            services = {f"kubernetes.default.{full}", f"plain.default.{full}"}
            await eventually(
                lambda: records_are(
                    services
                    | {
                        f"w-0.trainers.default.{full}",
                        f"w-1.trainers.default.{full}",
                        f"l-0.lenient.default.{full}",
                        f"b-0.trainers.team-b.{full}",
                    }
                ),
                what="the records",
            )
            with open(kube.hosts_file) as f:
                text = f.read()
            assert text.startswith(host_hosts)
            assert (
                "127.0.0.1\tw-1.trainers.default.svc.cluster.local w-1.trainers.default.svc"
                " w-1.trainers.default w-1.trainers\n" in text
            )
            assert (
                "127.0.0.1\tplain.default.svc.cluster.local plain.default.svc plain.default\n"
                in text
            )
            # a deleted (terminating) pod's record goes at once; the file is the same one
            await v1.delete_namespaced_pod("w-1", "default")
            await eventually(
                lambda: _true(f"w-1.trainers.default.{full}" not in _records(kube)),
                what="w-1's record to go",
            )
            assert f"w-0.trainers.default.{full}" in _records(kube)
            await v1.delete_namespaced_service("trainers", "default")
            await eventually(
                lambda: records_are(
                    services | {f"l-0.lenient.default.{full}", f"b-0.trainers.team-b.{full}"}
                ),
                what="the Service's records to go",
            )
            assert os.stat(kube.hosts_file).st_ino == inode


async def test_pods_resolve_each_other_by_hostname_and_subdomain() -> None:
    # the suite runs as root (conftest), so pods get the cluster's /etc/hosts
    with FakeKube(run_containers=True) as kube:
        assert kube.pod_dns, "FakeKube cannot make mount namespaces (util-linux unshare/setpriv)"
        train = {"job": "train"}
        fqdn = "trainers.default.svc.cluster.local"
        w0 = _dns_pod("w-0", "trainers", train)
        w0["spec"]["containers"][0]["command"] = [
            "sh",
            "-c",
            f"until getent hosts w-0.{fqdn} w-1.{fqdn} >/dev/null; do sleep 0.05; done\n"
            "for name in w-1.trainers.default.svc.cluster.local w-1.trainers.default.svc"
            " w-1.trainers.default w-1.trainers; do\n"
            '  echo "$name $(getent hosts $name | cut -d" " -f1)"\n'
            "done\n"
            'getent hosts solo.nosvc.default.svc.cluster.local; echo "solo: $?"\n'
            f'getent hosts solo.{fqdn}; echo "solo.trainers: $?"\n'
            "exec sleep 30",
        ]
        w1 = _dns_pod("w-1", "trainers", train, securityContext={"runAsUser": 65534})
        w1["spec"]["containers"][0]["command"] = [
            sys.executable,
            "-c",
            "import os, socket, time\n"
            "while True:\n"
            "    try:\n"
            f"        ip = socket.gethostbyname('w-0.{fqdn}')\n"
            "        break\n"
            "    except OSError:\n"
            "        time.sleep(0.05)\n"
            "print(os.getuid(), ip, flush=True)\n"
            "time.sleep(30)",
        ]
        async with core(kube) as v1:
            await v1.create_namespaced_service(
                "default",
                {
                    "metadata": {"name": "trainers"},
                    "spec": {"clusterIP": "None", "selector": train},
                },
            )
            # selected by the Service, but its subdomain names none: no record
            await v1.create_namespaced_pod("default", _dns_pod("solo", "nosvc", train))
            await v1.create_namespaced_pod("default", w0)
            await v1.create_namespaced_pod("default", w1)

            async def log_of(name: str, lines: int) -> str:
                try:
                    text = await v1.read_namespaced_pod_log(name, "default")
                except ApiException:  # not started yet
                    return ""
                return text if text.count("\n") >= lines else ""

            assert await eventually(lambda: log_of("w-0", 6), what="w-0's lookups") == (
                "w-1.trainers.default.svc.cluster.local 127.0.0.1\n"
                "w-1.trainers.default.svc 127.0.0.1\n"
                "w-1.trainers.default 127.0.0.1\n"
                "w-1.trainers 127.0.0.1\n"
                "solo: 2\n"
                "solo.trainers: 2\n"
            )
            # as runAsUser 65534 (the mount is made as root, then privileges drop)
            assert await eventually(lambda: log_of("w-1", 1), what="w-1's lookup") == (
                "65534 127.0.0.1\n"
            )
            with open("/etc/hosts") as f:
                assert "trainers" not in f.read()  # this host's own is untouched
            await v1.delete_namespaced_pod("w-1", "default", grace_period_seconds=1)
            await eventually(
                lambda: _true(f"w-1.{fqdn}" not in _records(kube)), what="w-1's record to go"
            )
            assert _records(kube) == {f"w-0.{fqdn}", "kubernetes.default.svc.cluster.local"}


# -- storage ------------------------------------------------------------------------------


CEPH_RBD = {
    "metadata": {"name": "ceph-rbd"},
    "provisioner": "rbd.csi.ceph.com",
    "allowVolumeExpansion": True,
    "reclaimPolicy": "Delete",
    "parameters": {
        "clusterID": "b9127830-b0cc-4e34-aa47-9d1a2e9949a8",
        "pool": "gpulab-homes",
        "imageFeatures": "layering",
        "csi.storage.k8s.io/provisioner-secret-name": "csi-rbd-secret",
        "csi.storage.k8s.io/provisioner-secret-namespace": "ceph-csi",
        "csi.storage.k8s.io/node-stage-secret-name": "csi-rbd-secret",
        "csi.storage.k8s.io/node-stage-secret-namespace": "ceph-csi",
    },
}
FIXED = {
    "metadata": {"name": "fixed"},
    "provisioner": "rbd.csi.ceph.com",
    "parameters": {"clusterID": "c", "pool": "p"},
}


def claim(name: str, size: str, storage_class: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    }
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {"metadata": {"name": name}, "spec": spec}


async def test_claims_bind_to_ceph_csi_volumes_and_expand_by_class_rules() -> None:
    with FakeKube(storage_classes=[CEPH_RBD, FIXED]) as kube:
        async with core(kube) as v1:
            await v1.create_namespaced_persistent_volume_claim(
                "default", claim("home-alice", "1Gi", "ceph-rbd")
            )
            await v1.create_namespaced_persistent_volume_claim(
                "default", claim("scratch", "100M", "ceph-rbd")
            )
            await v1.create_namespaced_persistent_volume_claim(
                "default", claim("small", "1Gi", "fixed")
            )
            await v1.create_namespaced_persistent_volume_claim(
                "default", claim("lost", "1Gi", "no-such-class")
            )

            async def bound(name: str) -> Any:
                pvc = await v1.read_namespaced_persistent_volume_claim(name, "default")
                return pvc if pvc.status.phase == "Bound" else None

            pvc = await eventually(lambda: bound("home-alice"), what="home-alice bound")
            assert pvc.spec.volume_name == f"pvc-{pvc.metadata.uid}"
            assert pvc.status.capacity == {"storage": "1Gi"} and pvc.status.access_modes == [
                "ReadWriteOnce"
            ]
            assert pvc.metadata.annotations["pv.kubernetes.io/bind-completed"] == "yes"
            assert "kubernetes.io/pvc-protection" in pvc.metadata.finalizers
            pv = await v1.read_persistent_volume(pvc.spec.volume_name)
            assert pv.status.phase == "Bound" and pv.spec.claim_ref.name == "home-alice"
            assert (
                pv.spec.persistent_volume_reclaim_policy == "Delete"
                and pv.spec.storage_class_name == "ceph-rbd"
            )
            csi = pv.spec.csi
            assert csi.driver == "rbd.csi.ceph.com" and csi.fs_type == "ext4"
            attrs = csi.volume_attributes
            assert (
                attrs["clusterID"] == CEPH_RBD["parameters"]["clusterID"]
                and attrs["pool"] == "gpulab-homes"
            )
            assert attrs["journalPool"] == "gpulab-homes" and attrs["imageFeatures"] == "layering"
            assert attrs["imageName"].startswith("csi-vol-") and not any(
                k.startswith("csi.storage.k8s.io/") for k in attrs
            )
            assert attrs["storage.kubernetes.io/csiProvisionerIdentity"].endswith(
                "-rbd.csi.ceph.com"
            )
            assert csi.volume_handle.startswith("0001-0024-b9127830-b0cc-4e34-aa47-9d1a2e9949a8-")
            assert csi.volume_handle.endswith(attrs["imageName"].removeprefix("csi-vol-"))
            assert csi.node_stage_secret_ref.name == "csi-rbd-secret"
            scratch = await eventually(lambda: bound("scratch"), what="scratch bound")
            assert scratch.status.capacity == {"storage": "96Mi"}  # 100M rounded up to whole MiB
            await eventually(lambda: bound("small"), what="small bound")

            events = await v1.list_namespaced_event(
                "default", field_selector="involvedObject.name=lost"
            )
            assert any(
                e.reason == "ProvisioningFailed"
                and 'storageclass.storage.k8s.io "no-such-class" not found' in e.message
                for e in events.items
            )
            assert (
                await v1.read_namespaced_persistent_volume_claim("lost", "default")
            ).status.phase == "Pending"

            # growing: only where the class allows it, never shrinking
            with pytest.raises(ApiException) as e:
                await v1.patch_namespaced_persistent_volume_claim(
                    "small", "default", {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
                )
            assert (
                e.value.status == 403
                and "the storageclass that provisions the pvc must support resize" in e.value.body
            )
            with pytest.raises(ApiException) as e:
                await v1.patch_namespaced_persistent_volume_claim(
                    "home-alice",
                    "default",
                    {"spec": {"resources": {"requests": {"storage": "512Mi"}}}},
                )
            assert (
                e.value.status == 422
                and "field can not be less than status.capacity" in e.value.body
            )
            with pytest.raises(ApiException) as e:
                await v1.patch_namespaced_persistent_volume_claim(
                    "home-alice", "default", {"spec": {"accessModes": ["ReadWriteMany"]}}
                )
            assert e.value.status == 422 and "spec is immutable after creation" in e.value.body

            await v1.patch_namespaced_persistent_volume_claim(
                "home-alice", "default", {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
            )

            async def pv_grown() -> bool:
                return (await v1.read_persistent_volume(pvc.spec.volume_name)).spec.capacity[
                    "storage"
                ] == "2Gi"

            await eventually(pv_grown, what="PV grown to 2Gi")
            pending = await v1.read_namespaced_persistent_volume_claim("home-alice", "default")
            # RBD filesystems finish growing on the node: until a pod mounts it, capacity stays
            assert pending.status.capacity == {"storage": "1Gi"}
            assert [c.type for c in pending.status.conditions] == ["FileSystemResizePending"]
            mounting = pod(
                "uses-home",
                volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "home-alice"}}],
            )
            await v1.create_namespaced_pod("default", mounting)

            async def grown() -> bool:
                c = await v1.read_namespaced_persistent_volume_claim("home-alice", "default")
                return c.status.capacity == {"storage": "2Gi"} and not c.status.conditions

            await eventually(grown, what="claim capacity 2Gi")

            # a claim in use stays until its pod is gone; then its volume is reclaimed
            await v1.delete_namespaced_persistent_volume_claim("home-alice", "default")
            assert (
                await v1.read_namespaced_persistent_volume_claim("home-alice", "default")
            ).metadata.deletion_timestamp
            await v1.delete_namespaced_pod("uses-home", "default", grace_period_seconds=0)

            async def reclaimed() -> bool:
                try:
                    await v1.read_persistent_volume(pvc.spec.volume_name)
                except ApiException as e:
                    return e.status == 404
                return False

            await eventually(reclaimed, what="PV deleted after its claim")


# -- workloads and KubeSpawner --------------------------------------------------------


async def test_deployments_and_indexed_jobs_run_pods() -> None:
    with FakeKube(nodes=[{"name": "gpu-node-1", "gpus": 4}], run_containers=True) as kube:
        async with apis(kube) as api:
            v1, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
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

            job = {
                "metadata": {"name": "train"},
                "spec": {
                    "completions": 2,
                    "parallelism": 2,
                    "completionMode": "Indexed",
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "worker",
                                    "image": "python:3.11",
                                    "command": [
                                        sys.executable,
                                        "-c",
                                        "import os; print('worker', os.environ['JOB_COMPLETION_INDEX'])",
                                    ],
                                }
                            ],
                        }
                    },
                },
            }
            await batch.create_namespaced_job("default", job)

            async def complete() -> Any:
                j = await batch.read_namespaced_job("train", "default")
                return (
                    j
                    if any(
                        c.type == "Complete" and c.status == "True"
                        for c in j.status.conditions or []
                    )
                    else None
                )

            done = await eventually(complete, timeout=15, what="job complete")
            assert done.status.succeeded == 2 and done.status.completed_indexes == "0-1"
            pods = await v1.list_namespaced_pod(
                "default", label_selector="batch.kubernetes.io/job-name=train"
            )
            logs = sorted(
                [await v1.read_namespaced_pod_log(p.metadata.name, "default") for p in pods.items]
            )
            assert logs == ["worker 0\n", "worker 1\n"]


@contextmanager
def kubespawner_configured(kube: FakeKube, monkeypatch: pytest.MonkeyPatch):
    """KubeSpawner's client configuration, as it configures itself, on ``kube``: a
    kubeconfig file, not in a cluster (kubernetes_asyncio reads KUBECONFIG once, when
    it is imported)."""
    from kubespawner.clients import load_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kube.kubeconfig)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    saved = client.Configuration.get_default_copy()
    load_config.cache_clear()
    load_config()
    try:
        yield
    finally:
        client.Configuration.set_default(saved)
        load_config.cache_clear()


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
                    lambda: _true({"Scheduled", "Started"} <= {e["reason"] for e in events.events}),
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
                    lambda: _true("default/jupyter-alice" not in pods.pods),
                    what="reflector drops the deleted pod",
                )
        finally:
            await pods.stop()
            await events.stop()


async def test_the_spawners_pod_reflector_wakes_waiters_at_each_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What lets a spawn or stop end as soon as the watch reports its pod running or
    gone, rather than at KubeSpawner's next look (gpulab's ``WakingPodReflector``)."""
    from gpulab.spawner.kubernetes import WakingPodReflector

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


async def _true(value: bool) -> bool:
    return value


# -- fault injection ------------------------------------------------------------------


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
            await eventually(lambda: _true(seen == ["kube-root-ca.crt"]), what="the watch to start")
            assert kube.drop_watches() == 1
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(task, 5)  # not a clean end: the client must notice
            assert kube.drop_watches() == 0


async def test_grpc_probes_ask_the_health_service() -> None:
    import grpc

    from fakekube.probes import probe_once

    statuses = {"": b"\x08\x01", "model": b"\x08\x02"}  # SERVING, NOT_SERVING

    def check(request: bytes, context) -> bytes:
        service = request[2:].decode() if request else ""
        return statuses[service]

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        container: dict = {"name": "serving"}
        ok, _ = await probe_once({"grpc": {"port": port}}, container, {}, "/")
        assert ok
        ok, output = await probe_once(
            {"grpc": {"port": port, "service": "model"}}, container, {}, "/"
        )
        assert not ok and "NOT_SERVING" in output
    finally:
        await server.stop(None)
    ok, output = await probe_once({"grpc": {"port": port}}, container, {}, "/")
    assert not ok and "failed to connect" in output


# -- authentication and RBAC ----------------------------------------------------------

RBAC = "apis/rbac.authorization.k8s.io/v1"
HUB = "system:serviceaccount:team-a:hub"


def _forbidden(message: str, kind: str, name: str = "", group: str = "") -> dict[str, Any]:
    """The Status body the apiserver's authorization filter answers with."""
    details: dict[str, Any] = {"name": name, "kind": kind} if name else {"kind": kind}
    if group:
        details["group"] = group
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Forbidden",
        "details": details,
        "code": 403,
    }


def _kubeconfig(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _as(token: str) -> requests.Session:
    """A client that sends ``token`` as its bearer token."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def _admin_setup(kube: FakeKube) -> None:
    """Namespaces team-a and team-b, each with a pod "x"; ServiceAccount team-a/hub."""
    for ns in ("team-a", "team-b"):
        requests.post(
            f"{kube.url}/api/v1/namespaces", json={"metadata": {"name": ns}}, timeout=5
        ).raise_for_status()
        requests.post(
            f"{kube.url}/api/v1/namespaces/{ns}/pods", json=pod("x"), timeout=5
        ).raise_for_status()
    requests.post(
        f"{kube.url}/api/v1/namespaces/team-a/serviceaccounts",
        json={"metadata": {"name": "hub"}},
        timeout=5,
    ).raise_for_status()


def _grant(
    kube: FakeKube,
    name: str,
    rules: list[dict[str, Any]],
    namespace: str | None = None,
    *,
    cluster_role: bool = False,
    subjects: list[dict[str, Any]] | None = None,
) -> None:
    """A role (a Role in ``namespace``, else a ClusterRole; ``cluster_role``: a
    ClusterRole bound in ``namespace``) and its binding to team-a/hub, as the admin."""
    subjects = subjects or [{"kind": "ServiceAccount", "name": "hub", "namespace": "team-a"}]
    in_ns = f"namespaces/{namespace}/" if namespace else ""
    role_kind = "ClusterRole" if cluster_role or not namespace else "Role"
    role_path = f"{in_ns}roles" if role_kind == "Role" else "clusterroles"
    binding = "rolebindings" if namespace else "clusterrolebindings"
    for path, body in (
        (role_path, {"kind": role_kind, "metadata": {"name": name}, "rules": rules}),
        (
            f"{in_ns}{binding}",
            {
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": role_kind,
                    "name": name,
                },
                "subjects": subjects,
            },
        ),
    ):
        answer = requests.post(f"{kube.url}/{RBAC}/{path}", json=body, timeout=5)
        assert answer.status_code == 201, answer.text


def test_service_account_tokens_are_authenticated_and_authorized_by_rbac() -> None:
    with FakeKube(nodes=[]) as kube:
        _admin_setup(kube)
        token = kube.service_account_token("team-a", "hub")
        assert kube.service_account_token("team-a", "hub") == token
        hub = _as(token)
        pods_a = f"{kube.url}/api/v1/namespaces/team-a/pods"

        # a token the server never issued: 401, whatever the path
        for path in ("api/v1/namespaces/team-a/pods", "healthz"):
            answer = _as("not-a-token").get(f"{kube.url}/{path}", timeout=5)
            assert answer.status_code == 401
            assert answer.json() == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Unauthorized",
                "reason": "Unauthorized",
                "code": 401,
            }

        # no binding: discovery, health and version only (the bootstrap roles)
        for path in ("api", "api/v1", "apis", f"{RBAC}", "version", "healthz"):
            assert hub.get(f"{kube.url}/{path}", timeout=5).status_code == 200, path
        answer = hub.get(f"{kube.url}/metrics", timeout=5)
        assert answer.status_code == 403
        assert answer.json() == {
            **_forbidden(f'forbidden: User "{HUB}" cannot get path "/metrics"', ""),
            "details": {},
        }
        answer = hub.get(pods_a, timeout=5)
        assert answer.status_code == 403
        assert answer.json() == _forbidden(
            f'pods is forbidden: User "{HUB}" cannot list resource "pods" in API group "" '
            'in the namespace "team-a"',
            "pods",
        )
        answer = hub.get(f"{pods_a}/x", timeout=5)
        assert answer.status_code == 403
        assert answer.json() == _forbidden(
            f'pods "x" is forbidden: User "{HUB}" cannot get resource "pods" in API group "" '
            'in the namespace "team-a"',
            "pods",
            "x",
        )
        # before any route: a resource the fake does not serve is refused alike
        answer = hub.get(f"{kube.url}/apis/example.com/v1/widgets", timeout=5)
        assert answer.json()["message"] == (
            f'widgets.example.com is forbidden: User "{HUB}" cannot list resource "widgets" '
            'in API group "example.com" at the cluster scope'
        )
        # a refused request spends no injected fault: authorization comes first
        fault = kube.faults.fail("list", "pods", status=500)
        assert hub.get(pods_a, timeout=5).status_code == 403 and fault.hits == 0
        assert requests.get(pods_a, timeout=5).status_code == 500 and fault.hits == 1

        # a Role and its RoleBinding: get and list pods in team-a, nothing more
        _grant(
            kube,
            "pod-reader",
            [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
            "team-a",
        )
        assert [p["metadata"]["name"] for p in hub.get(pods_a, timeout=5).json()["items"]] == ["x"]
        assert hub.get(f"{pods_a}/x", timeout=5).json()["metadata"]["name"] == "x"
        answer = hub.get(f"{kube.url}/api/v1/namespaces/team-b/pods", timeout=5)
        assert answer.status_code == 403 and answer.json()["message"] == (
            f'pods is forbidden: User "{HUB}" cannot list resource "pods" in API group "" '
            'in the namespace "team-b"'
        )
        answer = hub.get(f"{kube.url}/api/v1/pods", timeout=5)  # all namespaces
        assert answer.status_code == 403 and answer.json()["message"].endswith(
            'cannot list resource "pods" in API group "" at the cluster scope'
        )
        answer = hub.delete(f"{pods_a}/x", timeout=5)
        assert answer.status_code == 403
        assert answer.json() == _forbidden(
            f'pods "x" is forbidden: User "{HUB}" cannot delete resource "pods" in API group "" '
            'in the namespace "team-a"',
            "pods",
            "x",
        )
        answer = hub.delete(pods_a, timeout=5)
        assert answer.status_code == 403
        assert 'cannot deletecollection resource "pods"' in answer.json()["message"]

        # a subresource needs a rule of its own, pods/log
        answer = hub.get(f"{pods_a}/x/log", timeout=5)
        assert answer.status_code == 403
        assert answer.json() == _forbidden(
            f'pods "x" is forbidden: User "{HUB}" cannot get resource "pods/log" in API group "" '
            'in the namespace "team-a"',
            "pods",
            "x",
        )
        requests.patch(
            f"{kube.url}/{RBAC}/namespaces/team-a/roles/pod-reader",
            data=json.dumps(
                [
                    {
                        "op": "add",
                        "path": "/rules/-",
                        "value": {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                    }
                ]
            ),
            headers={"Content-Type": "application/json-patch+json"},
            timeout=5,
        ).raise_for_status()
        answer = hub.get(f"{pods_a}/x/log", timeout=5)  # authorized now: the pod has no node
        assert answer.status_code == 400 and "pod x does not have a host assigned" in answer.text

        # a ClusterRole through a ClusterRoleBinding: nodes, at the cluster scope
        nodes = f"{kube.url}/api/v1/nodes"
        answer = hub.get(nodes, timeout=5)
        assert answer.status_code == 403 and answer.json() == _forbidden(
            f'nodes is forbidden: User "{HUB}" cannot list resource "nodes" in API group "" '
            "at the cluster scope",
            "nodes",
        )
        _grant(
            kube, "node-lister", [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]
        )
        assert hub.get(nodes, timeout=5).json()["items"] == []
        answer = hub.get(f"{nodes}/gpu-node-1", timeout=5)
        assert answer.status_code == 403 and answer.json()["details"] == {
            "name": "gpu-node-1",
            "kind": "nodes",
        }

        # a RoleBinding to a ClusterRole grants it in the binding's namespace only
        _grant(
            kube,
            "secret-reader",
            [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
            "team-b",
            cluster_role=True,
        )
        assert hub.get(f"{kube.url}/api/v1/namespaces/team-b/secrets", timeout=5).ok
        for path in ("api/v1/namespaces/team-a/secrets", "api/v1/secrets"):
            assert hub.get(f"{kube.url}/{path}", timeout=5).status_code == 403, path

        # resourceNames: that object only, and never a list (unless it names the object)
        for name in ("settings", "other"):
            requests.post(
                f"{kube.url}/api/v1/namespaces/team-a/configmaps",
                json={"metadata": {"name": name}},
                timeout=5,
            ).raise_for_status()
        _grant(
            kube,
            "settings-reader",
            [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": ["settings"],
                    "verbs": ["get", "list"],
                }
            ],
            "team-a",
        )
        maps = f"{kube.url}/api/v1/namespaces/team-a/configmaps"
        assert hub.get(f"{maps}/settings", timeout=5).ok
        answer = hub.get(f"{maps}/other", timeout=5)
        assert answer.status_code == 403 and answer.json()["details"]["name"] == "other"
        answer = hub.get(maps, timeout=5)
        assert answer.status_code == 403 and answer.json() == _forbidden(
            f'configmaps is forbidden: User "{HUB}" cannot list resource "configmaps" '
            'in API group "" in the namespace "team-a"',
            "configmaps",
        )
        listed = hub.get(maps, params={"fieldSelector": "metadata.name=settings"}, timeout=5)
        assert [m["metadata"]["name"] for m in listed.json()["items"]] == ["settings"]

        # Group and User subjects; a binding to a missing role says so
        _grant(
            kube,
            "ns-reader",
            [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}],
            subjects=[
                {"kind": "Group", "name": "system:serviceaccounts:team-a"},
            ],
        )
        assert hub.get(f"{kube.url}/api/v1/namespaces/team-b", timeout=5).ok
        _grant(
            kube,
            "sa-reader",
            [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["list"]}],
            subjects=[{"kind": "User", "name": HUB}],
        )
        assert hub.get(f"{kube.url}/api/v1/serviceaccounts", timeout=5).ok
        answer = requests.post(
            f"{kube.url}/{RBAC}/namespaces/team-a/rolebindings",
            json={
                "metadata": {"name": "dangling"},
                "roleRef": {"kind": "Role", "name": "gone"},
                "subjects": [{"kind": "ServiceAccount", "name": "hub"}],  # in team-a
            },
            timeout=5,
        )
        assert answer.status_code == 201
        assert answer.json()["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"  # defaulted
        answer = hub.get(f"{kube.url}/api/v1/namespaces/team-a/services", timeout=5)
        assert answer.json()["message"] == (
            f'services is forbidden: User "{HUB}" cannot list resource "services" in API group '
            '"" in the namespace "team-a": RBAC: role.rbac.authorization.k8s.io "gone" not found'
        )

        # the admin (the kubeconfig's token, or no token at all) may do anything
        admin_token = _kubeconfig(kube.kubeconfig)["users"][0]["user"]["token"]
        for admin in (_as(admin_token), requests.Session()):
            assert admin.get(f"{kube.url}/api/v1/namespaces/team-b/pods", timeout=5).ok
            assert admin.get(f"{kube.url}/metrics", timeout=5).status_code == 404
        assert _as(admin_token).delete(f"{kube.url}/api/v1/namespaces/team-b/pods/x", timeout=5).ok

        # a token is good only while its ServiceAccount exists
        requests.delete(
            f"{kube.url}/api/v1/namespaces/team-a/serviceaccounts/hub", timeout=5
        ).raise_for_status()
        assert hub.get(pods_a, timeout=5).status_code == 401


async def test_a_watch_needs_the_watch_verb_and_a_kubeconfig_carries_the_token() -> None:
    with FakeKube(nodes=[]) as kube:
        await asyncio.to_thread(_admin_setup, kube)
        token = kube.service_account_token("team-a", "hub")
        _grant(
            kube, "pods", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}], "team-a"
        )
        path = kube.kubeconfig_for(token)
        config = _kubeconfig(path)
        assert config["users"][0]["user"] == {"token": token}
        assert config["contexts"][0]["context"]["namespace"] == "team-a"
        assert config["clusters"][0]["cluster"]["server"] == kube.url

        conf = client.Configuration()
        await kube_config.load_kube_config(config_file=path, client_configuration=conf)
        async with client.ApiClient(configuration=conf) as api:
            v1 = client.CoreV1Api(api)
            assert [p.metadata.name for p in (await v1.list_namespaced_pod("team-a")).items] == [
                "x"
            ]
            with pytest.raises(ApiException) as e:
                async with watch.Watch() as w:
                    async for _ in w.stream(v1.list_namespaced_pod, "team-a", timeout_seconds=1):
                        pass
            # (the client reads the Status as the stream's first line)
            assert e.value.status == 403 and e.value.reason == (
                f'Forbidden: pods is forbidden: User "{HUB}" cannot watch resource "pods" in API '
                'group "" in the namespace "team-a"'
            )

            # the rule as the store has it now decides each new watch
            await asyncio.to_thread(
                requests.patch,
                f"{kube.url}/{RBAC}/namespaces/team-a/roles/pods",
                json={
                    "rules": [
                        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}
                    ]
                },
                headers={"Content-Type": MERGE},
                timeout=5,
            )
            async with watch.Watch() as w:
                seen = [
                    (event["type"], event["object"].metadata.name)
                    async for event in w.stream(v1.list_namespaced_pod, "team-a", timeout_seconds=1)
                ]
            assert seen == [("ADDED", "x")]


async def test_rbac_objects_are_served_validated_and_bootstrapped() -> None:
    with FakeKube(nodes=[]) as kube:
        async with apis(kube) as api:
            rbac = client.RbacAuthorizationV1Api(api)
            groups = await client.ApisApi(api).get_api_versions()
            assert "rbac.authorization.k8s.io" in {g.name for g in groups.groups}
            served = await rbac.get_api_resources()
            by_name = {r.name: r for r in served.resources}
            assert by_name["roles"].namespaced and not by_name["clusterroles"].namespaced
            assert "watch" in by_name["clusterrolebindings"].verbs
            assert not any("/" in name for name in by_name)  # no status subresource

            # the bootstrap policy, as a fresh cluster has it
            roles = {r.metadata.name: r for r in (await rbac.list_cluster_role()).items}
            assert {"cluster-admin", "system:discovery", "system:basic-user"} <= set(roles)
            binding = await rbac.read_cluster_role_binding("system:discovery")
            assert [(s.kind, s.name) for s in binding.subjects] == [
                ("Group", "system:authenticated")
            ]

            # validation, with the apiserver's paths and wording
            with pytest.raises(ApiException) as e:
                await rbac.create_namespaced_role(
                    "default",
                    {
                        "metadata": {"name": "bad"},
                        "rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}],
                    },
                )
            assert e.value.status == 422 and json.loads(e.value.body)["message"] == (
                'Role.rbac.authorization.k8s.io "bad" is invalid: rules[0].nonResourceURLs: '
                'Invalid value: []string{"/healthz"}: namespaced rules cannot apply to '
                "non-resource URLs"
            )
            with pytest.raises(ApiException) as e:
                await rbac.create_cluster_role_binding(
                    {
                        "metadata": {"name": "bad"},
                        "roleRef": {"kind": "Role", "name": "r"},
                        "subjects": [{"kind": "ServiceAccount", "name": "hub"}],
                    }
                )
            assert e.value.status == 422
            causes = json.loads(e.value.body)["details"]["causes"]
            assert [(c["field"], c["reason"]) for c in causes] == [
                ("roleRef.kind", "FieldValueNotSupported"),
                ("subjects[0].namespace", "FieldValueRequired"),
            ]

            # names are path segments; a binding's roleRef cannot change; DELETE: Status
            await rbac.create_cluster_role(
                {
                    "metadata": {"name": "gpulab:reader"},
                    "rules": [{"verbs": ["get"], "nonResourceURLs": ["/metrics"]}],
                }
            )
            await rbac.create_namespaced_role_binding(
                "default",
                {
                    "metadata": {"name": "reader"},
                    "roleRef": {"kind": "ClusterRole", "name": "gpulab:reader"},
                    "subjects": [{"kind": "Group", "name": "system:serviceaccounts"}],
                },
            )
            made = await rbac.read_namespaced_role_binding("reader", "default")
            assert (
                made.role_ref.api_group == made.subjects[0].api_group == "rbac.authorization.k8s.io"
            )
            with pytest.raises(ApiException) as e:
                await rbac.patch_namespaced_role_binding(
                    "reader", "default", {"roleRef": {"name": "cluster-admin"}}, _content_type=MERGE
                )
            assert (
                e.value.status == 422
                and (
                    'roleRef: Invalid value: rbac.RoleRef{APIGroup:\\"rbac.authorization.k8s.io\\", '
                    'Kind:\\"ClusterRole\\", Name:\\"cluster-admin\\"}: cannot change roleRef'
                )
                in e.value.body
            )
            gone = await rbac.delete_namespaced_role_binding("reader", "default")
            assert gone.status == "Success" and gone.details.group == "rbac.authorization.k8s.io"


IN_CLUSTER_CLIENT = """
import asyncio, os, pathlib
from kubernetes_asyncio import client, config

async def main():
    config.load_incluster_config()  # KUBERNETES_SERVICE_HOST/PORT, the mounted token and CA
    async with client.ApiClient() as api:
        v1 = client.CoreV1Api(api)
        names = [p.metadata.name for p in (await v1.list_namespaced_pod("apps")).items]
        print("pods:", names)
        try:
            await v1.list_namespaced_secret("apps")
        except client.ApiException as e:
            print("secrets:", e.status)

sa = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
print("namespace:", (sa / "namespace").read_text())
print("config:", pathlib.Path("/etc/app/settings.yaml").read_text().strip())
print("key:", pathlib.Path("/etc/app-secret/key").read_text())
scratch = pathlib.Path("/scratch/made-here")
scratch.write_text("x")
print("scratch:", scratch.read_text(), os.getuid())
try:
    pathlib.Path("/etc/app/new").write_text("x")
except OSError as e:
    print("read-only:", e.errno)
asyncio.run(main())
"""


async def test_pods_see_their_volumes_and_reach_the_api_as_their_service_account() -> None:
    """A container sees its ConfigMap, Secret and emptyDir volumes and the service
    account token at their mount paths, and an in-cluster client (HTTPS, the mounted CA
    and token) acts as the pod's service account: RBAC allows pods, not secrets."""
    with FakeKube(run_containers=True) as kube:
        assert kube.pod_dns, "FakeKube cannot make mount namespaces (util-linux unshare/setpriv)"
        async with core(kube) as v1:
            await v1.create_namespace({"metadata": {"name": "apps"}})
            await v1.create_namespaced_service_account("apps", {"metadata": {"name": "reader"}})
            await v1.create_namespaced_config_map(
                "apps", {"metadata": {"name": "settings"}, "data": {"settings.yaml": "a: 1\n"}}
            )
            await v1.create_namespaced_secret(
                "apps", {"metadata": {"name": "keys"}, "stringData": {"key": "s3cr3t"}}
            )
            rbac = client.RbacAuthorizationV1Api(v1.api_client)
            await rbac.create_namespaced_role(
                "apps",
                {
                    "metadata": {"name": "pod-reader"},
                    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
                },
            )
            await rbac.create_namespaced_role_binding(
                "apps",
                {
                    "metadata": {"name": "reader"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "pod-reader",
                    },
                    "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "apps"}],
                },
            )
            body = pod(
                "client",
                serviceAccountName="reader",
                securityContext={"runAsUser": 65534},
                volumes=[
                    {"name": "settings", "configMap": {"name": "settings"}},
                    {"name": "keys", "secret": {"secretName": "keys"}},
                    {"name": "scratch", "emptyDir": {}},
                ],
            )
            body["spec"]["containers"][0].update(
                command=[sys.executable, "-c", IN_CLUSTER_CLIENT],
                volumeMounts=[
                    {"name": "settings", "mountPath": "/etc/app"},
                    {"name": "keys", "mountPath": "/etc/app-secret"},
                    {"name": "scratch", "mountPath": "/scratch"},
                ],
            )
            created = await v1.create_namespaced_pod("apps", body)
            # the ServiceAccount admission plugin added the token's projected volume
            mounts = {m.mount_path: m.name for m in created.spec.containers[0].volume_mounts}
            token = mounts["/var/run/secrets/kubernetes.io/serviceaccount"]
            assert token.startswith("kube-api-access-")

            async def log() -> str:
                try:
                    text = await v1.read_namespaced_pod_log("client", "apps")
                except ApiException:
                    return ""
                return text if "secrets:" in text or "Traceback" in text else ""

            assert await eventually(log, timeout=30, what="the pod's output") == (
                "namespace: apps\n"
                "config: a: 1\n"
                "key: s3cr3t\n"
                "scratch: x 65534\n"
                "read-only: 30\n"
                "pods: ['client']\n"
                "secrets: 403\n"
            )
        for path in ("/etc/app/settings.yaml", "/scratch/made-here"):
            assert not os.path.exists(path)  # this host's own paths are untouched


def _k8s_protobuf(api_version: str, kind: str, raw: bytes) -> bytes:
    return b"k8s\x00" + pb(1, pb(1, api_version) + pb(2, kind)) + pb(2, raw)


def test_protobuf_bodies_of_secrets_and_deletes_are_decoded() -> None:
    """What helm's release storage sends (client-go in protobuf): a Secret created and
    deleted with protobuf bodies; a kind not decoded here is 415, a broken body 400."""
    as_protobuf = {"Content-Type": "application/vnd.kubernetes.protobuf"}
    meta = pb(1, "sh.helm.release.v1.lab.v1") + pb(11, pb(1, "owner") + pb(2, "helm"))
    meta += pb(8, b"")  # the zero creationTimestamp client-go always sends
    secret = pb(1, meta) + pb(2, pb(1, "release") + pb(2, b"\x00\xffH4sI"))
    secret += pb(3, "helm.sh/release.v1")
    with FakeKube(nodes=[]) as kube:
        secrets = f"{kube.url}/api/v1/namespaces/default/secrets"
        r = requests.post(secrets, data=_k8s_protobuf("v1", "Secret", secret), headers=as_protobuf)
        assert r.status_code == 201, r.text
        got = requests.get(f"{secrets}/sh.helm.release.v1.lab.v1").json()
        assert got["type"] == "helm.sh/release.v1"
        assert got["metadata"]["labels"] == {"owner": "helm"}
        assert got["data"] == {"release": "AP9INHNJ"}  # base64 of the bytes sent
        assert got["metadata"]["creationTimestamp"]  # the server's, not the zero one

        pod_body = _k8s_protobuf("v1", "Pod", pb(1, pb(1, "p")))
        r = requests.post(
            f"{kube.url}/api/v1/namespaces/default/pods", data=pod_body, headers=as_protobuf
        )
        assert r.status_code == 415 and r.json()["reason"] == "UnsupportedMediaType"
        r = requests.post(secrets, data=b"k8s\x00\x0a\xff", headers=as_protobuf)
        assert r.status_code == 400 and "could not be decoded as protobuf" in r.json()["message"]

        options = pb(1, 0) + pb(4, "Background")  # gracePeriodSeconds 0
        r = requests.delete(
            f"{secrets}/sh.helm.release.v1.lab.v1",
            data=_k8s_protobuf("v1", "DeleteOptions", options),
            headers=as_protobuf,
        )
        assert r.status_code == 200, r.text
        assert requests.get(f"{secrets}/sh.helm.release.v1.lab.v1").status_code == 404


async def test_a_claim_of_the_csi_hostpath_driver_keeps_its_files_across_pods() -> None:
    hostpath = {"metadata": {"name": "csi-hostpath"}, "provisioner": "hostpath.csi.k8s.io"}
    with FakeKube(run_containers=True, storage_classes=[hostpath]) as kube:
        async with core(kube) as v1:
            await v1.create_namespaced_persistent_volume_claim(
                "default",
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": "csi-hostpath",
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                },
            )
            script = (
                "import os, pathlib\n"
                "f = pathlib.Path('/data/notes.txt')\n"
                "print('found:', f.read_text() if f.exists() else None, flush=True)\n"
                "f.write_text(os.environ['HOSTNAME'])\n"
            )
            for name in ("first", "second"):
                body = pod(
                    name,
                    restartPolicy="Never",
                    securityContext={"runAsUser": 65534, "fsGroup": 65534},
                    volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                )
                body["spec"]["containers"][0].update(
                    command=[sys.executable, "-c", script],
                    volumeMounts=[{"name": "data", "mountPath": "/data"}],
                )
                await v1.create_namespaced_pod("default", body)

                async def done(name: str = name) -> bool:
                    return await phase_of(v1, name) in ("Succeeded", "Failed")

                await eventually(done, timeout=30, what=f"{name} to end")
                assert await phase_of(v1, name) == "Succeeded"
            assert await v1.read_namespaced_pod_log("first", "default") == "found: None\n"
            assert await v1.read_namespaced_pod_log("second", "default") == "found: first\n"
        assert not os.path.exists("/data/notes.txt")
