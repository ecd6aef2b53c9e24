"""Home volumes on the kubernetes backend: the RBD image behind a user's home claim.

A user's home is a PersistentVolumeClaim made by the spawner (annotated with the user).
ceph-csi provisions an RBD image for it and names it in the PV's
``spec.csi.volumeAttributes`` (``pool``, ``imageName``). Usage, snapshots and rollback
work on that image through ``RbdVolumes``; growing and deleting go through the claim,
so ceph-csi and the kubelet do their part (grow the image and the file system, apply
the StorageClass's reclaim policy).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from gpulab.spawner import objects

from . import Snapshot, StorageError, StorageUnavailable, Volume
from .rbd import RbdVolumes

CEPH_RBD = "rbd.csi.ceph.com"


@dataclass(frozen=True)
class Claim:
    namespace: str
    name: str
    pool: str
    image: str


async def find_claim(core, namespace: str, user: str) -> Claim:
    """The user's home claim and the RBD image behind it, or a StorageError."""
    from kubernetes_asyncio.client.rest import ApiException

    try:
        claims = await core.list_namespaced_persistent_volume_claim(namespace, _request_timeout=30)
        home = [
            c
            for c in claims.items
            if (c.metadata.annotations or {}).get(objects.ANNOTATION_USER) == user
            and (c.metadata.annotations or {}).get(objects.ANNOTATION_SERVER, "") == ""
        ]
        if not home:
            raise StorageError(f"{user} has no home volume yet (made at the first start)", 404)
        claim = home[0]
        if claim.status is None or claim.status.phase != "Bound" or not claim.spec.volume_name:
            raise StorageError(
                f"{user}'s home claim {claim.metadata.name} is not bound to a volume yet", 409
            )
        pv = await core.read_persistent_volume(claim.spec.volume_name, _request_timeout=30)
    except ApiException as e:
        raise StorageUnavailable(f"Kubernetes did not answer: {e.status} {e.reason}") from None
    csi = pv.spec.csi
    attributes = (csi.volume_attributes if csi else None) or {}
    if csi is None or csi.driver != CEPH_RBD or "imageName" not in attributes:
        raise StorageError(
            f"{user}'s home ({pv.metadata.name}) is not a ceph-csi RBD volume: "
            "snapshots and usage need one",
            409,
        )
    return Claim(
        namespace, claim.metadata.name, attributes.get("pool", "rbd"), attributes["imageName"]
    )


class ClaimVolumes:
    """The storage API's volume operations on one user's home claim.

    ``call`` runs a coroutine (a Kubernetes API call) on the hub's event loop from the
    thread these methods run in; ``in_use`` tells whether the user's server runs.
    """

    def __init__(
        self,
        volumes: RbdVolumes,
        claim: Claim,
        core,
        call: Callable[[Coroutine], Any],
        in_use: bool,
        grow_timeout: float = 60,
    ):
        self.volumes, self.claim, self.core, self.call = volumes, claim, core, call
        self.in_use, self.grow_timeout = in_use, grow_timeout

    def info(self, user: str) -> Volume:
        return self.volumes.info(user)

    def snapshots(self, user: str) -> list[Snapshot]:
        return self.volumes.snapshots(user)

    def create_snapshot(self, user: str, name: str) -> Snapshot:
        return self.volumes.create_snapshot(user, name)

    def delete_snapshot(self, user: str, name: str) -> None:
        self.volumes.delete_snapshot(user, name)

    def rollback(self, user: str, name: str) -> Volume:
        self._require_stopped(user, "roll back")
        return self.volumes.rollback(user, name)

    def resize(self, user: str, size_bytes: int) -> Volume:
        """Grow the claim; ceph-csi grows the image (waited for here) and the kubelet the
        file system when a pod next uses it (at once for a running one)."""
        current = self.volumes.info(user).size_bytes
        if size_bytes < current:
            self.volumes.resize(user, size_bytes)  # refuses, with the shrink message
        if size_bytes > current:
            self._api(
                f"grow claim {self.claim.name}",
                self.core.patch_namespaced_persistent_volume_claim(
                    self.claim.name, self.claim.namespace, objects.pvc_resize_patch(size_bytes)
                ),
            )
            deadline = time.monotonic() + self.grow_timeout
            while self.volumes.info(user).size_bytes < size_bytes:
                if time.monotonic() > deadline:
                    raise StorageError(
                        f"claim {self.claim.name} asks for the new size, but its volume has "
                        f"not grown after {self.grow_timeout:.0f} s; see the claim's events",
                        504,
                    )
                time.sleep(0.2)
        return self.volumes.info(user)

    def delete(self, user: str, confirm: str | None) -> None:
        """Delete the home claim (the StorageClass's reclaim policy decides the image's
        fate): only with ``confirm`` equal to the user's name, with the server stopped,
        and without snapshots."""
        if confirm != user:
            raise StorageError(
                f"deleting {user}'s volume destroys its data; confirm by passing confirm={user!r}"
            )
        self._require_stopped(user, "delete")
        snaps = [s.name for s in self.volumes.snapshots(user)]
        if snaps:
            raise StorageError(
                f"{user}'s volume has snapshots ({', '.join(snaps)}); delete them first", 409
            )
        self._api(
            f"delete claim {self.claim.name}",
            self.core.delete_namespaced_persistent_volume_claim(
                self.claim.name, self.claim.namespace
            ),
        )

    def _require_stopped(self, user: str, action: str) -> None:
        if self.in_use:
            raise StorageError(
                f"cannot {action} {user}'s volume while their server runs; stop it first", 409
            )

    def _api(self, what: str, coroutine: Coroutine) -> Any:
        from kubernetes_asyncio.client.rest import ApiException

        try:
            return self.call(asyncio.wait_for(coroutine, 30))
        except ApiException as e:
            raise StorageError(f"Kubernetes refused to {what}: {e.reason}", 503) from None
        except TimeoutError:
            raise StorageUnavailable(f"Kubernetes did not answer in time to {what}") from None


_volumes: dict[tuple[str, str], RbdVolumes] = {}


async def claim_volumes(settings, user: str, in_use: bool) -> ClaimVolumes:
    """``ClaimVolumes`` for ``user``'s home claim, on the hub's event loop."""
    from gpulab.hub.kube import core_api, namespace

    conf = settings.storage.ceph_conf
    if not conf:
        raise StorageError(
            "home volume details need storage.ceph_conf: the Ceph cluster behind the "
            "home claims' StorageClass",
            404,
        )
    core = core_api()
    claim = await find_claim(core, namespace(settings.kubernetes), user)
    st = settings.storage
    volumes = _volumes.setdefault(
        (conf, claim.pool),
        RbdVolumes(conf, claim.pool, client=st.ceph_client, keyring=st.ceph_keyring),
    )
    volumes.images[user] = claim.image
    loop = asyncio.get_running_loop()

    def call(coroutine: Coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    return ClaimVolumes(volumes, claim, core, call, in_use)
