"""The ledger follows the pods: the hub's watch over the user servers' pods.

A server's GPU grant is freed when its pod is deleted, evicted or ends, by hand or not:
``PodGrantWatcher`` lists the pods (releasing the grants no pod holds), then follows
their watch. Which server a pod is, and which GPUs it runs with, come from the
annotations ``objects`` puts on it.
"""

from __future__ import annotations

import logging

from gpulab.hub.kube import follow_pods
from gpulab.hub.ledger import is_workload

from . import objects

log = logging.getLogger(__name__)


def pod_owner(pod: dict) -> tuple[str, str] | None:
    """The (user, server) a gpulab server pod belongs to, from its annotations."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    if objects.ANNOTATION_USER not in annotations:
        return None
    return annotations[objects.ANNOTATION_USER], annotations.get(objects.ANNOTATION_SERVER, "")


def pod_holds_gpus(pod: dict) -> bool:
    """Can this pod still be using its GPUs? Not once it has ended or is gone."""
    return pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")


class PodGrantWatcher:
    """Frees a server's grant when its pod is deleted, evicted or ends, by hand or not.

    Lists the pods (releasing grants no pod holds, unless that server is starting),
    then watches them from that list's resourceVersion; a pod's ``gpulab.io/gpus``
    annotation must still match its server's grant, so a late event about an old pod
    never frees a newer spawn's GPUs.
    """

    def __init__(self, ledger, namespace: str, is_starting, selector: str):
        self.ledger = ledger
        self.namespace = namespace
        self.is_starting = is_starting
        """``(user, server) -> bool``: the hub is spawning that server (no pod yet)."""
        self.selector = selector

    def _held(self, user: str, server: str) -> list[str]:
        return sorted(g.gpu_id for g in self.ledger.grants(user) if g.server == server)

    def resync(self, pods: list[dict]) -> list[str]:
        """Release grants no live pod holds; the GPU ids freed."""
        live = {pod_owner(p) for p in pods if pod_owner(p) and pod_holds_gpus(p)}
        freed = []
        for grant in self.ledger.grants():
            if is_workload(grant.server):  # a workload's, not a server's pod
                continue
            owner = (grant.user, grant.server)
            if owner not in live and not self.is_starting(*owner):
                freed += self.ledger.release(grant.user, grant.server, "its pod is gone")
        return freed

    def on_event(self, kind: str, pod: dict) -> list[str]:
        """A watch event; the GPU ids it freed."""
        owner = pod_owner(pod)
        if owner is None or (kind != "DELETED" and pod_holds_gpus(pod)):
            return []
        annotated = (pod["metadata"].get("annotations") or {}).get(objects.ANNOTATION_GPUS, "")
        held = self._held(*owner)
        if not held or held != sorted(filter(None, annotated.split(","))):
            return []
        if self.is_starting(*owner):
            return []
        status = pod.get("status") or {}
        why = "its pod was deleted" if kind == "DELETED" else f"its pod {status.get('phase')}"
        if status.get("reason"):
            why += f" ({status['reason']})"
        return self.ledger.release(owner[0], owner[1], why)

    async def run(self, core) -> None:
        """Forever: list and resync, then follow the watch (``kube.follow_pods``)."""

        def resynced(pods: list[dict]) -> None:
            for gpu in self.resync(pods):
                log.warning("Freed GPU %s: no pod holds it", gpu)

        await follow_pods(core, self.namespace, self.selector, resynced, self.on_event,
                          "GPU grants")  # fmt: skip
