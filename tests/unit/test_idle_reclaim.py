"""Idle reclaim decides on the clock the hub gives it: a GPU whose server has done
nothing for its profile's ``idle_return`` is returned, one whose kernels run or whose GPU
is busy is not, however long that lasts. The ledger is real (SQLite); the servers'
answers and the Return GPU itself are recorded."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace

import pytest

from gpulab.hub.gpuswitch import GpuSwitch
from gpulab.hub.inventory import Gpu
from gpulab.hub.ledger import GpuLedger
from gpulab.hub.settings import GpuSettings, Profile, Settings

START = 1_800_000_000.0


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingSwitch(GpuSwitch):
    """The switch with servers that answer ``activity`` from a table, and a Return GPU
    that releases the grant as the real one does at its end, and records why."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answers: dict[str, dict] = {}
        self.returned: list[tuple[str, str]] = []

    async def activity(self, spawner) -> dict:
        return self.answers[spawner.user.name]

    async def return_gpu(self, spawner, reason: str, interrupt=False, force=False):
        self.returned.append((spawner.user.name, reason))
        self.ledger.release(spawner.user.name, spawner.name, reason=reason)


class HubReadings:
    """What the hub reads of each GPU itself (NVML on its machine); none by default, so
    each server's own report counts."""

    def __init__(self):
        self.values: dict[str, float] = {}

    def read(self, gpu_ids):
        return {gpu: self.values[gpu] for gpu in gpu_ids if gpu in self.values}


@pytest.fixture
def hub(tmp_path):
    settings = Settings(
        gpus=GpuSettings(ids=["0", "1", "2"], reclaim_interval=1),
        profiles=[
            Profile(slug="cpu", default=True),
            Profile(slug="gpu-idle", gpus=1, idle_return="8s"),
            Profile(slug="gpu-keep", gpus=1),
            Profile(slug="gpu-long", gpus=1, idle_return="1h"),
        ],
    )
    ledger = GpuLedger(
        f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        [Gpu(id="0", index=0), Gpu(id="1", index=1), Gpu(id="2", index=2)],
        settings.gpus,
    )
    clock = Clock(START)
    nvml = HubReadings()
    switch = RecordingSwitch(ledger, settings, clock=clock, utilization=nvml)
    spawners = {}

    def spawn(user: str, profile: str, **activity) -> None:
        ledger.reserve(user, "", 1)
        spawners[user] = SimpleNamespace(
            user=SimpleNamespace(name=user), name="", ready=True, pending=None,
            profile_slug=profile,
        )  # fmt: skip
        switch.answers[user] = {
            "busy_kernels": 0, "restoring": False, "gpu_utilization": 0,
            "started": clock.now, "last_activity": clock.now, **activity,
        }  # fmt: skip

    def check(after: float) -> list[str]:
        clock.now += after
        return asyncio.run(switch.reclaim_idle(lambda user, server: spawners.get(user)))

    # the grant's own time is the ledger's clock: line the test's clock up with it
    ledger.reserve("nobody", "", 1)
    clock.now = ledger.grants("nobody")[0].granted_at.timestamp()
    ledger.release("nobody", "")
    return SimpleNamespace(
        switch=switch, ledger=ledger, clock=clock, spawn=spawn, check=check, nvml=nvml
    )


def test_an_idle_gpu_is_returned_once_its_profiles_time_has_passed(hub):
    hub.spawn("alice", "gpu-idle")
    hub.spawn("bob", "gpu-keep")
    assert hub.check(after=7) == []
    assert hub.check(after=2) == ["alice"]
    assert hub.switch.returned == [("alice", "reclaimed: GPU idle for 9s")]
    # a profile without idle_return keeps its GPU for ever
    assert hub.check(after=86_400) == []
    assert [g.user for g in hub.ledger.grants()] == ["bob"]


@pytest.mark.parametrize(
    "busy",
    [{"busy_kernels": 1}, {"gpu_utilization": 95}, {"restoring": True}],
    ids=["a cell runs", "the GPU computes", "a restore runs"],
)
def test_a_busy_server_keeps_its_gpu_however_long_and_is_idle_from_when_it_stopped(hub, busy):
    hub.spawn("alice", "gpu-idle", **busy)
    for _ in range(10):
        assert hub.check(after=3600) == []  # ten hours of a running cell
    hub.switch.answers["alice"].update(busy_kernels=0, gpu_utilization=0, restoring=False)
    assert hub.check(after=5) == []  # idle since the last check that saw it busy
    assert hub.check(after=4) == ["alice"]


def test_activity_in_the_server_restarts_the_count(hub):
    hub.spawn("alice", "gpu-idle")
    assert hub.check(after=6) == []
    hub.switch.answers["alice"]["last_activity"] = hub.clock.now  # a cell ran just now
    assert hub.check(after=6) == []
    assert hub.check(after=3) == ["alice"]


def test_every_round_accounts_each_servers_gpu_time_busy_or_idle(hub):
    """Usage accounting: the rounds sample every server holding a GPU (with or without an
    idle_return), busy while its GPU computes above ``gpus.idle_utilization``."""
    hub.spawn("alice", "gpu-keep", gpu_utilization=80)
    hub.spawn("bob", "gpu-keep", gpu_utilization=2)
    granted = {g.user: g.granted_at.timestamp() for g in hub.ledger.grants()}
    hub.clock.now = max(granted.values())  # the first round counts from each grant
    for _ in range(3):
        hub.check(after=1)
    hub.switch.answers["alice"]["gpu_utilization"] = 0
    hub.check(after=1)
    # of a gap longer than two rounds (the hub was down), two rounds are counted
    hub.check(after=3600)
    late = {user: hub.clock.now - 3600 - 4 - at for user, at in granted.items()}
    now = hub.ledger.grants()[0].granted_at + timedelta(days=1)
    rows = {h.user: h for h in hub.ledger.usage(now - timedelta(days=2), now)}
    assert rows["alice"].sampled_seconds == pytest.approx(4 + 2 + late["alice"])
    assert rows["alice"].busy_seconds == pytest.approx(3 + late["alice"])
    assert rows["alice"].utilization_seconds == pytest.approx((3 + late["alice"]) * 0.8)
    assert rows["bob"].sampled_seconds == pytest.approx(4 + 2 + late["bob"])
    assert rows["bob"].busy_seconds == 0
    assert rows["alice"].profile == "" and rows["alice"].kind == "server"


def test_the_hubs_own_reading_of_a_gpu_counts_over_what_the_server_says(hub):
    """Where the hub reads NVML itself (the local backend), a user's server cannot keep an
    idle GPU by saying it computes, nor have its busy GPU accounted idle."""
    hub.spawn("mallory", "gpu-idle", gpu_utilization=99)  # her server says: busy
    hub.spawn("alice", "gpu-idle", gpu_utilization=0)  # hers says: idle
    mallory, alice = (hub.ledger.grants(u)[0].gpu_id for u in ("mallory", "alice"))
    hub.nvml.values = {mallory: 0.0, alice: 70.0}  # what the GPUs actually do
    granted = max(g.granted_at.timestamp() for g in hub.ledger.grants())
    hub.clock.now = granted
    assert hub.check(after=5) == []
    assert hub.check(after=4) == ["mallory"]  # idle for its 8 s, whatever it said
    now = hub.ledger.grants()[0].granted_at + timedelta(hours=1)
    rows = {h.user: h for h in hub.ledger.usage(now - timedelta(hours=2), now)}
    assert rows["mallory"].busy_seconds == 0 and rows["mallory"].sampled_seconds > 0
    assert rows["alice"].busy_seconds == rows["alice"].sampled_seconds > 0
    assert rows["alice"].utilization_seconds == pytest.approx(rows["alice"].sampled_seconds * 0.7)


def test_a_server_with_two_gpus_is_accounted_gpu_by_gpu(tmp_path):
    """One GPU of two computing: one busy holding, one idle (not both busy)."""
    settings = Settings(
        gpus=GpuSettings(ids=["0", "1"], reclaim_interval=60),
        profiles=[Profile(slug="gpu-2", gpus=2, default=True)],
    )
    ledger = GpuLedger(
        f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        [Gpu(id="0", index=0), Gpu(id="1", index=1)],
        settings.gpus,
    )
    nvml = HubReadings()
    nvml.values = {"0": 80.0}  # GPU 1 unread: the server's own report (3%) counts for it
    ledger.reserve("bob", "", 2, profile="gpu-2")
    clock = Clock(ledger.grants()[0].granted_at.timestamp())
    switch = RecordingSwitch(ledger, settings, clock=clock, utilization=nvml)
    spawner = SimpleNamespace(
        user=SimpleNamespace(name="bob"), name="", ready=True, pending=None, profile_slug="gpu-2"
    )
    switch.answers["bob"] = {"busy_kernels": 0, "restoring": False, "gpu_utilization": 3}
    clock.now += 30
    asyncio.run(switch.reclaim_idle(lambda user, server: spawner))
    now = ledger.grants()[0].granted_at + timedelta(hours=1)
    by_gpu = {h.gpu_id: h for h in ledger.usage(now - timedelta(hours=2), now)}
    assert by_gpu["0"].busy_seconds == pytest.approx(30)
    assert by_gpu["1"].busy_seconds == 0
    assert by_gpu["1"].utilization_seconds == pytest.approx(0.9)


def test_while_others_wait_the_idlest_servers_give_back_as_many_gpus_as_the_queue_lacks(hub):
    """gpus.idle_return_when_queued (2 min by default): a profile's hour of idle_return is
    cut short while requests wait, for the idlest servers first, no more than needed; a
    profile without idle_return keeps its GPU."""
    hub.spawn("alice", "gpu-long")
    hub.clock.now += 60
    hub.spawn("bob", "gpu-long")
    hub.spawn("dave", "gpu-keep")
    hub.switch.answers["dave"]["last_activity"] = hub.clock.now - 86_400  # idle for a day
    assert hub.check(after=240) == []  # idle 5 and 4 min: nobody waits, the hour holds
    hub.ledger.enqueue("carol", "", 1)  # carol asks for a GPU; none is free
    assert hub.check(after=1) == ["alice"]  # the idlest, and only one
    assert hub.switch.returned[-1][1].startswith("reclaimed: GPU idle for 5 min while")
    hub.ledger.reserve("carol", "", 1, waiter=hub.ledger.queue()[0].id)
    assert hub.check(after=1) == []  # nobody waits any more
    hub.ledger.enqueue("erin", "", 1)
    assert hub.check(after=1) == ["bob"]
    assert hub.check(after=3600) == []  # dave's profile keeps its GPU, whoever waits
    assert [g.user for g in hub.ledger.grants("dave")] == ["dave"]


def test_a_server_idle_less_than_the_queued_limit_keeps_its_gpu(hub):
    hub.spawn("alice", "gpu-long")
    hub.spawn("bob", "gpu-long")
    hub.spawn("dave", "gpu-long")
    hub.ledger.enqueue("carol", "", 1)
    assert hub.check(after=60) == []  # a minute idle: under the 2 min
    assert hub.check(after=61)  # now one goes


def test_a_cpu_server_that_got_a_gpu_is_reclaimed_as_a_gpu_profile_would_be(hub):
    """Starting on the CPU profile (no idle_return) and pressing Get GPU is no way to
    keep a GPU for ever: the first profile granting one GPU (gpu-idle, 8 s) holds."""
    hub.spawn("mallory", "cpu")  # then Get GPU gave her server a GPU
    assert hub.check(after=7) == []
    assert hub.check(after=2) == ["mallory"]


def test_job_replicas_are_sampled_where_the_hub_reads_the_gpus_and_never_reclaimed(hub):
    hub.ledger.reserve_many("alice", [("job/7/worker-0", 1), ("job/7/worker-1", 1)])
    hub.clock.now = hub.ledger.grants()[0].granted_at.timestamp()
    worker0, worker1 = (g.gpu_id for g in sorted(hub.ledger.grants(), key=lambda g: g.server))
    assert hub.check(after=1) == []  # nothing the hub reads: held, not sampled
    hub.nvml.values = {worker0: 90.0, worker1: 0.0}
    assert hub.check(after=1) == []  # never reclaimed, however idle
    assert hub.check(after=3600) == []
    now = hub.ledger.grants()[0].granted_at + timedelta(hours=2)
    by_gpu = {h.gpu_id: h for h in hub.ledger.usage(now - timedelta(hours=3), now)}
    # two seconds since the grant, then two (a round's gap is counted up to two rounds)
    assert by_gpu[worker0].busy_seconds == pytest.approx(4)
    assert by_gpu[worker1].busy_seconds == 0
    assert by_gpu[worker1].sampled_seconds == pytest.approx(4)
    assert len(hub.ledger.grants("alice")) == 2


def test_a_server_that_does_not_answer_holds_up_no_one_elses_reclaim(hub):
    """A user controls their server: one that never answers the round's question (or
    answers slowly) must not keep the other servers' idle GPUs from going back."""
    answer = hub.switch.activity

    async def activity(spawner):
        if spawner.user.name == "mallory":
            await asyncio.sleep(3600)
        return await answer(spawner)

    hub.switch.activity = activity
    hub.switch.activity_timeout = 0.5
    hub.spawn("mallory", "gpu-idle")
    hub.spawn("alice", "gpu-idle")
    assert hub.check(after=9) == ["alice"]
