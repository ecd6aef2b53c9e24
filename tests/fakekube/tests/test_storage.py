"""Claims: ceph-csi provisioning, expansion, protection and reclaim; the CSI hostpath
driver's volumes."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
from kubernetes_asyncio.client.rest import ApiException

from fakekube import FakeKube
from fakekube.tests.helpers import claim, core, eventually, phase_of, pod

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
