"""Object storage with etcd's versioning and the apiserver watch cache's semantics.

- One cluster-wide revision counter: every write gets the next ``resourceVersion``
  (a decimal string), as etcd's revision does.
- A bounded history of changes (the watch cache window). A watch may resume from any
  resourceVersion still inside it; older ones get a ``410 Expired`` ("too old
  resource version"), as the real server answers after compaction.
- Watchers get ADDED/MODIFIED/DELETED events filtered by namespace and selectors; an
  object that stops (starts) matching a selector is sent as DELETED (ADDED), with the
  previous content and the new resourceVersion, as ``cacheWatcher`` does.
- Past states are reconstructed from the history for ``resourceVersionMatch=Exact``
  lists and for ``continue`` tokens (consistent paginated lists).

Everything here runs on the FakeKube event loop; methods are synchronous so each
write and its notifications happen atomically with respect to other requests.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector, field_value

Key = tuple[str, str, str]  # (resource key, namespace or "", name)


@dataclass
class Change:
    """One committed write; ``obj`` is the new state (the last state, stamped with the
    deletion's resourceVersion, for DELETED) and ``prev`` the state before."""

    rv: int
    resource: ResourceType
    type: str
    obj: dict[str, Any]
    prev: dict[str, Any] | None


def object_key(rt: ResourceType, obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return (rt.key, meta.get("namespace", "") if rt.namespaced else "", meta["name"])


def object_fields(rt: ResourceType, obj: dict[str, Any]) -> dict[str, str]:
    """The field set a fieldSelector is matched against."""
    meta = obj.get("metadata", {})
    fields = {"metadata.name": meta.get("name", "")}
    if rt.namespaced:
        fields["metadata.namespace"] = meta.get("namespace", "")
    for label in rt.field_labels:
        fields[label] = field_value(obj, label)
    return fields


@dataclass
class Filter:
    resource: ResourceType
    namespace: str | None
    labels: LabelSelector = field(default_factory=LabelSelector)
    fields: FieldSelector = field(default_factory=FieldSelector)

    def matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(
            object_fields(self.resource, obj)
        )


@dataclass
class WatchEvent:
    type: str
    object: dict[str, Any]


class Watcher:
    """One watch connection's queue of events; None ends it (``dropped``: abruptly)."""

    def __init__(self, flt: Filter):
        self.filter = flt
        self.queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        self.dropped = False

    def translate(self, change: Change) -> WatchEvent | None:
        if change.resource.key != self.filter.resource.key:
            return None
        new_ok = change.type != "DELETED" and self.filter.matches(change.obj)
        old_ok = self.filter.matches(change.prev if change.type != "DELETED" else change.obj)
        if change.type == "ADDED":
            return WatchEvent("ADDED", change.obj) if new_ok else None
        if change.type == "DELETED":
            return WatchEvent("DELETED", change.obj) if old_ok else None
        if new_ok and old_ok:
            return WatchEvent("MODIFIED", change.obj)
        if new_ok:
            return WatchEvent("ADDED", change.obj)
        if old_ok:
            gone = copy.deepcopy(change.prev)
            gone["metadata"]["resourceVersion"] = str(change.rv)
            return WatchEvent("DELETED", gone)
        return None

    def offer(self, change: Change) -> None:
        event = self.translate(change)
        if event is not None:
            self.queue.put_nowait(event)

    def close(self) -> None:
        self.queue.put_nowait(None)


class Store:
    def __init__(self, history_size: int = 2000):
        self._objects: dict[Key, dict[str, Any]] = {}
        self._rv = 0
        self._history: deque[Change] = deque()
        self._history_size = history_size
        # every change with rv <= this has fallen out of the history
        self._evicted_rv = 0
        self._watchers: set[Watcher] = set()
        self._listeners: list[Callable[[Change], None]] = []

    # -- reading ---------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def oldest_resumable(self) -> int:
        """The oldest resourceVersion a watch or continue token may still start from."""
        return self._evicted_rv

    def get(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self._objects.get((rt.key, namespace if rt.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def peek(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object itself, not a copy: read-only use by controllers."""
        return self._objects.get((rt.key, namespace if rt.namespaced else "", name))

    def iter(self, rt: ResourceType, namespace: str | None = None) -> Iterator[dict[str, Any]]:
        """Stored objects of a type (read-only), in key order as etcd lists them."""
        for key in sorted(k for k in self._objects if k[0] == rt.key):
            if namespace is None or key[1] == namespace:
                yield self._objects[key]

    def state_at(self, rt: ResourceType, rv: int) -> dict[Key, dict[str, Any]]:
        """Objects of ``rt`` as they were at revision ``rv`` (undoing later history)."""
        if rv < self._evicted_rv:
            raise errors.expired(f"too old resource version: {rv} ({self._evicted_rv})")
        state = {k: v for k, v in self._objects.items() if k[0] == rt.key}
        for change in reversed(self._history):
            if change.rv <= rv:
                break
            if change.resource.key != rt.key:
                continue
            key = object_key(rt, change.obj)
            if change.type == "ADDED":
                state.pop(key, None)
            else:
                state[key] = change.prev
        return state

    # -- writing ---------------------------------------------------------------

    def _commit(
        self, change_type: str, rt: ResourceType, obj: dict[str, Any], prev: dict[str, Any] | None
    ) -> dict[str, Any]:
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = object_key(rt, obj)
        if change_type == "DELETED":
            self._objects.pop(key, None)
        else:
            self._objects[key] = obj
        change = Change(self._rv, rt, change_type, obj, copy.deepcopy(prev) if prev else None)
        self._history.append(change)
        while len(self._history) > self._history_size:
            self._evicted_rv = self._history.popleft().rv
        for watcher in list(self._watchers):
            watcher.offer(change)
        for listener in list(self._listeners):
            listener(change)
        return copy.deepcopy(obj)

    def add(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        return self._commit("ADDED", rt, obj, None)

    def replace(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        key = object_key(rt, obj)
        return self._commit("MODIFIED", rt, obj, self._objects[key])

    def remove(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        key = object_key(rt, obj)
        return self._commit("DELETED", rt, self._objects[key], self._objects[key])

    # -- watching --------------------------------------------------------------

    def add_listener(self, listener: Callable[[Change], None]) -> None:
        """Controllers: called synchronously after every committed change."""
        self._listeners.append(listener)

    def watch(self, flt: Filter, since: int | None) -> tuple[Watcher, list[WatchEvent]]:
        """Register a watcher; returns it with the events to send first.

        ``since`` None: synthetic ADDED events for every current match (watch from
        "now" with initial state, as for resourceVersion "" or "0"); otherwise the
        changes after ``since`` replayed from history (410 when evicted).
        """
        if since is not None and since < self._evicted_rv:
            raise errors.expired(f"too old resource version: {since} ({self._evicted_rv})")
        if since is not None and since > self._rv:
            raise errors.too_large_resource_version(since, self._rv)
        watcher = Watcher(flt)
        if since is None:
            first = [
                WatchEvent("ADDED", copy.deepcopy(o))
                for o in self.iter(flt.resource, flt.namespace)
                if flt.matches(o)
            ]
        else:
            first = [e for c in self._history if c.rv > since if (e := watcher.translate(c))]
        self._watchers.add(watcher)
        return watcher, first

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watchers(self) -> None:
        for watcher in list(self._watchers):
            watcher.close()
        self._watchers.clear()
