"""What every ``gpulab`` command prints with: the consoles, times as ages, and the tables,
states and progress that several command groups share."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

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


def when(iso: str | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS (3m ago)``; ``-`` when there is none."""
    return f"{iso[:19].replace('T', ' ')} ({ago(iso)})" if iso else "-"


_STATE_COLOURS = {
    "queued": "yellow",
    "starting": "cyan",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def state_text(name: str, queue_position: int | None = None) -> Text:
    """A job's, trial's or sweep's state in its colour, with its place in the queue."""
    label = name + (f" #{queue_position}" if queue_position else "")
    return Text(label, style=_STATE_COLOURS.get(name, ""))


def number(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def pairs(values: dict | None) -> str:
    """Parameters or metrics as ``key=value key=value``."""
    return " ".join(f"{k}={number(v)}" for k, v in (values or {}).items())


def fields(rows: list[tuple[str, object]]) -> Table:
    """A two-column grid of field: value (values as plain text, never markup)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        if value not in (None, ""):
            grid.add_row(key, value if isinstance(value, Text) else Text(str(value)))
    return grid


def said_cancelled(kind: str, model: dict) -> int:
    """Tell what a cancel did to a job or sweep: stopped it, or found it ended."""
    if model["state"] == "cancelled":
        text = f"Cancelled {kind} {model['name']}"
    else:
        text = (
            f"{kind.capitalize()} {model['name']} had already {model['state']}: nothing to cancel"
        )
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    return 0


class Progress:
    """What a wait is at, on stderr: a spinner on a terminal, a line per change elsewhere."""

    def __init__(self, text: str):
        self.text = text
        self.status = err.status(Text(text)) if err.is_terminal else None
        if self.status is None:
            err.print(text, markup=False, highlight=False, soft_wrap=True)

    def update(self, text: str) -> None:
        if text == self.text:
            return
        self.text = text
        if self.status is not None:
            self.status.update(Text(text))
        else:
            err.print(text, markup=False, highlight=False, soft_wrap=True)

    def __enter__(self):
        if self.status is not None:
            self.status.__enter__()
        return self

    def __exit__(self, *exc):
        if self.status is not None:
            self.status.__exit__(*exc)
