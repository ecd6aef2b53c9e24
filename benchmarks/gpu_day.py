"""A replayed working day: the GPU-hours held by idle servers, without and with gpulab.

A seeded day of notebook work (50 users on 8 GPUs by default) is generated once and
replayed twice on a virtual clock (a discrete-event simulation; no hub, no network):

A. JupyterHub with jupyterhub-idle-culler as zero-to-jupyterhub sets it up (``cull.timeout``
   3600 s, ``cull.every`` 600 s). A server holds its GPU from its spawn until it is culled.
   The culler sees HTTP activity: an open lab polls, so a server with an open tab is
   never culled; a cell that prints counts, a busy cell without output does not. A cull
   loses the kernel: the user, coming back, respawns (waiting for a free GPU if none) and
   redoes the lost work. Requests for GPUs wait first come, first served (JupyterHub has
   no queue: this is the kindest A).
B. gpulab's idle reclaim, decided by gpulab's own code: a real ``GpuLedger`` (SQLite in a
   temporary folder, stamped by the virtual clock) with its queue (``enqueue``,
   ``reserve(..., waiter=)``), and the real ``GpuSwitch.reclaim_idle`` every
   ``gpus.reclaim_interval`` (60 s), with ``idle_return: 10m`` on profile ``gpu-1`` and the
   hub's ``gpus.idle_return_when_queued`` (2 min: while requests wait for more GPUs than
   are free, the idlest servers idle that long give theirs back, as many as are lacking): the
   thought between the cells of a session lasts minutes (at most 10 in the day below),
   so a session never loses its GPU half-way; the tens of minutes between sessions,
   lunch, meetings and the night give it back. The replay answers the switch's
   ``activity`` calls (busy kernels, the last kernel message, GPU utilisation; an open tab
   is no kernel message) and carries out its Return GPU with the measured cost: the GPU
   is free 0.5 s after the return starts (docs/return-gpu.md: 0.15-0.2 s on the local
   backend, 0.47 s on the kubernetes backend's test cluster, 0.9 s for a kernel holding a
   1 GiB tensor on an H100). Before their next GPU cell, a user whose GPU was returned
   presses Get GPU: the request waits in the ledger's queue while no GPU is free (and is
   pressed again, to the end of the queue, each time ``gpus.acquire_timeout``, 600 s,
   ends it), then the kernels are back on the GPU 2 s after the grant
   (docs/return-gpu.md: 0.7-0.85 s on the local backend; benchmarks/return_gpu.py's goal
   <= 3 s). No server is stopped, so no state is lost.

The day (``plan_day``, the same for both). Users arrive between 08:00 and 10:30, spawn a
one-GPU server (``gpu-1``) and stay 8 to 9.5 hours. They work in sessions: bursts of 2-7
GPU cells (lognormal, median 40 s, 3 s to 10 min each) with 20 s to 10 min of thought
between them (median 90 s), then a while without the GPU (at least 20 min): half the
users are light (1-2 sessions a day), a third regular (3-5), the rest heavy (6-9). Lunch
(45-75 min, starting 12:00-13:00) and 0-2 meetings (30-60 min) come in between, half of
them with the tab closed. One user in seven starts a training cell of 1-3 hours that
prints nothing, and half of those close the tab while it runs. One in ten submits a batch
job (1 GPU, or 2 for one job in five; 1-3 h) in the afternoon, at a set time under both
policies. At the end of the day 4 in 5 close the tab and leave the server running; the
others leave the tab open overnight. A user who still waits for a GPU when it is time
to leave gives up; the cells they had not run are counted as not run.

Calibration: GPU cells fill about 10% of a user's hours at work on average (printed with
the median and p90), and under A the GPUs compute for less than that share of the time
they are held (printed as ``calibration``): the median GPU utilisation in Alibaba PAI's
trace (6,742 GPUs over two months) is at most 10% (Weng et al., "MLaaS in the Wild",
NSDI'22), and notebook sessions reserve GPUs that they use only sporadically (NotebookOS,
ASPLOS'26, on a production notebook trace). A busy cell rarely keeps a GPU at 100%, so
busy time is an upper bound on utilisation.

Counted, for each policy, over the window (08:00 plus ``--hours``): GPU-hours the
notebook servers held, those in which a cell computed (busy), the difference (held but
idle), and those batch jobs held (busy throughout, the same work under both). Servers
culled, each losing its kernel's state. GPU-hours redone: after a cull the user runs again,
before their next cell, every GPU cell completed since that server started (to rebuild
its state), and then the cell the cull killed from its start (the part it had computed
counts as redone); state lost and not rebuilt by the window's end (the user had left,
or waited for a GPU in vain) is shown apart. Waits for a GPU: from the spawn, the respawn
or the Get GPU click until the kernel runs on a GPU (median, p95, count; starting the
server itself takes the same time under both and is left out). For B, the held
GPU-seconds are also read from the ledger's usage accounting (``GpuLedger.usage`` +
``usage.total``) and compared with the replay's own count.

Goals: held-but-idle GPU-hours of B at most 20% of A's (-80%); no state lost in B;
median wait for a GPU in B <= 30 s.

    .venv/bin/python benchmarks/gpu_day.py [--seed 1] [--users 50] [--gpus 8] [--hours 24]
        [--idle-return 10m] [--when-queued 2m]

Last line: ``idle_gpu_hours_saved_ratio: <held-but-idle GPU-hours of B / those of A>``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import math
import random
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from gpulab.hub.gpuswitch import GpuSwitch
from gpulab.hub.inventory import Gpu
from gpulab.hub.ledger import GpuLedger, NoGpuFree
from gpulab.hub.ledger.usage import total
from gpulab.hub.settings import GpuSettings, Profile, Settings
from gpulab.hub.settings.units import SettingsError, parse_duration

MINUTE, HOUR = 60.0, 3600.0
DAY_START = 8 * HOUR
"""The window starts at 08:00 (seconds since midnight), with the first arrivals."""
MIDNIGHT = datetime(2026, 12, 7, tzinfo=UTC)
"""The replayed day (a Monday); the virtual clock counts seconds from its midnight."""

CULL_TIMEOUT, CULL_EVERY = 3600.0, 600.0
"""zero-to-jupyterhub's defaults for jupyterhub-idle-culler (``cull.timeout``, ``cull.every``)."""
RETURN_SECONDS = 0.5
"""Return GPU: from its start until the GPU is free (docs/return-gpu.md)."""
GET_SECONDS = 2.0
"""Get GPU: from the grant until the kernels run on the GPU with their variables."""
CELL_UTILIZATION = 90.0
"""What NVML shows while a cell computes (above ``gpus.idle_utilization``: busy)."""
RECLAIM_INTERVAL = 60
ACQUIRE_TIMEOUT = 600


# -- the day's plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    seconds: float
    """GPU compute."""
    silent: bool = False
    """Prints nothing while it runs (a training loop without a progress bar)."""
    away: bool = False
    """The user closes the tab while it runs and comes back when it should have ended."""


@dataclass(frozen=True)
class Pause:
    seconds: float
    what: str = "think"
    """``think`` (at the notebook), ``between`` (sessions), ``lunch`` or ``meeting``."""
    tab_open: bool = True


@dataclass(frozen=True)
class Job:
    gpus: int
    seconds: float


@dataclass
class Plan:
    """One user's day as they mean it, if nothing makes them wait."""

    user: str
    arrive: float
    leave: float
    overnight_tab: bool
    steps: list[Cell | Pause]
    jobs: list[tuple[float, Job]]
    """Batch jobs and when they are submitted (whether or not the user has a GPU then)."""

    @property
    def gpu_seconds(self) -> float:
        return sum(s.seconds for s in self.steps if isinstance(s, Cell))


APPETITES = ((0.5, (1, 2)), (0.35, (3, 5)), (0.15, (6, 9)))
"""(share of users, GPU sessions a day they mean to have): light, regular, heavy users."""


def plan_day(rng: random.Random, users: int) -> list[Plan]:
    return [_plan(rng, f"user{i:02d}") for i in range(users)]


def _plan(rng: random.Random, user: str) -> Plan:
    arrive = rng.uniform(8 * HOUR, 10.5 * HOUR)
    leave = arrive + rng.uniform(8 * HOUR, 9.5 * HOUR)
    breaks = [(rng.uniform(12 * HOUR, 13 * HOUR), "lunch", rng.uniform(45, 75) * MINUTE)]
    for _ in range(rng.choices((0, 1, 2), (0.3, 0.5, 0.2))[0]):
        at = rng.uniform(arrive + HOUR, leave - HOUR)
        breaks.append((at, "meeting", rng.choice((30, 45, 60)) * MINUTE))
    breaks.sort()
    low, high = rng.choices([a for _, a in APPETITES], [w for w, _ in APPETITES])[0]
    between = (leave - arrive - 2 * HOUR) / rng.randint(low, high)
    training = rng.uniform(arrive + HOUR, leave - 3 * HOUR) if rng.random() < 1 / 7 else None
    job = rng.uniform(14 * HOUR, leave - 0.5 * HOUR) if rng.random() < 0.1 else None
    steps: list[Cell | Pause] = []
    jobs: list[tuple[float, Job]] = []
    t = arrive
    while t < leave:
        if breaks and breaks[0][0] <= t:
            _, what, seconds = breaks.pop(0)
            new = [Pause(seconds, what, tab_open=rng.random() < 0.5)]
        elif training is not None and training <= t:
            new = [Cell(rng.uniform(1, 3) * HOUR, silent=True, away=rng.random() < 0.5)]
            training = None
        elif job is not None and job <= t:
            jobs.append((t, Job(rng.choices((1, 2), (0.8, 0.2))[0], rng.uniform(1, 3) * HOUR)))
            job = None
            continue
        else:
            new = _session(rng, between)
            if breaks and t + sum(s.seconds for s in new) > breaks[0][0]:
                # the time without the GPU ends where the lunch or meeting begins
                rest = t + sum(s.seconds for s in new[:-1])
                new[-1] = Pause(max(0.0, breaks[0][0] - rest), "between")
        steps.extend(new)
        t += sum(s.seconds for s in new)
    return Plan(user, arrive, leave, rng.random() < 0.2, steps, jobs)


def _session(rng: random.Random, between: float) -> list[Cell | Pause]:
    """A burst of GPU cells with minutes of thought between them, then a while without
    the GPU (other work, reading, mail): about ``between`` seconds, at least 20 minutes."""
    steps: list[Cell | Pause] = []
    for i in range(rng.randint(2, 7)):
        if i:
            steps.append(Pause(_lognormal(rng, 90, 0.8, 20, 10 * MINUTE)))
        steps.append(Cell(_lognormal(rng, 40, 1.1, 3, 10 * MINUTE)))
    steps.append(Pause(max(20 * MINUTE, rng.uniform(0.5, 1.5) * between), "between"))
    return steps


def _lognormal(rng: random.Random, median: float, sigma: float, low: float, high: float):
    return min(high, max(low, median * math.exp(rng.gauss(0, sigma))))


# -- the replay ------------------------------------------------------------------------------


@dataclass
class Sleep:
    seconds: float


@dataclass
class NeedGpu:
    """Until the user's kernel runs on a GPU (True), or they give up at leaving time."""


@dataclass
class Compute:
    """Run a cell: True once it ended, False when a cull killed it (the user finds out
    when they expected it to end)."""

    cell: Cell
    redo: bool = False


Script = Generator[Sleep | NeedGpu | Compute, bool | None, None]


@dataclass
class Holding:
    who: str
    kind: str
    """``server`` or ``job``."""
    start: float
    gpus: int = 1
    end: float | None = None
    busy: float = 0.0
    """Seconds in which a cell computed on it."""


@dataclass
class Person:
    plan: Plan
    script: Script | None = None
    spawned: bool = False
    started: float | None = None
    """When the server (last) started."""
    holding: Holding | None = None
    """The GPU the server holds (its kernel can run cells on it)."""
    tab_open: bool = False
    cell: Compute | None = None
    cell_started: float = 0.0
    awaiting: int = 0
    """Counts what the script waits for: an event for an earlier one finds it moved on."""
    last_seen: float = 0.0
    """A: the server's last activity as JupyterHub records it (while none goes on)."""
    kernel_message: float | None = None
    """The newest kernel message, when no cell prints (B's ``last_activity``)."""
    asked: float | None = None
    """When the request for a GPU the user waits on began."""
    done_seconds: float = 0.0
    session_work: float = 0.0
    """A: GPU-seconds of the cells completed since the server started (its state)."""
    lost: float = 0.0
    """A: GPU-seconds to run again before the next cell, after a cull."""
    partial: float = 0.0
    """A: what a killed cell had computed; repeated when it runs again."""
    left: bool = False
    # B
    waiter: int | None = None
    returning: bool = False
    restoring: bool = False
    get_after_return: bool = False


@dataclass
class Figures:
    """What one policy did over the window (GPU-hours of notebook servers unless named)."""

    policy: str
    held_hours: float = 0.0
    busy_hours: float = 0.0
    idle_hours: float = 0.0
    job_hours: float = 0.0
    """GPU-hours held by batch jobs (all busy)."""
    culled: int = 0
    """Servers culled, each losing its kernel's state."""
    culled_after_leaving: int = 0
    redone_hours: float = 0.0
    lost_later_hours: float = 0.0
    """GPU work whose state a cull lost and that was not rebuilt by the window's end (the
    user had left, or waited for a GPU in vain)."""
    done_hours: float = 0.0
    not_done_hours: float = 0.0
    """GPU cells users could not run before leaving, for want of a GPU."""
    waits: list[float] = field(default_factory=list)
    gave_up: int = 0
    """Waits that ended with the user leaving (counted until then)."""
    job_waits: list[float] = field(default_factory=list)
    returns: int = 0
    gets: int = 0
    get_timeouts: int = 0
    """Get GPU requests that waited ``gpus.acquire_timeout`` and were pressed again."""
    ledger_held_hours: float | None = None
    ledger_sampled_hours: float | None = None
    ledger_busy_hours: float | None = None
    ledger_job_hours: float | None = None

    @property
    def busy_share(self) -> float:
        return self.busy_hours / self.held_hours if self.held_hours else 0.0

    def wait(self, q: float) -> float:
        return _quantile(self.waits, q)


@dataclass
class Request:
    """A request for GPUs waiting its turn: a spawn, a Get GPU or a batch job."""

    count: int
    granted: Callable[[], None]
    person: Person | None = None
    reserve: Callable[[int], object] | None = None
    """B: the reservation in the ledger for the queue entry with this id."""


class Replay(ABC):
    """The day's events on a virtual clock (seconds since midnight). Each user's plan runs
    as a script (a generator) that yields what it waits for; the policy decides how a
    server gets a GPU and when it loses it."""

    policy = ""

    def __init__(self, plans: list[Plan], gpus: int, hours: float):
        self.now = DAY_START
        self.end = DAY_START + hours * HOUR
        self._events: list = []
        self._order = itertools.count()
        self.people = {p.user: Person(p) for p in plans}
        self.holdings: list[Holding] = []
        self.figures = Figures(self.policy)

    def at(self, when: float, action: Callable, *args) -> None:
        heapq.heappush(self._events, (when, next(self._order), action, args))

    def after(self, seconds: float, action: Callable, *args) -> None:
        self.at(self.now + seconds, action, *args)

    async def run(self) -> Figures:
        for person in self.people.values():
            person.script = self.script(person)
            self.at(person.plan.arrive, self.step, person, None)
            for when, job in person.plan.jobs:
                self.at(when, self.submit, person, job)
        self.start()
        while self._events and self._events[0][0] <= self.end:
            self.now, _, action, args = heapq.heappop(self._events)
            outcome = action(*args)
            if asyncio.iscoroutine(outcome):
                await outcome
        self.now = self.end
        return self.finish()

    # -- the users

    def script(self, person: Person) -> Script:
        plan = person.plan
        self.set_tab(person, True)
        if not (yield NeedGpu()):
            return
        for step in plan.steps:
            if self.now >= plan.leave:
                break
            if isinstance(step, Pause):
                self.set_tab(person, step.tab_open)
                yield Sleep(step.seconds)
                self.set_tab(person, True)
            elif not (yield from self.run_cell(person, step)):
                break
        self.set_tab(person, plan.overnight_tab)
        person.left = True

    def run_cell(self, person: Person, cell: Cell) -> Generator:
        while True:
            if not self.has_gpu(person) and not (yield NeedGpu()):
                return False
            if person.lost:  # rebuild the state the cull lost: run its cells again
                lost, person.lost = person.lost, 0.0
                if not (yield Compute(Cell(lost), redo=True)):
                    continue
            if (yield Compute(cell)):
                return True
            cell = replace(cell, away=False)  # killed: this time the tab stays open

    def step(self, person: Person, value) -> None:
        """Resume the person's script with ``value``; do what it asks next."""
        try:
            asked = person.script.send(value)
        except StopIteration:
            return
        person.awaiting += 1
        if isinstance(asked, Sleep):
            self.after(asked.seconds, self.step, person, None)
        elif isinstance(asked, NeedGpu):
            person.asked = self.now
            self.at(max(self.now, person.plan.leave), self._give_up, person, person.awaiting)
            self.need_gpu(person)
        else:
            self._compute(person, asked)

    def granted(self, person: Person) -> None:
        """The person's kernel runs on a GPU: their script goes on."""
        self.figures.waits.append(self.now - person.asked)
        person.asked = None
        self.step(person, True)

    def _give_up(self, person: Person, awaiting: int) -> None:
        if person.asked is None or person.awaiting != awaiting:
            return
        self.cancel(person)
        self.figures.waits.append(self.now - person.asked)
        self.figures.gave_up += 1
        person.asked = None
        self.step(person, False)

    def _compute(self, person: Person, compute: Compute) -> None:
        self.mark(person)
        person.cell, person.cell_started = compute, self.now
        person.kernel_message = self.now
        if compute.cell.away:
            person.tab_open = False
        if person.partial and not compute.redo:  # the killed cell again, from its start
            self.figures.redone_hours += person.partial / HOUR
            person.partial = 0.0
        self.mark(person)
        self.after(compute.cell.seconds, self._cell_ended, person, person.awaiting)

    def _cell_ended(self, person: Person, awaiting: int) -> None:
        if person.awaiting != awaiting:
            return
        compute = person.cell
        self.set_tab(person, True)
        if compute is None:  # a cull killed it
            self.step(person, False)
            return
        self.stop_cell(person)
        person.session_work += compute.cell.seconds
        if compute.redo:
            self.figures.redone_hours += compute.cell.seconds / HOUR
        else:
            person.done_seconds += compute.cell.seconds
        self.step(person, True)

    def stop_cell(self, person: Person) -> float:
        """End the running cell now; the seconds it computed."""
        ran = self.now - person.cell_started
        person.holding.busy += ran
        self.mark(person)
        person.cell = None
        person.kernel_message = self.now
        return ran

    def set_tab(self, person: Person, tab_open: bool) -> None:
        self.mark(person)
        person.tab_open = tab_open
        self.mark(person)

    def active(self, person: Person) -> bool:
        """Activity as JupyterHub sees it: an open lab polls, a cell's output is traffic."""
        compute = person.cell
        return person.tab_open or (compute is not None and not compute.cell.silent)

    def mark(self, person: Person) -> None:
        if self.active(person):
            person.last_seen = self.now

    # -- GPUs

    def hold(self, who: str, kind: str, gpus: int = 1) -> Holding:
        holding = Holding(who, kind, self.now, gpus)
        self.holdings.append(holding)
        return holding

    def has_gpu(self, person: Person) -> bool:
        return person.holding is not None

    # -- the policy's part

    @abstractmethod
    def start(self) -> None:
        """Schedule the policy's own rounds."""

    @abstractmethod
    def need_gpu(self, person: Person) -> None:
        """The person needs a GPU for their next cell: spawn, respawn or Get GPU."""

    @abstractmethod
    def cancel(self, person: Person) -> None:
        """The person stops waiting for a GPU."""

    @abstractmethod
    def submit(self, person: Person, job: Job) -> None:
        """A batch job asks for its GPUs."""

    def finish(self) -> Figures:
        f = self.figures
        for person in self.people.values():
            compute = person.cell
            if compute is not None:
                person.holding.busy += self.end - person.cell_started
                if compute.redo:
                    f.redone_hours += (self.end - person.cell_started) / HOUR
            f.done_hours += person.done_seconds / HOUR
            if person.left or person.plan.leave <= self.end:
                missed = person.plan.gpu_seconds - person.done_seconds
                f.not_done_hours += max(0.0, missed - self._running(person)) / HOUR
            f.lost_later_hours += (person.lost + person.partial) / HOUR
        for h in self.holdings:
            seconds = ((h.end if h.end is not None else self.end) - h.start) * h.gpus
            if h.kind == "job":
                f.job_hours += seconds / HOUR
            else:
                f.held_hours += seconds / HOUR
                f.busy_hours += h.busy / HOUR
        f.idle_hours = f.held_hours - f.busy_hours
        return f

    def _running(self, person: Person) -> float:
        """What the cell running at the end will still compute (planned, not missed)."""
        compute = person.cell
        if compute is None or compute.redo:
            return 0.0
        return compute.cell.seconds


# -- A: JupyterHub and its idle culler ------------------------------------------------------


class CullerDay(Replay):
    """A server holds its GPU from its spawn until the culler ends it; requests for GPUs
    wait first come, first served (as the ledger's queue)."""

    policy = "A: idle culler"

    def __init__(self, plans: list[Plan], gpus: int, hours: float, cull_phase: float):
        super().__init__(plans, gpus, hours)
        self.free = gpus
        self.queue: list[Request] = []
        self.cull_phase = cull_phase

    def start(self) -> None:
        self.at(DAY_START + self.cull_phase, self.cull)

    def need_gpu(self, person: Person) -> None:
        self.queue.append(Request(1, lambda: self._spawned(person), person))
        self._grant()

    def _spawned(self, person: Person) -> None:
        person.holding = self.hold(person.plan.user, "server")
        person.started = self.now
        person.session_work = 0.0
        self.mark(person)
        self.granted(person)

    def cancel(self, person: Person) -> None:
        self.queue = [r for r in self.queue if r.person is not person]
        self._grant()

    def submit(self, person: Person, job: Job) -> None:
        asked = self.now

        def granted() -> None:
            self.figures.job_waits.append(self.now - asked)
            holding = self.hold(person.plan.user, "job", job.gpus)
            self.after(job.seconds, self._job_done, holding)

        self.queue.append(Request(job.gpus, granted))
        self._grant()

    def _job_done(self, holding: Holding) -> None:
        holding.end = self.now
        self.free += holding.gpus
        self._grant()

    def _grant(self) -> None:
        while self.queue and self.queue[0].count <= self.free:
            request = self.queue.pop(0)
            self.free -= request.count
            request.granted()

    def cull(self) -> None:
        for person in self.people.values():
            if person.holding is None or self.active(person):
                continue
            if self.now - person.last_seen > CULL_TIMEOUT:
                self._cull(person)
        self.after(CULL_EVERY, self.cull)

    def _cull(self, person: Person) -> None:
        f = self.figures
        f.culled += 1
        f.culled_after_leaving += person.left
        lost = person.session_work
        compute = person.cell
        if compute is not None:
            ran = self.stop_cell(person)
            if compute.redo:  # its state is still to rebuild
                f.redone_hours += ran / HOUR
                lost += compute.cell.seconds
            else:
                person.partial = ran
        person.lost, person.session_work = lost, 0.0
        person.holding.end = self.now
        person.holding = None
        self.free += 1
        self._grant()


# -- B: gpulab's idle reclaim ---------------------------------------------------------------


class ReplayedSwitch(GpuSwitch):
    """gpulab's switch, whose servers are the replay's: it answers ``activity`` and
    carries out Return GPU with its measured cost."""

    def __init__(self, day: ReclaimDay, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.day = day

    async def activity(self, spawner) -> dict:
        return self.day.activity(self.day.people[spawner.user.name])

    async def return_gpu(self, spawner, reason: str, interrupt=False, force=False, wait=True):
        return self.day.return_gpu(self.day.people[spawner.user.name], reason)


class ReclaimDay(Replay):
    """A real ledger and the real idle reclaim on the replay's clock; no server stops."""

    policy = "B: gpulab reclaim"

    def __init__(
        self,
        plans: list[Plan],
        gpus: int,
        hours: float,
        idle_return: str,
        when_queued: str,
        folder,
    ):
        super().__init__(plans, gpus, hours)
        self.settings = Settings(
            gpus=GpuSettings(
                ids=[str(i) for i in range(gpus)],
                reclaim_interval=RECLAIM_INTERVAL,
                acquire_timeout=ACQUIRE_TIMEOUT,
                idle_return_when_queued=when_queued,
            ),
            profiles=[Profile(slug="gpu-1", gpus=1, default=True, idle_return=idle_return)],
        )
        inventory = [Gpu(id=str(i), index=i, model="H100") for i in range(gpus)]
        url = f"sqlite:///{Path(folder) / 'gpulab.sqlite'}"
        self.ledger = GpuLedger(url, inventory, self.settings.gpus, clock=self.wall)
        self.switch = ReplayedSwitch(self, self.ledger, self.settings, clock=self.epoch)
        self.requests: dict[int, Request] = {}
        self.spawners = {
            user: SimpleNamespace(
                user=SimpleNamespace(name=user, groups=[], admin=False),
                name="",
                ready=True,
                pending=None,
                profile_slug="gpu-1",
            )
            for user in self.people
        }
        self.job_ids = itertools.count(1)

    def wall(self, at: float | None = None) -> datetime:
        return MIDNIGHT + timedelta(seconds=self.now if at is None else at)

    def epoch(self, at: float | None = None) -> float:
        return self.wall(at).timestamp()

    def start(self) -> None:
        self.after(RECLAIM_INTERVAL, self.reclaim)

    async def reclaim(self) -> None:
        await self.switch.reclaim_idle(self._spawner)
        self.after(RECLAIM_INTERVAL, self.reclaim)

    def _spawner(self, user: str, server: str):
        person = self.people.get(user)
        if person is None or server or person.started is None:
            return None
        return self.spawners[user]

    def activity(self, person: Person) -> dict:
        """What the server's extension would answer (``GET /gpulab/activity``)."""
        compute = person.cell
        printing = compute is not None and not compute.cell.silent
        last = self.now if printing else person.kernel_message
        return {
            "busy_kernels": int(compute is not None),
            "restoring": person.restoring,
            "gpu_utilization": CELL_UTILIZATION if compute is not None else 0,
            "started": self.epoch(person.started),
            "last_activity": None if last is None else self.epoch(last),
        }

    def has_gpu(self, person: Person) -> bool:
        return person.holding is not None and not person.returning

    # -- Return GPU

    def return_gpu(self, person: Person, reason: str) -> dict:
        user = person.plan.user
        held = [g.gpu_id for g in self.ledger.grants(user) if g.server == ""]
        self.ledger.begin_operation(
            user,
            "",
            "return",
            gpus=len(held),
            reason=reason,
            message="Checkpointing kernels…",
            detail={"gpu_ids": held},
        )
        person.returning = True
        self.figures.returns += 1
        self.after(RETURN_SECONDS, self._returned, person, reason, held)
        return {"released": held}

    def _returned(self, person: Person, reason: str, held: list[str]) -> None:
        user = person.plan.user
        self.ledger.release(user, "", reason)
        self.ledger.update_operation(
            user,
            "",
            state="done",
            message=f"Returned GPU {', '.join(held)}",
            detail={"gpu_ids": held},
        )
        person.holding.end = self.now
        person.holding = None
        person.returning = False
        if person.get_after_return:
            person.get_after_return = False
            self._get(person)
        self._grant()

    # -- spawn and Get GPU, through the ledger's queue

    def need_gpu(self, person: Person) -> None:
        if not person.spawned:
            self._spawn(person)
        else:
            self.figures.gets += 1
            if person.returning:
                person.get_after_return = True  # pressed while the return ends
            else:
                self._get(person)
        self._grant()

    def _spawn(self, person: Person) -> None:
        user = person.plan.user

        def reserve(waiter: int) -> None:
            self.ledger.reserve(user, "", 1, reason="spawn", waiter=waiter, profile="gpu-1")

        def granted() -> None:
            person.spawned = True
            person.started = self.now
            person.holding = self.hold(user, "server")
            self.granted(person)

        person.waiter = self.ledger.enqueue(user, "", 1)
        self.requests[person.waiter] = Request(1, granted, person, reserve)

    def _get(self, person: Person) -> None:
        user = person.plan.user
        op = self.ledger.operation(user, "")
        before = op.detail.get("gpu_ids", []) if op and op.kind == "return" else []
        self.ledger.begin_operation(
            user,
            "",
            "get",
            state="queued",
            gpus=1,
            reason="Get GPU by user",
            message="Waiting for a GPU",
            deadline=self.wall() + timedelta(seconds=ACQUIRE_TIMEOUT),
        )

        def reserve(waiter: int) -> None:
            self.ledger.reserve(
                user,
                "",
                1,
                reason="Get GPU by user",
                waiter=waiter,
                prefer=before,
                profile="gpu-1",
            )

        def granted() -> None:
            person.holding = self.hold(user, "server")
            person.restoring = True
            person.awaiting += 1  # leaving time no longer cancels it
            self.ledger.update_operation(
                user, "", state="restoring", message="Restoring your kernels on the GPU"
            )
            self.after(GET_SECONDS, self._got, person)

        person.waiter = waiter = self.ledger.enqueue(user, "", 1)
        request = self.requests[waiter] = Request(1, granted, person, reserve)
        self.after(ACQUIRE_TIMEOUT, self._get_timed_out, person, waiter, request)

    def _got(self, person: Person) -> None:
        person.restoring = False
        self.ledger.update_operation(person.plan.user, "", state="done", message="Got GPU")
        self.granted(person)

    def _get_timed_out(self, person: Person, waiter: int, request: Request) -> None:
        """``gpus.acquire_timeout`` passed in the queue: the request fails, and the user
        presses Get GPU again (to the end of the queue)."""
        if self.requests.get(waiter) is not request:  # granted or cancelled (ids come again)
            return
        del self.requests[waiter]
        self.ledger.dequeue(person.plan.user, "")
        self.ledger.update_operation(
            person.plan.user, "", state="failed", message="No GPU became free"
        )
        self.figures.get_timeouts += 1
        self._get(person)
        self._grant()

    def cancel(self, person: Person) -> None:
        request = self.requests.get(person.waiter)
        if request is None or request.person is not person:
            return
        del self.requests[person.waiter]
        self.ledger.dequeue(person.plan.user, "")
        if person.spawned:
            self.ledger.update_operation(
                person.plan.user, "", state="cancelled", message="Get GPU cancelled"
            )
        self._grant()

    def submit(self, person: Person, job: Job) -> None:
        user, asked = person.plan.user, self.now
        key = f"job/{next(self.job_ids)}"
        replica = f"{key}/worker-0"

        def reserve(waiter: int) -> None:
            self.ledger.reserve_many(user, [(replica, job.gpus)], reason=key, waiter=waiter)

        def granted() -> None:
            self.figures.job_waits.append(self.now - asked)
            holding = self.hold(user, "job", job.gpus)
            self.after(job.seconds, self._job_done, user, replica, holding)

        waiter = self.ledger.enqueue(user, key, job.gpus)
        self.requests[waiter] = Request(job.gpus, granted, reserve=reserve)
        self._grant()

    def _job_done(self, user: str, replica: str, holding: Holding) -> None:
        self.ledger.release(user, replica, "job finished")
        holding.end = self.now
        self._grant()

    def _grant(self) -> None:
        """Grant the head of the ledger's queue while the ledger lets it."""
        while queue := self.ledger.queue():
            head = queue[0]
            request = self.requests[head.id]
            try:
                request.reserve(head.id)
            except NoGpuFree:
                return
            del self.requests[head.id]
            request.granted()

    def finish(self) -> Figures:
        f = super().finish()
        start, end = self.wall(DAY_START), self.wall(self.end)
        holdings = self.ledger.usage(start, end)
        servers = total([h for h in holdings if h.kind == "server"], start, end, end)
        jobs = total([h for h in holdings if h.kind == "job"], start, end, end)
        f.ledger_held_hours = servers["held_seconds"] / HOUR
        f.ledger_sampled_hours = servers["sampled_seconds"] / HOUR
        f.ledger_busy_hours = servers["busy_seconds"] / HOUR
        f.ledger_job_hours = jobs["held_seconds"] / HOUR
        return f


# -- the comparison -------------------------------------------------------------------------


@dataclass
class DayResult:
    args: argparse.Namespace
    plans: list[Plan]
    a: Figures
    b: Figures
    lines: list[str]
    """What was printed."""

    @property
    def ratio(self) -> float:
        return _ratio(self.a, self.b)


def replay(args: argparse.Namespace) -> tuple[list[Plan], Figures, Figures]:
    rng = random.Random(args.seed)
    plans = plan_day(rng, args.users)
    cull_phase = rng.uniform(0, CULL_EVERY)  # the culler's rounds start with the hub
    a = asyncio.run(CullerDay(plans, args.gpus, args.hours, cull_phase).run())
    with tempfile.TemporaryDirectory(prefix="gpulab-day-") as folder:
        day = ReclaimDay(plans, args.gpus, args.hours, args.idle_return, args.when_queued, folder)
        b = asyncio.run(day.run())
        day.ledger.engine.dispose()
    return plans, a, b


def report(args: argparse.Namespace, plans: list[Plan], a: Figures, b: Figures) -> list[str]:
    lines: list[str] = []
    out = lines.append
    at_work = sum(p.leave - p.arrive for p in plans) / HOUR
    planned = sum(p.gpu_seconds for p in plans) / HOUR
    shares = [p.gpu_seconds / (p.leave - p.arrive) for p in plans]
    trainings = sum(isinstance(s, Cell) and s.silent for p in plans for s in p.steps)
    jobs = [job for p in plans for _, job in p.jobs]
    out(
        f"gpu_day: {args.users} users, {args.gpus} GPUs, 08:00 + {args.hours:g} h, "
        f"seed {args.seed}; B: idle_return {args.idle_return} "
        f"({args.when_queued or 'unchanged'} while others wait), reclaim every "
        f"{RECLAIM_INTERVAL} s"
    )
    out(
        f"the day: {planned:.1f} GPU-hours of cells planned in {at_work:.0f} hours at work "
        f"(per user: mean {planned / at_work:.1%}, median {_quantile(shares, 0.5):.1%}, "
        f"p90 {_quantile(shares, 0.9):.1%}), {trainings} silent trainings, {len(jobs)} batch "
        f"jobs ({sum(j.gpus * j.seconds for j in jobs) / HOUR:.1f} GPU-hours)"
    )
    out(
        f"calibration: busy/held under A {a.busy_share:.1%} (aim: at most about 10%, the "
        f"median GPU utilisation of Alibaba PAI's trace, Weng et al. NSDI'22)"
    )
    out("")
    out(f"{'':44}{a.policy:>20}{b.policy:>20}")

    def row(name: str, value: Callable[[Figures], object], fmt: str = ".1f") -> None:
        out(f"{name:44}{value(a):>20{fmt}}{value(b):>20{fmt}}")

    row("GPU-hours held by notebook servers", lambda f: f.held_hours)
    row("  busy (a cell computes)", lambda f: f.busy_hours)
    row("  held but idle", lambda f: f.idle_hours)
    row("  busy share", lambda f: f.busy_share, ".1%")
    row("GPU-hours held by batch jobs", lambda f: f.job_hours)
    row("servers culled, kernel state lost", lambda f: f.culled, "d")
    row("  of them after their user left", lambda f: f.culled_after_leaving, "d")
    row("GPU-hours redone after a cull", lambda f: f.redone_hours, ".2f")
    row("GPU-hours lost, not redone in the window", lambda f: f.lost_later_hours, ".2f")
    row("GPU-hours of cells run", lambda f: f.done_hours)
    row("GPU-hours of cells not run (no GPU in time)", lambda f: f.not_done_hours)
    row("waits for a GPU (spawn, respawn, Get GPU)", lambda f: len(f.waits), "d")
    row("  median wait, s", lambda f: f.wait(0.5), ".1f")
    row("  p95 wait, s", lambda f: f.wait(0.95), ".0f")
    row("  given up at leaving time", lambda f: f.gave_up, "d")
    row("median wait of a batch job, s", lambda f: _quantile(f.job_waits, 0.5), ".0f")
    row("Return GPU (idle reclaim) / Get GPU", lambda f: f"{f.returns} / {f.gets}", "")
    row("  Get GPU pressed again after its timeout", lambda f: f.get_timeouts, "d")
    out("")
    held = b.ledger_held_hours
    out(
        f"B in the ledger's usage accounting: servers held {held:.3f} GPU-hours (replay: "
        f"{b.held_hours:.3f}, {_off(held, b.held_hours)}), jobs {b.ledger_job_hours:.3f} "
        f"(replay: {b.job_hours:.3f}); the reclaim's samples: {b.ledger_sampled_hours:.1f} "
        f"sampled, {b.ledger_busy_hours:.1f} busy (replay: {b.busy_hours:.1f} busy)"
    )
    ratio = _ratio(a, b)
    out(f"held but idle, B / A: {ratio:.3f} ({ratio - 1:+.0%}; goal <= 0.2: {_met(ratio <= 0.2)})")
    out(f"kernel state lost in B: {b.culled} (goal 0: {_met(b.culled == 0)})")
    out(
        f"median wait for a GPU in B: {b.wait(0.5):.1f} s (goal <= 30 s: {_met(b.wait(0.5) <= 30)})"
    )
    out(f"idle_gpu_hours_saved_ratio: {ratio:.3f}")
    return lines


def _ratio(a: Figures, b: Figures) -> float:
    """Held-but-idle GPU-hours of B over those of A."""
    return b.idle_hours / a.idle_hours if a.idle_hours else float("inf")


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values``, between the two nearest (0 when there are none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def _off(value: float, reference: float) -> str:
    if not reference:
        return "both 0" if not value else "the replay counted none"
    return f"{(value - reference) / reference:+.3%}"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: list[str] | None = None) -> DayResult:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--hours", type=float, default=24.0, help="the window, from 08:00")
    parser.add_argument("--idle-return", default="10m", help="profile gpu-1's idle_return (B)")
    parser.add_argument(
        "--when-queued",
        default=GpuSettings.idle_return_when_queued,
        help="gpus.idle_return_when_queued (B; default: the hub's; '' turns it off)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.users <= 10_000:
        parser.error("--users: 1 to 10000")
    if not 1 <= args.gpus <= 1_000:
        parser.error("--gpus: 1 to 1000")
    if not 0 < args.hours <= 7 * 24:
        parser.error("--hours: more than 0, at most 168")
    try:
        if not parse_duration(args.idle_return, "--idle-return"):
            parser.error("--idle-return: more than 0 (without it nothing is reclaimed)")
        parse_duration(args.when_queued, "--when-queued")
    except SettingsError as e:
        parser.error(str(e))
    plans, a, b = replay(args)
    lines = report(args, plans, a, b)
    for line in lines:
        print(line, flush=True)
    return DayResult(args, plans, a, b, lines)


if __name__ == "__main__":
    main()
