"""A user's packages packed into one OCI layer and unpacked again (``layers.py``)."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from pathlib import Path

import pytest

from gpulab.hub.environments.layers import LayerError, pack, unpack

PREFIX = "opt/gpulab/envs/torch-2"
LIMIT = 1 << 30


def dot_local(home: Path) -> Path:
    """A ``~/.local`` as ``pip install --user`` leaves it, plus a kernel's connection file
    and the trash."""
    local = home / ".local"
    site = local / "lib/python3.11/site-packages"
    (site / "tinypkg").mkdir(parents=True)
    (site / "tinypkg/__init__.py").write_text("ANSWER = 42\n")
    (site / "tinypkg/data.bin").write_bytes(os.urandom(300_000))
    (site / "tinypkg/data.bin").chmod(0o600)  # as pip leaves it under a umask of 077
    (site / "tinypkg-1.0.dist-info").mkdir()
    (site / "tinypkg-1.0.dist-info/METADATA").write_text("Name: tinypkg\nVersion: 1.0\n")
    (site / "tiny").symlink_to("tinypkg")
    (local / "bin").mkdir()
    (local / "bin/tiny").write_text("#!/usr/bin/env python3\nimport tinypkg\n")
    (local / "bin/tiny").chmod(0o755)
    (local / "share/jupyter/runtime").mkdir(parents=True)
    (local / "share/jupyter/runtime/kernel-1.json").write_text('{"key": "secret"}')
    (local / "share/jupyter/kernels/tiny").mkdir(parents=True)
    (local / "share/jupyter/kernels/tiny/kernel.json").write_text("{}")
    (local / "share/Trash/files").mkdir(parents=True)
    (local / "share/Trash/files/old.py").write_text("gone")
    return local


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: its kind, mode and content (or link target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        name = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            found[name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            found[name] = ("folder", stat.S_IMODE(st.st_mode))
        else:
            found[name] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return found


async def test_a_layer_holds_the_users_packages_under_the_prefix_and_unpacks_to_the_same_tree(
    tmp_path,
):
    local = dot_local(tmp_path / "home")
    (tmp_path / "out").mkdir()
    heard = []
    layer = await pack(
        local,
        tmp_path / "out/a.tar.gz",
        PREFIX,
        uid=None,
        gid=None,
        max_bytes=LIMIT,
        progress=heard.append,
    )

    blob = layer.path.read_bytes()
    assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert layer.size == len(blob)
    tar = gzip.decompress(blob)
    assert layer.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert layer.unpacked_size == len(tar)
    assert heard and heard[-1] == len(tar) and heard == sorted(heard)

    with tarfile.open(layer.path) as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert [n for n in members if not n.startswith(PREFIX + "/")] == [
        "opt",
        "opt/gpulab",
        "opt/gpulab/envs",
        PREFIX,
    ]
    assert all(m.mode == 0o755 and m.isdir() for m in list(members.values())[:4])
    assert {m.uid for m in members.values()} == {0}
    site = f"{PREFIX}/lib/python3.11/site-packages"
    assert members[f"{site}/tiny"].issym() and members[f"{site}/tiny"].linkname == "tinypkg"
    assert members[f"{PREFIX}/bin/tiny"].mode == 0o755
    assert f"{PREFIX}/share/jupyter/kernels/tiny/kernel.json" in members
    assert not [n for n in members if "runtime" in n or "Trash" in n]

    again = await pack(
        local, tmp_path / "out/b.tar.gz", PREFIX, uid=None, gid=None, max_bytes=LIMIT
    )
    assert (again.digest, again.diff_id) == (layer.digest, layer.diff_id)

    dest = tmp_path / "envs/torch-2"
    dest.parent.mkdir()
    unpack(layer.path, layer.digest, dest, PREFIX, max_bytes=LIMIT)
    expected = tree(local)
    for name in [n for n in expected if n.startswith(("share/jupyter/runtime", "share/Trash"))]:
        del expected[name]
    # readable by everyone (a user's umask may have closed it), writable by root alone
    data = "lib/python3.11/site-packages/tinypkg/data.bin"
    expected[data] = ("file", 0o644, expected[data][2])
    assert tree(dest) == expected
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert {p.lstat().st_uid for p in [dest, *dest.rglob("*")]} == {0}
    # the .pyc files pip wrote stay valid: sources keep their modification times
    source = "lib/python3.11/site-packages/tinypkg/__init__.py"
    assert int((dest / source).stat().st_mtime) == int((local / source).stat().st_mtime)
    assert os.listdir(dest.parent) == ["torch-2"]


async def test_packages_over_the_limit_are_refused_and_no_layer_is_left(tmp_path):
    local = dot_local(tmp_path / "home")
    (tmp_path / "out").mkdir()
    with pytest.raises(LayerError, match=r"more than the limit of 200\.0 KiB"):
        await pack(
            local, tmp_path / "out/a.tar.gz", PREFIX, uid=None, gid=None, max_bytes=200 << 10
        )
    assert os.listdir(tmp_path / "out") == []


async def test_an_empty_user_site_gives_a_layer_of_the_prefix_alone(tmp_path):
    (tmp_path / "home/.local").mkdir(parents=True)
    layer = await pack(
        tmp_path / "home/.local",
        tmp_path / "a.tar.gz",
        PREFIX,
        uid=None,
        gid=None,
        max_bytes=LIMIT,
    )
    with tarfile.open(layer.path) as archive:
        assert archive.getnames() == ["opt", "opt/gpulab", "opt/gpulab/envs", PREFIX]
    unpack(layer.path, layer.digest, tmp_path / "env", PREFIX, max_bytes=LIMIT)
    assert list((tmp_path / "env").iterdir()) == []


async def test_tars_failure_is_told_with_its_message(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(
        LayerError, match=r"could not read the packages: .*can't cd to .*nobody-home/\.local"
    ):
        await pack(
            tmp_path / "nobody-home/.local",
            tmp_path / "out/a.tar.gz",
            PREFIX,
            uid=None,
            gid=None,
            max_bytes=LIMIT,
        )
    assert os.listdir(tmp_path / "out") == []


def test_a_layer_is_not_unpacked_over_an_existing_folder(tmp_path):
    (tmp_path / "env").mkdir()
    (tmp_path / "env/mine").write_text("kept")
    with pytest.raises(LayerError, match="already exists"):
        unpack(
            tmp_path / "none.tar.gz",
            "sha256:" + "0" * 64,
            tmp_path / "env",
            PREFIX,
            max_bytes=LIMIT,
        )
    assert (tmp_path / "env/mine").read_text() == "kept"
