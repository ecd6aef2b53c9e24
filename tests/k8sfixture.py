"""The kubernetes backend's test cluster, shared by the test modules that need it.

``kube``: the fake cluster (tests/fakekube) with one node of two GPUs, a ceph-csi RBD
StorageClass backed by the suite's real Ceph, and a ``gpulab`` namespace; its pods run
their commands as local processes, with ``python``, ``gpulab`` and
``tensorflow_model_server`` (gpulab's model server, which takes TF Serving's flags) on
the "image's" PATH. ``k8s_hub``: a real
hub on the kubernetes backend against it, as the ServiceAccount of
``deploy/kubernetes/rbac.yaml`` with exactly its rights. Both are made once per session;
``k8s`` is the hub for one test, with every server stopped, every GPU free and every
pod gone after it. Pods run as ``nobody`` with ``HOME`` in a shared scratch directory
(the fake does not mount claims); each server listens on a port of its own, as pods on one
host network must.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import requests
import yaml

from fakekube import FakeKube
from hubfixture import BIN, Hub, wait_for

NAMESPACE = "gpulab"
NODE = "gpu-node-1"
CEPH_RBD = {
    "metadata": {"name": "ceph-rbd"},
    "provisioner": "rbd.csi.ceph.com",
    "parameters": {"clusterID": "ceph-test", "pool": "rbd", "imageFeatures": "layering"},
    "reclaimPolicy": "Retain",
    "allowVolumeExpansion": True,
}
EXTRA_CONFIG = """
import socket

def own_port(spawner):
    # every pod shares this host's network here: each server gets a port of its own
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        spawner.port = s.getsockname()[1]

c.GpuKubeSpawner.pre_spawn_hook = own_port
c.GpuKubeSpawner.k8s_api_request_retry_timeout = 5
# answer spawn requests at once; the tests follow the progress stream
c.JupyterHub.tornado_settings.update({{"slow_spawn_timeout": 0}})
"""


class CephCsi:
    """What ceph-csi's controller does to RBD images, on the suite's real Ceph."""

    def __init__(self, conf: str):
        self.conf = conf

    def _image_op(self, pool: str, op) -> None:
        import rados

        with rados.Rados(conffile=self.conf) as cluster, cluster.open_ioctx(pool) as ioctx:
            op(ioctx)

    def create(self, pool: str, image: str, size: int) -> None:
        import rbd

        self._image_op(pool, lambda ioctx: rbd.RBD().create(ioctx, image, size))

    def grow(self, pool: str, image: str, size: int) -> None:
        import rbd

        def grow(ioctx):
            with rbd.Image(ioctx, image) as img:
                img.resize(size)

        self._image_op(pool, grow)


@pytest.fixture(scope="session")
def kube(ceph):
    # TF Serving's binary on the "image's" PATH: gpulab's model server takes its flags;
    # where pods running as nobody can run them
    shims = Path(tempfile.mkdtemp(prefix="gpulab-image-bin-"))
    shims.chmod(0o755)

    def shim(name: str, command: str) -> None:
        (shims / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (shims / name).chmod(0o755)

    shim("tensorflow_model_server", f"{sys.executable} -m gpulab.serving")
    shim("python", sys.executable)
    shim("python3", sys.executable)
    shim("gpulab", str(BIN / "gpulab"))  # the Helm chart's hub pod runs `gpulab up`
    shim("gpulab-hub", str(BIN / "gpulab-hub"))  # which runs this
    shim("gpulab-singleuser", str(BIN / "gpulab-singleuser"))  # a user's server
    image_env = {k: v for k, v in os.environ.items() if k != "HOME"}
    image_env["PATH"] = f"{shims}:{image_env['PATH']}"
    with FakeKube(
        nodes=[{"name": NODE, "gpus": 2, "labels": {"nvidia.com/gpu.product": "NVIDIA-H100"}}],
        run_containers=True,
        storage_classes=[CEPH_RBD],
        rbd_images=CephCsi(ceph.conf),
        image_env=image_env,
    ) as kube:
        kube_post(kube, "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        yield kube
    shutil.rmtree(shims, ignore_errors=True)


NOBODY = 65534
"""The account pods run as (``kubernetes.uid``/``gid``)."""


def kubernetes_settings(kube, home: Path, image: str, **more) -> dict:
    """The ``kubernetes`` settings of a hub against the fake cluster ``kube``."""
    return {
        "image": image,
        "namespace": NAMESPACE,
        "home_mount": str(home),
        "hub_connect_ip": "127.0.0.1",
        "kubeconfig": kube.kubeconfig,
        "uid": NOBODY,
        "gid": NOBODY,
        **more,
    }


S3_PREFIX = "glk-"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def s3_settings(ceph) -> dict:
    return {
        "s3_endpoint": ceph.s3_endpoint,
        "s3_admin_access_key": ceph.s3_admin_access_key,
        "s3_admin_secret_key": ceph.s3_admin_secret_key,
        "s3_prefix": S3_PREFIX,
    }


RBAC = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes" / "rbac.yaml"
PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
}


def apply_rbac(kube) -> str:
    """What ``kubectl apply -f deploy/kubernetes/rbac.yaml`` does on the fake cluster;
    a kubeconfig with the hub's ServiceAccount token, which gets only those rights."""
    for doc in yaml.safe_load_all(RBAC.read_text()):
        group = "/api/v1" if doc["apiVersion"] == "v1" else f"/apis/{doc['apiVersion']}"
        ns = doc["metadata"].get("namespace")
        where = f"/namespaces/{ns}" if ns else ""
        kube_post(kube, f"{group}{where}/{PLURALS[doc['kind']]}", doc)
    return kube.kubeconfig_for(kube.service_account_token(NAMESPACE, "gpulab-hub"))


@pytest.fixture(scope="session")
def k8s_hub(kube, ceph):
    home = Path(tempfile.mkdtemp(prefix="gpulab-k8s-home-"))
    home.chmod(0o1777)
    extra = home.parent / f"{home.name}-config.py"
    extra.write_text(EXTRA_CONFIG.format())
    kubeconfig = apply_rbac(kube)  # the hub has the shipped RBAC rights, no more
    hub = Hub(
        {
            "backend": "kubernetes",
            "hub": {"extra_config": str(extra)},
            "kubernetes": kubernetes_settings(
                kube,
                home,
                "registry.example/gpulab/notebook:test",
                kubeconfig=kubeconfig,
                unschedulable_timeout=3,
                gpu_tolerations=[GPU_TOLERATION],
            ),
            "storage": {
                "home_size": "2GiB",
                "ceph_conf": ceph.conf,
                **s3_settings(ceph),
            },
            "serving": {"sync_folder": str(home / "models-from-s3")},
            "gpus": {"reclaim_interval": 1},
            "profiles": [
                {"slug": "cpu", "default": True},
                {"slug": "gpu-1", "gpus": 1, "gpu_type": "NVIDIA-H100"},
                {"slug": "gpu-idle", "gpus": 1, "idle_return": "6s"},
            ],
        }
    ).start()
    yield hub
    hub.cleanup()
    extra.unlink()


@pytest.fixture
def k8s(k8s_hub, kube):
    yield k8s_hub
    for user in k8s_hub.admin.get(k8s_hub.api("/users"), timeout=10).json():
        if user["servers"]:
            k8s_hub.admin.delete(k8s_hub.api(f"/users/{user['name']}/server"), timeout=60)
    wait_for(lambda: k8s_hub.gpus()["free"] == 2, 60, "every GPU to be free")
    for pod in kube_get(kube, f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]:
        kube_delete(kube, f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}")


def kube_get(kube, path: str) -> dict:
    r = requests.get(kube.url + path, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def kube_post(kube, path: str, body: dict) -> dict:
    r = requests.post(kube.url + path, json=body, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def kube_delete(kube, path: str) -> None:
    r = requests.delete(kube.url + path, json={"gracePeriodSeconds": 0}, timeout=10)
    assert r.status_code in (200, 202, 404), r.text


def pods(kube, namespace: str = NAMESPACE) -> list[dict]:
    return kube_get(kube, f"/api/v1/namespaces/{namespace}/pods")["items"]


def user_pod(kube, name: str) -> dict | None:
    found = [
        p for p in pods(kube) if p["metadata"].get("annotations", {}).get("gpulab.io/user") == name
    ]
    return found[0] if found else None
