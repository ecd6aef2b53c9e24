"""The hub's only ways into a user's home: it is root there, and the user owns every name.

A user with a shell can put anything at a path the hub is about to use: a FIFO (an
``open`` for writing waits for a reader forever), a link to ``/etc/shadow``, another
user's home or the hub's database, a hard link to a root-only file, a folder where a
file belongs, a mount of their own (FUSE), a huge file, a link to ``/dev/zero``. So the
hub touches a home only through these primitives:

- every path is resolved below a descriptor of the home, one name at a time with
  ``openat2`` (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV): no link is
  followed on any component and no mount point is crossed, so a user's FUSE daemon is
  never asked anything; where the kernel lacks ``openat2`` (before Linux 5.6) each name
  is opened with O_NOFOLLOW and must be on the home's filesystem;
- files are opened O_NONBLOCK and used only when ``fstat`` says regular file: a FIFO or
  a device never blocks the hub;
- a file whose contents the hub returns must be owned by the user: a hard link to
  root's file (possible where ``fs.protected_hardlinks`` is 0) reads as absent;
- reads are bounded (``MAX_READ``), listings too (``MAX_NAMES``);
- a write goes to a new file made with O_CREAT | O_EXCL under a random name (whatever
  the user put anywhere is never opened), owned by the user, then renamed over the
  target: a FIFO, link or file at the target is replaced, never written through.

Why not write as the user, in a child process with a deadline? That bounds a hang but
still spends a fork per log read (the API polls logs several times a second) and a
deadline's worth of a thread on every attack; these calls never wait at all, and the
few checks above are all the hub needs. None of them blocks, so callers may use them
from any thread.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import secrets
import stat
from pathlib import Path

MAX_READ = 16 << 20
"""The most bytes one read returns."""
MAX_NAMES = 10_000
"""The most names one listing returns."""

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH
_RESOLVE = 0x01 | 0x02 | 0x04 | 0x08
_SYS_OPENAT2 = 437  # the same number on every architecture Linux added it for
# what a path a user made unusable fails with: read as "there is nothing there"
_ABSENT = (errno.ELOOP, errno.EXDEV, errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EINVAL)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def _openat2(dir_fd: int, name: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, _RESOLVE)
    fd = _libc.syscall(
        _SYS_OPENAT2, ctypes.c_int(dir_fd), os.fsencode(name), ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )  # fmt: skip
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)
    return fd


@functools.cache
def _have_openat2() -> bool:
    """Whether this kernel (and any seccomp filter) lets the hub call openat2."""
    root = os.open("/", _DIR)
    try:
        os.close(_openat2(root, ".", _DIR))
    except OSError:
        return False
    finally:
        os.close(root)
    return True


def _open_name(dir_fd: int, name: str, flags: int, mode: int = 0) -> int:
    """``name`` (one path component) in the folder ``dir_fd``: not through a link, not
    into another filesystem."""
    if _have_openat2():
        return _openat2(dir_fd, name, flags, mode)
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    if os.fstat(fd).st_dev != os.fstat(dir_fd).st_dev:
        os.close(fd)
        raise OSError(errno.EXDEV, "a mount point, not followed", name)
    return fd


def _parts(relative: str) -> list[str]:
    parts = [p for p in relative.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise OSError(errno.EINVAL, "not a plain path in the home", relative)
    return parts


def open_dir(home: Path, relative: str, make: tuple[int, int] | None = None) -> int:
    """A descriptor of the folder ``home/relative``; ``make``: (uid, gid) to create
    missing folders with (0700, owned by them when the hub is root). OSError when a name
    on the way is a link, a mount point or not a folder."""
    fd = os.open(home, _DIR)  # the home's own path is the hub's: data root, homes/
    try:
        for part in _parts(relative):
            made = False
            if make is not None:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass
            nxt = _open_name(fd, part, _DIR)
            os.close(fd)
            fd = nxt
            if made and os.geteuid() == 0:
                os.fchown(fd, *make)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(home: Path, relative: str, owner: int | None = None) -> int:
    """A read-only descriptor of the regular file ``home/relative``; ``owner``: it must
    belong to that uid. FileNotFoundError for anything else (link, FIFO, device, folder,
    someone else's file)."""
    parts = _parts(relative)
    if not parts:
        raise FileNotFoundError(relative)
    try:
        folder = open_dir(home, "/".join(parts[:-1]))
    except OSError as e:
        raise FileNotFoundError(errno.ENOENT, e.strerror, relative) from None
    try:
        fd = _open_name(folder, parts[-1], _FILE)
    except OSError as e:
        if e.errno in _ABSENT:
            raise FileNotFoundError(errno.ENOENT, e.strerror, relative) from None
        raise
    finally:
        os.close(folder)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (owner is not None and st.st_uid != owner):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "not a regular file of the user's", relative)
    return fd


def read(home: Path, relative: str, offset: int = 0, limit: int = 1 << 20,
         owner: int | None = None) -> bytes:  # fmt: skip
    """Up to ``limit`` (at most ``MAX_READ``) bytes of the user's file from ``offset``;
    b"" when there is no such file (see ``open_file``) or nothing past ``offset``."""
    try:
        fd = open_file(home, relative, owner)
    except FileNotFoundError:
        return b""
    try:
        size = os.fstat(fd).st_size
        if offset >= size:
            return b""
        chunks, want = [], min(limit, MAX_READ, size - offset)
        while want > 0:
            chunk = os.pread(fd, want, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset, want = offset + len(chunk), want - len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_file(home: Path, relative: str) -> bool:
    """Whether a regular file is at ``home/relative`` (reached without a link)."""
    try:
        os.close(open_file(home, relative))
    except FileNotFoundError:
        return False
    return True


def list_dir(home: Path, relative: str) -> list[str]:
    """At most ``MAX_NAMES`` names in the folder ``home/relative``; FileNotFoundError when
    it is not a folder reached without a link."""
    try:
        fd = open_dir(home, relative)
    except OSError as e:
        raise FileNotFoundError(errno.ENOENT, e.strerror, relative) from None
    names: list[str] = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                names.append(entry.name)
                if len(names) >= MAX_NAMES:
                    break
    finally:
        os.close(fd)
    return names


def make_dirs(home: Path, relative: str, uid: int, gid: int) -> None:
    """Create the folders of ``relative`` under the home (0700, the user's)."""
    try:
        os.close(open_dir(home, relative, make=(uid, gid)))
    except OSError as e:
        raise _explained(e) from None


def write(home: Path, relative: str, data: bytes, uid: int, gid: int) -> None:
    """Replace the file ``home/relative`` with ``data`` (0600, the user's): written whole
    to a new file beside it, then renamed over it. OSError says what is in the way."""
    parts = _parts(relative)
    if not parts:
        raise OSError(errno.EINVAL, "not a file path", relative)
    name = parts[-1]
    try:
        folder = open_dir(home, "/".join(parts[:-1]), make=(uid, gid))
    except OSError as e:
        raise _explained(e) from None
    try:
        temp, out = "", -1
        while out < 0:
            temp = f".{name}.{secrets.token_hex(8)}.tmp"
            try:
                out = _open_name(folder, temp, _NEW, 0o600)
            except FileExistsError:
                continue  # the user guessed a name: take another
        try:
            if os.geteuid() == 0:
                os.fchown(out, uid, gid)
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
        except BaseException:
            os.unlink(temp, dir_fd=folder)
            raise
        finally:
            os.close(out)
        try:
            os.rename(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
        except OSError as e:
            os.unlink(temp, dir_fd=folder)
            raise _explained(e) from None
    finally:
        os.close(folder)


def _explained(e: OSError) -> OSError:
    """``e`` with a reason a user understands for what they put in the way."""
    reasons = {
        errno.ELOOP: "a link is in the way (not followed)",
        errno.EXDEV: "a link or a mount point is in the way (not followed)",
        errno.EISDIR: "a folder is in the way",
        errno.ENOTEMPTY: "a folder is in the way",
        errno.ENOTDIR: "a file is where a folder belongs",
    }
    if e.errno not in reasons:
        return e
    return type(e)(e.errno, reasons[e.errno], e.filename)
