"""The welcome notebook: written into a new user's home when their server first starts.

The server runs as the user, so this is the user's own file, made as they would make it.
A home is new when it holds nothing but hidden entries (what the hub and the shell put
there: ``.gpulab``, ``.local``, ``.bashrc``). ``~/.gpulab/welcomed`` is made at the first
start either way, so a user who deletes the notebook, or whose home had files already,
never gets it (again); an existing file of that name is never replaced.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

NOTEBOOK = "Welcome to gpulab.ipynb"
MARKER = ".gpulab/welcomed"
SOURCE = Path(__file__).with_name("welcome.ipynb")


def welcome(root_dir: Path, home: Path, log: logging.Logger) -> Path | None:
    """Write the welcome notebook into ``root_dir`` (the folder JupyterLab shows) when
    the home is new, and mark the home as welcomed; the notebook written, if any."""
    marker = home / MARKER
    if marker.exists():
        return None
    written = None
    try:
        if _is_new(root_dir):
            written = _write_new(root_dir / NOTEBOOK, SOURCE.read_bytes())
        marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        marker.touch()
    except OSError as e:  # a full or read-only home: the server starts all the same
        log.warning("gpulab: could not write the welcome notebook into %s: %s", root_dir, e)
    if written is not None:
        log.info("gpulab: wrote %s for a new home", written)
    return written


def _is_new(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return all(entry.name.startswith(".") for entry in entries)


def _write_new(path: Path, content: bytes) -> Path | None:
    """``path`` with ``content``; None if something of that name exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return path
