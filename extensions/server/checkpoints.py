"""The kernels' checkpoints in ``~/.gpulab/checkpoints``: a few generations per notebook,
never one lost while it may be the only copy of a user's variables.

Each Return or Get GPU writes every kernel's variables to a checkpoint of its own
(``<id>.pkl``, with the files ``namespace.py`` writes beside it: ``<id>.pkl.json`` (what
was saved), ``<id>.pkl.<hex>.data`` (big tensors), ``<id>.pkl.restored.json``), and a
record of whose it is (``<id>.pkl.meta.json``: kernel, notebook, when, state). Rules:

- a checkpoint is never replaced: each save makes a new one, so a save that finds an
  empty kernel (one whose restore failed) cannot overwrite the variables kept before;
- one that holds no variable is not kept at all (there is nothing to lose);
- a checkpoint is removed only when a later one of the same notebook was restored and
  verified, and then only beyond the newest ``keep`` of that notebook; one whose restore
  failed is never removed by gpulab (its owner restores or deletes it), so "they are
  kept in FILE" stays true;
- ``gpulab gpu checkpoints`` lists them and restores one into a notebook's kernel.
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_KEEP = 2
ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{0,63}$")
"""A checkpoint id: its file's name without ``.pkl`` (letters, digits, dashes: no path)."""


def keep_from_environment() -> int:
    """How many checkpoints per notebook the hub asks servers to keep
    (``gpus.checkpoint_generations``, passed as ``GPULAB_CHECKPOINT_GENERATIONS``)."""
    try:
        return max(1, int(os.environ.get("GPULAB_CHECKPOINT_GENERATIONS", DEFAULT_KEEP)))
    except ValueError:
        return DEFAULT_KEEP


class CheckpointNotFound(LookupError):
    pass


class Checkpoints:
    def __init__(self, folder: Path, keep: int = DEFAULT_KEEP):
        self.folder = folder
        self.keep = keep

    # -- the life of one checkpoint ----------------------------------------------------

    def new(self, kernel_id: str, notebook: str) -> Path:
        """A name for a new checkpoint of ``kernel_id`` (never an existing one's), with its
        record; ``namespace.py``'s ``save`` writes the variables there."""
        self.folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}"
        base = f"{stamp}-{re.sub('[^0-9A-Za-z]', '', kernel_id)[:8]}"
        ident, n = base, 1
        while (self.folder / f"{ident}.pkl.meta.json").exists():
            n += 1
            ident = f"{base}-{n}"
        file = self.folder / f"{ident}.pkl"
        self._write_meta(
            file,
            {
                "id": ident,
                "kernel": kernel_id,
                "notebook": notebook,
                "created": datetime.fromtimestamp(now, UTC).isoformat(),
                "state": "saving",
            },
        )
        return file

    def saved(self, file: Path) -> bool:
        """The save into ``file`` is done; whether it is kept (it holds variables)."""
        try:
            report = json.loads(Path(f"{file}.json").read_text())
        except (OSError, ValueError):
            report = {}
        if not report.get("saved"):
            remove(file)  # nothing in it: an empty checkpoint never stands for a kernel
            return False
        self._update(file, state="saved", saved=len(report["saved"]))
        return True

    def abandoned(self, file: Path) -> None:
        """The save into ``file`` did not happen (the kernel died, the home is full)."""
        remove(file)

    def restored(self, file: Path) -> None:
        """Its variables are back in their kernel, verified: older checkpoints of the same
        notebook beyond the newest ``keep`` go."""
        meta = self._update(file, state="restored", restored=_now())
        if meta is not None:
            self._prune(meta)

    def not_restored(self, file: Path, why: str) -> None:
        """Its restore failed: it stays, with why, until a later restore of its notebook."""
        self._update(file, state="not restored", why=why)

    # -- what users see ----------------------------------------------------------------

    def list(self) -> list[dict]:
        """Every checkpoint, newest first: id, notebook, kernel, created, state, the number of
        variables, bytes on the home (its files together), and why a restore failed."""
        return [{**meta, "bytes": _bytes(Path(meta["file"]))} for meta in self._records()]

    def record(self, file: Path) -> dict:
        """What is known of checkpoint ``file`` (kernel, notebook, created, state...)."""
        return self._meta(file)

    def file(self, ident: str) -> Path:
        """The checkpoint ``ident``'s file; CheckpointNotFound unless it is one."""
        file = self.folder / f"{ident}.pkl"
        if not ID.match(ident) or not file.is_file() or file.is_symlink():
            raise CheckpointNotFound(f"there is no checkpoint {ident!r}")
        return file

    # -- records -----------------------------------------------------------------------

    def _records(self) -> list[dict]:
        """The checkpoints' records with their files, newest first (not those being written)."""
        out = []
        for file in self.folder.glob("*.pkl"):
            meta = self._meta(file)
            if meta.get("state") != "saving":
                out.append({**meta, "file": str(file)})
        out.sort(key=lambda m: m.get("created", ""), reverse=True)
        return out

    def _prune(self, meta: dict) -> None:
        mine = [m for m in self._records() if _owner(m) == _owner(meta)]
        for old in mine[self.keep :]:  # newest first
            # one whose restore failed holds what no other does: only its owner removes it
            if old["state"] != "not restored" and old["created"] <= meta["created"]:
                remove(Path(old["file"]))

    def _meta(self, file: Path) -> dict:
        """The record of ``file``; for a checkpoint written before records were kept, what
        its file tells (its kernel is the file's name)."""
        try:
            meta = json.loads(Path(f"{file}.meta.json").read_text())
            if isinstance(meta, dict):
                return meta
        except (OSError, ValueError):
            pass
        try:
            created = datetime.fromtimestamp(file.stat().st_mtime, UTC).isoformat()
        except OSError:
            created = ""
        return {"id": file.stem, "kernel": file.stem, "notebook": "", "created": created,
                "state": "saved"}  # fmt: skip

    def _update(self, file: Path, **fields) -> dict | None:
        """Change a checkpoint's record; the record as changed (kept as it was on the home
        when it cannot be written there: a home full since the checkpoint)."""
        if not file.exists():
            return None
        meta = {**self._meta(file), **fields}
        try:
            self._write_meta(file, meta)
        except OSError:
            Path(f"{file}.meta.json.tmp").unlink(missing_ok=True)
        return meta

    def _write_meta(self, file: Path, meta: dict) -> None:
        path = Path(f"{file}.meta.json")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(path)


def remove(file: Path) -> None:
    """A checkpoint and the files beside it (tensors mapped from its data files stay
    readable after they are unlinked)."""
    for path in file.parent.glob(file.name + "*"):
        path.unlink(missing_ok=True)


def _owner(meta: dict) -> str:
    """What a checkpoint belongs to: its notebook, or its kernel when it had none."""
    return "notebook:" + meta["notebook"] if meta.get("notebook") else "kernel:" + meta["kernel"]


def _bytes(file: Path) -> int:
    total = 0
    for path in file.parent.glob(file.name + "*"):
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total


def _now() -> str:
    return datetime.now(UTC).isoformat()
