"""What every ``gpulab`` command prints with: the consoles, and times as ages."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

console = Console()
err = Console(stderr=True)


def ago(iso: str | None) -> str:
    if not iso:
        return ""
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    seconds = int((datetime.now(UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(seconds, 0)}s ago"
