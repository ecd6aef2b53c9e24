"""Home volumes as Ceph RBD images, through the rados/rbd Python bindings.

One image a user (``gpulab-home-alice`` in the configured pool), with layering,
exclusive-lock, object-map and fast-diff, so usage (like ``rbd du``) is cheap and
snapshots can be cloned into new images. Changes to one image are serialised, within
the hub by a lock and across processes by a RADOS advisory lock.

The bindings come from Debian's python3-rados / python3-rbd (built for CPython 3.11),
visible in gpulab's environment through its system site packages. The hub connects with
cephx as ``client.<client>`` (``admin`` by default) with its keyring: the one ceph.conf
names, or ``keyring``. Users never get a keyring (docs/storage.md).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from gpulab.hub.names import safe_name
from gpulab.hub.settings import format_size

from . import Snapshot, StorageError, StorageUnavailable, Volume, check_snapshot_name

log = logging.getLogger(__name__)

LOCK_NAME = "gpulab-volume"


def _bindings():
    try:
        import rados
        import rbd
    except ImportError as e:
        raise StorageUnavailable(
            f"the Ceph Python bindings are not installed ({e}); apt-get install python3-rados python3-rbd"
        ) from None
    return rados, rbd


def answers_without_a_key(conffile: str, timeout: int = 5) -> bool:
    """Whether the cluster's monitors let in a client that has no key (cephx off): then
    every account that can reach them reads every object and RGW secret."""
    rados, _ = _bindings()
    conf = {
        "auth_client_required": "none",
        "keyring": "/dev/null",
        "client_mount_timeout": str(timeout),
        "rados_mon_op_timeout": str(timeout),
    }
    cluster = rados.Rados(conffile=conffile, rados_id="gpulab-doctor", conf=conf)
    try:
        cluster.connect(timeout=timeout)
    except rados.Error:
        return False
    finally:
        cluster.shutdown()
    return True


class RbdVolumes:
    """Ensure, grow, measure, snapshot, roll back, clone and delete users' RBD images."""

    def __init__(
        self,
        conffile: str,
        pool: str = "rbd",
        prefix: str = "gpulab-home-",
        connect_timeout: int = 10,
        images: dict[str, str] | None = None,
        client: str = "admin",
        keyring: str = "",
    ):
        self.conffile, self.pool, self.prefix = conffile, pool, prefix
        self.client, self.keyring = client or "admin", keyring
        self.images = images if images is not None else {}
        """Users whose image is named by someone else (ceph-csi, for a Kubernetes claim)."""
        self.connect_timeout = connect_timeout
        self._cluster = None
        self._connect_lock = threading.Lock()
        self._image_locks: dict[str, threading.Lock] = {}

    # -- connection ----------------------------------------------------------------

    def _ioctx(self):
        rados, _ = _bindings()
        with self._connect_lock:
            if self._cluster is None:
                t = str(self.connect_timeout)
                # without these a client waits forever for an unreachable monitor
                conf = {
                    "client_mount_timeout": t,
                    "rados_mon_op_timeout": t,
                    "rados_osd_op_timeout": str(self.connect_timeout * 3),
                }
                if self.keyring:
                    conf["keyring"] = self.keyring
                cluster = None
                try:
                    cluster = rados.Rados(conffile=self.conffile, rados_id=self.client, conf=conf)
                    cluster.connect(timeout=self.connect_timeout)
                except rados.Error as e:
                    if cluster is not None:
                        cluster.shutdown()
                    # cephx: a wrong key is a permission error, a missing keyring "not found"
                    raise StorageUnavailable(
                        f"Ceph is unreachable ({self.conffile}) as client.{self.client}: {e}; "
                        "check storage.ceph_conf, ceph_client and ceph_keyring"
                    ) from None
                self._cluster = cluster
            try:
                return self._cluster.open_ioctx(self.pool)
            except rados.ObjectNotFound:
                raise StorageUnavailable(f"Ceph pool {self.pool!r} does not exist") from None
            except rados.Error as e:
                self._cluster.shutdown()
                self._cluster = None
                raise StorageUnavailable(f"Ceph is unreachable: {e}") from None

    def close(self) -> None:
        with self._connect_lock:
            if self._cluster is not None:
                self._cluster.shutdown()
                self._cluster = None

    def image_name(self, user: str) -> str:
        return self.images.get(user) or self.prefix + safe_name(user)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[object]:
        """Hold this image's lock (in-process and in RADOS) with an open ioctx."""
        rados, _ = _bindings()
        local = self._image_locks.setdefault(name, threading.Lock())
        with local:
            ioctx = self._ioctx()
            cookie = uuid.uuid4().hex
            deadline = time.monotonic() + 30
            while True:
                try:
                    ioctx.lock_exclusive(f"{name}.gpulab-lock", LOCK_NAME, cookie, duration=60)
                    break
                except rados.ObjectBusy:
                    if time.monotonic() > deadline:
                        ioctx.close()
                        raise StorageError(
                            f"volume {name} is busy; try again", status=409
                        ) from None
                    time.sleep(0.05)
            try:
                yield ioctx
            finally:
                with contextlib.suppress(rados.Error):
                    ioctx.unlock(f"{name}.gpulab-lock", LOCK_NAME, cookie)
                ioctx.close()

    @contextlib.contextmanager
    def _image(self, ioctx, name: str, user: str):
        _, rbd = _bindings()
        try:
            image = rbd.Image(ioctx, name)
        except rbd.ImageNotFound:
            raise StorageError(f"{user} has no home volume", status=404) from None
        try:
            yield image
        finally:
            image.close()

    @contextlib.contextmanager
    def _user_image(self, user: str):
        """The user's image, open and locked against other changes: (name, image)."""
        name = self.image_name(user)
        with self._locked(name) as ioctx, self._image(ioctx, name, user) as image:
            yield name, image

    # -- queries -------------------------------------------------------------------

    def info(self, user: str) -> Volume:
        name = self.image_name(user)
        ioctx = self._ioctx()
        try:
            with self._image(ioctx, name, user) as image:
                return self._volume(user, name, image)
        finally:
            ioctx.close()

    def exists(self, user: str) -> bool:
        _, rbd = _bindings()
        ioctx = self._ioctx()
        try:
            return self.image_name(user) in rbd.RBD().list(ioctx)
        finally:
            ioctx.close()

    def _volume(self, user: str, name: str, image) -> Volume:
        size = image.size()
        used = 0

        def count(offset, length, exists):
            nonlocal used
            if exists:
                used += length

        image.diff_iterate(0, size, None, count, include_parent=False, whole_object=True)
        snaps = [
            Snapshot(
                name=s["name"],
                created=_iso(image.get_snap_timestamp(s["id"])),
                size_bytes=s["size"],
            )
            for s in image.list_snaps()
        ]
        return Volume(
            user=user, backend="rbd", name=name, size_bytes=size, used_bytes=used, snapshots=snaps
        )

    # -- changes -------------------------------------------------------------------

    def ensure(self, user: str, size_bytes: int) -> Volume:
        """The user's image, created at ``size_bytes`` when missing (an existing one is kept)."""
        _, rbd = _bindings()
        _check_size(size_bytes)
        name = self.image_name(user)
        with self._locked(name) as ioctx:
            if name not in rbd.RBD().list(ioctx):
                rbd.RBD().create(ioctx, name, size_bytes, old_format=False, features=_features(rbd))
                log.info(
                    "Created RBD image %s/%s (%d bytes) for %s", self.pool, name, size_bytes, user
                )
            with self._image(ioctx, name, user) as image:
                return self._volume(user, name, image)

    def resize(self, user: str, size_bytes: int) -> Volume:
        """Grow the image online; shrinking is refused (it would cut off data)."""
        _check_size(size_bytes)
        with self._user_image(user) as (name, image):
            current = image.size()
            if size_bytes < current:
                raise StorageError(
                    f"refusing to shrink {user}'s volume from {format_size(current)} to "
                    f"{format_size(size_bytes)}: shrinking would destroy data"
                )
            if size_bytes > current:
                image.resize(size_bytes)
                log.info("Grew %s from %d to %d bytes", name, current, size_bytes)
            return self._volume(user, name, image)

    def create_snapshot(self, user: str, snapshot: str) -> Snapshot:
        _, rbd = _bindings()
        check_snapshot_name(snapshot)
        with self._user_image(user) as (name, image):
            try:
                image.create_snap(snapshot)
            except rbd.ImageExists:
                raise StorageError(
                    f"{user} already has a snapshot named {snapshot!r}", status=409
                ) from None
            return next(s for s in self._volume(user, name, image).snapshots if s.name == snapshot)

    def snapshots(self, user: str) -> list[Snapshot]:
        return self.info(user).snapshots

    def rollback(self, user: str, snapshot: str) -> Volume:
        """Return the volume to a snapshot. Refused while the volume is in use (mapped)."""
        check_snapshot_name(snapshot)
        with self._user_image(user) as (name, image):
            self._require_snapshot(image, user, snapshot)
            self._require_unused(image, user, "roll back")
            image.rollback_to_snap(snapshot)
            log.info("Rolled %s back to %s", name, snapshot)
            return self._volume(user, name, image)

    def delete_snapshot(self, user: str, snapshot: str) -> None:
        _, rbd = _bindings()
        check_snapshot_name(snapshot)
        with self._user_image(user) as (name, image):
            self._require_snapshot(image, user, snapshot)
            if image.is_protected_snap(snapshot):
                children = list(image.list_children()) if hasattr(image, "list_children") else []
                if children:
                    raise StorageError(
                        f"snapshot {snapshot!r} has clones ({', '.join(c[1] for c in children)}); "
                        "delete or flatten them first",
                        status=409,
                    )
                image.unprotect_snap(snapshot)
            try:
                image.remove_snap(snapshot)
            except rbd.ImageBusy:
                raise StorageError(f"snapshot {snapshot!r} is in use", status=409) from None

    def clone(self, user: str, snapshot: str, new_user: str) -> Volume:
        """A new image for ``new_user`` from ``user``'s snapshot (copy-on-write)."""
        _, rbd = _bindings()
        check_snapshot_name(snapshot)
        name, child = self.image_name(user), self.image_name(new_user)
        with self._locked(name) as ioctx:
            if child in rbd.RBD().list(ioctx):
                raise StorageError(f"{new_user} already has a home volume", status=409)
            with self._image(ioctx, name, user) as image:
                self._require_snapshot(image, user, snapshot)
                if not image.is_protected_snap(snapshot):
                    image.protect_snap(snapshot)
            rbd.RBD().clone(ioctx, name, snapshot, ioctx, child, features=_features(rbd))
            log.info("Cloned %s@%s into %s", name, snapshot, child)
        return self.info(new_user)

    def delete(self, user: str, confirm: str | None) -> None:
        """Delete the user's image: only with ``confirm`` equal to the user's name, and
        never while it has snapshots or is in use."""
        _, rbd = _bindings()
        if confirm != user:
            raise StorageError(
                f"deleting {user}'s volume destroys its data; confirm by passing confirm={user!r}"
            )
        name = self.image_name(user)
        with self._locked(name) as ioctx:
            with self._image(ioctx, name, user) as image:
                snaps = [s["name"] for s in image.list_snaps()]
                if snaps:
                    raise StorageError(
                        f"{user}'s volume has snapshots ({', '.join(snaps)}); delete them first",
                        status=409,
                    )
                self._require_unused(image, user, "delete")
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageBusy:
                raise StorageError(f"{user}'s volume is in use", status=409) from None
            log.warning("Deleted RBD image %s/%s of %s", self.pool, name, user)

    def _require_snapshot(self, image, user: str, snapshot: str) -> None:
        if snapshot not in {s["name"] for s in image.list_snaps()}:
            raise StorageError(f"{user} has no snapshot named {snapshot!r}", status=404)

    def _require_unused(self, image, user: str, action: str) -> None:
        me = self._cluster.get_instance_id()  # our own open handle watches the image too
        watchers = [w for w in image.watchers_list() if w.get("id") != me]
        if watchers:
            where = ", ".join(w.get("addr", "?") for w in watchers)
            raise StorageError(
                f"cannot {action} {user}'s volume while it is in use (mapped by {where}); "
                "stop the server first",
                status=409,
            )


def _features(rbd) -> int:
    return (
        rbd.RBD_FEATURE_LAYERING
        | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
        | rbd.RBD_FEATURE_OBJECT_MAP
        | rbd.RBD_FEATURE_FAST_DIFF
        | rbd.RBD_FEATURE_DEEP_FLATTEN
    )


def _check_size(size_bytes: object) -> None:
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes <= 0:
        raise StorageError(f"volume size must be a positive number of bytes, got {size_bytes!r}")


def _iso(ts) -> str:
    if isinstance(ts, datetime):
        return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).isoformat()
    return datetime.fromtimestamp(float(ts), UTC).isoformat()
