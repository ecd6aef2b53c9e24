"""The default scheduler, reduced to the plugins that decide where a GPU pod may go.

Filters, with the reason strings kube-scheduler reports:
- NodeResourcesFit: ``Insufficient <resource>`` for any requested resource (cpu,
  memory, ``nvidia.com/gpu``, any extended resource) beyond the node's allocatable
  minus what non-terminal pods bound to it request; ``Too many pods``.
- NodeAffinity: ``node(s) didn't match Pod's node affinity/selector`` (``nodeSelector``
  and required ``nodeAffinity`` terms).
- TaintToleration: ``node(s) had untolerated taint {key: value}`` (NoSchedule and
  NoExecute taints).
- NodeUnschedulable: ``node(s) were unschedulable``.
- VolumeBinding (PreFilter): ``persistentvolumeclaim "x" not found``, ``... is being
  deleted``, ``pod has unbound immediate PersistentVolumeClaims`` (the fake has no
  ``WaitForFirstConsumer`` binding: such classes are refused).

A pod that fits nowhere keeps ``PodScheduled=False`` (reason ``Unschedulable``) and
gets a ``FailedScheduling`` event whose message is ``FitError.Error()``'s
("0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are
available: 2 No preemption victims found for incoming pod.."). It is retried whenever
pods, nodes or claims change, in priority then creation order. Among feasible nodes
the least allocated wins (LeastAllocated scoring), ties by name. Preemption is not
performed: no PriorityClasses are served, so there are never lower-priority victims.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from typing import Any

from . import clock
from .controller import Controller
from .quantity import parse_quantity
from .resources import NODE, POD, PVC

Obj = dict[str, Any]
RESOLVABLE = ("Insufficient ", "Too many pods")


def pod_requests(pod: Obj) -> Counter:
    """Effective requests: max(sum over containers, any init container), plus 1 pod."""
    total: Counter = Counter()
    spec = pod["spec"]
    for c in spec.get("containers") or []:
        for name, value in ((c.get("resources") or {}).get("requests") or {}).items():
            total[name] += parse_quantity(value)
    for c in spec.get("initContainers") or []:
        for name, value in ((c.get("resources") or {}).get("requests") or {}).items():
            total[name] = max(total[name], parse_quantity(value))
    total["pods"] = Fraction(1)
    return total


def node_allocatable(node: Obj) -> dict[str, Fraction]:
    return {
        k: parse_quantity(v) for k, v in (node.get("status", {}).get("allocatable") or {}).items()
    }


def occupies_node(pod: Obj) -> bool:
    return bool(pod["spec"].get("nodeName")) and pod.get("status", {}).get("phase") not in (
        "Succeeded",
        "Failed",
    )


def tolerates(tolerations: list[Obj], taint: Obj) -> bool:
    for tol in tolerations or []:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        op = tol.get("operator", "Equal")
        if not tol.get("key"):
            if op == "Exists":
                return True
            continue
        if tol["key"] != taint.get("key"):
            continue
        if op == "Exists" or (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _term_matches(term: Obj, node: Obj) -> bool:
    labels = node["metadata"].get("labels") or {}
    for expr in term.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        value = labels.get(key)
        ok = {
            "In": value in values,
            "NotIn": key not in labels or value not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "Gt": value is not None and value.lstrip("-").isdigit() and int(value) > int(values[0]),
            "Lt": value is not None and value.lstrip("-").isdigit() and int(value) < int(values[0]),
        }.get(op, False)
        if not ok:
            return False
    for expr in term.get("matchFields") or []:
        if expr["key"] == "metadata.name":
            inside = node["metadata"]["name"] in (expr.get("values") or [])
            if inside != (expr["operator"] == "In"):
                return False
    return True


def matches_affinity(pod: Obj, node: Obj) -> bool:
    labels = node["metadata"].get("labels") or {}
    for key, value in (pod["spec"].get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if required:
        terms = required.get("nodeSelectorTerms") or []
        if not any(_term_matches(t, node) for t in terms):
            return False
    return True


def fit_reasons(pod: Obj, node: Obj, used: Counter) -> list[str]:
    """The reasons why ``pod`` cannot go to ``node`` (none: it fits). As in the
    scheduler, a node reports the first Filter plugin it fails, in the default
    order: NodeUnschedulable, TaintToleration, NodeAffinity, NodeResourcesFit."""
    if node["spec"].get("unschedulable"):
        unsched = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
        if not tolerates(pod["spec"].get("tolerations"), unsched):
            return ["node(s) were unschedulable"]
    for taint in node["spec"].get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(
            pod["spec"].get("tolerations"), taint
        ):
            return [f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"]
    if not matches_affinity(pod, node):
        return ["node(s) didn't match Pod's node affinity/selector"]
    reasons = []
    allocatable = node_allocatable(node)
    for name, amount in sorted(pod_requests(pod).items()):
        if amount <= 0:
            continue
        if used[name] + amount > allocatable.get(name, Fraction(0)):
            reasons.append("Too many pods" if name == "pods" else f"Insufficient {name}")
    return reasons


def fit_error(n_nodes: int, prefilter: str, per_node: dict[str, list[str]]) -> str:
    """``framework.FitError.Error()`` plus the preemption PostFilter's message."""
    message = f"0/{n_nodes} nodes are available:"
    if prefilter:
        message += f" {prefilter}."
        preempt = Counter({"Preemption is not helpful for scheduling": n_nodes})
    else:
        histogram = Counter(r for reasons in per_node.values() for r in reasons)
        if histogram:
            message += " " + ", ".join(sorted(f"{c} {r}" for r, c in histogram.items())) + "."
        preempt = Counter(
            "No preemption victims found for incoming pod"
            if all(r.startswith(RESOLVABLE) for r in reasons)
            else "Preemption is not helpful for scheduling"
            for reasons in per_node.values()
        )
    post = ", ".join(sorted(f"{c} {r}" for r, c in preempt.items()))
    return f"{message} preemption: 0/{n_nodes} nodes are available: {post}.."


class Scheduler(Controller):
    name = "default-scheduler"
    watches = ("pods", "nodes", "persistentvolumeclaims")

    def sync(self) -> None:
        nodes = list(self.store.iter(NODE))
        used: dict[str, Counter] = {n["metadata"]["name"]: Counter() for n in nodes}
        pending = []
        for pod in self.store.iter(POD):
            if occupies_node(pod) and pod["spec"]["nodeName"] in used:
                used[pod["spec"]["nodeName"]] += pod_requests(pod)
            elif (
                not pod["spec"].get("nodeName")
                and pod["spec"].get("schedulerName") == self.name
                and not pod["metadata"].get("deletionTimestamp")
            ):
                pending.append(pod)
        pending.sort(
            key=lambda p: (
                -p["spec"].get("priority", 0),
                p["metadata"]["creationTimestamp"],
                p["metadata"]["name"],
            )
        )
        for pod in pending:
            self.schedule(pod, nodes, used)

    def _volume_prefilter(self, pod: Obj) -> str:
        ns = pod["metadata"]["namespace"]
        for volume in pod["spec"].get("volumes") or []:
            claim_name = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            claim = self.store.peek(PVC, ns, claim_name) if claim_name else {}
            if claim is None:
                return f'persistentvolumeclaim "{claim_name}" not found'
            if claim_name and claim["metadata"].get("deletionTimestamp"):
                return f'persistentvolumeclaim "{claim_name}" is being deleted'
            if claim_name and claim.get("status", {}).get("phase") != "Bound":
                return "pod has unbound immediate PersistentVolumeClaims"
        return ""

    def schedule(self, pod: Obj, nodes: list[Obj], used: dict[str, Counter]) -> None:
        prefilter = self._volume_prefilter(pod)
        per_node: dict[str, list[str]] = {}
        if not prefilter:
            for node in nodes:
                per_node[node["metadata"]["name"]] = fit_reasons(
                    pod, node, used[node["metadata"]["name"]]
                )
        feasible = [n for n in nodes if not prefilter and not per_node[n["metadata"]["name"]]]
        if not feasible:
            message = (
                fit_error(len(nodes), prefilter, per_node)
                if nodes
                else "no nodes available to schedule pods"
            )
            self._unschedulable(pod, message)
            return

        def load(node: Obj) -> tuple[Fraction, str]:
            allocatable = node_allocatable(node)
            shares = [
                used[node["metadata"]["name"]][r] / allocatable[r]
                for r in ("cpu", "memory")
                if allocatable.get(r)
            ]
            gpu = [
                used[node["metadata"]["name"]][r] / q
                for r, q in allocatable.items()
                if "gpu" in r and q
            ]
            return (sum(shares + gpu, Fraction(0)), node["metadata"]["name"])

        chosen = min(feasible, key=load)["metadata"]["name"]
        used[chosen] += pod_requests(pod)
        self.bind(pod, chosen)

    def bind(self, pod: Obj, node: str) -> None:
        """What POST pods/<name>/binding does: spec.nodeName and PodScheduled=True."""
        bound = self.registry.bind_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], node)
        self.recorder.record_new(
            bound,
            "Scheduled",
            f"Successfully assigned {pod['metadata']['namespace']}/{pod['metadata']['name']} to {node}",
            component=self.name,
            action="Binding",
        )

    def _unschedulable(self, pod: Obj, message: str) -> None:
        current = self.store.get(POD, pod["metadata"]["namespace"], pod["metadata"]["name"])
        conditions = current.setdefault("status", {}).setdefault("conditions", [])
        existing = next((c for c in conditions if c["type"] == "PodScheduled"), None)
        wanted = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
        }
        if existing is None or any(existing.get(k) != v for k, v in wanted.items()):
            changed = existing is None or existing.get("status") != "False"
            if existing is not None:
                conditions.remove(existing)
            conditions.append(
                {
                    **wanted,
                    "lastProbeTime": None,
                    "lastTransitionTime": clock.rfc3339()
                    if changed
                    else existing.get("lastTransitionTime"),
                }
            )
            current = self.registry.write_status(POD, current)
        self.recorder.record_new(
            current,
            "FailedScheduling",
            message,
            type="Warning",
            component=self.name,
            action="Scheduling",
        )
