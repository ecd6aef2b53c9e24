"""The workload controllers of kube-controller-manager: deployment, replicaset.

- ReplicaSet: keeps ``spec.replicas`` active pods (``generateName: <rs>-``, owner
  reference, template labels); extra pods go unscheduled / not-ready first; ``status``
  counts replicas, fully labeled, ready and available pods. Not imitated: adopting
  orphan pods that match the selector, ``minReadySeconds`` (a ready pod is available).
- Deployment: one ReplicaSet per pod template, named ``<deployment>-<pod-template-hash>``
  (FNV-32a of the template, encoded with ``rand.SafeEncodeString``), with the
  ``deployment.kubernetes.io/revision`` annotation; ``RollingUpdate`` respects
  ``maxSurge`` / ``maxUnavailable`` (percentages rounded up / down), ``Recreate``
  scales the old ReplicaSets to zero and waits for their pods to go; ``status`` and
  the ``Available`` / ``Progressing`` conditions as the controller reports them.
"""

from __future__ import annotations

import abc
import copy
import json
import math
from typing import Any

from . import clock
from .controller import Controller
from .errors import ApiError
from .resources import DEPLOYMENT, POD, REPLICASET, ResourceType

Obj = dict[str, Any]
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


def pod_template_hash(template: Obj) -> str:
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE[ord(ch) % len(_SAFE)] for ch in str(h))


def owner_ref(owner: Obj) -> Obj:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_uid(obj: Obj) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def is_ready(pod: Obj) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def is_active(pod: Obj) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and pod.get("status", {}).get(
        "phase"
    ) not in ("Succeeded", "Failed")


def _condition(old: list[Obj], kind: str, status: str, reason: str, message: str) -> Obj:
    now = clock.rfc3339()
    prev = next((c for c in old if c["type"] == kind), None)
    same = prev is not None and prev["status"] == status
    cond = {
        "type": kind,
        "status": status,
        "lastUpdateTime": prev.get("lastUpdateTime", now)
        if same and prev.get("reason") == reason
        else now,
        "lastTransitionTime": prev["lastTransitionTime"] if same else now,
        "reason": reason,
        "message": message,
    }
    return cond


class WorkloadController(Controller):
    kind: ResourceType
    component = "controller"

    def _owned_pods(self, owner: Obj) -> list[Obj]:
        uid = owner["metadata"]["uid"]
        return [
            copy.deepcopy(p)
            for p in self.store.iter(POD, owner["metadata"]["namespace"])
            if controller_uid(p) == uid
        ]

    def _create_pod(
        self, owner: Obj, template: Obj, generate_name: str, extra: Any = None
    ) -> Obj | None:
        meta = copy.deepcopy(template.get("metadata") or {})
        body = {
            "metadata": {
                "generateName": generate_name,
                "labels": meta.get("labels") or {},
                "annotations": meta.get("annotations") or {},
                "ownerReferences": [owner_ref(owner)],
            },
            "spec": copy.deepcopy(template["spec"]),
        }
        if not body["metadata"]["annotations"]:
            del body["metadata"]["annotations"]
        if extra:
            extra(body)
        try:
            pod = self.registry.create(POD, owner["metadata"]["namespace"], body)
        except ApiError as e:
            self.recorder.record(
                owner,
                "FailedCreate",
                f"Error creating: {e.message}",
                type="Warning",
                component=self.component,
            )
            return None
        self.recorder.record(
            owner,
            "SuccessfulCreate",
            f"Created pod: {pod['metadata']['name']}",
            component=self.component,
        )
        return pod

    def _delete_pod(self, owner: Obj, pod: Obj) -> None:
        try:
            self.registry.delete(POD, pod["metadata"]["namespace"], pod["metadata"]["name"])
        except ApiError:
            return
        self.recorder.record(
            owner,
            "SuccessfulDelete",
            f"Deleted pod: {pod['metadata']['name']}",
            component=self.component,
        )

    def _write_status(self, obj: Obj, status: Obj) -> Obj:
        if obj.get("status") == status:
            return obj
        obj["status"] = status
        return self.registry.write_status(self.kind, obj)

    def sync(self) -> None:
        for obj in [copy.deepcopy(o) for o in self.store.iter(self.kind)]:
            if obj["metadata"].get("deletionTimestamp"):
                continue
            try:
                self.reconcile(obj)
            except ApiError as e:
                if e.code not in (404, 409):
                    raise

    @abc.abstractmethod
    def reconcile(self, obj: Obj) -> None:
        """Make one object's pods (or children) match its spec."""


class ReplicaSetController(WorkloadController):
    name = "replicaset-controller"
    component = "replicaset-controller"
    kind = REPLICASET
    watches = ("replicasets.apps", "pods")

    def reconcile(self, rs: Obj) -> None:
        pods = self._owned_pods(rs)
        active = [p for p in pods if is_active(p)]
        wanted = rs["spec"].get("replicas", 1)
        if len(active) < wanted:
            for _ in range(wanted - len(active)):
                pod = self._create_pod(rs, rs["spec"]["template"], f"{rs['metadata']['name']}-")
                if pod is not None:
                    active.append(pod)
        elif len(active) > wanted:

            def rank(p: Obj) -> tuple:
                phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get(
                    p.get("status", {}).get("phase"), 0
                )
                return (
                    bool(p["spec"].get("nodeName")),
                    phase_rank,
                    is_ready(p),
                    -clock.parse(p["metadata"]["creationTimestamp"]),
                )

            for pod in sorted(active, key=rank)[: len(active) - wanted]:
                self._delete_pod(rs, pod)
                active.remove(pod)
        template_labels = (rs["spec"]["template"].get("metadata") or {}).get("labels") or {}
        ready = sum(1 for p in active if is_ready(p))
        status = {
            "replicas": len(active),
            "fullyLabeledReplicas": sum(
                1
                for p in active
                if all(
                    (p["metadata"].get("labels") or {}).get(k) == v
                    for k, v in template_labels.items()
                )
            ),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        status = {k: v for k, v in status.items() if v or k in ("replicas", "observedGeneration")}
        self._write_status(rs, status)


def _resolve(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


class DeploymentController(WorkloadController):
    name = "deployment-controller"
    component = "deployment-controller"
    kind = DEPLOYMENT
    watches = ("deployments.apps", "replicasets.apps", "pods")

    def _scale(self, d: Obj, rs: Obj, replicas: int) -> Obj:
        old = rs["spec"].get("replicas", 0)
        if old == replicas:
            return rs
        rs["spec"]["replicas"] = replicas
        rs["metadata"].setdefault("annotations", {})[
            "deployment.kubernetes.io/desired-replicas"
        ] = str(d["spec"]["replicas"])
        rs = self.registry.write(REPLICASET, rs)
        verb = "up" if replicas > old else "down"
        self.recorder.record(
            d,
            "ScalingReplicaSet",
            f"Scaled {verb} replica set {rs['metadata']['name']} from {old} to {replicas}",
            component=self.component,
        )
        return rs

    def reconcile(self, d: Obj) -> None:
        ns, uid = d["metadata"]["namespace"], d["metadata"]["uid"]
        template = copy.deepcopy(d["spec"]["template"])
        digest = pod_template_hash(template)
        owned = [
            copy.deepcopy(r) for r in self.store.iter(REPLICASET, ns) if controller_uid(r) == uid
        ]
        new = next(
            (
                r
                for r in owned
                if (r["metadata"].get("labels") or {}).get("pod-template-hash") == digest
            ),
            None,
        )
        olds = sorted(
            (r for r in owned if r is not new), key=lambda r: r["metadata"]["creationTimestamp"]
        )
        replicas = d["spec"].get("replicas", 1)
        strategy = d["spec"]["strategy"]
        revisions = [
            int(
                (r["metadata"].get("annotations") or {}).get(
                    "deployment.kubernetes.io/revision", "0"
                )
            )
            for r in owned
        ]
        if new is None:
            labels = {
                **((template.get("metadata") or {}).get("labels") or {}),
                "pod-template-hash": digest,
            }
            template.setdefault("metadata", {})["labels"] = labels
            selector = copy.deepcopy(d["spec"]["selector"])
            selector.setdefault("matchLabels", {})["pod-template-hash"] = digest
            revision = str(max(revisions, default=0) + 1)
            body = {
                "metadata": {
                    "name": f"{d['metadata']['name']}-{digest}",
                    "labels": labels,
                    "annotations": {
                        "deployment.kubernetes.io/desired-replicas": str(replicas),
                        "deployment.kubernetes.io/max-replicas": str(
                            replicas
                            + (
                                _resolve(
                                    strategy.get("rollingUpdate", {}).get("maxSurge", 0),
                                    replicas,
                                    True,
                                )
                                if strategy["type"] == "RollingUpdate"
                                else 0
                            )
                        ),
                        "deployment.kubernetes.io/revision": revision,
                    },
                    "ownerReferences": [owner_ref(d)],
                },
                "spec": {"replicas": 0, "selector": selector, "template": template},
            }
            new = self.registry.create(REPLICASET, ns, body)
            annotations = d["metadata"].setdefault("annotations", {})
            if annotations.get("deployment.kubernetes.io/revision") != revision:
                annotations["deployment.kubernetes.io/revision"] = revision
                d = self.registry.write(DEPLOYMENT, d)
        if strategy["type"] == "Recreate":
            for rs in olds:
                self._scale(d, rs, 0)
            old_pods = [p for rs in olds for p in self._owned_pods(rs)]
            if not old_pods:
                new = self._scale(d, new, replicas)
        else:
            rolling = strategy.get("rollingUpdate") or {}
            surge = _resolve(rolling.get("maxSurge", "25%"), replicas, True)
            unavailable = _resolve(rolling.get("maxUnavailable", "25%"), replicas, False)
            if surge == 0 and unavailable == 0:
                unavailable = 1
            if not olds:
                new = self._scale(d, new, replicas)
            else:
                total = sum(r["spec"].get("replicas", 0) for r in owned)
                room = replicas + surge - total
                target = min(replicas, new["spec"].get("replicas", 0) + max(0, room))
                if target > new["spec"].get("replicas", 0):
                    new = self._scale(d, new, target)
                available = sum(
                    (r.get("status") or {}).get("availableReplicas", 0) for r in [new, *olds]
                )
                removable = available - (replicas - unavailable)
                for rs in olds:
                    current = rs["spec"].get("replicas", 0)
                    unhealthy = current - (rs.get("status") or {}).get("availableReplicas", 0)
                    cut = min(current, max(0, unhealthy) + max(0, removable))
                    if cut > 0:
                        removable -= max(0, cut - max(0, unhealthy))
                        self._scale(d, rs, current - cut)
        self._status(d, new, olds, replicas, strategy)

    def _status(self, d: Obj, new: Obj, olds: list[Obj], replicas: int, strategy: Obj) -> None:
        rss = [
            self.store.get(REPLICASET, d["metadata"]["namespace"], r["metadata"]["name"]) or r
            for r in [new, *olds]
        ]
        new = rss[0]
        total = sum((r.get("status") or {}).get("replicas", 0) for r in rss)
        ready = sum((r.get("status") or {}).get("readyReplicas", 0) for r in rss)
        available = sum((r.get("status") or {}).get("availableReplicas", 0) for r in rss)
        updated = (new.get("status") or {}).get("replicas", 0)
        unavailable_allowed = (
            _resolve(
                (strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%"), replicas, False
            )
            if strategy["type"] == "RollingUpdate"
            else 0
        )
        old_conditions = (d.get("status") or {}).get("conditions") or []
        name = new["metadata"]["name"]
        conditions = []
        if available >= replicas - unavailable_allowed:
            conditions.append(
                _condition(
                    old_conditions,
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                )
            )
        else:
            conditions.append(
                _condition(
                    old_conditions,
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                )
            )
        complete = updated == replicas and available >= replicas and total == replicas
        if complete:
            conditions.append(
                _condition(
                    old_conditions,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    f'ReplicaSet "{name}" has successfully progressed.',
                )
            )
        else:
            conditions.append(
                _condition(
                    old_conditions,
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    f'ReplicaSet "{name}" is progressing.',
                )
            )
        status = {
            "observedGeneration": d["metadata"].get("generation", 1),
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": max(0, replicas - available),
            "conditions": conditions,
        }
        status = {k: v for k, v in status.items() if v or k in ("observedGeneration", "conditions")}
        self._write_status(d, status)
