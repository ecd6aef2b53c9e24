"""The Helm chart (helm/gpulab) with the real helm binary: lint, every rendered manifest
checked against Kubernetes' schemas, its settings read by gpulab itself, install /
upgrade / uninstall on the fake cluster, and the hub it installs serving a user there.

The fake API server's OpenAPI document has no definitions, so helm's own validation
of manifests against it checks nothing: the rendered manifests are checked against
Kubernetes' schemas here instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import kubernetes_validate
import pytest
import requests
import yaml

from fakekube import FakeKube
from gpulab.hub.settings import load_settings
from hubfixture import BIN, free_port, wait_for
from k8sfixture import (
    EXTRA_CONFIG,
    NOBODY,
    RBAC,
    kube_delete,
    kube_get,
    kube_post,
    kubernetes_settings,
    pods,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "gpulab"
HELM = BIN / "helm"
KUBERNETES_VERSION = "1.34.0"
NOTEBOOK_IMAGE = "registry.example/gpulab/notebook:test"
HELM_HOME = Path(tempfile.mkdtemp(prefix="gpulab-helm-home-"))


def helm(*args: str, kubeconfig: str | None = None, check: bool = True):
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(HELM_HOME / "cache"),
        "HELM_CONFIG_HOME": str(HELM_HOME / "config"),
        "HELM_DATA_HOME": str(HELM_HOME / "data"),
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    r = subprocess.run([str(HELM), *args], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, f"helm {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r


def values_file(values: dict) -> str:
    fd, path = tempfile.mkstemp(prefix="gpulab-values-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(values, f)
    return path


def render(values: dict | None = None, release: str = "gpulab", namespace: str = "gpulab"):
    args = ["template", release, str(CHART), "-n", namespace]
    if values:
        args += ["-f", values_file(values)]
    docs = [d for d in yaml.safe_load_all(helm(*args).stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def settings_of(docs: dict, name: str = "gpulab-hub"):
    """gpulab's own reading of the settings the chart gives the hub."""
    text = docs[("ConfigMap", name)]["data"]["gpulab.yaml"]
    path = Path(values_file({}))
    path.write_text(text)
    return load_settings(path, environ={})


def hub_pod(docs: dict, name: str = "gpulab-hub") -> dict:
    return docs[("Deployment", name)]["spec"]["template"]


def test_the_chart_lints_and_renders_valid_manifests() -> None:
    lint = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in lint.stdout

    docs = render({"config": {"storage": {"home_size": "20GiB"}}})
    for doc in docs.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert {kind for kind, _ in docs} == {
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "PersistentVolumeClaim",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "Pod",  # `helm test`'s
    }
    # the settings gpulab reads: the user's, plus what the chart decides
    s = settings_of(docs)
    assert s.backend == "kubernetes"
    assert s.storage.home_size == "20GiB"
    assert s.kubernetes.namespace == "gpulab"
    assert s.kubernetes.hub_connect_ip == "gpulab-hub.gpulab.svc.cluster.local"
    assert s.kubernetes.image == "registry.example.org/gpulab/notebook:0.1.0"
    assert str(s.data_path) == "/var/lib/gpulab"
    pod = hub_pod(docs)
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["gpulab", "up"]
    assert container["image"] == "registry.example.org/gpulab/hub:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": s.hub.port, "hub-api": s.hub.hub_port}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/etc/gpulab": "config", "/var/lib/gpulab": "data"}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "gpulab-hub-data"
    assert docs[("PersistentVolumeClaim", "gpulab-hub-data")]["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep"
    }
    # both Services reach the hub's pod, at ports it names
    labels = pod["metadata"]["labels"]
    for name, target in (("gpulab-hub", "hub-api"), ("gpulab-public", "http")):
        spec = docs[("Service", name)]["spec"]
        assert spec["selector"].items() <= labels.items()
        assert spec["ports"][0]["targetPort"] == target
    assert docs[("Service", "gpulab-public")]["spec"]["type"] == "LoadBalancer"
    assert pod["spec"]["serviceAccountName"] == "gpulab-hub"
    for binding in ("RoleBinding", "ClusterRoleBinding"):
        assert docs[(binding, "gpulab-hub")]["subjects"] == [
            {"kind": "ServiceAccount", "name": "gpulab-hub", "namespace": "gpulab"}
        ]


def test_the_chart_renders_its_options() -> None:
    docs = render(
        {
            "config": {
                "kubernetes": {"image": NOTEBOOK_IMAGE, "namespace": "users"},
                "profiles": [{"slug": "h100", "gpus": 1, "gpu_type": "NVIDIA-H100"}],
            },
            "extraConfig": "c.Spawner.start_timeout = 300\n",
            "cephSecret": "ceph-client",
            "secrets": {"existingSecret": "my-keys"},
            "hub": {"persistence": {"enabled": False}, "nodeSelector": {"pool": "system"}},
            "proxy": {"service": {"type": "NodePort", "nodePort": 30080}},
            "serviceAccount": {"create": False, "name": "platform-hub"},
            "rbac": {"clusterRole": False},
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "hosts": ["gpu.example.org"],
                "tls": [{"secretName": "gpu-tls", "hosts": ["gpu.example.org"]}],
            },
        },
        release="lab",
        namespace="platform",
    )
    for doc in docs.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {kind for kind, _ in docs}
    # no claim, no Secret of the chart's, no ServiceAccount, no cluster-wide role
    assert kinds == {"ConfigMap", "Role", "RoleBinding", "Service", "Deployment", "Pod", "Ingress"}
    s = settings_of(docs, "lab-gpulab-hub")
    assert s.kubernetes.namespace == "users"
    assert s.kubernetes.hub_connect_ip == "lab-gpulab-hub.platform.svc.cluster.local"
    assert [p.slug for p in s.profiles] == ["h100"]
    assert s.hub.extra_config == "/etc/gpulab/extra_config.py"
    config = docs[("ConfigMap", "lab-gpulab-hub")]["data"]
    assert config["extra_config.py"] == "c.Spawner.start_timeout = 300\n"
    # the users' namespace gets the Role; the hub's account is bound to it from its own
    role_binding = docs[("RoleBinding", "lab-gpulab-hub")]
    assert role_binding["metadata"]["namespace"] == "users"
    assert role_binding["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": "platform-hub",
        "namespace": "platform",
    }
    pod = hub_pod(docs, "lab-gpulab-hub")
    assert pod["spec"]["serviceAccountName"] == "platform-hub"
    assert pod["spec"]["nodeSelector"] == {"pool": "system"}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    assert volumes["ceph"]["secret"]["secretName"] == "ceph-client"
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    ref = env["GPULAB_HUB__ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "my-keys", "key": "adminPassword", "optional": True}
    public = docs[("Service", "lab-gpulab-public")]["spec"]
    assert public["type"] == "NodePort" and public["ports"][0]["nodePort"] == 30080
    ingress = docs[("Ingress", "lab-gpulab")]["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"secretName": "gpu-tls", "hosts": ["gpu.example.org"]}]
    (rule,) = ingress["rules"]
    assert rule["host"] == "gpu.example.org"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "lab-gpulab-public", "port": {"name": "http"}}


def test_the_chart_grants_the_rbac_the_hub_is_tested_with() -> None:
    """deploy/kubernetes/rbac.yaml (what the kubernetes tests' hub runs with) is the
    chart's RBAC for release gpulab in namespace gpulab, so the two cannot drift."""
    docs = render()
    shipped = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    for doc in shipped:
        rendered = docs[(doc["kind"], doc["metadata"]["name"])]
        assert rendered["metadata"].pop("labels")["app.kubernetes.io/managed-by"] == "Helm"
        assert rendered == doc


@pytest.mark.parametrize(
    "setting, message",
    [
        ("proxy.service.type=Public", "proxy.service.type must be one of the following"),
        ("hub.ports.api=0", "hub.ports.api: Must be greater than or equal to 1"),
        ("config.kubernetes.image=", "config.kubernetes.image: String length must be greater"),
        ("ingress.enabled=true", "ingress.hosts: the host names users open"),
        (
            "serviceAccount.create=false",
            "serviceAccount.name: the account the hub runs as, when serviceAccount.create is false",
        ),
    ],
)
def test_bad_values_are_refused_with_the_reason(setting: str, message: str) -> None:
    r = helm("template", "gpulab", str(CHART), "--set", setting, check=False)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "panic" not in r.stderr and "goroutine" not in r.stderr


def test_install_upgrade_and_uninstall_keep_the_hubs_data() -> None:
    """On a cluster (simulated containers): install waits for the hub to be available,
    an upgrade that changes the settings restarts the hub with them, and an uninstall
    removes everything but the hub's data claim, which a new install takes up again."""
    default_class = {
        "metadata": {
            "name": "standard",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "example.com/standard",
        "reclaimPolicy": "Delete",
    }
    with FakeKube(nodes=[{"name": "node-1", "gpus": 2}], storage_classes=[default_class]) as kube:
        install = [str(CHART), "-n", "gpulab", "--wait", "--timeout", "60s"]
        install += ["--create-namespace", "--set", "proxy.service.type=ClusterIP"]
        out = helm("install", "gpulab", *install, kubeconfig=kube.kubeconfig).stdout
        assert "STATUS: deployed" in out
        assert "kubectl -n gpulab port-forward service/gpulab-public 8000:80" in out
        ns = "/api/v1/namespaces/gpulab"
        claim = kube_get(kube, f"{ns}/persistentvolumeclaims/gpulab-hub-data")
        assert claim["status"]["phase"] == "Bound"
        deployment = kube_get(kube, "/apis/apps/v1/namespaces/gpulab/deployments/gpulab-hub")
        assert deployment["status"]["availableReplicas"] == 1
        (first,) = pods(kube)
        assert first["spec"]["serviceAccountName"] == "gpulab-hub"

        helm(
            "upgrade",
            "gpulab",
            *install,
            "--set",
            "config.storage.home_size=30GiB",
            kubeconfig=kube.kubeconfig,
        )
        config = kube_get(kube, f"{ns}/configmaps/gpulab-hub")["data"]["gpulab.yaml"]
        assert "home_size: 30GiB" in config
        (second,) = pods(kube)  # Recreate: the old hub is gone
        assert second["metadata"]["name"] != first["metadata"]["name"]
        history = helm("history", "gpulab", "-n", "gpulab", kubeconfig=kube.kubeconfig).stdout
        assert "superseded" in history and "deployed" in history

        out = helm("uninstall", "gpulab", "-n", "gpulab", kubeconfig=kube.kubeconfig).stdout
        assert "kept due to the resource policy" in out
        for path in (
            f"{ns}/configmaps/gpulab-hub",
            f"{ns}/serviceaccounts/gpulab-hub",
            f"{ns}/services/gpulab-hub",
            "/apis/apps/v1/namespaces/gpulab/deployments/gpulab-hub",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/gpulab-hub",
        ):
            r = requests.get(kube.url + path, timeout=10)
            assert r.status_code == 404, path
        wait_for(lambda: not pods(kube), 30, "the hub's pod to go")
        kept = kube_get(kube, f"{ns}/persistentvolumeclaims/gpulab-hub-data")
        assert kept["metadata"]["uid"] == claim["metadata"]["uid"]

        helm("install", "gpulab", *install, kubeconfig=kube.kubeconfig)
        again = kube_get(kube, f"{ns}/persistentvolumeclaims/gpulab-hub-data")
        assert again["metadata"]["uid"] == claim["metadata"]["uid"]
        (third,) = pods(kube)
        volumes = {v["name"]: v for v in third["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "gpulab-hub-data"


def test_a_hub_that_cannot_start_fails_the_install_with_a_timeout() -> None:
    with FakeKube(nodes=[{"name": "node-1", "gpus": 0}]) as kube:
        kube_post(kube, "/api/v1/namespaces", {"metadata": {"name": "gpulab"}})
        r = helm(
            "install",
            "gpulab",
            str(CHART),
            "-n",
            "gpulab",
            "--wait",
            "--timeout",
            "5s",
            "--set",
            "proxy.service.type=ClusterIP,hub.persistence.enabled=false",
            "--set",
            "hub.nodeSelector.pool=none-has-it",
            kubeconfig=kube.kubeconfig,
            check=False,
        )
        assert r.returncode != 0
        assert "context deadline exceeded" in r.stderr, r.stderr
        (pod,) = pods(kube)
        assert pod["status"]["phase"] == "Pending"


CHART_NAMESPACE = "gpulab-chart"


HOSTPATH = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {"name": "csi-hostpath"},
    "provisioner": "hostpath.csi.k8s.io",  # the fake mounts its volumes (fakekube.volumes)
}


def hub_pod_name(kube) -> str:
    (name,) = [
        p["metadata"]["name"]
        for p in pods(kube, CHART_NAMESPACE)
        if p["metadata"]["name"].startswith("lab-gpulab-hub-")
        and not p["metadata"].get("deletionTimestamp")
        and p["metadata"]["name"] != "lab-gpulab-hub-test"
    ]
    return name


def user_server_pod(kube) -> dict:
    (pod,) = [
        p
        for p in pods(kube, CHART_NAMESPACE)
        if p["metadata"].get("labels", {}).get("component") == "singleuser-server"
    ]
    return pod


def pod_logs(kube) -> str:
    """The end of the logs of the chart's namespace's pods, for a failure's message."""
    ns = f"/api/v1/namespaces/{CHART_NAMESPACE}/pods"
    out = []
    for pod in pods(kube, CHART_NAMESPACE):
        name = pod["metadata"]["name"]
        r = requests.get(f"{kube.url}{ns}/{name}/log", timeout=10)
        lines = [line for line in r.text.splitlines() if "log:192] 200 GET" not in line]
        out.append(f"{name}:\n" + "\n".join(lines[-40:]))
    return "\n".join(out) or "no pods"


def test_the_installed_hub_serves_a_user_and_an_upgrade_keeps_their_server(kube) -> None:
    """The chart's hub really runs on the fake cluster: its pod gets the ConfigMap,
    Secret, service account token and data claim, reaches the API in-cluster as its
    account with the chart's RBAC, and spawns a user's server that reaches it back at
    its Service. An upgrade with new settings replaces the hub's pod; the new hub has
    the settings, the old one's database (the token still works) and the user's
    server, still running in the same pod."""
    kube_post(kube, "/api/v1/namespaces", {"metadata": {"name": CHART_NAMESPACE}})
    r = requests.post(
        f"{kube.url}/apis/storage.k8s.io/v1/storageclasses", json=HOSTPATH, timeout=10
    )
    assert r.status_code in (201, 409), r.text
    home = Path(tempfile.mkdtemp(prefix="gpulab-chart-home-"))  # where pods (nobody) reach
    home.chmod(0o1777)
    k8s = kubernetes_settings(kube, home, NOTEBOOK_IMAGE)
    for key in ("kubeconfig", "hub_connect_ip", "namespace"):
        k8s.pop(key)  # the chart's: in-cluster, its Service, the release's namespace
    ports = {"http": free_port(), "api": free_port(), "proxyApi": free_port()}
    password = "pw-" + uuid.uuid4().hex[:12]
    values = {
        "image": {"repository": "registry.example/gpulab/hub", "tag": "test"},
        "config": {
            "kubernetes": k8s,
            "storage": {"home_size": "1GiB"},
            "profiles": [{"slug": "cpu", "default": True}],
        },
        "extraConfig": EXTRA_CONFIG.format(),
        "secrets": {"adminPassword": password},
        "hub": {
            "ports": ports,
            "persistence": {"storageClassName": HOSTPATH["metadata"]["name"], "size": "1Gi"},
            "securityContext": {"runAsUser": NOBODY, "runAsGroup": NOBODY, "fsGroup": NOBODY},
        },
        # a Service reaches its pod here only at the pod's own port (no kube-proxy)
        "proxy": {"service": {"type": "ClusterIP", "port": ports["http"]}},
    }
    args = [str(CHART), "-n", CHART_NAMESPACE, "-f", values_file(values)]
    args += ["--wait", "--timeout", "120s"]
    url = f"http://127.0.0.1:{ports['http']}"
    try:
        helm("install", "lab", *args, kubeconfig=kube.kubeconfig)  # waits for /hub/health
        # the chart's own check: the hub answers at both of its Services' names
        out = helm("test", "lab", "-n", CHART_NAMESPACE, "--logs", kubeconfig=kube.kubeconfig)
        assert "Phase:          Succeeded" in out.stdout, out.stdout
        public = f"lab-gpulab-public.{CHART_NAMESPACE}.svc.cluster.local:{ports['http']}"
        assert f"http://{public}/hub/health 200" in out.stdout, out.stdout
        r = requests.post(
            f"{url}/hub/api/users/admin/tokens",
            json={"auth": {"username": "admin", "password": password}},
            timeout=10,
        )
        assert r.status_code == 201, f"{r.text}\n{pod_logs(kube)}"
        s = requests.Session()
        s.headers["Authorization"] = f"token {r.json()['token']}"
        r = s.post(f"{url}/hub/api/users/admin/server", json={"profile": "cpu"}, timeout=30)
        assert r.status_code in (201, 202), r.text

        def ready():
            user = s.get(f"{url}/hub/api/users/admin", timeout=10).json()
            return (user["servers"].get("") or {}).get("ready")

        try:
            wait_for(ready, 60, "the user's server to be ready")
        except TimeoutError as e:
            raise AssertionError(f"{e}\n{pod_logs(kube)}") from None
        server = user_server_pod(kube)
        env = {e["name"]: e.get("value") for e in server["spec"]["containers"][0]["env"]}
        hub_api = f"lab-gpulab-hub.{CHART_NAMESPACE}.svc.cluster.local:{ports['api']}"
        assert env["JUPYTERHUB_API_URL"] == f"http://{hub_api}/hub/api"
        # through the hub pod's proxy to the user's pod, which checks the token with the hub
        r = s.get(f"{url}/user/admin/api/status", timeout=30)
        assert r.status_code == 200, f"{r.text}\n{pod_logs(kube)}"
        assert "kernels" in r.json()
        limit = s.get(f"{url}/hub/api/gpulab/gpus?user=admin", timeout=10).json()["user"]
        assert limit["limit"] != 1

        old_hub = hub_pod_name(kube)
        helm("upgrade", "lab", *args, "--set", "config.gpus.per_user=1", kubeconfig=kube.kubeconfig)
        assert hub_pod_name(kube) != old_hub
        wait_for(
            lambda: s.get(f"{url}/user/admin/api/status", timeout=10).status_code == 200,
            60,
            "the user's server to answer through the new hub",
        )
        assert user_server_pod(kube)["metadata"]["uid"] == server["metadata"]["uid"]
        limit = s.get(f"{url}/hub/api/gpulab/gpus?user=admin", timeout=10).json()["user"]
        assert limit["limit"] == 1
        r = s.delete(f"{url}/hub/api/users/admin/server", timeout=60)
        assert r.status_code in (202, 204), r.text
    finally:
        helm(
            "uninstall",
            "lab",
            "-n",
            CHART_NAMESPACE,
            "--wait",
            kubeconfig=kube.kubeconfig,
            check=False,
        )
        for p in pods(kube, CHART_NAMESPACE):
            kube_delete(kube, f"/api/v1/namespaces/{CHART_NAMESPACE}/pods/{p['metadata']['name']}")
        shutil.rmtree(home, ignore_errors=True)
