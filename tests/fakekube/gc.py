"""The garbage collector and the namespace controller of kube-controller-manager.

- Garbage collector: an object all of whose owners (``ownerReferences`` by uid) are
  gone is deleted (background propagation); dangling references beside live owners
  are removed. An owner deleted with ``propagationPolicy: Orphan`` carries the
  ``orphan`` finalizer until its dependents no longer reference it; with
  ``Foreground`` it carries ``foregroundDeletion`` until its dependents are gone.
- Namespace controller: a namespace marked for deletion (phase Terminating) has all
  its content deleted (pods gracefully), then its ``kubernetes`` finalizer removed,
  and disappears.
"""

from __future__ import annotations

import copy
from typing import Any

from .controller import Controller
from .errors import ApiError
from .resources import ALL, NAMESPACE, ResourceType

Obj = dict[str, Any]


def _all_objects(store: Any) -> list[tuple[ResourceType, Obj]]:
    return [(rt, obj) for rt in ALL for obj in store.iter(rt)]


def _ignore_gone(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ApiError as e:
        if e.code not in (404, 409):
            raise
        return None


class GarbageCollector(Controller):
    name = "garbage-collector"
    watches = tuple(rt.key for rt in ALL if rt.kind != "Event")

    def sync(self) -> None:
        objects = _all_objects(self.store)
        by_uid = {obj["metadata"]["uid"]: obj for _, obj in objects}
        dependents: dict[str, list[tuple[ResourceType, Obj]]] = {}
        for rt, obj in objects:
            for ref in obj["metadata"].get("ownerReferences") or []:
                dependents.setdefault(ref["uid"], []).append((rt, obj))
        for rt, owner in objects:
            meta = owner["metadata"]
            finalizers = meta.get("finalizers") or []
            if not meta.get("deletionTimestamp"):
                continue
            uid = meta["uid"]
            if "orphan" in finalizers:
                for dep_rt, dep in dependents.get(uid, []):
                    updated = copy.deepcopy(dep)
                    updated["metadata"]["ownerReferences"] = [
                        r for r in dep["metadata"]["ownerReferences"] if r["uid"] != uid
                    ]
                    if not updated["metadata"]["ownerReferences"]:
                        del updated["metadata"]["ownerReferences"]
                    _ignore_gone(self.registry.write, dep_rt, updated)
                self._drop_finalizer(rt, owner, "orphan")
            elif "foregroundDeletion" in finalizers:
                remaining = dependents.get(uid, [])
                for dep_rt, dep in remaining:
                    if not dep["metadata"].get("deletionTimestamp"):
                        _ignore_gone(
                            self.registry.delete,
                            dep_rt,
                            dep["metadata"].get("namespace", ""),
                            dep["metadata"]["name"],
                            {"propagationPolicy": "Foreground"},
                        )
                if not remaining:
                    self._drop_finalizer(rt, owner, "foregroundDeletion")
        for rt, obj in objects:
            refs = obj["metadata"].get("ownerReferences") or []
            if not refs or obj["metadata"].get("deletionTimestamp"):
                continue
            live = [r for r in refs if r["uid"] in by_uid]
            if not live:
                _ignore_gone(
                    self.registry.delete,
                    rt,
                    obj["metadata"].get("namespace", ""),
                    obj["metadata"]["name"],
                    {"propagationPolicy": "Background"},
                )
            elif len(live) != len(refs):
                updated = copy.deepcopy(obj)
                updated["metadata"]["ownerReferences"] = live
                _ignore_gone(self.registry.write, rt, updated)

    def _drop_finalizer(self, rt: ResourceType, obj: Obj, finalizer: str) -> None:
        current = self.store.get(rt, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if current is None:
            return
        current["metadata"]["finalizers"] = [
            f for f in current["metadata"].get("finalizers") or [] if f != finalizer
        ]
        _ignore_gone(self.registry.write, rt, current)


class NamespaceController(Controller):
    name = "namespace-controller"
    watches = tuple(rt.key for rt in ALL)

    def sync(self) -> None:
        for ns in [copy.deepcopy(n) for n in self.store.iter(NAMESPACE)]:
            if not ns["metadata"].get("deletionTimestamp"):
                continue
            name = ns["metadata"]["name"]
            remaining = 0
            for rt in ALL:
                if not rt.namespaced:
                    continue
                for obj in list(self.store.iter(rt, name)):
                    remaining += 1
                    if not obj["metadata"].get("deletionTimestamp"):
                        _ignore_gone(self.registry.delete, rt, name, obj["metadata"]["name"])
            if remaining == 0 and "kubernetes" in (ns["spec"].get("finalizers") or []):
                self.registry.finalize_namespace(
                    name, [f for f in ns["spec"]["finalizers"] if f != "kubernetes"]
                )
