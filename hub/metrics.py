"""gpulab's series at the hub's ``/hub/metrics`` (Prometheus), read from the ledger at
each scrape: the GPU-seconds held, and sampled busy, by user, group and profile since the
ledger began (so they outlive hub restarts), the pool's free and held GPUs, and the
queue of Get GPU requests. And, counted by this hub process as they end (``observe``):
how long Return GPU and Get GPU took, how soon a returned GPU was free, how long
queued requests waited for their GPUs, and how many GPUs the idle reclaim took back.

JupyterHub serves prometheus_client's default registry there to tokens with the
``read:metrics`` scope (admins have it), or to anyone where
``JupyterHub.authenticate_prometheus`` is turned off: the series name users and groups.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .ledger import GpuLedger, Operation, utcnow
from .ledger.records import WORKLOAD_PREFIX, Waiter
from .ledger.usage import NO_GROUP
from .settings import Settings

LABELS = ("user", "group", "profile")
"""The labels of the held and busy counters."""


class GpuCollector:
    """The ledger's GPU series, computed at each scrape: its all-time totals (the ended
    holdings summed by the database, the open ones counted here), and the pool and
    queue as of its last change."""

    def __init__(self, ledger: GpuLedger, settings: Settings):
        self.ledger = ledger
        self.settings = settings

    def describe(self) -> Iterator[Metric]:
        # the names a registry checks for duplicates; without it, registering would
        # read the ledger
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        held, busy, gpus, queue = self._families()
        by_group: dict[tuple[str, str, str], list[float]] = {}
        for total in self.ledger.usage_totals(utcnow()):
            for group in total.groups or (NO_GROUP,):
                sums = by_group.setdefault((total.user, group, total.profile), [0.0, 0.0])
                sums[0] += total.held_seconds
                sums[1] += total.busy_seconds
        for key, (held_seconds, busy_seconds) in sorted(by_group.items()):
            held.add_metric(key, held_seconds)
            busy.add_metric(key, busy_seconds)
        snapshot = self.ledger.snapshot()
        gpus.add_metric(["free"], snapshot.free)
        gpus.add_metric(["held"], len(snapshot.pool) - snapshot.free)
        queue.add_metric([], len(snapshot.queue))
        return iter((held, busy, gpus, queue))

    def _families(self) -> tuple[Metric, ...]:
        return (
            CounterMetricFamily(
                "gpulab_gpu_held_seconds",
                "GPU-seconds held, since the ledger began. A holding of a user in several "
                "groups counts in each group's series, so a sum over groups counts it once "
                'per group; group="" is a holder in no group.',
                labels=LABELS,
            ),
            CounterMetricFamily(
                "gpulab_gpu_busy_seconds",
                "GPU-seconds the hub's samples found busy (utilisation above "
                f"{self.settings.gpus.idle_utilization}%), since the ledger began; job and "
                "model replicas only where the hub reads the GPUs itself. Groups as in "
                "gpulab_gpu_held_seconds_total.",
                labels=LABELS,
            ),
            GaugeMetricFamily("gpulab_gpus", "GPUs of the pool, free or held.", labels=["state"]),
            GaugeMetricFamily(
                "gpulab_gpu_queue_length",
                "Requests waiting in the queue for GPUs: servers' Get GPU, and jobs.",
                labels=[],
            ),
        )


SWITCH_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))
"""Seconds: a Return GPU frees its GPU within a second; a Get GPU may wait in the queue."""

OPERATION_SECONDS = Histogram(
    "gpulab_gpu_operation_seconds",
    "Seconds from a Return or Get GPU's request to its end (a Get GPU's wait in the queue "
    "included), by kind (return, get) and how it ended (done, failed, cancelled).",
    ["kind", "state"],
    buckets=SWITCH_BUCKETS,
)
RETURN_FREE_SECONDS = Histogram(
    "gpulab_gpu_return_free_seconds",
    "Seconds from a Return GPU's request until its GPUs were free for others.",
    buckets=SWITCH_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "gpulab_gpu_queue_wait_seconds",
    "Seconds a request waited in the queue for GPUs before it was granted, by kind "
    "(server: a Get GPU; job: a job's replicas).",
    ["kind"],
    buckets=SWITCH_BUCKETS,
)
RECLAIMS = Counter(
    "gpulab_gpu_reclaims",
    "Return GPUs the idle reclaim made (a profile's idle_return passed), done.",
)


def observe(op: Operation) -> None:
    """Count a Return or Get GPU that ended (``GpuLedger.on_operation_finished``)."""
    if op.finished is not None:
        seconds = (op.finished - op.started).total_seconds()
        OPERATION_SECONDS.labels(op.kind, op.state).observe(max(0.0, seconds))
    if op.kind == "return" and op.state == "done":
        free = op.detail.get("free_seconds")
        if isinstance(free, int | float) and not isinstance(free, bool):
            RETURN_FREE_SECONDS.observe(max(0.0, free))
        if op.reason.startswith("reclaimed"):
            RECLAIMS.inc()


def observe_queue_wait(waiter: Waiter, seconds: float) -> None:
    """Count a queued request that was granted (``GpuLedger.on_queue_granted``)."""
    kind = "job" if waiter.server.startswith(WORKLOAD_PREFIX) else "server"
    QUEUE_WAIT_SECONDS.labels(kind).observe(seconds)


_served: weakref.WeakKeyDictionary[CollectorRegistry, GpuCollector] = weakref.WeakKeyDictionary()
_serving = threading.Lock()


def serve(collector: GpuCollector, registry: CollectorRegistry = REGISTRY) -> None:
    """Add ``collector`` to ``registry`` (``/hub/metrics`` serves the default one), in
    place of the one a hub this process ran before added: that one's series would have
    the same names, from a ledger that is no longer this hub's."""
    with _serving:
        earlier = _served.get(registry)
        if earlier is not None:
            registry.unregister(earlier)
        registry.register(collector)
        _served[registry] = collector
