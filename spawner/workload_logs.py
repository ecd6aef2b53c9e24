"""The hub's copies of workload pods' container logs, readable after the pods are gone.

The hub follows each pod's container log into a copy under its data root
(``workload-logs/<user>/<path on the home>``), so a job's logs stay readable through the
API after its pods are gone; a copy keeps at most ``jobs.log_copy_limit`` (the newer
output). Files a process hands back (a job's metrics) arrive on its log's last lines,
base64, and are kept beside it. Whether a pod's container has started or ended is the
kubernetes runner's to say, from its pod watch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from gpulab.hub.kube import api_reason, core_api

from .workload_objects import CONTAINER, HANDED_BACK

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20
"""The longest line the hub waits for the end of; a longer one is copied as it comes."""


class LogCopies:
    """The hub's copies, under ``root``, of the logs the workload pods write on homes."""

    def __init__(
        self,
        root: Path,
        namespace: str,
        limit_bytes: int,
        until_started: Callable[[str], Awaitable[bool]],
        ended: Callable[[str], bool],
    ):
        self.root = root
        self.namespace = namespace
        self.limit_bytes = limit_bytes
        """``jobs.log_copy_limit``: a copy that outgrows it drops its older half."""
        self._until_started = until_started
        """``pod -> bool``: wait until its container has started; False if it never will."""
        self._ended = ended
        """``pod -> bool``: its container has ended (or the pod is gone)."""
        self._copies: dict[str, asyncio.Task] = {}

    def read(self, user: str, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        """Bytes of the copy of the file ``path`` of the user's home (none if there is none)."""
        try:
            with self._copy_path(user, path).open("rb") as f:
                f.seek(offset)
                return f.read(limit)
        except (FileNotFoundError, ValueError):
            return b""

    def _copy_path(self, user: str, path: str) -> Path:
        """Where the hub keeps its copy of a file of the user's home."""
        rel = PurePosixPath(path)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"not a path in the home: {path}")
        return self.root / quote(user, safe="") / rel

    def follow(self, user: str, log_path: str, pod: str, fresh: bool) -> None:
        """Follow ``pod``'s container log into the copy of ``log_path``. The copy's index
        says where each pod's part of it begins; a pod followed again (after a hub
        restart) is copied again from there."""
        target = self._copy_path(user, log_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        index_path = target.with_name(target.name + ".pods")
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            index = {}
        size = target.stat().st_size if target.exists() else 0
        if fresh or pod not in index:
            index[pod] = size
        else:
            with target.open("ab") as f:
                f.truncate(min(index[pod], size))
        index_path.write_text(json.dumps(index))
        old = self._copies.pop(pod, None)
        if old is not None:
            old.cancel()
        self._copies[pod] = asyncio.ensure_future(self._follow_log(user, pod, target))

    async def _follow_log(self, user: str, pod: str, target: Path) -> None:
        core = core_api()
        taken = 0  # bytes of the container log already copied
        partial = b""
        while True:
            if not await self._until_started(pod):
                break
            try:
                response = await core.read_namespaced_pod_log(
                    pod, self.namespace, container=CONTAINER, follow=True,
                    _preload_content=False, _request_timeout=None,
                )  # fmt: skip
                skip = taken
                try:
                    async for chunk in response.content.iter_any():
                        if skip:  # a stream again from the start: what was copied
                            dropped = min(skip, len(chunk))
                            chunk, skip = chunk[dropped:], skip - dropped
                        taken += len(chunk)
                        partial = self._append(user, target, partial + chunk)
                finally:
                    response.release()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 -- not started yet, or the API is away
                status = getattr(e, "status", None)
                if status == 404:
                    break
                log.debug("Following the log of pod %s: %s", pod, api_reason(e))
                await asyncio.sleep(0.5)
                continue
            if self._ended(pod):
                break
            await asyncio.sleep(0.2)  # the stream broke while the container runs: again
        if partial:
            self._append(user, target, partial + b"\n")

    def _append(self, user: str, target: Path, data: bytes) -> bytes:
        """Write the whole lines of ``data`` to the copy (a handed-back file's line to
        that file's copy instead); the incomplete last line is returned, unless it is
        longer than a line may be (then it is written as it is)."""
        *lines, rest = data.split(b"\n")
        if len(rest) > MAX_LINE:
            lines.append(rest)
            rest = b""
        kept = []
        marker = HANDED_BACK.encode()
        for line in lines:
            if line.startswith(marker):
                self._handed_back(user, target, line[len(marker) :])
            else:
                kept.append(line + b"\n")
        if kept:
            with target.open("ab") as f:
                f.write(b"".join(kept))
                size = f.tell()
            if size > self.limit_bytes:
                self._drop_oldest(target, size)
        return rest

    def _drop_oldest(self, target: Path, size: int) -> None:
        """Keep the newer half of a copy that outgrew ``jobs.log_copy_limit`` (the hub's
        disk is shared; the whole log stays on the user's home)."""
        with target.open("rb") as f:
            f.seek(size // 2)
            newer = f.read()
        start = newer.find(b"\n") + 1  # from a line's start, if one begins there
        if 0 < start < len(newer):
            newer = newer[start:]
        note = (
            b"==> gpulab: earlier output dropped from the hub's copy "
            b"(jobs.log_copy_limit); the whole log is on the home\n"
        )
        target.write_bytes(note + newer)
        index_path = target.with_name(target.name + ".pods")
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            return
        index_path.write_text(json.dumps({pod: 0 for pod in index}))

    def _handed_back(self, user: str, log_copy: Path, line: bytes) -> None:
        """Keep a file a pod handed back, if it is one it may hand back: beside its log
        (a job's metrics file), never a log or an index (a process can print such a
        line itself)."""
        path, _, encoded = line.decode(errors="replace").partition(" ")
        try:
            data = base64.b64decode(encoded.strip(), validate=True)
            target = self._copy_path(user, path)
        except (binascii.Error, ValueError):
            target = None
        if (
            target is None
            or target.parent != log_copy.parent
            or target.suffix
            in (
                ".log",
                ".pods",
            )
        ):
            log.warning("A workload of %s handed back a file it may not: %.200s", user, path)
            return
        target.write_bytes(data)

    async def finished(self, pod: str) -> None:
        """Wait (a while) for the log of an ended pod to be copied whole."""
        task = self._copies.pop(pod, None)
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), 15)
        except TimeoutError:
            task.cancel()
            log.warning("Copying the log of pod %s did not finish", pod)
        except Exception:  # noqa: BLE001 -- a broken copy is logged, never fatal
            log.exception("Copying the log of pod %s failed", pod)
