"""The address the owner's browser reaches this server at, kept for the commands run
in its terminals: ``gpulab tensorboard`` prints a link a terminal can open, not a path
"on this hub's address".

Written when the owner's lab asks for the GPU status (every few seconds while it is
open), into the server's runtime folder (the user's own), read back by the CLI.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir

ORIGIN_FILE = "gpulab-browser-origin"
HOST_RE = re.compile(
    r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$"
)


def origin_file() -> Path:
    return Path(jupyter_runtime_dir()) / ORIGIN_FILE


def browser_origin(headers, protocol: str) -> str:
    """``scheme://host[:port]`` the request came to, as the hub's proxy forwarded it
    (``X-Forwarded-Proto`` / ``-Host`` first); "" when it does not look like one."""
    scheme = (headers.get("X-Forwarded-Proto") or protocol or "").split(",")[0].strip()
    host = (headers.get("X-Forwarded-Host") or headers.get("Host") or "").split(",")[0].strip()
    if scheme not in ("http", "https") or not HOST_RE.match(host):
        return ""
    return f"{scheme}://{host}"


_kept = ""
"""The origin this process wrote last: the lab's poll (every few seconds) touches no file
while it stays the same."""


def remember(origin: str) -> None:
    """Keep ``origin`` for the CLI (a no-op when it is the one kept already)."""
    global _kept
    if not origin or origin == _kept:
        return
    _kept = origin
    path = origin_file()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}")
        temporary.write_text(origin)
        temporary.replace(path)


def remembered() -> str:
    """The origin kept last, or ""."""
    try:
        origin = origin_file().read_text().strip()
    except OSError:
        return ""
    scheme, _, host = origin.partition("://")
    return origin if scheme in ("http", "https") and HOST_RE.match(host) else ""
