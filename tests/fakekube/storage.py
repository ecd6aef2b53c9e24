"""Volumes: what kube-controller-manager's persistentvolume controller, the CSI
external-provisioner and external-resizer (with ceph-csi's RBD driver behind them),
the pvc/pv-protection controllers and the kubelet's volume expansion do.

- Provisioning: a Pending claim's StorageClass provisions a PV ``pvc-<claim uid>``
  with ``claimRef``, the class's reclaim policy and mount options, and a ``csi``
  source, and the two are bound. (No static binding: a claim without a class, or of a
  ``kubernetes.io/no-provisioner`` class, stays Pending; PVs made by hand stay
  Available.) For ``rbd.csi.ceph.com`` the PV carries what ceph-csi's CreateVolume
  returns (``buildCreateVolumeResponse``): the class ``parameters`` without the
  ``csi.storage.k8s.io/`` keys, plus ``pool``, ``journalPool``, ``imageName``
  (``csi-vol-<uuid>``, or the ``volumeNamePrefix`` parameter), ``radosNamespace`` /
  ``dataPool`` when set, the external-provisioner's
  ``storage.kubernetes.io/csiProvisionerIdentity``; ``volumeHandle``
  ``0001-<len>-<clusterID>-<pool id>-<uuid>``; sizes rounded up to MiB below 1 GiB
  and to GiB above (``util.RoundOffBytes``). A class without ``clusterID`` or
  ``pool`` fails provisioning as ceph-csi does. The RBD image is made (and grown on
  expansion) only through the ``rbd_images`` object a test gives ``FakeKube``.
- Expansion (admission already refused what may not grow): the PV grows; drivers
  that need node expansion (ceph-csi RBD, Filesystem mode) leave the claim with
  ``FileSystemResizePending`` until a running pod uses it, then
  ``status.capacity`` follows; others update ``status.capacity`` at once.
- Protection and reclaim: a deleted claim stays while a scheduled, unfinished pod
  uses it; its PV becomes Released and is deleted (reclaim policy Delete) or kept
  (Retain).
"""

from __future__ import annotations

import copy
import hashlib
import random
import time
import uuid
from typing import Any

from . import clock
from .controller import Controller
from .errors import ApiError
from .quantity import format_bytes, parse_quantity
from .resources import POD, PV, PVC, STORAGECLASS

Obj = dict[str, Any]
CEPH_RBD = "rbd.csi.ceph.com"
NO_PROVISIONER = "kubernetes.io/no-provisioner"
GIB, MIB = 2**30, 2**20
RESIZE_PENDING_MSG = (
    "Waiting for user to (re-)start a pod to finish file system resize of volume on node."
)


def round_off_bytes(size: int) -> int:
    """ceph-csi's util.RoundOffBytes."""
    unit = MIB if size < GIB else GIB
    return -(-size // unit) * unit


def _claim_uses(pod: Obj, claim: str) -> bool:
    return any(
        (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
        for v in pod["spec"].get("volumes") or []
    )


class StorageController(Controller):
    name = "persistentvolume-controller"
    watches = (
        "persistentvolumeclaims",
        "persistentvolumes",
        "storageclasses.storage.k8s.io",
        "pods",
    )

    def __init__(self, cluster: Any):
        super().__init__(cluster)
        self.identity = f"{int(time.time() * 1000)}-{random.randint(1000, 9999)}"

    def sync(self) -> None:
        for pvc in [copy.deepcopy(p) for p in self.store.iter(PVC)]:
            try:
                self.sync_claim(pvc)
            except ApiError as e:
                if e.code not in (404, 409):
                    raise
        for pv in [copy.deepcopy(p) for p in self.store.iter(PV)]:
            try:
                self.sync_volume(pv)
            except ApiError as e:
                if e.code not in (404, 409):
                    raise

    # -- claims ------------------------------------------------------------------

    def _pods_using(self, pvc: Obj, running_only: bool = False) -> list[Obj]:
        ns, name = pvc["metadata"]["namespace"], pvc["metadata"]["name"]
        out = []
        for pod in self.store.iter(POD, ns):
            if not _claim_uses(pod, name) or not pod["spec"].get("nodeName"):
                continue
            phase = pod.get("status", {}).get("phase")
            if phase in ("Succeeded", "Failed") or (running_only and phase != "Running"):
                continue
            out.append(pod)
        return out

    def sync_claim(self, pvc: Obj) -> None:
        meta = pvc["metadata"]
        if meta.get("deletionTimestamp"):
            if "kubernetes.io/pvc-protection" in (
                meta.get("finalizers") or []
            ) and not self._pods_using(pvc):
                meta["finalizers"] = [
                    f for f in meta["finalizers"] if f != "kubernetes.io/pvc-protection"
                ]
                self.registry.write(PVC, pvc)
            return
        phase = pvc.get("status", {}).get("phase")
        if phase == "Bound":
            self._resize(pvc)
            return
        class_name = pvc["spec"].get("storageClassName") or ""
        if phase != "Pending" or pvc["spec"].get("volumeName") or not class_name:
            return
        sc = self.store.peek(STORAGECLASS, "", class_name)
        if sc is None:
            self.recorder.record(
                pvc,
                "ProvisioningFailed",
                f'storageclass.storage.k8s.io "{class_name}" not found',
                type="Warning",
                component=self.name,
            )
        elif sc["provisioner"] != NO_PROVISIONER:
            self._provision(pvc, sc)

    def _provision(self, pvc: Obj, sc: Obj) -> None:
        provisioner = sc["provisioner"]
        meta = pvc["metadata"]
        annotations = meta.setdefault("annotations", {})
        if annotations.get("volume.kubernetes.io/storage-provisioner") != provisioner:
            annotations["volume.kubernetes.io/storage-provisioner"] = provisioner
            annotations["volume.beta.kubernetes.io/storage-provisioner"] = provisioner
            pvc = self.registry.write(PVC, pvc)
        claim = f"{meta['namespace']}/{meta['name']}"
        component = f"{provisioner}_fakekube-provisioner"
        self.recorder.record(
            pvc,
            "Provisioning",
            f'External provisioner is provisioning volume for claim "{claim}"',
            component=component,
        )
        params = sc.get("parameters") or {}
        size = int(parse_quantity(pvc["spec"]["resources"]["requests"]["storage"]))
        attributes = {k: v for k, v in params.items() if not k.startswith("csi.storage.k8s.io/")}
        volume_id = str(uuid.uuid4())
        if provisioner == CEPH_RBD:
            for required, what in (("clusterID", "cluster ID"), ("pool", "pool name")):
                if not params.get(required):
                    self.recorder.record(
                        pvc,
                        "ProvisioningFailed",
                        f'failed to provision volume with StorageClass "{sc["metadata"]["name"]}": rpc error: code = InvalidArgument desc = missing or empty {what} to provision volume from',
                        type="Warning",
                        component=component,
                    )
                    return
            size = round_off_bytes(size or GIB)
            image_uuid = str(uuid.uuid4())
            attributes["pool"] = params["pool"]
            attributes["journalPool"] = params.get("journalPool", params["pool"])
            attributes["imageName"] = params.get("volumeNamePrefix", "csi-vol-") + image_uuid
            images = self.cluster.rbd_images
            if images is not None:
                try:
                    images.create(params["pool"], attributes["imageName"], size)
                except Exception as e:  # noqa: BLE001 -- reported as ceph-csi reports it
                    self.recorder.record(
                        pvc,
                        "ProvisioningFailed",
                        f'failed to provision volume with StorageClass "{sc["metadata"]["name"]}": rpc error: code = Internal desc = {e}',
                        type="Warning",
                        component=component,
                    )
                    return
            pool_id = int(hashlib.sha1(params["pool"].encode()).hexdigest()[:4], 16) % 64 + 1
            cluster = params["clusterID"]
            volume_id = f"0001-{len(cluster):04x}-{cluster}-{pool_id:016x}-{image_uuid}"
        attributes["storage.kubernetes.io/csiProvisionerIdentity"] = (
            f"{self.identity}-{provisioner}"
        )
        csi: Obj = {
            "driver": provisioner,
            "fsType": params.get("csi.storage.k8s.io/fstype", "ext4"),
            "volumeHandle": volume_id,
            "volumeAttributes": attributes,
        }
        for secret in ("controller-expand", "node-stage", "node-publish"):
            name = params.get(f"csi.storage.k8s.io/{secret}-secret-name")
            if name:
                key = {
                    "controller-expand": "controllerExpandSecretRef",
                    "node-stage": "nodeStageSecretRef",
                    "node-publish": "nodePublishSecretRef",
                }[secret]
                csi[key] = {
                    "name": name,
                    "namespace": params.get(
                        f"csi.storage.k8s.io/{secret}-secret-namespace", meta["namespace"]
                    ),
                }
        pv_annotations = {"pv.kubernetes.io/provisioned-by": provisioner}
        if params.get("csi.storage.k8s.io/provisioner-secret-name"):
            pv_annotations["volume.kubernetes.io/provisioner-deletion-secret-name"] = params[
                "csi.storage.k8s.io/provisioner-secret-name"
            ]
            pv_annotations["volume.kubernetes.io/provisioner-deletion-secret-namespace"] = (
                params.get("csi.storage.k8s.io/provisioner-secret-namespace", "")
            )
        body = {
            "metadata": {"name": f"pvc-{meta['uid']}", "annotations": pv_annotations},
            "spec": {
                "accessModes": pvc["spec"]["accessModes"],
                "capacity": {"storage": format_bytes(size)},
                "claimRef": self._claim_ref(pvc),
                "csi": csi,
                "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
                "storageClassName": sc["metadata"]["name"],
                "volumeMode": pvc["spec"].get("volumeMode", "Filesystem"),
            },
        }
        if sc.get("mountOptions"):
            body["spec"]["mountOptions"] = sc["mountOptions"]
        pv = self.registry.create(PV, "", body)
        self.recorder.record(
            pvc,
            "ProvisioningSucceeded",
            f"Successfully provisioned volume {pv['metadata']['name']}",
            component=component,
        )
        self._bind(self.store.get(PVC, meta["namespace"], meta["name"]), pv)

    def _claim_ref(self, pvc: Obj) -> Obj:
        meta = pvc["metadata"]
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
        }

    def _bind(self, pvc: Obj, pv: Obj) -> None:
        pv["spec"]["claimRef"] = self._claim_ref(pvc)
        pv = self.registry.write(PV, pv)
        pv["status"] = {"phase": "Bound"}
        pv = self.registry.write_status(PV, pv)
        annotations = pvc["metadata"].setdefault("annotations", {})
        annotations["pv.kubernetes.io/bind-completed"] = "yes"
        annotations["pv.kubernetes.io/bound-by-controller"] = "yes"
        pvc["spec"]["volumeName"] = pv["metadata"]["name"]
        pvc = self.registry.write(PVC, pvc)
        pvc["status"] = {
            "phase": "Bound",
            "accessModes": pv["spec"]["accessModes"],
            "capacity": {"storage": pv["spec"]["capacity"]["storage"]},
        }
        self.registry.write_status(PVC, pvc)

    def _needs_node_expansion(self, pv: Obj, pvc: Obj) -> bool:
        driver = (pv["spec"].get("csi") or {}).get("driver")
        return driver == CEPH_RBD and pvc["spec"].get("volumeMode", "Filesystem") == "Filesystem"

    def _resize(self, pvc: Obj) -> None:
        pv = self.store.get(PV, "", pvc["spec"].get("volumeName", ""))
        if pv is None:
            return
        requested = parse_quantity(pvc["spec"]["resources"]["requests"]["storage"])
        pv_size = parse_quantity(pv["spec"]["capacity"]["storage"])
        status = pvc.setdefault("status", {})
        have = parse_quantity(status.get("capacity", {}).get("storage", "0"))
        driver = (pv["spec"].get("csi") or {}).get("driver", "")
        if requested > pv_size:
            resizer = f"external-resizer {driver}"
            self.recorder.record(
                pvc,
                "Resizing",
                f"External resizer is resizing volume {pv['metadata']['name']}",
                component=resizer,
            )
            new_size = round_off_bytes(int(requested)) if driver == CEPH_RBD else int(requested)
            attributes = (pv["spec"].get("csi") or {}).get("volumeAttributes") or {}
            images = self.cluster.rbd_images
            if driver == CEPH_RBD and images is not None:
                try:
                    images.grow(attributes["pool"], attributes["imageName"], new_size)
                except Exception as e:  # noqa: BLE001 -- reported as the resizer reports it
                    self.recorder.record(
                        pvc,
                        "VolumeResizeFailed",
                        f"resize volume {pv['metadata']['name']} failed: rpc error: code = Internal desc = {e}",
                        type="Warning",
                        component=resizer,
                    )
                    return
            pv["spec"]["capacity"]["storage"] = format_bytes(new_size)
            pv = self.registry.write(PV, pv)
            status["allocatedResources"] = {
                "storage": pvc["spec"]["resources"]["requests"]["storage"]
            }
            if self._needs_node_expansion(pv, pvc):
                status["conditions"] = [
                    {
                        "type": "FileSystemResizePending",
                        "status": "True",
                        "lastProbeTime": None,
                        "lastTransitionTime": clock.rfc3339(),
                        "message": RESIZE_PENDING_MSG,
                    }
                ]
                status["allocatedResourceStatuses"] = {"storage": "NodeResizePending"}
                self.recorder.record(
                    pvc,
                    "FileSystemResizeRequired",
                    "Require file system resize of volume on node",
                    component=resizer,
                )
                pvc = self.registry.write_status(PVC, pvc)
            else:
                status["capacity"] = {"storage": pv["spec"]["capacity"]["storage"]}
                status.pop("conditions", None)
                status.pop("allocatedResourceStatuses", None)
                self.recorder.record(
                    pvc, "VolumeResizeSuccessful", "Resize volume succeeded", component=resizer
                )
                self.registry.write_status(PVC, pvc)
                return
            pv_size = parse_quantity(pv["spec"]["capacity"]["storage"])
        if have < pv_size:
            users = self._pods_using(pvc, running_only=True)
            if not users:
                return
            status["capacity"] = {"storage": pv["spec"]["capacity"]["storage"]}
            status.pop("conditions", None)
            status.pop("allocatedResourceStatuses", None)
            node = users[0]["spec"]["nodeName"]
            self.recorder.record(
                pvc,
                "FileSystemResizeSuccessful",
                f'MountVolume.NodeExpandVolume succeeded for volume "{pv["metadata"]["name"]}" {node}',
                component="kubelet",
                host=node,
            )
            self.registry.write_status(PVC, pvc)

    # -- volumes -----------------------------------------------------------------

    def sync_volume(self, pv: Obj) -> None:
        meta, spec = pv["metadata"], pv["spec"]
        phase = pv.get("status", {}).get("phase")
        if meta.get("deletionTimestamp"):
            if "kubernetes.io/pv-protection" in (meta.get("finalizers") or []) and phase != "Bound":
                meta["finalizers"] = [
                    f for f in meta["finalizers"] if f != "kubernetes.io/pv-protection"
                ]
                self.registry.write(PV, pv)
                return
        ref = spec.get("claimRef") or {}
        if not ref.get("uid"):
            if phase != "Available":
                pv["status"] = {"phase": "Available"}
                self.registry.write_status(PV, pv)
            return
        claim = self.store.peek(PVC, ref.get("namespace", ""), ref.get("name", ""))
        if claim is None or claim["metadata"]["uid"] != ref["uid"]:
            if phase != "Released":
                pv["status"] = {"phase": "Released"}
                pv = self.registry.write_status(PV, pv)
            if spec.get("persistentVolumeReclaimPolicy") == "Delete" and not meta.get(
                "deletionTimestamp"
            ):
                self.registry.delete(PV, "", meta["name"])
            return
        if phase != "Bound" and claim["spec"].get("volumeName") == meta["name"]:
            pv["status"] = {"phase": "Bound"}
            self.registry.write_status(PV, pv)
