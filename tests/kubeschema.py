"""Manifests checked against the real Kubernetes API schemas (kubernetes-validate)."""

import kubernetes_validate

KUBERNETES_VERSION = "1.34.0"
"""The Kubernetes version whose API the manifests are checked against."""


def valid(manifest: dict) -> dict:
    """``manifest``, once it validates strictly against ``KUBERNETES_VERSION``'s schema."""
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    return manifest
