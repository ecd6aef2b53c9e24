"""The loop every simulated component (scheduler, kubelet, controllers) runs on.

Level-triggered like a real controller fed by informers: a change to any resource type
the controller watches, or a timer it set, marks it dirty, and its ``sync`` reconciles
everything it owns against the current state. ``sync`` must be idempotent: writes that
change nothing are no-ops in the registry (no new resourceVersion, no event), so the
loop settles.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from typing import TYPE_CHECKING

from .store import Change

if TYPE_CHECKING:
    from .cluster import Cluster

log = logging.getLogger("fakekube")


class Controller(abc.ABC):
    name = "controller"
    watches: tuple[str, ...] = ()  # resource keys, e.g. ("pods", "nodes")

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.store = cluster.store
        self.registry = cluster.registry
        self.recorder = cluster.recorder
        self._dirty = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    def start(self) -> None:
        self.store.add_listener(self._on_change)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        self.kick()

    def _on_change(self, change: Change) -> None:
        if change.resource.key in self.watches:
            self.kick()

    def kick(self) -> None:
        self._dirty.set()

    def kick_later(self, delay: float) -> None:
        handle = asyncio.get_running_loop().call_later(max(0.0, delay), self.kick)
        self._timers.add(handle)

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                self.sync()
            except Exception:
                log.exception("%s: sync failed", self.name)
            await asyncio.sleep(0)

    @abc.abstractmethod
    def sync(self) -> None:
        """Bring what this controller owns in line with the store (runs after changes)."""

    async def stop(self) -> None:
        for handle in self._timers:
            handle.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
