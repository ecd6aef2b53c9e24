"""The spawners' pod cache: KubeSpawner's pod reflector, which also wakes its waiters.

KubeSpawner keeps one list+watch of the server pods per hub and polls it with a growing
backoff (up to seconds between looks). ``WakingPodReflector`` lets a spawner wait on one
pod instead (``changed``, ``next_change``): the watch's news of it wake the wait at once,
so a start or a stop answers as soon as the pod runs or is gone.
"""

from __future__ import annotations

import asyncio

from kubespawner.spawner import PodReflector
from traitlets import validate


class _Notifying(dict):
    """A reflector's resources, calling ``changed(key)`` after each change the watch
    makes (it sets and pops keys)."""

    def __init__(self, items, changed):
        super().__init__(items)
        self._changed = changed

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._changed(key)

    def pop(self, key, *default):
        value = super().pop(key, *default)
        self._changed(key)
        return value


class WakingPodReflector(PodReflector):
    """KubeSpawner's pod reflector, which also wakes whoever waits on a pod
    (``changed``) as soon as the watch brings news of it: KubeSpawner itself polls its
    reflector with a growing backoff (up to seconds between looks)."""

    def __init__(self, *args, **kwargs):
        self._waiters: dict[str, list[asyncio.Future]] = {}
        super().__init__(*args, **kwargs)

    @validate("resources")
    def _notifying(self, proposal):
        """A new list (at the start, and when a watch cannot resume): it wakes the
        waiters of the pods it changed."""
        new, old = proposal["value"], self.resources
        for key in list(self._waiters):
            if new.get(key) != old.get(key):
                self._changed(key)
        return _Notifying(new, self._changed)

    def _changed(self, key: str) -> None:
        for future in self._waiters.pop(key, ()):
            if not future.done():
                future.set_result(None)

    def changed(self, key: str) -> asyncio.Future:
        """A future done at the next change of the pod ``key`` (namespace/name)."""
        future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(future)

        def forget(done: asyncio.Future) -> None:  # cancelled by a waiter that gave up
            if done in self._waiters.get(key, ()):
                self._waiters[key].remove(done)
                if not self._waiters[key]:
                    del self._waiters[key]

        future.add_done_callback(forget)
        return future

    async def next_change(self, key: str, timeout: float) -> None:
        """Until the pod ``key`` changes, for ``timeout`` seconds at most."""
        try:
            await asyncio.wait_for(self.changed(key), timeout)
        except TimeoutError:
            pass
