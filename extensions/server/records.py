"""What a Return or Get GPU answers with: ``SwitchError`` (and ``KernelDied``) for a switch
that cannot be done, carrying the HTTP status the handlers answer with; ``KernelReport``,
what became of one kernel (which variables were saved, restored or left out, and how it
kept them); and ``summary``, the sentence the lab's top bar shows once the kernels'
variables are back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class SwitchError(Exception):
    """A switch that cannot be done now; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, **detail):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


class KernelDied(SwitchError):
    """The kernel's process exited while the server waited for its answer; ``reason``
    says how it ended."""

    def __init__(self, message: str, reason: str):
        super().__init__(500, message)
        self.reason = reason


@dataclass
class KernelReport:
    kernel_id: str
    path: str
    saved: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    restored: list[str] = field(default_factory=list)
    note: str = ""
    lost: str = ""
    """Why the kernel restarts without its variables ("": it keeps them)."""
    kept_by: str = "namespace"
    """``namespace``: its variables went through a checkpoint file and a new process;
    ``driver``: its process kept running, parked by the CUDA driver."""
    file: Path | None = None
    """Its checkpoint, if one holds its variables."""

    def as_json(self) -> dict:
        return {
            "kernel": self.kernel_id,
            "path": self.path,
            "kept_by": self.kept_by,
            "saved": self.saved,
            "restored": self.restored,
            "failed": self.failed,
            "note": self.note,
        }


def summary(reports: list[KernelReport]) -> str:
    """What a restore did, in one line: the variables restored, those not saved, and each
    kernel's note."""
    restored = sum(len(r.restored) for r in reports)
    notebooks = sum(bool(r.restored) for r in reports)
    parts = [f"Restored {restored} variable{'s' * (restored != 1)}"]
    if notebooks:
        parts[0] += f" in {notebooks} notebook{'s' * (notebooks != 1)}"
    failed = [f"{name} ({why})" for r in reports for name, why in r.failed.items()]
    if failed:
        parts.append("not saved: " + ", ".join(failed))
    notes = [r.note for r in reports if r.note]
    return "; ".join(parts + notes)
