"""The GPU ledger on a real SQLite file: grants, quotas, concurrency, persistence."""

import random
import threading
from collections import Counter

import pytest

from gpulab.hub.inventory import Gpu
from gpulab.hub.ledger import GpuLedger, InvalidRequest, NoGpuFree, QuotaExceeded
from gpulab.hub.settings import GpuSettings


def make_ledger(tmp_path, n=4, **quotas):
    inventory = [Gpu(id=f"gpu{i}", index=i) for i in range(n)]
    return GpuLedger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", inventory, GpuSettings(**quotas))


def test_reserve_and_release_roundtrip(tmp_path):
    ledger = make_ledger(tmp_path)
    got = ledger.reserve("alice", "", 2)
    assert [g.id for g in got] == ["gpu0", "gpu1"]
    assert ledger.free_count() == 2
    assert ledger.release("alice", "") == ["gpu0", "gpu1"]
    assert ledger.free_count() == 4
    assert ledger.release("alice", "") == []  # releasing twice is a no-op
    actions = [(e.action, e.gpu_id) for e in reversed(ledger.events())]
    assert actions == [
        ("grant", "gpu0"),
        ("grant", "gpu1"),
        ("release", "gpu0"),
        ("release", "gpu1"),
    ]


def test_a_server_gets_its_returned_gpus_back_when_they_are_free(tmp_path):
    ledger = make_ledger(tmp_path, n=4)
    ledger.reserve("bob", "", 1)  # gpu0
    assert [g.id for g in ledger.reserve("alice", "", 2, prefer=["gpu3", "gpu1"])] == [
        "gpu1",
        "gpu3",
    ]
    ledger.release("alice", "")
    # one preferred GPU is taken meanwhile: the other, then the next free one
    ledger.reserve("carol", "", 1, prefer=["gpu3"])
    assert [g.id for g in ledger.reserve("alice", "", 2, prefer=["gpu3", "gpu1"])] == [
        "gpu1",
        "gpu2",
    ]


def test_two_users_never_share_a_gpu(tmp_path):
    ledger = make_ledger(tmp_path, n=2)
    a = ledger.reserve("alice", "", 1)
    b = ledger.reserve("bob", "", 1)
    assert {a[0].id} & {b[0].id} == set()
    with pytest.raises(NoGpuFree) as info:
        ledger.reserve("carol", "", 1)
    assert info.value.message_for(admin=False) == ("not enough GPUs free: asked for 1, 0 of 2 free")
    assert "held by alice (1), bob (1)" in info.value.message_for(admin=True)


def test_user_and_group_quotas(tmp_path):
    ledger = make_ledger(tmp_path, n=4, per_user=2, users={"boss": 4}, groups={"students": 1})
    ledger.reserve("alice", "a", 2)
    with pytest.raises(QuotaExceeded, match="alice may hold 2"):
        ledger.reserve("alice", "b", 1)
    ledger.reserve("sam", "", 1, groups=["students"])
    with pytest.raises(QuotaExceeded, match="group students may hold 1"):
        ledger.reserve("sue", "", 1, groups=["students"])
    ledger.release("alice", "a")
    assert len(ledger.reserve("boss", "", 3)) == 3  # a per-user override beats per_user


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_bad_counts_are_refused(tmp_path, bad):
    ledger = make_ledger(tmp_path)
    with pytest.raises(InvalidRequest):
        ledger.reserve("alice", "", bad)
    assert ledger.free_count() == 4


def test_grants_survive_reopening(tmp_path):
    make_ledger(tmp_path).reserve("alice", "", 1)
    reopened = make_ledger(tmp_path)
    assert [(g.user, g.gpu_id) for g in reopened.grants()] == [("alice", "gpu0")]


def test_a_get_gpu_stored_as_acquire_by_an_earlier_version_reads_back_as_get(tmp_path):
    earlier = make_ledger(tmp_path)
    earlier.begin_operation("alice", "", "acquire", state="restoring", gpus=1)
    earlier.begin_operation("bob", "", "return", state="checkpointing", gpus=1)
    reopened = make_ledger(tmp_path)
    kinds = {(op.user, op.kind, op.state) for op in reopened.operations(active_only=True)}
    assert kinds == {("alice", "get", "restoring"), ("bob", "return", "checkpointing")}
    assert reopened.operation("alice", "").as_json()["kind"] == "get"


def test_reconcile_frees_grants_of_dead_holders(tmp_path):
    ledger = make_ledger(tmp_path)
    ledger.reserve("alice", "", 1)
    ledger.attach("alice", "", pid=111, pid_started="1")
    ledger.reserve("bob", "", 1)
    ledger.attach("bob", "", pid=222, pid_started="1")
    gone = ledger.reconcile(lambda g: g.pid == 222)
    assert [g.user for g in gone] == ["alice"]
    assert [g.user for g in ledger.grants()] == ["bob"]


def test_fifty_concurrent_reservations_never_double_grant(tmp_path):
    ledger = make_ledger(tmp_path, n=4)
    # a second ledger object on the same file, as a second hub process would see it
    other = make_ledger(tmp_path, n=4)
    barrier = threading.Barrier(50)
    granted = Counter()

    def worker(i):
        led = ledger if i % 2 else other
        barrier.wait()
        for _ in range(5):
            try:
                got = led.reserve(f"user{i}", "", random.choice([1, 2]))
            except NoGpuFree:
                continue
            granted[i] += len(got)
            led.release(f"user{i}", "")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Replay the event log (written in the same transactions as the grants):
    # a GPU must never be granted while someone still holds it.
    holder: dict[str, str] = {}
    for e in reversed(ledger.events(limit=10_000)):
        if e.action == "grant":
            assert e.gpu_id not in holder, (
                f"{e.gpu_id} granted to {e.user} while {holder.get(e.gpu_id)} held it"
            )
            holder[e.gpu_id] = e.user
        else:
            assert holder.pop(e.gpu_id) == e.user
    assert holder == {} and ledger.grants() == []
    assert sum(granted.values()) > 50


def test_a_request_that_could_never_be_granted_says_why(tmp_path):
    inventory = [Gpu(id=f"n{n}-{i}", index=i, node=f"node{n}") for n in (1, 2) for i in range(2)]
    ledger = GpuLedger(
        f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        inventory,
        GpuSettings(per_user=3, users={"lab": 8}, groups={"team": 2}),
    )
    assert ledger.never_granted("lab", [], 2, {"Get GPU": 2}, "Get GPU") is None
    # held or queued GPUs do not count: a request that fits the pool may wait for them
    ledger.reserve("ann", "", 2)
    assert ledger.never_granted("lab", [], 2, {"Get GPU": 2}, "Get GPU") is None
    assert ledger.never_granted("ann", [], 4, {}, "the job") == (
        403,
        "GPU quota exceeded: ann may hold 3 GPU(s), the job asks for 4",
    )
    assert ledger.never_granted("lab", ["team"], 3, {}, "the job")[0] == 403
    assert ledger.never_granted("lab", [], 5, {}, "Get GPU") == (
        400,
        "Get GPU asks for 5 GPU(s); this hub has 4",
    )
    assert ledger.never_granted("lab", [], 3, {"Get GPU": 3}, "Get GPU") == (
        400,
        "Get GPU: 3 GPUs on one node, but no node has more than 2",
    )
    empty = GpuLedger(f"sqlite:///{tmp_path / 'empty.sqlite'}", [], GpuSettings())
    assert empty.never_granted("lab", [], 1, {"Get GPU": 1}, "Get GPU") == (
        400,
        "Get GPU asks for 1 GPU(s); this hub has no GPUs",
    )


def test_reads_do_not_wait_for_a_change_in_progress(tmp_path):
    """A status read (every open lab's poll) never queues behind a reservation: reads take
    no write lock. Before, every read began ``BEGIN IMMEDIATE`` and waited for the lock."""
    ledger = make_ledger(tmp_path)
    ledger.reserve("alice", "", 1)
    writer = GpuLedger(ledger.engine.url.render_as_string(), ledger.inventory)
    held, release = threading.Event(), threading.Event()

    def hold_the_write_lock():
        with writer.engine.begin() as conn:  # BEGIN IMMEDIATE: the write lock
            conn.exec_driver_sql("DELETE FROM gpu_queue")
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold_the_write_lock)
    thread.start()
    try:
        assert held.wait(30)
        reads = {}
        reader = threading.Thread(
            target=lambda: reads.update(
                snapshot=ledger.snapshot(), grants=ledger.grants(), queue=ledger.queue()
            )
        )
        reader.start()
        reader.join(10)  # the lock is held for up to 60 s: a locking read would still wait
        assert not reader.is_alive(), "a read waited for the write lock"
        assert [g.gpu_id for g in reads["grants"]] == ["gpu0"]
        assert reads["snapshot"].free == 3
    finally:
        release.set()
        thread.join()


def test_the_snapshot_is_read_again_only_after_a_change(tmp_path):
    ledger = make_ledger(tmp_path, n=2)
    changes = []
    ledger.on_change(lambda: changes.append(ledger.version))
    first = ledger.snapshot()
    assert ledger.snapshot() is first  # nothing changed: no database read
    ledger.grants(), ledger.queue(), ledger.events()  # reads are no change
    assert ledger.snapshot() is first and changes == []

    ledger.reserve("alice", "", 1)
    ledger.begin_operation("alice", "", "return", state="checkpointing")
    assert len(changes) == 2
    second = ledger.snapshot()
    assert second is not first and second.version == ledger.version
    assert [gpu.id for gpu in second.held_by("alice", "")] == ["gpu0"]
    assert second.free == 1
    assert second.operations[("alice", "")].state == "checkpointing"
