"""What a server whose kernels moved to a new server (the kubernetes backend replaces its
pod at Return or Get GPU) leaves behind: ``resume.json`` in the checkpoint folder, each
notebook's session, kernel and checkpoint, read once by the next server of the same
name (named servers share the home); and, once its kernels are gone, ``EndAtOnce``: the
old server ends on SIGTERM without the Jupyter server's own shutdown.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

RESUME = "resume.json"
"""The notebooks a moved server's successor starts again (in the checkpoint folder)."""
MOVING = (
    "your server is moving to a new pod with its variables; run it again once this page "
    "has reloaded"
)
"""Why a cell sent while the server's kernels were checkpointed for a move was not run."""


def write_manifest(folder: Path, visible: str, notebooks: list[dict]) -> None:
    """Leave ``notebooks`` (each a session with its kernel's name and checkpoint) to the
    next server of this name; ``visible``: the GPUs they were on."""
    manifest = {
        **_whose(),
        "written": datetime.now(UTC).isoformat(),
        "visible": visible,
        "notebooks": notebooks,
    }
    _write_json(folder / RESUME, manifest)


def pending_manifest(folder: Path) -> dict | None:
    """The manifest a server of this name left for its successor, if any."""
    try:
        manifest = json.loads((folder / RESUME).read_text())
    except (OSError, ValueError):
        return None
    if {k: manifest.get(k, "") for k in ("user", "server")} != _whose():
        return None  # another server's (named servers share the home)
    return manifest


def take_manifest(folder: Path) -> bool:
    """Mark the manifest read, so that a later server does not restore the same variables
    again; False if another took it meanwhile."""
    try:
        (folder / RESUME).replace(folder / (RESUME + ".done"))
    except FileNotFoundError:
        return False
    return True


class EndAtOnce:
    """Once the kernels are checkpointed and gone for a move, the pod's end need not wait
    for the Jupyter server's own shutdown (most of a second): nothing is left to save
    (files are written whole or not at all), and the GPU is freed once it is gone."""

    def __init__(self, log):
        self.log = log
        self._sigterm = None
        """The server's own SIGTERM handler while ours ends it at once."""

    def arm(self) -> None:
        """End the server at once on SIGTERM."""
        if self._sigterm is None:
            self._sigterm = signal.getsignal(signal.SIGTERM)

        def end(signum, frame) -> None:
            self.log.info("gpulab: ending at once: the kernels moved to a new server")
            for handler in self.log.handlers:
                handler.flush()
            os._exit(0)

        signal.signal(signal.SIGTERM, end)

    def disarm(self) -> None:
        """The move was called off: the server's own SIGTERM handler again."""
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None


def _whose() -> dict[str, str]:
    return {
        "user": os.environ.get("JUPYTERHUB_USER", ""),
        "server": os.environ.get("JUPYTERHUB_SERVER_NAME", ""),
    }


def _write_json(path: Path, data: dict) -> None:
    """Write ``path`` whole or not at all (a new server may read it at any moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
