"""The registry client and the embedded registry, against Debian's real docker-registry,
with umoci as the judge of every image pushed."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest
from registryfixture import ImageInvalid, start_registry, umoci_verify

from gpulab.hub.environments.registry import OCI_MANIFEST, Registry, RegistryError, sha256_digest
from gpulab.hub.environments.registry_process import EmbeddedRegistry
from hubfixture import free_port

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    embedded = start_registry(tmp_path_factory.mktemp("registry") / "registry")
    yield embedded
    embedded.stop()


@pytest.fixture
def client(registry) -> Registry:
    return registry.client()


def make_layer(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, str, str]:
    """A gzip tar of ``files`` on disk: (path, digest, diff_id)."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    packed = gzip.compress(plain.getvalue(), compresslevel=1, mtime=0)
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(packed)
    return path, sha256_digest(packed), sha256_digest(plain.getvalue())


def image_config(*diff_ids: str) -> bytes:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    return json.dumps(config).encode()


def push_image(client: Registry, repo: str, tag: str, layer: Path, config: bytes) -> str:
    """Push ``config`` and an OCI manifest of it and ``layer`` (already in ``repo``)."""
    config_digest = sha256_digest(config)
    client.push_blob(repo, config, config_digest)
    layer_bytes = layer.read_bytes()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
        "layers": [
            {
                "mediaType": LAYER_TYPE,
                "digest": sha256_digest(layer_bytes),
                "size": len(layer_bytes),
            }
        ],
    }
    return client.put_manifest(repo, tag, manifest, OCI_MANIFEST)


def blob_file(registry: EmbeddedRegistry, digest: str) -> Path:
    """Where the filesystem driver keeps a blob's bytes."""
    hexa = digest.removeprefix("sha256:")
    return registry.root / "data/docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited child of this test process stays a zombie until
    the registry object that started it reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def test_a_pushed_image_unpacks_with_its_files(client, tmp_path):
    layer, digest, diff_id = make_layer(
        tmp_path, {"opt/gpulab/envs/demo/hello.txt": b"hello from the layer\n"}
    )
    assert not client.blob_exists("alice/env", digest)
    client.push_blob("alice/env", layer, digest)
    assert client.blob_exists("alice/env", digest)

    manifest_digest = push_image(client, "alice/env", "v1", layer, image_config(diff_id))

    manifest, got_digest, media_type = client.get_manifest("alice/env", "v1")
    assert (got_digest, media_type) == (manifest_digest, OCI_MANIFEST)
    assert manifest["layers"][0]["digest"] == digest
    assert client.get_manifest("alice/env", manifest_digest)[1] == manifest_digest
    assert client.tags("alice/env") == ["v1"]
    rootfs = umoci_verify(client, "alice/env", "v1", tmp_path / "verify")
    assert (rootfs / "opt/gpulab/envs/demo/hello.txt").read_bytes() == b"hello from the layer\n"


def test_an_image_with_a_wrong_diff_id_fails_verification(client, tmp_path):
    layer, digest, _ = make_layer(tmp_path, {"opt/gpulab/envs/bad/x.py": b"x = 1\n"})
    client.push_blob("bob/env", layer, digest)
    push_image(client, "bob/env", "broken", layer, image_config(sha256_digest(b"another tar")))

    with pytest.raises(ImageInvalid, match="diffid mismatch"):
        umoci_verify(client, "bob/env", "broken", tmp_path / "verify")


def test_a_base_layer_is_mounted_into_another_repository_without_an_upload(client, tmp_path):
    layer, digest, diff_id = make_layer(tmp_path, {"opt/base/lib.py": b"BASE = True\n"})
    client.push_blob("team/base", layer, digest)
    assert not client.blob_exists("carol/env", digest)

    assert client.mount_blob("carol/env", digest, "team/base") is True
    assert client.blob_exists("carol/env", digest)
    push_image(client, "carol/env", "v1", layer, image_config(diff_id))
    rootfs = umoci_verify(client, "carol/env", "v1", tmp_path / "verify")
    assert (rootfs / "opt/base/lib.py").read_text() == "BASE = True\n"

    # a repository that lacks the blob cannot lend it: the registry offers an upload
    assert client.mount_blob("dave/env", digest, "nobody/here") is False
    assert not client.blob_exists("dave/env", digest)


def test_blobs_are_checked_against_their_digests(registry, client, tmp_path):
    data = b"a config the disk will corrupt\n"
    digest = sha256_digest(data)
    client.push_blob("erin/env", data, digest)
    dest = tmp_path / "config.json"
    client.get_blob("erin/env", digest, dest)
    assert dest.read_bytes() == data

    blob_file(registry, digest).write_bytes(b"B" + data[1:])  # same size, other bytes
    dest.unlink()
    with pytest.raises(RegistryError) as caught:
        client.get_blob("erin/env", digest, dest)
    assert caught.value.status == 502 and digest in caught.value.message
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RegistryError) as caught:
        client.get_blob_bytes("erin/env", digest)
    assert caught.value.status == 502

    unknown = sha256_digest(b"never pushed")
    with pytest.raises(RegistryError) as caught:
        client.get_blob("erin/env", unknown, dest)
    assert caught.value.status == 404 and unknown in caught.value.message
    assert list(tmp_path.iterdir()) == []


def test_a_deleted_manifest_is_gone(client, tmp_path):
    layer, digest, diff_id = make_layer(tmp_path, {"opt/gpulab/envs/old/a.txt": b"old\n"})
    client.push_blob("frank/env", layer, digest)
    manifest_digest = push_image(client, "frank/env", "old", layer, image_config(diff_id))

    client.delete_manifest("frank/env", manifest_digest)

    for reference in (manifest_digest, "old"):
        with pytest.raises(RegistryError) as caught:
            client.get_manifest("frank/env", reference)
        assert caught.value.status == 404
    assert client.tags("frank/env") == []


def test_a_wrong_password_is_refused_clearly(registry):
    wrong = "not-the-registry-password-4711"
    with pytest.raises(RegistryError) as caught:
        Registry(registry.url, registry.username, wrong).ping()
    message = caught.value.message
    assert registry.url in message and "refused the credentials" in message
    assert wrong not in message and wrong not in str(caught.value)


def test_a_stopped_registry_cannot_be_reached(tmp_path):
    embedded = start_registry(tmp_path / "registry")
    client = embedded.client()
    client.ping()
    pid = embedded.running_pid()

    embedded.stop()

    assert not embedded.pid_path.exists()
    assert not alive(pid)
    with pytest.raises(RegistryError) as caught:
        client.ping()
    assert caught.value.status == 503
    assert f"the image registry at {embedded.url} cannot be reached" in caught.value.message


def test_the_registry_files_are_root_only(registry):
    def mode(name: str) -> int:
        return stat.S_IMODE(os.stat(registry.root / name).st_mode)

    assert mode(".") == 0o700
    for name in ("password", "htpasswd", "config.yml", "registry.pid", "registry.log"):
        assert mode(name) == 0o600, name
    assert registry.password() not in (registry.root / "htpasswd").read_text()
    assert (registry.root / "htpasswd").read_text().startswith("gpulab:$2")


def test_a_second_start_adopts_the_running_registry(registry, client):
    running = registry.running_pid()
    assert running is not None

    again = EmbeddedRegistry(registry.root, registry.port)
    assert again.start() == running
    again.wait_ready()
    assert again.client().tags("alice/env") == client.tags("alice/env")


def test_a_start_on_another_port_replaces_the_running_registry(tmp_path):
    first = start_registry(tmp_path / "registry")
    old_pid = first.running_pid()
    moved = EmbeddedRegistry(first.root, free_port())
    try:
        new_pid = moved.start()
        moved.wait_ready()
        assert new_pid != old_pid and not alive(old_pid)
        assert moved.running_pid() == new_pid
        with pytest.raises(RegistryError) as caught:
            first.client().ping()
        assert caught.value.status == 503
    finally:
        moved.stop()
        first.stop()


@pytest.mark.parametrize("repo", ["../etc", "Alice/env", "a//b", "a/", "a" * 256])
def test_bad_repository_names_never_reach_the_registry(client, repo):
    with pytest.raises(ValueError, match="repository name"):
        client.blob_exists(repo, sha256_digest(b""))


def test_bad_digests_never_reach_the_registry(client):
    with pytest.raises(ValueError, match="digest"):
        client.get_blob_bytes("alice/env", "sha256:../../v2/_catalog")
