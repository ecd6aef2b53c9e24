"""Event objects as the cluster's components record them.

- ``record`` imitates client-go's legacy ``EventRecorder`` (kubelet, controllers):
  ``firstTimestamp``/``lastTimestamp``/``count``/``source``, name
  ``<object>.<hex nanoseconds>``, and the correlator's aggregation: the same event
  again bumps ``count`` on the existing object instead of creating a new one.
- ``record_new`` imitates the ``events.k8s.io/v1`` recorder the scheduler uses, as
  seen through core/v1: ``eventTime``, ``reportingComponent``, ``action``, empty
  ``source``, ``firstTimestamp``/``lastTimestamp`` null, ``series`` on repeats.

Both always carry the three timestamp keys, null when unset, as the apiserver
serialises them (KubeSpawner reads ``event["lastTimestamp"] or event["eventTime"]``).
"""

from __future__ import annotations

import time
from typing import Any

from . import clock
from .errors import ApiError
from .registry import Registry
from .resources import EVENT

Obj = dict[str, Any]


class EventRecorder:
    def __init__(self, registry: Registry):
        self.registry = registry
        # (involved uid, reason, message, component) -> event name
        self._seen: dict[tuple[str, str, str, str], tuple[str, str]] = {}

    def _involved(self, obj: Obj, field_path: str | None) -> Obj:
        meta = obj["metadata"]
        ref = {
            "kind": obj["kind"],
            "namespace": meta.get("namespace"),
            "name": meta["name"],
            "uid": meta["uid"],
            "apiVersion": obj["apiVersion"],
            "resourceVersion": meta.get("resourceVersion"),
        }
        if field_path:
            ref["fieldPath"] = field_path
        return {k: v for k, v in ref.items() if v is not None}

    def _namespace(self, obj: Obj) -> str:
        return obj["metadata"].get("namespace") or "default"

    def _bump(self, key: tuple[str, str, str, str], update: Any) -> bool:
        seen = self._seen.get(key)
        if seen is None:
            return False
        existing = self.registry.store.get(EVENT, seen[0], seen[1])
        if existing is None:
            return False
        update(existing)
        self.registry.write(EVENT, existing)
        return True

    def _create(self, key: tuple[str, str, str, str], namespace: str, body: Obj) -> None:
        try:
            self.registry.create(EVENT, namespace, body)
        except ApiError:
            return  # as client-go's recorder: an event that cannot be written is dropped
        self._seen[key] = (namespace, body["metadata"]["name"])

    def record(
        self,
        obj: Obj,
        reason: str,
        message: str,
        *,
        type: str = "Normal",
        component: str,
        host: str | None = None,
        field_path: str | None = None,
    ) -> None:
        key = (obj["metadata"]["uid"], reason, message, component)
        now = clock.rfc3339()

        def again(event: Obj) -> None:
            event["count"] = event.get("count", 1) + 1
            event["lastTimestamp"] = now

        if self._bump(key, again):
            return
        namespace = self._namespace(obj)
        name = f"{obj['metadata']['name']}.{time.time_ns():x}"
        source = {"component": component}
        if host:
            source["host"] = host
        body = {
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": self._involved(obj, field_path),
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": host or "",
        }
        self._create(key, namespace, body)

    def record_new(
        self,
        obj: Obj,
        reason: str,
        message: str,
        *,
        type: str = "Normal",
        component: str,
        action: str,
    ) -> None:
        key = (obj["metadata"]["uid"], reason, message, component)
        now = clock.micro()

        def again(event: Obj) -> None:
            series = event.get("series") or {"count": 1}
            event["series"] = {"count": series["count"] + 1, "lastObservedTime": now}

        if self._bump(key, again):
            return
        namespace = self._namespace(obj)
        name = f"{obj['metadata']['name']}.{time.time_ns():x}"
        body = {
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": self._involved(obj, None),
            "reason": reason,
            "message": message,
            "source": {},
            "firstTimestamp": None,
            "lastTimestamp": None,
            "type": type,
            "eventTime": now,
            "action": action,
            "reportingComponent": component,
            "reportingInstance": f"{component}-fakekube",
        }
        self._create(key, namespace, body)
