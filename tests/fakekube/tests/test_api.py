"""The API's request semantics: CRUD, Status errors with the real codes, selectors,
patches, discovery."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from fakekube import FakeKube
from fakekube.tests.helpers import MERGE, apis, claim, core, eventually, pod


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

            # probes the fake's kubelet does not run are refused, not silently ignored
            probed = pod("probed")
            probed["spec"]["containers"][0]["livenessProbe"] = {"exec": {"command": ["true"]}}
            with pytest.raises(ApiException) as e:
                await v1.create_namespaced_pod("default", probed)
            assert e.value.status == 422
            assert "livenessProbe.exec: Forbidden: fakekube does not implement exec" in e.value.body

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


async def test_discovery_and_version() -> None:
    with FakeKube(nodes=[]) as kube:
        async with apis(kube) as api:
            version = await client.VersionApi(api).get_code()
            assert version.git_version.startswith("v1.")
            groups = await client.ApisApi(api).get_api_versions()
            served = {g.name for g in groups.groups}
            assert {"apps", "storage.k8s.io", "rbac.authorization.k8s.io"} <= served
            assert "batch" not in served  # no Job controller: batch/v1 is not served at all
            core_resources = await client.CoreV1Api(api).get_api_resources()
            by_name = {r.name: r for r in core_resources.resources}
            assert by_name["pods"].namespaced and by_name["persistentvolumes"].namespaced is False
            assert "pods/log" in by_name and "watch" in by_name["events"].verbs
        assert requests.get(f"{kube.url}/api", timeout=5).json()["versions"] == ["v1"]
        jobs = requests.get(f"{kube.url}/apis/batch/v1/namespaces/default/jobs", timeout=5)
        assert jobs.status_code == 404
