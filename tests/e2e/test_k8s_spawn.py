"""The kubernetes backend end to end: a real hub spawns servers as pods on the fake cluster.

The fake API server (tests/fakekube, set up in ``k8sfixture``) schedules pods against
one node with two GPUs and runs each pod's command as a local process, so a spawned
JupyterLab really answers through the hub's proxy.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from browsing import login, sign_up
from gpulab.spawner import objects
from hubfixture import BIN, end_sharing, export_line, guest_session, wait_for
from k8sfixture import (
    GPU_TOLERATION,
    NAMESPACE,
    NODE,
    S3_PREFIX,
    kube_delete,
    kube_get,
    kube_post,
    pods,
    user_pod,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def hub(k8s):
    return k8s


def spawned(user, profile: str) -> None:
    r = user.spawn(profile=profile)
    assert r.status_code in (201, 202), f"{r.status_code} {r.text}\n{user.hub.log_tail()}"


def spawn_failure(user, timeout: float = 60) -> str:
    """Follow the spawn's progress stream until it fails; the message shown to the user."""
    url = user.hub.api(f"/users/{user.name}/server/progress")
    deadline = time.monotonic() + timeout
    with user.session.get(url, stream=True, timeout=timeout) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event.get("failed"):
                    return event["message"]
                assert not event.get("ready"), f"the spawn did not fail: {event}"
            assert time.monotonic() < deadline, "no failure event in time"
    raise AssertionError("the progress stream ended without a failure")


def test_gpu_server_runs_as_a_pod_and_keeps_its_home_claim(hub, kube):
    ada = hub.create_user("ada")
    spawned(ada, profile="gpu-1")

    # JupyterLab in the pod answers through the hub's proxy, with the server's env
    r = ada.server_get("/api/status")
    assert r.status_code == 200, r.text
    assert ada.run("import os; print(os.environ['GPULAB_GPUS'])").strip() == f"{NODE}/0"
    assert hub.holders() == {f"{NODE}/0": "ada"}
    state = ada.session.get(hub.api("/gpulab/gpu"), timeout=10).json()
    assert state["switch_mode"] == "pod" and [g["id"] for g in state["gpus"]] == [f"{NODE}/0"]

    pod = user_pod(kube, "ada")
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-H100",
        "kubernetes.io/hostname": NODE,
    }
    assert pod["spec"]["nodeName"] == NODE
    # kubernetes.gpu_tolerations on a pod that asks for GPUs
    assert {**GPU_TOLERATION, "operator": "Exists"} in pod["spec"]["tolerations"]
    claim = kube_get(kube, f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/home-ada")
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["storageClassName"] == "ceph-rbd"
    volume = kube_get(kube, f"/api/v1/persistentvolumes/{claim['spec']['volumeName']}")
    assert volume["spec"]["csi"]["volumeAttributes"]["imageName"].startswith("csi-vol-")

    # stopping deletes the pod, frees the GPU, and keeps the home claim
    assert ada.stop().status_code in (202, 204)
    wait_for(lambda: user_pod(kube, "ada") is None, 30, "ada's pod to be deleted")
    assert hub.gpus()["free"] == 2
    kube_get(kube, f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/home-ada")


def test_unschedulable_gpu_spawn_fails_with_the_reason_then_cpu_has_no_gpu(hub, kube):
    # something outside gpulab holds both GPUs of the node
    kube_post(
        kube,
        f"/api/v1/namespaces/{NAMESPACE}/pods",
        {
            "metadata": {"name": "outside-job"},
            "spec": {
                "containers": [
                    {
                        "name": "train",
                        "image": "trainer:1",
                        "resources": {"limits": {"nvidia.com/gpu": "2"}},
                    }
                ]
            },
        },
    )
    wait_for(
        lambda: kube_get(kube, f"/api/v1/namespaces/{NAMESPACE}/pods/outside-job")["spec"].get(
            "nodeName"
        ),
        30,
        "the outside pod to be scheduled",
    )
    bo = hub.create_user("bo")
    r = bo.spawn(wait=False, profile="gpu-1")
    assert r.status_code == 202, f"{r.status_code} {r.text}\n{hub.log_tail(120)}"
    message = spawn_failure(bo)
    assert "No node can run this server" in message
    assert "Insufficient nvidia.com/gpu" in message
    # nothing left behind: no pod, no GPU held
    wait_for(lambda: user_pod(kube, "bo") is None, 30, "bo's pending pod to be deleted")
    assert hub.gpus()["free"] == 2 and not bo.model()["servers"]

    # the same server, now on the CPU profile: a pod without any GPU request
    spawned(bo, profile="cpu")
    (container,) = user_pod(kube, "bo")["spec"]["containers"]
    resources = container.get("resources") or {}
    assert "nvidia.com/gpu" not in (resources.get("limits") or {})
    assert "nvidia.com/gpu" not in (resources.get("requests") or {})
    assert GPU_TOLERATION not in (user_pod(kube, "bo")["spec"].get("tolerations") or [])
    assert bo.server_get("/api/status").status_code == 200
    kube_delete(kube, f"/api/v1/namespaces/{NAMESPACE}/pods/outside-job")


def test_a_pod_deleted_by_hand_frees_its_gpu(hub, kube):
    cy = hub.create_user("cy")
    spawned(cy, profile="gpu-1")
    assert list(hub.holders().values()) == ["cy"]
    pod = user_pod(kube, "cy")
    # the API server drops every watch just before: the hub's watch picks up from there
    kube.drop_watches()
    kube_delete(kube, f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}")
    # the hub's pod watch frees it (JupyterHub's own poll would take 30 s or more)
    wait_for(lambda: hub.gpus()["free"] == 2, 10, "cy's GPU to be freed")
    events = hub.admin.get(hub.api("/gpulab/events"), timeout=10).json()
    assert any("its pod was deleted" in json.dumps(e) for e in events["events"][:3]), events


def test_an_older_smaller_home_claim_grows_to_the_home_size(hub, kube):
    # dee's claim from when homes were 1 GiB; the hub now gives 2 GiB
    kube_post(
        kube,
        f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims",
        {
            "metadata": {"name": "home-dee"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "ceph-rbd",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    dee = hub.create_user("dee")
    spawned(dee, profile="cpu")
    path = f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/home-dee"
    assert kube_get(kube, path)["spec"]["resources"]["requests"]["storage"] == "2Gi"
    # the running pod finishes the file system resize: the claim reports 2 GiB
    wait_for(
        lambda: kube_get(kube, path)["status"]["capacity"]["storage"] == "2Gi",
        30,
        "the claim's capacity to grow",
    )


def test_api_server_errors_are_retried_and_a_lasting_one_is_reported(hub, kube):
    eve = hub.create_user("eve")
    # a few failed answers on the way are retried: the spawn goes through
    kube.faults.fail("create", "persistentvolumeclaims", status=500, times=2)
    kube.faults.fail("create", "pods", status=429, times=2)
    spawned(eve, profile="gpu-1")
    assert eve.server_get("/api/status").status_code == 200
    assert eve.stop().status_code in (202, 204)

    # an API server that keeps failing: the spawn fails with its reason, the GPU comes back
    kube.faults.fail("create", "pods", status=500, times=None)
    try:
        r = eve.spawn(wait=False, profile="gpu-1")
        assert r.status_code == 202, r.text
        message = spawn_failure(eve)
    finally:
        kube.faults.clear()
    assert "Kubernetes refused to create pod jupyter-eve" in message, message
    assert hub.gpus()["free"] == 2 and not eve.model()["servers"]
    # and once it answers again, so does the spawn; a pod create answered after the
    # client's 3 s request timeout is retried (KubeSpawner replaces the pod it finds)
    kube.faults.delay("create", "pods", 4, times=1)
    spawned(eve, profile="gpu-1")
    assert eve.server_get("/api/status").status_code == 200
    assert [p["metadata"]["name"] for p in pods(kube)] == ["jupyter-eve"]


def test_storage_api_works_on_the_rbd_image_behind_the_home_claim(hub, kube):
    fay = hub.create_user("fay")
    spawned(fay, profile="cpu")
    path = f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/home-fay"
    volume_name = kube_get(kube, path)["spec"]["volumeName"]
    pv = kube_get(kube, f"/api/v1/persistentvolumes/{volume_name}")
    image = pv["spec"]["csi"]["volumeAttributes"]["imageName"]

    def storage(method: str, url: str, body=None, user=fay):
        return user.session.request(method, hub.api(f"/gpulab/storage{url}"), json=body, timeout=60)

    # the image ceph-csi made for the claim, measured in Ceph
    volume = storage("GET", "").json()["volume"]
    assert (volume["backend"], volume["name"], volume["size_bytes"]) == ("rbd", image, 2 * 2**30)

    r = storage("POST", "/volume/snapshots", {"name": "before"})
    assert r.status_code == 201, r.text
    r = storage("POST", "/volume/snapshots/before/rollback")
    assert r.status_code == 409 and "stop it first" in r.json()["message"]
    assert fay.stop().status_code in (202, 204)
    r = storage("POST", "/volume/snapshots/before/rollback")
    assert r.status_code == 200, r.text

    # growing asks the claim for more: ceph-csi grows the image
    r = storage("POST", "/volume/resize", {"size": "3GiB"})
    assert r.status_code == 200 and r.json()["size_bytes"] == 3 * 2**30, r.text
    assert kube_get(kube, path)["spec"]["resources"]["requests"]["storage"] == "3Gi"
    r = storage("POST", "/volume/resize", {"size": "1GiB"})
    assert r.status_code == 400 and "shrink" in r.json()["message"]

    # deleting: admins only, confirmed, without snapshots; the claim goes
    r = hub.admin.delete(hub.api("/gpulab/storage/volume?user=fay&confirm=fay"), timeout=60)
    assert r.status_code == 409 and "snapshots" in r.json()["message"]
    assert storage("DELETE", "/volume/snapshots/before").status_code == 204
    r = hub.admin.delete(hub.api("/gpulab/storage/volume?user=fay&confirm=fay"), timeout=60)
    assert r.status_code == 204, r.text
    wait_for(
        lambda: requests.get(kube.url + path, timeout=10).status_code == 404,
        30,
        "fay's claim to be deleted",
    )


def test_a_shared_pod_keeps_the_owners_gpu_hers_and_a_revoked_guest_out_and_shows_read_only(hub):
    ida, jo = hub.create_user("ida"), hub.create_user("jo")
    spawned(ida, profile="gpu-1")
    try:
        share = ida.server_url + "/gpulab/share"
        r = ida.session.post(share + "/guests", json={"user": "jo"}, timeout=30)
        assert r.status_code == 200, r.text
        guest = guest_session(hub, jo, "ida")
        assert guest.get(ida.server_url + "/api/contents", timeout=30).status_code == 200
        r = guest.post(ida.server_url + "/gpulab/gpu/return", json={}, timeout=30)
        assert r.status_code == 403 and "Only ida can" in r.json()["message"]
        assert list(hub.holders().values()) == ["ida"]
        # revoked: the hub tells the pod's server, which stops trusting its cached answer
        r = ida.session.delete(share + "/guests/user/jo", timeout=30)
        assert r.status_code == 204, r.text
        assert guest.get(ida.server_url + "/api/contents", timeout=30).status_code == 403
        # a read-only link: the hub reads the notebook from the pod's server
        notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
            {"cell_type": "markdown", "id": "m", "metadata": {}, "source": "pod-notes"}]}  # fmt: skip
        r = ida.session.put(ida.server_url + "/api/contents/k.ipynb",
                            json={"type": "notebook", "content": notebook}, timeout=30)  # fmt: skip
        assert r.status_code in (200, 201), r.text
        r = ida.session.post(share + "/views", json={"path": "k.ipynb"}, timeout=30)
        assert r.status_code == 200, r.text
        viewer = f"viewer-{uuid.uuid4().hex[:4]}"
        hub.create_user(viewer)
        assert sign_up(hub, viewer, "pw-" + viewer + "-x1").status_code == 200
        page = login(hub, viewer, "pw-" + viewer + "-x1").get(
            hub.url + r.json()["url"] + "/content", timeout=60
        )
        assert page.status_code == 200 and "pod-notes" in page.text, page.text[-300:]
    finally:
        end_sharing(hub)


def test_doctor_checks_the_cluster(hub):
    env = {**hub.env, "COLUMNS": "250"}
    out = subprocess.run(
        [str(BIN / "gpulab"), "doctor"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"2 GPU slot(s) on 1 of 1 node(s), namespace {NAMESPACE}" in out.stdout

    env["GPULAB_KUBERNETES__STORAGE_CLASS"] = "fast-nvme"
    out = subprocess.run(
        [str(BIN / "gpulab"), "doctor"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 1 and "StorageClass fast-nvme does not exist" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_a_model_serves_from_the_home_claim_as_a_tf_serving_deployment(hub, kube):
    ada = hub.create_user("kmodel")
    home = Path(hub.settings["kubernetes"]["home_mount"])
    export_line(home / "models" / "kline" / "1")
    r = ada.session.post(hub.api("/gpulab/models"), json={"name": "kline",
                         "base_path": "models/kline", "gpus": 1}, timeout=60)  # fmt: skip
    assert r.status_code == 400 and "has no home volume in the cluster" in r.json()["message"]
    assert hub.gpus()["free"] == 2  # nothing held by the refused deploy
    claim = objects.home_pvc(
        "home-kmodel", NAMESPACE, 2**30, "ceph-rbd", {}, objects.owner_annotations(ada.name, "")
    )
    kube_post(kube, f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", claim)
    r = ada.session.post(
        hub.api("/gpulab/models"),
        json={"name": "kline", "base_path": "models/kline", "gpus": 1},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    m = wait_for(
        lambda: (m := ada.session.get(hub.api("/gpulab/models/kline"), timeout=30).json())[
            "state"] == "available" and m,
        120,
        "the model to serve",
    )  # fmt: skip
    assert m["model_versions"] == [{"version": 1, "state": "AVAILABLE", "error": ""}]
    # the replica is a Deployment of TF Serving's image with the ledger's GPU, on its node
    deployment = kube_get(kube, f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/"
                          f"gpulab-model-{model_id}-0")  # fmt: skip
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["image"] == "tensorflow/serving:2.21.0-gpu"
    assert pod_spec["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert pod_spec["nodeSelector"] == {"kubernetes.io/hostname": NODE}
    assert pod_spec["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": "home-kmodel", "readOnly": True
    }  # fmt: skip
    assert list(hub.holders().values()) == [ada.name]
    service = kube_get(kube, f"/api/v1/namespaces/{NAMESPACE}/services/gpulab-model-{model_id}")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8500, "http": 8501}

    r = ada.session.post(hub.api("/gpulab/models/kline:predict"), json={"instances": [2.0]})
    assert r.status_code == 200 and r.json() == {"predictions": [3.0]}, r.text
    # a hub restart: the model's pods are followed again, and calls go through
    hub.kill()
    hub.start()
    wait_for(
        lambda: ada.session.post(hub.api("/gpulab/models/kline:predict"),
                                 json={"instances": [4.0]}, timeout=30).json()
        == {"predictions": [4.0]},
        60,
        "the model to answer after a hub restart",
    )  # fmt: skip
    assert list(hub.holders().values()) == [ada.name]
    logs = ada.session.get(hub.api("/gpulab/models/kline/logs"), timeout=30).text
    assert "Successfully loaded servable version {name: kline version: 1}" in logs

    assert ada.session.delete(hub.api("/gpulab/models/kline"), timeout=90).status_code == 204
    assert hub.gpus()["free"] == 2
    left = [p for p in pods(kube) if p["metadata"].get("labels", {}).get("gpulab.io/model-id")]
    assert left == []
    r = requests.get(
        kube.url + f"/api/v1/namespaces/{NAMESPACE}/configmaps/gpulab-model-{model_id}"
    )
    assert r.status_code == 404


def test_a_model_in_the_users_bucket_is_copied_beside_tf_serving_by_a_sidecar(hub, kube, ceph):
    import boto3

    from gpulab.hub.storage.s3 import RgwAccounts

    bea = hub.create_user("ks3")
    bucket_of = RgwAccounts(
        ceph.s3_endpoint, ceph.s3_admin_access_key, ceph.s3_admin_secret_key,
        bucket_prefix=S3_PREFIX, uid_prefix=S3_PREFIX,
    ).ensure(bea.name)  # fmt: skip
    r = bea.session.post(hub.api("/gpulab/models"), json={"name": "kbucket",
                         "base_path": f"s3://{bucket_of.bucket}/models/kb"}, timeout=60)  # fmt: skip
    assert r.status_code == 400 and "has no S3 keys in the cluster" in r.json()["message"]
    # what the first start of bea's server leaves: her S3 keys as a Secret
    secret = objects.env_secret(
        "gpulab-s3-ks3", NAMESPACE, bucket_of.env(), {}, objects.owner_annotations(bea.name, "")
    )
    kube_post(kube, f"/api/v1/namespaces/{NAMESPACE}/secrets", secret)
    exported = Path(tempfile.mkdtemp(prefix="gpulab-k8s-model-")) / "1"
    export_line(exported)
    s3 = boto3.client(
        "s3", endpoint_url=bucket_of.endpoint, aws_access_key_id=bucket_of.access_key,
        aws_secret_access_key=bucket_of.secret_key, region_name="us-east-1",
    )  # fmt: skip
    for path in sorted(p for p in exported.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket_of.bucket, f"models/kb/1/{path.relative_to(exported)}")

    r = bea.session.post(hub.api("/gpulab/models"), json={"name": "kbucket",
                         "base_path": f"s3://{bucket_of.bucket}/models/kb"}, timeout=60)  # fmt: skip
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    wait_for(
        lambda: (
            bea.session.get(hub.api("/gpulab/models/kbucket"), timeout=30).json()["state"]
            == "available"
        ),
        120,
        "the model from the bucket to serve",
    )
    pod_spec = kube_get(kube, f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/"
                        f"gpulab-model-{model_id}-0")["spec"]["template"]["spec"]  # fmt: skip
    sync = pod_spec["containers"][1]
    assert sync["name"] == "s3-sync" and sync["envFrom"] == [
        {"secretRef": {"name": "gpulab-s3-ks3"}}
    ]
    assert pod_spec["volumes"] == [{"name": "models", "emptyDir": {}}]
    r = bea.session.post(hub.api("/gpulab/models/kbucket:predict"), json={"instances": [4.0]})
    assert r.status_code == 200 and r.json() == {"predictions": [4.0]}, r.text
    assert bea.session.delete(hub.api("/gpulab/models/kbucket"), timeout=90).status_code == 204
