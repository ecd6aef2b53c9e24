"""Storage for users: home volumes (Ceph RBD images, or directories on the local
backend) and S3 buckets on Ceph RGW. Both volume managers answer in one shape
(``Volume``, ``Snapshot``), so the API, the CLI and the UI do not care which runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class StorageError(Exception):
    """A storage request refused or failed; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class StorageUnavailable(StorageError):
    """Ceph (RADOS or RGW) cannot be reached."""

    def __init__(self, message: str):
        super().__init__(message, status=503)


@dataclass(frozen=True)
class Snapshot:
    name: str
    created: str
    """ISO 8601, UTC."""
    size_bytes: int

    def as_json(self) -> dict:
        return {"name": self.name, "created": self.created, "size_bytes": self.size_bytes}


@dataclass(frozen=True)
class Volume:
    user: str
    backend: str
    """``rbd`` or ``local``."""
    name: str
    """The RBD image name, or the home directory's path."""
    size_bytes: int
    """Provisioned size (the quota for directory homes)."""
    used_bytes: int
    snapshots: list[Snapshot] = field(default_factory=list)
    note: str = ""
    """Something the user should know (a size that applies at the next start)."""

    def as_json(self) -> dict:
        model = {
            "backend": self.backend,
            "name": self.name,
            "size_bytes": self.size_bytes,
            "used_bytes": self.used_bytes,
            "snapshots": [s.as_json() for s in self.snapshots],
        }
        if self.note:
            model["note"] = self.note
        return model


SNAPSHOT_NAME_RULE = "1-64 characters: letters, digits, '.', '_' and '-', not starting with '.'"


def check_snapshot_name(name: object) -> str:
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", name):
        raise StorageError(f"invalid snapshot name {name!r}: {SNAPSHOT_NAME_RULE}")
    return name


class HomeVolumes(Protocol):
    """A backend's home volumes (``LocalHomes`` directories, ``ClaimVolumes`` claims):
    each call may block (Ceph, filesystems), so the hub runs them off its event loop."""

    def info(self, user: str) -> Volume: ...

    def resize(self, user: str, size_bytes: int) -> Volume: ...

    def snapshots(self, user: str) -> list[Snapshot]: ...

    def create_snapshot(self, user: str, name: str) -> Snapshot: ...

    def delete_snapshot(self, user: str, name: str) -> None: ...

    def rollback(self, user: str, name: str) -> Volume: ...

    def delete(self, user: str, confirm: str | None) -> None: ...
