"""Authentication and RBAC, and pods reaching the API as their service account."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from typing import Any

import pytest
import requests
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.config import kube_config

from fakekube import FakeKube
from fakekube.tests.helpers import MERGE, apis, core, eventually, pod

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
                # the last line whole: read while it is written, it can end at "secrets:"
                return text if re.search(r"secrets: .*\n", text) or "Traceback" in text else ""

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
