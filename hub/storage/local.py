"""Directory homes (the local backend): usage and size in the same shape as RBD volumes."""

from __future__ import annotations

import os
from pathlib import Path

from gpulab.hub.names import safe_name

from . import StorageError, Volume


def directory_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (like ``du -s``), not following symbolic links."""
    total = 0
    for root, dirs, files in os.walk(path, onerror=None, followlinks=False):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


class LocalHomes:
    """Users' homes as directories under the data root, with a size (quota) each."""

    def __init__(self, data_root: Path, size_bytes: int):
        self.data_root, self.size_bytes = Path(data_root), size_bytes

    def home(self, user: str) -> Path:
        return self.data_root / "homes" / safe_name(user)

    def info(self, user: str) -> Volume:
        home = self.home(user)
        if not home.is_dir():
            raise StorageError(
                f"{user} has no home yet (it is made on the first spawn)", status=404
            )
        return Volume(
            user=user,
            backend="local",
            name=str(home),
            size_bytes=self.size_bytes,
            used_bytes=directory_usage(home),
        )
