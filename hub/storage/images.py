"""Directory homes with an enforced size: an ext4 filesystem in a file, loop-mounted.

With ``storage.home_quota`` (local backend, hub as root) a user's home
``data_root/homes/<name>`` is the mount point of ``data_root/volumes/<name>.img``, a
sparse file holding an ext4 filesystem of the home's size. Writes past it fail with
"No space left on device" for that user alone; growing the home grows the file and the
mounted filesystem online. The file takes disk space only for what is written.

Only the hub (root) runs these commands: ``mkfs.ext4``, ``mount``, ``losetup``,
``resize2fs``, ``umount`` (e2fsprogs, mount; part of every Debian system).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import StorageError


def _run(*cmd: str, what: str) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise StorageError(f"cannot {what}: {cmd[0]} is not installed", status=500) from None
    if r.returncode != 0:
        detail = (r.stderr or r.stdout).strip().splitlines()
        raise StorageError(f"cannot {what}: {detail[-1] if detail else cmd[0]}", status=500)
    return r.stdout


def create(image: Path, size_bytes: int, uid: int, gid: int) -> None:
    """A sparse file of ``size_bytes`` with an empty ext4 filesystem owned by uid:gid."""
    partial = image.with_name(image.name + ".partial")
    partial.unlink(missing_ok=True)
    with open(partial, "wb") as f:
        f.truncate(size_bytes)
    os.chmod(partial, 0o600)
    # no blocks reserved for root; the root directory is the user's
    _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", f"root_owner={uid}:{gid}", str(partial),
         what=f"make the filesystem of {image.name}")  # fmt: skip
    os.replace(partial, image)


def mounted(home: Path) -> bool:
    return os.path.ismount(home)


def mount(image: Path, home: Path) -> None:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    _run("mount", "-o", "loop,nosuid,nodev", str(image), str(home), what=f"mount {home}")


def unmount(home: Path, attempts: int = 1) -> None:
    """Unmount the home; refused (409) while a process still has files open in it
    (``attempts``: tries, 0.2 s apart, for processes that are ending)."""
    for attempt in range(attempts):
        try:
            _run("umount", str(home), what=f"unmount {home}")
            return
        except StorageError as e:
            if attempt == attempts - 1:
                raise StorageError(f"{e}: is a process of the user still running?",
                                   status=409) from None  # fmt: skip
            time.sleep(0.2)


def _extend(image: Path, size_bytes: int) -> bool:
    """Make the file ``size_bytes`` long if it is shorter; whether it was."""
    with open(image, "r+b") as f:
        if os.fstat(f.fileno()).st_size >= size_bytes:
            return False
        f.truncate(size_bytes)
    return True


def filesystem_bytes(image: Path) -> int:
    """The size of the filesystem in the file (which may be longer, until it is grown)."""
    out = _run("dumpe2fs", "-h", str(image), what=f"read the filesystem of {image.name}")
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


def grow_online(image: Path, home: Path, size_bytes: int) -> None:
    """Grow the file and the mounted filesystem to ``size_bytes`` while it is in use.

    Needs CAP_SYS_RESOURCE (a container may not grant it: then a StorageError, and
    ``grow_offline`` does it at the next mount)."""
    _extend(image, size_bytes)
    device = loop_device(image)
    _run("losetup", "--set-capacity", device, what=f"grow {device}")
    _run("resize2fs", device, what=f"grow the filesystem of {home}")


def grow_offline(image: Path, size_bytes: int) -> None:
    """Grow the unmounted filesystem to fill ``size_bytes`` (checked first, as resize2fs
    requires)."""
    _extend(image, size_bytes)
    if filesystem_bytes(image) >= size_bytes - 2**20:
        return
    r = subprocess.run(["e2fsck", "-f", "-p", str(image)], capture_output=True, text=True)
    if r.returncode > 1:  # 1: errors corrected
        raise StorageError(f"the filesystem of {image.name} needs repair: {r.stdout.strip()}")
    _run("resize2fs", str(image), what=f"grow the filesystem of {image.name}")


def detach_stale(image: Path, patience: float = 10.0) -> None:
    """Before the unmounted ``image`` is checked, grown or mounted again: wait until the
    kernel has released the loop device of its last mount (done after ``umount`` returns,
    later on a busy machine), and detach one that stays. A mount would otherwise reuse
    that device, with what it read of the filesystem before it was grown."""
    deadline = time.monotonic() + patience
    while devices := loop_devices(image):
        if time.monotonic() > deadline:
            for device in devices:
                subprocess.run(["losetup", "--detach", device], capture_output=True)
            return
        time.sleep(0.1)


def loop_devices(image: Path) -> list[str]:
    out = _run("losetup", "--noheadings", "--output", "NAME", "-j", str(image),
               what=f"find the loop device of {image.name}")  # fmt: skip
    return out.split()


def loop_device(image: Path) -> str:
    devices = loop_devices(image)
    if not devices:
        raise StorageError(f"{image.name} is not mounted", status=500)
    return devices[0]


def used_bytes(home: Path) -> int:
    """Bytes in use in the mounted filesystem (as ``df`` counts them)."""
    st = os.statvfs(home)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


COPY_STALL_SECONDS = 60.0
"""A copy that reads and writes nothing and uses no CPU this long is stuck (a FIFO the
user swapped in for a file blocks ``cp``'s open for good): it is ended."""


def copy_tree(
    source: str | Path, target: str | Path, what: str, stall: float = COPY_STALL_SECONDS
) -> None:
    """``cp -a --reflink=auto source target``: owners, modes and times kept, blocks shared
    where the filesystem can (a ``source`` ending in ``/.`` copies its contents). A mount
    the user made in their home (FUSE) is not entered: its daemon is the user's."""
    run_watched(
        ["cp", "-a", "--one-file-system", "--reflink=auto", str(source), str(target)],
        what,
        stall,
    )


def run_watched(argv: list[str], what: str, stall: float = COPY_STALL_SECONDS) -> None:
    """Run ``argv`` to its end, or end it once it makes no progress for ``stall`` seconds:
    no CPU time, nothing read or written (it waits on something a user controls)."""
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, text=True
        )
        seen, since = None, time.monotonic()
        while True:
            try:
                code = proc.wait(timeout=min(1.0, stall))
                break
            except subprocess.TimeoutExpired:
                pass
            now = _progress(proc.pid)
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since > stall:
                proc.kill()
                proc.wait()
                raise StorageError(
                    f"{what} made no progress for {stall:.0f}s and was ended (a file that "
                    "cannot be read, such as a named pipe, is in the way)",
                    status=500,
                )
        if code != 0:
            errors.seek(0)
            raise StorageError(f"{what} failed: {errors.read().strip()[:2000]}", status=500)


def _progress(pid: int) -> tuple:
    """What moves while a copy works: its CPU time (the kernel's copy included) and the
    bytes it read and wrote."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        io = Path(f"/proc/{pid}/io").read_text().split()
    except OSError:
        return ()
    # utime and stime (fields 14 and 15 of stat), then every counter in io
    return (stat[11], stat[12], *io[1::2])


def empty(home: Path) -> None:
    """Remove everything in the mounted ``home`` but the filesystem's lost+found."""
    for entry in home.iterdir():
        if entry.name == "lost+found":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
