"""A user's own packages as one OCI image layer, and such a layer unpacked by root.

:func:`pack` freezes a user's ``~/.local`` (what ``pip install --user`` writes) into a
gzip tar whose members all sit under a prefix (``opt/gpulab/envs/<name>``). GNU tar
runs as the user, so nothing the user could not read goes in, whatever links they
made; root only hashes and compresses the bytes tar writes, and never parses them.

:func:`unpack` is root's side: it reads a layer (one a user may have crafted) member by
member, refuses the whole layer on anything but plain files, folders and links that
stay inside it, and writes what it accepts itself, read-only for users, into a
temporary folder that one rename turns into the destination.

Modification times are kept (not zeroed): Python checks a ``.pyc`` against its
source's mtime, and the unpacked folder is read-only, so zeroed times would make every
kernel compile every import again. The same files still give the same digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PACKED = ("lib", "bin", "include", "etc", "share")
"""What of ``~/.local`` goes into a layer."""
NOT_PACKED = (
    "share/jupyter/runtime",  # kernels' connection files: their keys
    "share/jupyter/notebook_secret",  # the key that marks notebooks trusted
    "share/jupyter/nbsignatures.db",
    "share/python_keyring",  # keyrings.alt's stored passwords (pip's index credentials)
    "share/keyrings",
    "share/Trash",
)
"""What under :data:`PACKED` stays out: secrets, and the trash."""

MAX_MEMBERS = 200_000
"""The most members :func:`unpack` takes from one layer."""
HEADER_LIMIT = 1 << 20
"""The largest extended (pax or GNU long-name) header :func:`unpack` reads."""
CHUNK = 1 << 20
PROGRESS_INTERVAL = 0.25
"""Seconds between two calls of :func:`pack`'s ``progress``."""
STDERR_TAIL = 8 << 10

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_PREFIX_PART = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EXTENDED_HEADERS = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_EXITING = "Exiting with failure status"
"""tar's last words after an error, which say nothing of it."""
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class LayerError(Exception):
    """A layer was not made or not unpacked; the message says what was refused and why."""


@dataclass(frozen=True)
class Layer:
    """A packed layer on disk."""

    path: Path
    """The gzip tar."""
    digest: str
    """``sha256:<hex>`` of the compressed bytes: the blob's digest in the registry."""
    diff_id: str
    """``sha256:<hex>`` of the uncompressed tar: the image config's ``rootfs.diff_ids``."""
    size: int
    """Compressed bytes."""
    unpacked_size: int
    """Uncompressed bytes of the tar."""


def prefix_parts(prefix: str) -> list[str]:
    """The folders of ``prefix`` (``opt/gpulab/envs/torch-2``), each a plain name."""
    parts = prefix.split("/")
    if not prefix or not all(_PREFIX_PART.fullmatch(p) and p != ".." for p in parts):
        raise LayerError(
            f"{prefix!r} is not a layer prefix: folder names of letters, digits, '.', '_', "
            "'+' and '-', joined by '/', without a leading '/'"
        )
    return parts


# -- packing ---------------------------------------------------------------------


def tar_command(source: Path, prefix: str) -> list[str]:
    """GNU tar writing what of ``source`` it is given to stdout, each member under
    ``prefix``, the same files always giving the same bytes."""
    return [
        "tar",
        "--create",
        "--file=-",
        "--format=pax",
        "--sort=name",
        "--numeric-owner",
        "--owner=0",
        "--group=0",
        # no pid in extended headers' names, no access or change times
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        # a file linked twice goes in twice: unpack takes no hard links
        "--hard-dereference",
        "--anchored",
        *(f"--exclude={path}" for path in NOT_PACKED),
        "--no-anchored",
        # names and hard links' targets under the prefix; symlinks' targets unchanged
        f"--transform=s,^,{prefix}/,S",
        f"--directory={source}",
        # an empty archive rather than tar's refusal when none of PACKED exists
        "--files-from=/dev/null",
    ]


_SELECT_AND_RUN = (
    'cd -- "$1" || exit 2; shift; for m in {members}; do if [ -e "$m" ] || [ -h "$m" ]; '
    'then set -- "$@" "$m"; fi; done; exec "$@"'
).format(members=" ".join(PACKED))
"""Run as the user: in the folder ``$1``, append the PACKED names that exist there to
the command after it, and run that."""


def prefix_headers(prefix: str) -> bytes:
    """Tar headers of the prefix's own folders (``opt``, ``opt/gpulab``, ...): 0755, root's."""
    parts = prefix_parts(prefix)
    headers = b""
    for n in range(1, len(parts) + 1):
        info = tarfile.TarInfo("/".join(parts[:n]))
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        headers += info.tobuf(format=tarfile.PAX_FORMAT)
    return headers


class _HashingFile:
    """A file written to, with the sha256 and count of what went through."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


class _LayerWriter:
    """The uncompressed tar in, hashed; gzip level 1 out, hashed, into ``file``."""

    def __init__(self, file: BinaryIO):
        self.compressed = _HashingFile(file)
        # no name and mtime 0 in the gzip header: the same tar gives the same blob
        self.gzip = gzip.GzipFile(
            filename="", mode="wb", fileobj=self.compressed, compresslevel=1, mtime=0
        )
        self.tar_sha256 = hashlib.sha256()
        self.tar_size = 0

    def write(self, data: bytes) -> None:
        self.tar_sha256.update(data)
        self.tar_size += len(data)
        self.gzip.write(data)

    def close(self) -> None:
        self.gzip.close()
        self.compressed.flush()
        os.fsync(self.compressed.file.fileno())


async def pack(
    source: Path,
    dest: Path,
    prefix: str,
    *,
    uid: int | None,
    gid: int | None,
    max_bytes: int,
    progress: Callable[[int], None] | None = None,
) -> Layer:
    """The layer of ``source`` (a user's ``~/.local``) written at ``dest``: its
    :data:`PACKED` folders, less :data:`NOT_PACKED`, every member under ``prefix``.

    tar runs as ``uid``/``gid`` (no other groups) when ``uid`` is given, and changes
    into ``source`` itself. More than ``max_bytes`` of tar, or tar failing, is a
    :class:`LayerError`, and ``dest`` is left as it was. ``progress(bytes)`` hears the
    uncompressed bytes so far, a few times a second and once at the end."""
    if uid is not None and gid is None:
        raise ValueError("pack as a user needs their group too")
    if not source.is_absolute():
        raise LayerError(f"{source} is not an absolute path")
    headers = prefix_headers(prefix)
    user = {} if uid is None else {"user": uid, "group": gid, "extra_groups": []}
    fd, partial = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    try:
        with open(fd, "wb") as file:
            writer = _LayerWriter(file)
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                _SELECT_AND_RUN,
                "sh",
                str(source),
                *tar_command(source, prefix),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=CHUNK,
                env={"PATH": _PATH, "LC_ALL": "C"},
                **user,
            )
            try:
                await _stream(proc, headers, writer, max_bytes, progress)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    # Python 3.11 ends wait() only once it has seen tar's pipes close,
                    # which a pipe whose reading was paused (a full buffer) never shows
                    await asyncio.gather(_drain(proc.stdout), _drain(proc.stderr))
                    await proc.wait()
            await asyncio.to_thread(writer.close)
        os.chmod(partial, 0o644)
        os.replace(partial, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return Layer(
        path=dest,
        digest="sha256:" + writer.compressed.sha256.hexdigest(),
        diff_id="sha256:" + writer.tar_sha256.hexdigest(),
        size=writer.compressed.size,
        unpacked_size=writer.tar_size,
    )


async def _stream(
    proc: asyncio.subprocess.Process,
    headers: bytes,
    writer: _LayerWriter,
    max_bytes: int,
    progress: Callable[[int], None] | None,
) -> None:
    """tar's stdout, after the prefix's headers, into ``writer``: each chunk compressed
    in a thread while the next is read."""
    stderr = asyncio.ensure_future(_tail(proc.stderr))
    compressing: asyncio.Future | None = None
    total = 0
    reported = time.monotonic()
    chunk = headers
    try:
        while True:
            if compressing is not None:
                await compressing
                compressing = None
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise LayerError(
                    f"the packages are more than the limit of {_human(max_bytes)} "
                    "(uncompressed); remove some and try again"
                )
            compressing = asyncio.ensure_future(asyncio.to_thread(writer.write, chunk))
            if progress is not None and time.monotonic() - reported >= PROGRESS_INTERVAL:
                progress(total)
                reported = time.monotonic()
            chunk = await _read_chunk(proc.stdout)
        returncode = await proc.wait()
        message = await stderr
    finally:
        if compressing is not None:  # never leave a thread writing a file being removed
            with contextlib.suppress(Exception):
                await compressing
        stderr.cancel()
    if returncode != 0:
        lines = [line for line in message.splitlines() if line.strip() and _EXITING not in line]
        last = lines[-1] if lines else f"exit status {returncode}"
        raise LayerError(f"could not read the packages: {last}")
    if progress is not None:
        progress(total)


async def _drain(stream: asyncio.StreamReader) -> None:
    """Read ``stream`` to its end, keeping nothing."""
    while await stream.read(CHUNK):
        pass


async def _read_chunk(stream: asyncio.StreamReader) -> bytes:
    """About :data:`CHUNK` bytes of ``stream``; fewer only at its end."""
    parts = []
    size = 0
    while size < CHUNK:
        data = await stream.read(CHUNK - size)
        if not data:
            break
        parts.append(data)
        size += len(data)
    return b"".join(parts)


async def _tail(stream: asyncio.StreamReader) -> str:
    """The last :data:`STDERR_TAIL` bytes of ``stream``, read to its end."""
    tail = b""
    while data := await stream.read(CHUNK):
        tail = (tail + data)[-STDERR_TAIL:]
    return tail.decode(errors="replace")


def _human(size: int) -> str:
    """``size`` bytes as people read them: ``812 bytes``, ``200.0 KiB``, ``1.5 GiB``."""
    if size < 1024:
        return f"{size} bytes"
    scaled, unit = size / 1024, "KiB"
    for larger in ("MiB", "GiB", "TiB"):
        if scaled < 1024:
            break
        scaled, unit = scaled / 1024, larger
    return f"{scaled:.1f} {unit}"


# -- unpacking -------------------------------------------------------------------


class _CheckedTarInfo(tarfile.TarInfo):
    """A tar header whose extended headers are read only while small: tarfile reads a
    whole pax or GNU long-name header into memory (in ``_proc_member``'s callees)."""

    def _proc_member(self, tarfile):
        if self.type in _EXTENDED_HEADERS and self.size > HEADER_LIMIT:
            raise LayerError(f"the layer has an extended header of {self.size} bytes")
        return super()._proc_member(tarfile)


class _VerifiedStream:
    """The tar inside a gzip file, read once: the compressed bytes are hashed as they
    go and no more than ``limit`` uncompressed bytes come out."""

    def __init__(self, file: BinaryIO, limit: int):
        self.file = file
        self.limit = limit
        self.sha256 = hashlib.sha256()
        self.unpacked = 0
        self._gzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._input = b""

    def read(self, size: int = -1) -> bytes:
        out = []
        want = CHUNK if size is None or size < 0 else size
        while want > 0 and not self._gzip.eof:
            if not self._input:
                self._input = self.file.read(CHUNK)
                if not self._input:
                    raise LayerError("the layer is cut short (its gzip stream ends early)")
                self.sha256.update(self._input)
            try:
                data = self._gzip.decompress(self._input, want)
            except zlib.error as e:
                raise LayerError(f"the layer is not a valid gzip file: {e}") from None
            self._input = self._gzip.unconsumed_tail
            self.unpacked += len(data)
            if self.unpacked > self.limit:
                raise LayerError("the layer unpacks to more than its limit")
            out.append(data)
            want -= len(data)
        return b"".join(out)

    def finish(self) -> str:
        """Read the rest of the file into the hash; the digest of all of it."""
        while data := self.file.read(CHUNK):
            self.sha256.update(data)
        return "sha256:" + self.sha256.hexdigest()


@dataclass
class _Extraction:
    """What has been written so far, in the temporary folder ``root``."""

    root: Path
    max_bytes: int
    names: set[str]
    links: dict[str, str]
    made: set[str]
    folders: list[tuple[str, float]]
    members: int = 0
    size: int = 0


def unpack(layer: Path, digest: str, dest: Path, prefix: str, *, max_bytes: int) -> None:
    """The members of ``layer`` under ``prefix`` written at ``dest`` (which must not
    exist), owned by root and read-only for everyone else.

    The whole layer is refused (a :class:`LayerError` naming the member, nothing left
    at ``dest``) when its compressed bytes are not ``digest``, when it holds more than
    ``max_bytes`` of files or :data:`MAX_MEMBERS` members, or when any member is not a
    plain file, folder or link inside the prefix: see :func:`check_member`."""
    if not _DIGEST.fullmatch(digest):
        raise LayerError(f"{digest!r} is not a sha256 digest")
    parts = prefix_parts(prefix)
    if os.path.lexists(dest):
        raise LayerError(f"{dest} already exists")
    root = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        state = _Extraction(root, max_bytes, set(), {}, {""}, [])
        with open(layer, "rb") as file:
            stream = _VerifiedStream(file, max_bytes + MAX_MEMBERS * 1024 + HEADER_LIMIT)
            _extract(stream, parts, state)
            actual = stream.finish()
        if actual != digest:
            raise LayerError(f"the layer's digest is {actual}, not {digest}")
        for name, target in state.links.items():
            if not _inside(state.links, name, target):
                raise LayerError(f"{name}: the link to {target!r} leads out of the layer")
        for name, mtime in reversed(state.folders):
            os.utime(root / name, (mtime, mtime), follow_symlinks=False)
        os.chown(root, 0, 0)
        os.chmod(root, 0o755)
        os.rename(root, dest)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _extract(stream: _VerifiedStream, prefix: list[str], state: _Extraction) -> None:
    try:
        archive = tarfile.open(fileobj=stream, mode="r|", tarinfo=_CheckedTarInfo)
    except tarfile.TarError as e:
        raise LayerError(f"the layer is not a tar file: {e}") from None
    with archive:
        try:
            for member in archive:
                state.members += 1
                if state.members > MAX_MEMBERS:
                    raise LayerError(f"the layer has more than {MAX_MEMBERS} members")
                name = check_member(member, prefix)
                if name is not None:
                    _write_member(archive, member, name, state)
        except tarfile.TarError as e:
            raise LayerError(f"the layer is not a valid tar file: {e}") from None


def check_member(member: tarfile.TarInfo, prefix: list[str]) -> str | None:
    """The path of ``member`` below the prefix (``""`` for the prefix itself), ``None``
    for one of the prefix's own parent folders; a :class:`LayerError` for a member no
    layer of a user's packages has."""
    name = member.name
    shown = repr(name)
    if _CONTROL.search(name) or _CONTROL.search(member.linkname):
        raise LayerError(f"{shown}: a name or link with a control character")
    if name.startswith("/"):
        raise LayerError(f"{shown}: an absolute path")
    parts = (name.rstrip("/") if member.isdir() else name).split("/")
    if ".." in parts:
        raise LayerError(f"{shown}: a path with '..'")
    if any(p in ("", ".") for p in parts):
        raise LayerError(f"{shown}: a path with an empty or '.' folder name")
    if any(p.startswith(".wh.") for p in parts):
        raise LayerError(f"{shown}: a whiteout (a layer of packages deletes nothing)")
    if len(parts) < len(prefix) and parts == prefix[: len(parts)]:
        if not member.isdir():
            raise LayerError(f"{shown}: a folder of the prefix that is not a folder")
        return None
    if parts[: len(prefix)] != prefix:
        raise LayerError(f"{shown}: outside {'/'.join(prefix)}")
    if member.islnk():
        raise LayerError(f"{shown}: a hard link (to {member.linkname!r})")
    if member.ischr() or member.isblk():
        raise LayerError(f"{shown}: a device")
    if member.isfifo():
        raise LayerError(f"{shown}: a FIFO")
    if member.issparse():
        raise LayerError(f"{shown}: a sparse file")
    if not (member.isreg() or member.isdir() or member.issym()):
        raise LayerError(f"{shown}: an unsupported kind of member (type {member.type!r})")
    rest = "/".join(parts[len(prefix) :])
    if member.issym():
        if not rest:
            raise LayerError(f"{shown}: the prefix itself as a link")
        if member.linkname.startswith("/"):
            raise LayerError(f"{shown}: a link to an absolute path ({member.linkname!r})")
    elif not rest and not member.isdir():
        raise LayerError(f"{shown}: the prefix itself as a file")
    return rest


def _write_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, name: str, state: _Extraction
) -> None:
    """Write one checked member ``name`` (below the prefix) into ``state.root``."""
    shown = repr(member.name)
    if name in state.names:
        raise LayerError(f"{shown}: in the layer twice")
    folders = name.split("/")[:-1] if name else []
    for n in range(1, len(folders) + 1):
        above = "/".join(folders[:n])
        if above in state.links:
            raise LayerError(f"{shown}: would be written through the link {above!r}")
    if member.issym() and not _inside(state.links, name, member.linkname):
        raise LayerError(f"{shown}: the link to {member.linkname!r} leads out of the layer")
    if member.isreg():
        state.size += member.size
        if state.size > state.max_bytes:
            raise LayerError(f"the layer holds more than the limit of {_human(state.max_bytes)}")
    state.names.add(name)
    path = state.root / name
    try:
        _make_folders(state, folders)
        if member.isdir():
            if name not in state.made:
                _make_folder(state, name)
            state.folders.append((name, member.mtime))
        elif member.issym():
            os.symlink(member.linkname, path)
            os.lchown(path, 0, 0)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
            state.links[name] = member.linkname
        else:
            _write_file(archive, member, path)
    except OSError as e:
        raise LayerError(f"{shown}: could not be written ({e.strerror})") from None


def _make_folders(state: _Extraction, folders: list[str]) -> None:
    """The folders above a member, made where the layer has not made them yet."""
    for n in range(1, len(folders) + 1):
        name = "/".join(folders[:n])
        if name not in state.made:
            _make_folder(state, name)


def _make_folder(state: _Extraction, name: str) -> None:
    path = state.root / name
    os.mkdir(path, 0o755)
    os.lchown(path, 0, 0)
    os.chmod(path, 0o755)  # whatever the umask or a setgid parent did
    state.made.add(name)


def _write_file(archive: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
    """A regular file, new (never through a link), root's, readable by everyone (the
    user's umask may have made it 0600 in their home), executable by everyone if by its
    owner, without set-id, sticky or write bits for anyone but root."""
    source = archive.extractfile(member)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with open(fd, "wb") as file:
        left = member.size
        while left > 0:
            data = source.read(min(CHUNK, left))
            if not data:
                raise LayerError(f"{member.name!r}: the layer ends inside this file")
            file.write(data)
            left -= len(data)
        os.fchown(fd, 0, 0)
        os.fchmod(fd, _readable(stat.S_IMODE(member.mode)))
        os.utime(fd, (member.mtime, member.mtime))


def _readable(mode: int) -> int:
    return 0o755 if mode & 0o100 else 0o644


def _inside(links: dict[str, str], name: str, target: str) -> bool:
    """Whether the link ``name`` to ``target`` stays inside the layer's root, following
    the links known (as the kernel would: a link's ``..`` applies to where it leads)."""
    where = name.split("/")[:-1]
    pending = list(reversed(target.split("/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                return False
            where.pop()
            continue
        where.append(part)
        followed = links.get("/".join(where))
        if followed is not None:
            hops += 1
            if hops > 40 or followed.startswith("/"):
                return False
            where.pop()
            pending.extend(reversed(followed.split("/")))
    return True
