"""Environment layers against their attackers (``gpulab.hub.environments.layers``).

Packing: a user owns their ``~/.local`` and links it where they like; root packs it
for them. Nothing the user cannot read may end up in their layer: tar runs as the user
(here ``nobody``, in a folder of theirs). The hard link and the linked ``~/.local`` leak
a root-only file's content into the layer when tar runs as root.

Unpacking: root unpacks a layer a user may have crafted. Every crafted layer below is
refused whole with nothing written anywhere; an unpack that calls
``tarfile.extractall`` unchecked writes each of them (or keeps the setuid bit).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import pwd
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from gpulab.hub.environments.layers import LayerError, pack, unpack

PREFIX = "opt/gpulab/envs/mine"
LIMIT = 64 << 20
SECRET = "root-only-" + os.urandom(16).hex()
NOBODY = pwd.getpwnam("nobody")


# -- packing as the user -----------------------------------------------------------


@pytest.fixture
def homes():
    """A folder others may pass through, holding ``nobody``'s home (``user``, with a
    small ``~/.local``) and a root-only home (``victim``, 0700) whose
    ``.local/lib/secret.py`` (0600) holds :data:`SECRET`."""
    base = Path(tempfile.mkdtemp(prefix="gpulab-layers-", dir="/tmp"))
    base.chmod(0o755)
    user = base / "user"
    site = user / ".local/lib/python3.11/site-packages"
    site.mkdir(parents=True)
    (site / "mine.py").write_text("MINE = 1\n")
    victim = base / "victim"
    (victim / ".local/lib").mkdir(parents=True)
    victim.chmod(0o700)
    (victim / ".local/lib/secret.py").write_text(SECRET)
    (victim / ".local/lib/secret.py").chmod(0o600)
    try:
        yield user, victim
    finally:
        shutil.rmtree(base)


def own(home: Path) -> None:
    """Give ``home`` and all in it to ``nobody``, links included."""
    for path in [home, *home.rglob("*")]:
        os.lchown(path, NOBODY.pw_uid, NOBODY.pw_gid)


async def pack_as_nobody(home: Path, dest: Path, max_bytes: int = LIMIT):
    return await asyncio.wait_for(
        pack(
            home / ".local",
            dest,
            PREFIX,
            uid=NOBODY.pw_uid,
            gid=NOBODY.pw_gid,
            max_bytes=max_bytes,
        ),
        60,
    )


async def test_a_users_own_packages_are_packed_by_tar_running_as_them(homes, tmp_path):
    user, _ = homes
    own(user)
    layer = await pack_as_nobody(user, tmp_path / "layer.tar.gz")
    with tarfile.open(layer.path) as archive:
        mine = archive.getmember(f"{PREFIX}/lib/python3.11/site-packages/mine.py")
        assert archive.extractfile(mine).read() == b"MINE = 1\n"
        assert (mine.uid, mine.gid) == (0, 0)
    assert os.stat(layer.path).st_uid == 0


def link_lib_to_the_victims_lib(user: Path, victim: Path) -> None:
    shutil.rmtree(user / ".local/lib")
    (user / ".local/lib").symlink_to(victim / ".local/lib")


def link_lib_to_etc(user: Path, victim: Path) -> None:
    shutil.rmtree(user / ".local/lib")
    (user / ".local/lib").symlink_to("/etc")


def link_a_module_to_the_secret(user: Path, victim: Path) -> None:
    site = user / ".local/lib/python3.11/site-packages"
    (site / "stolen.py").symlink_to(victim / ".local/lib/secret.py")


def hard_link_the_secret(user: Path, victim: Path) -> None:
    # what a user gets where protected_hardlinks is off, or through a file root linked
    site = user / ".local/lib/python3.11/site-packages"
    os.link(victim / ".local/lib/secret.py", site / "stolen.py")


def link_dot_local_to_the_victims(user: Path, victim: Path) -> None:
    shutil.rmtree(user / ".local")
    (user / ".local").symlink_to(victim / ".local")


@pytest.mark.parametrize(
    "attack",
    [
        link_lib_to_the_victims_lib,
        link_lib_to_etc,
        link_a_module_to_the_secret,
        hard_link_the_secret,
        link_dot_local_to_the_victims,
    ],
)
async def test_packing_never_reads_what_the_user_cannot(homes, tmp_path, attack):
    user, victim = homes
    own(user)
    attack(user, victim)  # links root makes here stand for the user's: none is followed
    shadow = Path("/etc/shadow").read_bytes() if Path("/etc/shadow").exists() else b""
    try:
        layer = await pack_as_nobody(user, tmp_path / "layer.tar.gz")
    except LayerError as e:
        assert "Permission denied" in str(e) or "can't cd" in str(e)
        assert os.listdir(tmp_path) == []
        return
    tar = gzip.decompress(layer.path.read_bytes())
    assert SECRET.encode() not in tar
    assert not any(line and line in tar for line in shadow.splitlines() if b":$" in line)


async def test_fifos_and_endless_files_in_a_users_site_neither_hang_nor_flood(homes, tmp_path):
    user, _ = homes
    local = user / ".local"
    (local / "bin").mkdir()
    os.mkfifo(local / "bin/fifo")
    (local / "bin/zero").symlink_to("/dev/zero")
    own(user)
    layer = await pack_as_nobody(user, tmp_path / "layer.tar.gz")
    with tarfile.open(layer.path) as archive:
        assert archive.getmember(f"{PREFIX}/bin/fifo").isfifo()
        assert archive.getmember(f"{PREFIX}/bin/zero").linkname == "/dev/zero"
    # a sparse file of 64 GiB stops at the limit, at once
    subprocess.run(["truncate", "--size=64G", local / "bin/huge"], check=True)
    own(user)
    with pytest.raises(LayerError, match=r"more than the limit of 8\.0 MiB"):
        await pack_as_nobody(user, tmp_path / "huge.tar.gz", max_bytes=8 << 20)
    assert not (tmp_path / "huge.tar.gz").exists()


# -- unpacking crafted layers ------------------------------------------------------


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = fields.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def folder(name: str, **fields):
    return entry(name, tarfile.DIRTYPE, **fields)


def link(name: str, target: str):
    return entry(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def craft(path: Path, members: list) -> str:
    """A gzip layer at ``path``: the prefix's folders, then ``members``; its digest."""
    parts = PREFIX.split("/")
    members = [folder("/".join(parts[:n])) for n in range(1, len(parts) + 1)] + members
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    blob = gzip.compress(buffer.getvalue(), mtime=0)
    path.write_bytes(blob)
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def crafted(tmp: Path) -> dict[str, tuple[list, str]]:
    """Each crafted layer: its members, and what the refusal names."""
    victim = tmp / "victim"
    return {
        "dotdot": ([entry("../escape", data=b"x")], "'..'"),
        "dotdot under the prefix": ([entry(f"{PREFIX}/../../../../../escape")], "'..'"),
        "absolute": ([entry(f"{tmp}/absolute", data=b"x")], "absolute path"),
        "outside the prefix": ([entry("etc/profile.d/evil.sh", data=b"x")], "outside"),
        "beside the prefix": ([entry("opt/gpulab/envs/other/x.py")], "outside"),
        "hard link to /etc/shadow": (
            [entry(f"{PREFIX}/s", tarfile.LNKTYPE, linkname="/etc/shadow")],
            "hard link",
        ),
        "link to a folder outside, then a file under it": (
            [link(f"{PREFIX}/lib", str(victim)), entry(f"{PREFIX}/lib/planted.py", data=b"x")],
            "absolute path",
        ),
        "link up and out, then a file under it": (
            [link(f"{PREFIX}/lib", "../../../../../../victim"), entry(f"{PREFIX}/lib/p.py")],
            "leads out of the layer",
        ),
        "link inside, then a file through it": (
            [folder(f"{PREFIX}/real"), link(f"{PREFIX}/lib", "real"), entry(f"{PREFIX}/lib/p.py")],
            "written through the link",
        ),
        "link through a link, out": (
            [folder(f"{PREFIX}/a"), link(f"{PREFIX}/a/up", ".."), link(f"{PREFIX}/out", "a/up/..")],
            "leads out of the layer",
        ),
        "link to an absolute path": (
            [link(f"{PREFIX}/bin/python", "/usr/bin/python3")],
            "absolute path",
        ),
        "fifo": ([entry(f"{PREFIX}/bin/fifo", tarfile.FIFOTYPE)], "FIFO"),
        "char device": (
            [entry(f"{PREFIX}/null", tarfile.CHRTYPE, devmajor=1, devminor=3)],
            "device",
        ),
        "block device": (
            [entry(f"{PREFIX}/disk", tarfile.BLKTYPE, devmajor=7, devminor=0)],
            "device",
        ),
        "whiteout": ([entry(f"{PREFIX}/lib/.wh.numpy")], "whiteout"),
        "opaque whiteout": (
            [folder(f"{PREFIX}/lib"), entry(f"{PREFIX}/lib/.wh..wh..opq")],
            "whiteout",
        ),
        "control character": (
            [entry(f"{PREFIX}/bin/ls\n-rw-r--r-- x", data=b"x")],
            "control character",
        ),
        "huge extended header": (
            [entry(f"{PREFIX}/x", pax_headers={"comment": "x" * (2 << 20)})],
            "extended header",
        ),
        "more than the limit": (
            [entry(f"{PREFIX}/big", data=b"\0" * (LIMIT + 1))],
            "more than the limit",
        ),
    }


@pytest.mark.parametrize("case", list(crafted(Path("/tmp"))))
def test_a_crafted_layer_is_refused_whole_and_nothing_is_written(tmp_path, case):
    members, named = crafted(tmp_path)[case]
    (tmp_path / "victim").mkdir()
    (tmp_path / "envs").mkdir()
    layer = tmp_path / "layer.tar.gz"
    # a good member first: a refusal leaves nothing, not even what came before it
    digest = craft(layer, [entry(f"{PREFIX}/ok.py", data=b"OK = 1\n"), *members])
    with pytest.raises(LayerError, match=named):
        unpack(layer, digest, tmp_path / "envs/mine", PREFIX, max_bytes=LIMIT)
    assert sorted(os.listdir(tmp_path)) == ["envs", "layer.tar.gz", "victim"]
    assert os.listdir(tmp_path / "envs") == []
    assert os.listdir(tmp_path / "victim") == []


def test_a_layer_whose_bytes_are_not_its_digest_is_refused(tmp_path):
    layer = tmp_path / "layer.tar.gz"
    digest = craft(layer, [entry(f"{PREFIX}/ok.py", data=b"OK = 1\n")])
    craft(layer, [entry(f"{PREFIX}/ok.py", data=b"import os; os.system('id')\n")])
    (tmp_path / "envs").mkdir()
    with pytest.raises(LayerError, match=f"not {digest}"):
        unpack(layer, digest, tmp_path / "envs/mine", PREFIX, max_bytes=LIMIT)
    assert os.listdir(tmp_path / "envs") == []


def test_set_id_bits_and_writable_modes_do_not_survive_unpacking(tmp_path):
    layer = tmp_path / "layer.tar.gz"
    digest = craft(
        layer,
        [
            folder(f"{PREFIX}/bin", mode=0o7777, uid=65534, gid=65534),
            entry(f"{PREFIX}/bin/rootshell", data=b"\x7fELF", mode=0o6777, uid=65534),
            entry(f"{PREFIX}/bin/sticky", data=b"x", mode=0o1666, gid=65534),
        ],
    )
    unpack(layer, digest, tmp_path / "mine", PREFIX, max_bytes=LIMIT)
    found = {
        p.name: (stat.S_IMODE(p.lstat().st_mode), p.lstat().st_uid, p.lstat().st_gid)
        for p in (
            tmp_path / "mine/bin",
            tmp_path / "mine/bin/rootshell",
            tmp_path / "mine/bin/sticky",
        )
    }
    assert found == {
        "bin": (0o755, 0, 0),
        "rootshell": (0o755, 0, 0),
        "sticky": (0o644, 0, 0),
    }


def test_a_layer_of_too_many_members_is_refused(tmp_path):
    # 200,001 headers of the prefix's first folder: cheap to make, nothing to write
    header = folder("opt")[0].tobuf(format=tarfile.PAX_FORMAT)
    blob = gzip.compress(header * 200_001 + b"\0" * 1024, compresslevel=1)
    (tmp_path / "layer.tar.gz").write_bytes(blob)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with pytest.raises(LayerError, match="more than 200000 members"):
        unpack(tmp_path / "layer.tar.gz", digest, tmp_path / "mine", PREFIX, max_bytes=LIMIT)
    assert os.listdir(tmp_path) == ["layer.tar.gz"]
