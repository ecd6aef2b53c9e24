"""The hub's Prometheus series of the GPUs (``hub/metrics.py``), scraped as Prometheus
scrapes them (the exposition text of a registry) from a real ledger on SQLite: the
GPU-seconds held and busy by user, group and profile, the pool, the queue."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpulab.hub.inventory import Gpu
from gpulab.hub.ledger import GpuLedger, utcnow
from gpulab.hub.ledger.usage import Sample
from gpulab.hub.metrics import GpuCollector, serve
from gpulab.hub.settings import GpuSettings, Settings

ALL_TIME = datetime.min.replace(tzinfo=UTC)

SETTINGS = Settings(gpus=GpuSettings(ids=["0", "1", "2"]))


def make_ledger(tmp_path) -> GpuLedger:
    inventory = [Gpu(id=gpu, index=i) for i, gpu in enumerate(SETTINGS.gpus.ids)]
    return GpuLedger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", inventory, SETTINGS.gpus)


def scrape(registry: CollectorRegistry) -> tuple[str, dict[tuple, float]]:
    """The exposition text, and each sample's value by (name, its labels sorted)."""
    text = generate_latest(registry).decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, values


def series(name: str, user: str, group: str, profile: str) -> tuple:
    return (name, (("group", group), ("profile", profile), ("user", user)))


HELD, BUSY = "gpulab_gpu_held_seconds_total", "gpulab_gpu_busy_seconds_total"


def test_a_scrape_has_the_held_and_busy_seconds_the_pool_and_the_queue(tmp_path):
    ledger = make_ledger(tmp_path)
    registry = CollectorRegistry()
    registry.register(GpuCollector(ledger, SETTINGS))

    # alice (two groups) held two GPUs, busy for 30 of the 40 sampled seconds
    ledger.reserve("alice", "", 2, groups=["team", "vision"], profile="gpu-2")
    ledger.sample([Sample("alice", "", 30, 80, True)])
    ledger.sample([Sample("alice", "", 10, 0, False)])
    ledger.release("alice", "")
    # bob (no group) holds one, sampled idle; a job's replica holds one, never sampled
    ledger.reserve("bob", "", 1, profile="gpu-1")
    ledger.sample([Sample("bob", "", 20, 1, False)])
    ledger.reserve("carol", "job/7/worker-0", 1)
    ledger.enqueue("dave", "", 2)
    holdings = ledger.usage(ALL_TIME, utcnow())

    before = utcnow()
    text, values = scrape(registry)
    after = utcnow()

    alice = sum((h.end - h.start).total_seconds() for h in holdings if h.user == "alice")
    assert alice > 0
    for group in ("team", "vision"):  # in both groups' series
        assert values[series(HELD, "alice", group, "gpu-2")] == alice
        assert f'{BUSY}{{group="{group}",profile="gpu-2",user="alice"}} 60.0\n' in text
    # open holdings count until the scrape
    since = {h.user: h.start for h in holdings if h.end is None}
    bob, carol = since["bob"], since["carol"]
    bob_held = values[series(HELD, "bob", "", "gpu-1")]
    assert (before - bob).total_seconds() <= bob_held <= (after - bob).total_seconds()
    carol_held = values[series(HELD, "carol", "", "")]
    assert (before - carol).total_seconds() <= carol_held <= (after - carol).total_seconds()
    assert f'{BUSY}{{group="",profile="gpu-1",user="bob"}} 0.0\n' in text
    assert f'{BUSY}{{group="",profile="",user="carol"}} 0.0\n' in text
    assert len([k for k in values if k[0] == HELD]) == 4  # alice twice, bob, carol

    assert f"# TYPE {HELD} counter\n" in text and f"# TYPE {BUSY} counter\n" in text
    assert 'gpulab_gpus{state="free"} 1.0\n' in text
    assert 'gpulab_gpus{state="held"} 2.0\n' in text
    assert "# TYPE gpulab_gpu_queue_length gauge\ngpulab_gpu_queue_length 1.0\n" in text

    # they follow the ledger at the next scrape: bob's GPU back, dave's request served
    ledger.release("bob", "")
    ledger.reserve("dave", "", 2, waiter=ledger.queue()[0].id)
    text, values = scrape(registry)
    assert 'gpulab_gpus{state="free"} 0.0\n' in text
    assert 'gpulab_gpus{state="held"} 3.0\n' in text
    assert "gpulab_gpu_queue_length 0.0\n" in text
    assert series(HELD, "dave", "", "") in values


def test_a_restarted_hub_serves_the_same_totals_in_place_of_the_earlier_ones(tmp_path):
    ledger = make_ledger(tmp_path)
    ledger.reserve("alice", "", 1, groups=["team"], profile="gpu-1")
    ledger.sample([Sample("alice", "", 12.5, 90, True)])
    ledger.release("alice", "")
    (holding,) = ledger.usage(ALL_TIME, utcnow())
    registry = CollectorRegistry()
    serve(GpuCollector(ledger, SETTINGS), registry)
    before, _ = scrape(registry)

    # a new hub in the same process, on the same ledger file: no duplicate series refused,
    # and the counters carry on from the database, not from zero
    restarted = make_ledger(tmp_path)
    serve(GpuCollector(restarted, SETTINGS), registry)
    text, values = scrape(registry)
    assert text == before
    key = series(HELD, "alice", "team", "gpu-1")
    assert values[key] == (holding.end - holding.start).total_seconds() > 0
    assert values[series(BUSY, "alice", "team", "gpu-1")] == 12.5
    assert text.count("# TYPE gpulab_gpus gauge\n") == 1

    restarted.reserve("bob", "", 3)  # the new hub's ledger is the one scraped
    assert 'gpulab_gpus{state="held"} 3.0\n' in scrape(registry)[0]


def test_each_return_and_get_is_counted_once_as_it_ends(tmp_path):
    """The durations of Return and Get GPU, how soon a GPU was free, the reclaims: counted
    by the hub as each operation ends, once."""
    from prometheus_client import REGISTRY

    from gpulab.hub.metrics import observe

    ledger = make_ledger(tmp_path)
    ledger.on_operation_finished(observe)

    def value(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    returns = value("gpulab_gpu_operation_seconds_count", kind="return", state="done")
    gets = value("gpulab_gpu_operation_seconds_count", kind="get", state="failed")
    free = value("gpulab_gpu_return_free_seconds_count")
    fast = value("gpulab_gpu_return_free_seconds_bucket", le="0.5")
    reclaims = value("gpulab_gpu_reclaims_total")

    ledger.begin_operation("alice", "", "return", reason="reclaimed: GPU idle for 2.0 h")
    ledger.update_operation("alice", "", state="done", detail={"free_seconds": 0.4})
    ledger.update_operation("alice", "", message="seen again")  # not a second end
    ledger.update_operation("alice", "", state="done")
    ledger.begin_operation("bob", "", "get", state="queued")
    ledger.update_operation("bob", "", state="failed", message="No GPU became free")

    assert value("gpulab_gpu_operation_seconds_count", kind="return", state="done") == returns + 1
    assert value("gpulab_gpu_operation_seconds_count", kind="get", state="failed") == gets + 1
    assert value("gpulab_gpu_return_free_seconds_count") == free + 1
    assert value("gpulab_gpu_return_free_seconds_bucket", le="0.5") == fast + 1
    assert value("gpulab_gpu_reclaims_total") == reclaims + 1


def test_a_queued_request_counts_how_long_it_waited_once_granted(tmp_path):
    """The queue's waits: a server's Get GPU and a job's replicas, each observed once, when
    its turn comes, with the seconds the ledger's clock says it waited."""
    from datetime import timedelta

    from prometheus_client import REGISTRY

    from gpulab.hub.metrics import observe_queue_wait

    now = [datetime(2026, 12, 7, 9, tzinfo=UTC)]
    inventory = [Gpu(id=gpu, index=i) for i, gpu in enumerate(SETTINGS.gpus.ids)]
    ledger = GpuLedger(
        f"sqlite:///{tmp_path / 'ledger.sqlite'}", inventory, SETTINGS.gpus, clock=lambda: now[0]
    )
    ledger.on_queue_granted(observe_queue_wait)

    def value(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        kind: (value("gpulab_gpu_queue_wait_seconds_count", kind=kind),
               value("gpulab_gpu_queue_wait_seconds_sum", kind=kind))
        for kind in ("server", "job")
    }  # fmt: skip
    ledger.reserve("alice", "", 3)
    bob = ledger.enqueue("bob", "", 1)
    job = ledger.enqueue("carol", "job/9", 2)
    now[0] += timedelta(seconds=42)
    ledger.release("alice", "")
    ledger.reserve("bob", "", 1, waiter=bob)  # first in the queue: granted after 42 s
    now[0] += timedelta(seconds=8)
    ledger.reserve_many("carol", [("job/9/worker-0", 2)], waiter=job)  # after 50 s
    ledger.reserve("dave", "", 0)  # no queue, no wait

    after = {
        kind: (value("gpulab_gpu_queue_wait_seconds_count", kind=kind),
               value("gpulab_gpu_queue_wait_seconds_sum", kind=kind))
        for kind in ("server", "job")
    }  # fmt: skip
    assert after["server"] == (before["server"][0] + 1, before["server"][1] + 42)
    assert after["job"] == (before["job"][0] + 1, before["job"][1] + 50)
    assert ledger.queue() == []
