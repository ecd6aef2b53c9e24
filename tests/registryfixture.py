"""The embedded image registry for tests, and umoci as the judge of an image in it.

- ``start_registry(root)``: a real ``docker-registry`` on a free loopback port, its
  files under ``root``, answering once this returns (stop it with ``.stop()``).
- ``umoci_verify(registry, repo, reference, workdir)``: pull the image into an OCI
  image layout with gpulab's client and unpack it with umoci, which checks every
  digest, size and ``diff_id``; returns the unpacked root filesystem, or raises
  ``ImageInvalid`` with umoci's complaint.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from gpulab.hub.environments.registry import OCI_MANIFEST, Registry, sha256_digest
from gpulab.hub.environments.registry_process import EmbeddedRegistry
from hubfixture import free_port

UMOCI = "/usr/bin/umoci"
REF_NAME = "org.opencontainers.image.ref.name"


class ImageInvalid(AssertionError):
    """umoci refused to unpack the image."""


def start_registry(root: Path) -> EmbeddedRegistry:
    registry = EmbeddedRegistry(root, free_port())
    registry.start()
    try:
        registry.wait_ready()
    except BaseException:
        registry.stop()
        raise
    return registry


def umoci_verify(registry: Registry, repo: str, reference: str, workdir: Path) -> Path:
    """Pull ``repo:reference`` into ``workdir/layout`` and unpack it into
    ``workdir/bundle`` with umoci; the bundle's ``rootfs``."""
    manifest, _, media_type = registry.get_manifest(repo, reference)
    assert media_type == OCI_MANIFEST, f"umoci reads OCI image manifests, not {media_type}"
    layout = workdir / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for descriptor in [manifest["config"], *manifest["layers"]]:
        digest = descriptor["digest"]
        registry.get_blob(repo, digest, blobs / digest.removeprefix("sha256:"))
    # the client hands back the manifest parsed; stored again, its bytes (and so its
    # digest) may differ from the registry's, which umoci does not mind: it checks what
    # the manifest names
    body = json.dumps(manifest).encode()
    digest = sha256_digest(body)
    (blobs / digest.removeprefix("sha256:")).write_bytes(body)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": media_type,
                "digest": digest,
                "size": len(body),
                "annotations": {REF_NAME: "verify"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    bundle = workdir / "bundle"
    done = subprocess.run(
        [UMOCI, "unpack", "--image", f"{layout}:verify", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise ImageInvalid(f"umoci unpack failed ({done.returncode}): {done.stderr.strip()}")
    return bundle / "rootfs"
