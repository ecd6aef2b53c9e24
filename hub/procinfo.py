"""What the hub reads of a process it started and later adopts (the proxy, the embedded
registry): its arguments, while it lives."""

from __future__ import annotations

from pathlib import Path


def live_args(pid: int) -> list[str] | None:
    """The arguments of ``pid`` while it lives (not a zombie), else None."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None
    if state in ("Z", "X"):
        return None
    # NUL ends each argument; an empty one (``--ip ''``: all interfaces) counts
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]
