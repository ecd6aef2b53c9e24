"""Directory homes (the local backend) in the same shape as RBD volumes.

A home is ``data_root/homes/<name>``; its size is ``storage.home_size`` until grown.
With ``storage.home_quota`` the size is enforced: the home is the mount point of an ext4
filesystem in ``data_root/volumes/<name>.img`` (``images``); a directory home from
before is moved into it on its next use. Without it the size is only reported.
Snapshots are copies under ``data_root/snapshots/<name>/<snapshot>`` (root-only, 0700),
made with ``cp -a --reflink=auto`` so copy-on-write filesystems share the blocks.
Changes to one user's home serialise on a lock file, across threads and processes; a wait
for it is bounded (then 409), since callers wait in a thread pool all users share.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from gpulab.hub.names import NameConflict, home_name
from gpulab.hub.settings import format_size

from . import Snapshot, StorageError, Volume, check_snapshot_name, images

log = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 30.0
"""How long an operation on a home waits for another one on the same home (then 409)."""


def directory_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (like ``du -sx``): by folder descriptors (a folder
    the user swaps for a link is not entered), never into a mount the user made."""
    device = os.lstat(path).st_dev
    total = 0
    for _root, dirs, files, fd in os.fwalk(path):
        elsewhere = set()
        for name in files + dirs:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != device:
                elsewhere.add(name)
                continue
            total += st.st_blocks * 512
        dirs[:] = [d for d in dirs if d not in elsewhere]
    return total


def processes_of(uid: int) -> list[int]:
    """Pids of the processes that run as ``uid`` (none for the hub's own account, which
    owns every home in single-user mode)."""
    if uid == os.geteuid():
        return []
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile
                continue
    return found


class LocalHomes:
    """Users' homes as directories: size, use, grow, snapshots and rollback."""

    def __init__(
        self,
        data_root: Path,
        size_bytes: int,
        in_use: Callable[[str], bool] = lambda user: False,
        quota: bool = False,
    ):
        self.data_root, self.default_size = Path(data_root), size_bytes
        self.in_use = in_use
        self.quota = quota
        """Enforce each home's size (an ext4 image per home; the hub must be root)."""

    def _name(self, user: str) -> str:
        """The name recorded for the user's home (``NameConflict``, a 409, if taken)."""
        return home_name(self.data_root, user)

    def home(self, user: str) -> Path:
        return self.data_root / "homes" / self._name(user)

    def _image(self, user: str) -> Path:
        return self.data_root / "volumes" / f"{self._name(user)}.img"

    def ensure(self, user: str, uid: int, gid: int) -> None:
        """Before anything of the user's runs: with a quota, the home's filesystem is
        made (at the home's size) and mounted; a directory home is moved into it."""
        if not self.quota:
            return
        home, image = self.home(user), self._image(user)
        with self._locked(user) as meta:
            if images.mounted(home):
                return
            if not image.exists():
                images.create(image, meta["size_bytes"], uid, gid)
            if home.is_dir() and any(home.iterdir()):
                self._move_into_image(home, image)
            else:
                self._mount(image, home, meta)

    @staticmethod
    def _mount(image: Path, home: Path, meta: dict) -> None:
        images.detach_stale(image)  # the loop device of its last mount is gone
        # first what it was grown to while mounted, where online growing is not allowed
        images.grow_offline(image, meta["size_bytes"])
        meta.pop("grow_pending", None)
        images.mount(image, home)

    def _move_into_image(self, home: Path, image: Path) -> None:
        """A directory home from before the quota: copied into the image, then replaced
        by it. The directory is removed only once the image is mounted in its place."""
        staging = home.with_name(f".{home.name}.moving")
        images.mount(image, staging)
        try:
            images.empty(staging)  # what an interrupted earlier attempt left
            images.copy_tree(f"{home}/.", staging, f"moving {home} into its filesystem")
        finally:
            images.unmount(staging)
            staging.rmdir()
        old = home.with_name(f".{home.name}.before-quota")
        os.rename(home, old)
        try:
            images.mount(image, home)
        except StorageError:
            home.rmdir()
            os.rename(old, home)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def _mount_existing(self, user: str) -> None:
        """A quota home whose filesystem is not mounted (after a reboot): mount it."""
        home, image = self.home(user), self._image(user)
        if self.quota and image.exists() and not images.mounted(home):
            with self._locked(user) as meta:
                if not images.mounted(home):
                    self._mount(image, home, meta)

    def _meta_path(self, user: str) -> Path:
        return self.data_root / "volumes" / f"{self._name(user)}.json"

    def _snap_root(self, user: str) -> Path:
        return self.data_root / "snapshots" / self._name(user)

    @contextlib.contextmanager
    def _locked(self, user: str) -> Iterator[dict]:
        """This user's home, locked; yields its metadata, saved atomically on exit."""
        meta_dir = self.data_root / "volumes"
        meta_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        busy = StorageError(
            f"another operation on {user}'s home is still running; try again once it is done",
            status=409,
        )
        # flock excludes other threads too (each open is its own lock); the wait is
        # bounded, since callers wait in a pool of threads that all users share
        with open(meta_dir / f"{self._name(user)}.lock", "w") as lock:
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise busy from None
                    time.sleep(0.1)
            meta = self._meta(user)
            before = dict(meta)
            yield meta
            if meta != before:
                tmp = self._meta_path(user).with_suffix(".tmp")
                tmp.write_text(json.dumps(meta))
                os.replace(tmp, self._meta_path(user))

    def _meta(self, user: str) -> dict:
        try:
            return json.loads(self._meta_path(user).read_text())
        except FileNotFoundError:
            return {"size_bytes": self.default_size}

    def _require_home(self, user: str) -> Path:
        self._mount_existing(user)
        home = self.home(user)
        if not home.is_dir():
            raise StorageError(
                f"{user} has no home yet (it is made on the first spawn)", status=404
            )
        return home

    # -- queries -------------------------------------------------------------------

    def info(self, user: str) -> Volume:
        home = self._require_home(user)
        meta = self._meta(user)
        return Volume(
            user=user,
            backend="local",
            name=str(home),
            size_bytes=meta["size_bytes"],
            used_bytes=images.used_bytes(home) if images.mounted(home) else directory_usage(home),
            note="the new size applies when your server next starts"
            if meta.get("grow_pending")
            else "",
            snapshots=self.snapshots(user),
        )

    def snapshots(self, user: str) -> list[Snapshot]:
        self._require_home(user)
        root = self._snap_root(user)
        found = []
        for meta in sorted(root.glob("*.json")) if root.is_dir() else []:
            data = json.loads(meta.read_text())
            found.append(Snapshot(meta.stem, data["created"], data["size_bytes"]))
        return sorted(found, key=lambda s: s.created)

    # -- changes -------------------------------------------------------------------

    def resize(self, user: str, size_bytes: int) -> Volume:
        """Grow the home's size; shrinking is refused."""
        self._require_home(user)
        with self._locked(user) as meta:
            if size_bytes < meta["size_bytes"]:
                raise StorageError(
                    f"refusing to shrink {user}'s home from {format_size(meta['size_bytes'])} "
                    f"to {format_size(size_bytes)}"
                )
            meta["size_bytes"] = size_bytes
            if images.mounted(self.home(user)):
                try:
                    images.grow_online(self._image(user), self.home(user), size_bytes)
                except StorageError as e:  # e.g. no CAP_SYS_RESOURCE: at the next mount
                    log.warning("%s's home grows at its next mount: %s", user, e)
                    meta["grow_pending"] = True
        return self.info(user)

    def release(self, user: str) -> None:
        """After the user's server stopped: unmount a quota home if nothing uses it, so
        a size it was given meanwhile applies at the next start."""
        try:
            home = self.home(user)
        except NameConflict:  # the user was refused a home: there is none to release
            return
        if not (self.quota and images.mounted(home)):
            return
        with self._locked(user):
            try:
                images.unmount(home, attempts=10)
            except StorageError as e:  # a job or model of the user's still runs there
                log.info("%s's home stays mounted: %s", user, e)

    def create_snapshot(self, user: str, name: str) -> Snapshot:
        check_snapshot_name(name)
        home = self._require_home(user)
        with self._locked(user):
            return self._snapshot(user, home, name)

    def _snapshot(self, user: str, home: Path, name: str) -> Snapshot:
        root = self._snap_root(user)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = root / name
        if target.exists() or (root / f"{name}.json").exists():
            raise StorageError(f"{user} already has a snapshot named {name!r}", status=409)
        partial = root / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            images.copy_tree(home, partial, f"snapshot of {user}'s home")
        except StorageError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        os.rename(partial, target)
        snap = Snapshot(name, datetime.now(UTC).isoformat(), directory_usage(target))
        (root / f"{name}.json").write_text(
            json.dumps({"created": snap.created, "size_bytes": snap.size_bytes})
        )
        return snap

    def rollback(self, user: str, name: str) -> Volume:
        """Return the home to a snapshot. What it held before is kept as a new snapshot
        (``before-rollback-<time>``), so a rollback never loses data."""
        check_snapshot_name(name)
        home = self._require_home(user)
        source = self._snap_root(user) / name
        if not source.is_dir():
            raise StorageError(f"{user} has no snapshot named {name!r}", status=404)
        if self.in_use(user) or processes_of(home.stat().st_uid):
            # root writes into the home: a process of the user's could swap a folder
            # for a link meanwhile and have root write outside it
            raise StorageError(
                f"cannot roll back {user}'s home while their server, jobs, models or any "
                "other process of theirs runs; stop them first",
                status=409,
            )
        with self._locked(user):
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            self._snapshot(user, home, f"before-rollback-{stamp}")
            if images.mounted(home):  # a mount point stays: its contents are replaced
                images.empty(home)
                images.copy_tree(f"{source}/.", home, f"rollback of {user}'s home")
                return self.info(user)
            restored = home.with_name(f".{home.name}.restoring")
            shutil.rmtree(restored, ignore_errors=True)
            try:
                images.copy_tree(source, restored, f"rollback of {user}'s home")
            except StorageError:
                shutil.rmtree(restored, ignore_errors=True)
                raise
            old = home.with_name(f".{home.name}.old")
            os.rename(home, old)
            os.rename(restored, home)
            shutil.rmtree(old, ignore_errors=True)
        return self.info(user)

    def delete_snapshot(self, user: str, name: str) -> None:
        check_snapshot_name(name)
        root = self._snap_root(user)
        if not (root / name).is_dir():
            raise StorageError(f"{user} has no snapshot named {name!r}", status=404)
        with self._locked(user):
            (root / f"{name}.json").unlink(missing_ok=True)
            shutil.rmtree(root / name)

    def delete(self, user: str, confirm: str | None) -> None:
        """Delete the user's home: only with ``confirm`` equal to the user's name, never
        while their server runs or while snapshots of it exist."""
        if confirm != user:
            raise StorageError(
                f"deleting {user}'s home destroys its data; confirm with confirm={user}"
            )
        home = self._require_home(user)
        if self.in_use(user):
            raise StorageError(f"{user}'s server is running; stop it first", status=409)
        snaps = [s.name for s in self.snapshots(user)]
        if snaps:
            raise StorageError(
                f"{user}'s home has snapshots ({', '.join(snaps)}); delete them first", status=409
            )
        with self._locked(user):
            if images.mounted(home):
                images.unmount(home)
                home.rmdir()
                self._image(user).unlink()
                self._meta_path(user).unlink(missing_ok=True)
                return
            doomed = home.with_name(f".{home.name}.deleting")
            os.rename(home, doomed)  # gone from its place at once, even if removal is slow
            shutil.rmtree(doomed)
            self._meta_path(user).unlink(missing_ok=True)


def local_homes(settings, in_use: Callable[[str], bool] = lambda user: False) -> LocalHomes:
    """The local backend's homes, as the settings make them."""
    st = settings.storage
    return LocalHomes(settings.data_path, st.home_size_bytes, in_use=in_use, quota=st.home_quota)
