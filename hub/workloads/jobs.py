"""The hub's job manager: queue, gang-schedule, run, restart and stop training jobs.

A submitted job waits until every replica's GPUs can be granted at once (the ledger's
queue keeps the order; GPUs the queue waits for are not given to later spawns), then
each replica starts through the backend's runner with its framework's cluster variables.
The manager watches every replica: one that fails is restarted as its group's policy
says, or fails the job; the success policy ends it. However a job ends, every replica
still running is stopped before its GPUs go back to the ledger, so a GPU is never free
while a replica can still use it. How one job runs, from its granted GPUs to its
verdict, is ``job_run.py``; this module queues, schedules, cancels and takes jobs over.
"""

from __future__ import annotations

import asyncio
import logging

from gpulab.hub.ledger import GpuLedger, LedgerError, NoGpuFree, QuotaExceeded

from . import spec as specs
from .job_run import JobRun, ReplicaRun
from .runner import JobError, PortPool
from .spec import JobSpec, SpecError, replica_name, spec_from_json
from .store import Job, JobStore
from .sweeps import SweepManager

log = logging.getLogger(__name__)


class JobManager:
    def __init__(
        self,
        ledger: GpuLedger,
        settings,
        runner,
        python: str = "python",
        s3=None,
        environments=None,
    ):
        self.ledger = ledger
        self.settings = settings
        self.s3 = s3
        self.environments = environments
        """``environments()``: the ``EnvironmentManager`` a job's ``environment`` is
        prepared by (it raises where the backend has none)."""
        """Per-user S3 accounts (``RgwAccounts``): a job's replicas get their user's keys."""
        self.runner = runner
        self.python = python
        self.store = JobStore(ledger.engine)
        self._tasks: dict[int, asyncio.Task] = {}
        self._changed = asyncio.Event()
        self.ports = PortPool()
        self._lock = asyncio.Lock()
        self.sweeps = SweepManager(self)
        self.taken_over = asyncio.Event()
        """Set once the jobs an earlier hub process ran are settled or supervised again
        (at once on a fresh hub). A cancel waits for it: before, the job's replicas run
        with no one to stop them."""

    # -- requests --------------------------------------------------------------------

    def parse(self, body: object) -> JobSpec:
        try:
            return specs.parse_job(body, self.python)
        except SpecError as e:
            raise JobError(400, str(e)) from None

    def submit(
        self,
        user: str,
        groups: list[str],
        spec: JobSpec,
        sweep: str = "",
        params: dict | None = None,
    ) -> Job:
        self.check_fits(user, spec, groups)
        if spec.environment:  # one the user may run in, saved and ready
            self.environments().visible(user, groups, spec.environment)
        replicas = [(replica_name(g.role, i), g.role, i) for g, i in spec.replicas()]
        job = self.store.create(
            user, spec.name, spec.as_json(), replicas, groups, sweep=sweep, params=params
        )
        if job is None:
            raise JobError(409, f"{user} already has a job named {spec.name}; delete it first")
        log.info(
            "Job %s/%s submitted (%d replicas, %d GPUs)", user, spec.name, len(replicas), spec.gpus
        )
        self.wake()
        return job

    def check_fits(self, user: str, spec: JobSpec, groups: list[str] = ()) -> None:
        """Refuse a job that could never start: over a quota or bigger than the pool."""
        per_replica = {f"replicas.{g.role}.gpus": g.gpus for g in spec.groups}
        refused = self.ledger.never_granted(user, groups, spec.gpus, per_replica, "the job")
        if refused:
            raise JobError(*refused)

    def get(self, user: str, name: str) -> Job:
        job = self.store.get(user, name)
        if job is None:
            raise JobError(404, f"{user} has no job named {name}")
        return job

    def model(self, job: Job) -> dict:
        """A job as the API shows it, with its place in the queue while it waits."""
        return self.models([job])[0]

    def models(self, jobs: list[Job]) -> list[dict]:
        """``model`` of each job, reading the queue once."""
        waiting = any(j.state == "queued" and j.waiter is not None for j in jobs)
        places = {w.id: n for n, w in enumerate(self.ledger.queue(), 1)} if waiting else {}
        out = []
        for job in jobs:
            model = job.as_json()
            model["queue_position"] = places.get(job.waiter) if job.state == "queued" else None
            out.append(model)
        return out

    async def cancel(self, job: Job, reason: str = "cancelled") -> Job:
        await self.taken_over.wait()
        current = self.store.get_by_id(job.id)
        if current is None:
            raise JobError(404, f"{job.user} has no job named {job.name}")
        job = current
        if not job.active:
            return job
        task = self._tasks.get(job.id)
        self.store.update(
            job.id, state="cancelled", message=f"Cancelled: {reason}", event=f"Cancelled ({reason})"
        )
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        else:  # still waiting for GPUs
            if job.waiter is not None:
                self.ledger.dequeue(job.user, job.queue_key)
            self.store.stop_replicas(job, "stopped")
        self.wake()
        return self.store.get_by_id(job.id)

    async def delete(self, job: Job) -> None:
        if job.active:
            await self.cancel(job, "deleted")
        self.store.delete(job.id)

    def read_log(self, job: Job, replica: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        if replica not in {r.name for r in job.replicas} and replica != "install":
            known = ", ".join(r.name for r in job.replicas)
            raise JobError(404, f"job {job.name} has no replica {replica} (replicas: {known})")
        return self.runner.read_log(job.user, job.log_path(replica), offset, limit)

    # -- the scheduler -------------------------------------------------------------------

    def wake(self) -> None:
        self._changed.set()

    async def run_background(self) -> None:
        """At hub start: settle jobs a restart interrupted; then schedule forever."""
        try:
            await self.recover()
        except Exception:  # noqa: BLE001 -- the hub must run on
            log.exception("Settling jobs after a restart failed")
        finally:
            self.taken_over.set()
        while True:
            try:
                await self.schedule()
                self.sweeps.advance()
            except Exception:  # noqa: BLE001 -- try again next round
                log.exception("Scheduling jobs failed")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), 1.0)
            except TimeoutError:
                pass

    async def schedule(self) -> None:
        """Start every queued job whose GPUs can be granted now, oldest first."""
        async with self._lock:
            for job in self.store.active():
                if job.state != "queued" or job.id in self._tasks:
                    continue
                self._try_start(job)

    def _try_start(self, job: Job) -> None:
        spec = spec_from_json(job.spec)
        wants = [
            (job.replica_key(replica_name(g.role, i)), g.gpus) for g, i in spec.replicas() if g.gpus
        ]
        waiter = job.waiter
        try:
            granted = self.ledger.reserve_many(
                job.user, wants, job.groups, f"job {job.name}", waiter=waiter
            )
        except QuotaExceeded as e:
            # the user's own servers hold the GPUs: wait without holding up the queue
            if waiter is not None:
                self.ledger.dequeue(job.user, job.queue_key)
                self.store.update(job.id, waiter=None)
            self._waiting(job, f"Waiting for GPUs within your quota ({e})")
            return
        except NoGpuFree as e:
            if waiter is None:
                waiter = self.ledger.enqueue(job.user, job.queue_key, spec.gpus)
                self.store.update(
                    job.id,
                    waiter=waiter,
                    event=f"Queued for {spec.gpus} GPU(s): {e.message_for(False)}",
                )
            self._waiting(job, f"Waiting for {spec.gpus} GPU(s): {e.message_for(False)}")
            return
        except LedgerError as e:
            self.store.update(job.id, state="failed", message=str(e))
            return
        gpus = {key: [g.id for g in granted.get(key, [])] for key, _ in wants}
        held = ", ".join(f"{k.rsplit('/', 1)[1]}: {','.join(v)}" for k, v in gpus.items())
        self.store.update(
            job.id,
            state="starting",
            waiter=None,
            message="Starting replicas",
            event=f"Granted GPUs ({held})" if gpus else "",
        )
        runs = {}
        for group, index in spec.replicas():
            name = replica_name(group.role, index)
            runs[name] = ReplicaRun(
                group, index, name, self._address(job, name), gpus.get(job.replica_key(name), [])
            )
        self._supervise(job, spec, runs)

    def _waiting(self, job: Job, message: str) -> None:
        if job.message != message:
            self.store.update(job.id, message=message)

    def _address(self, job: Job, replica: str) -> str:
        """Where the job's other replicas reach ``replica``: its host name from the
        runner, on a port no other replica of this hub was given."""
        return f"{self.runner.host(job.group, replica)}:{self.ports.take()}"

    # -- after a hub restart ---------------------------------------------------------------

    async def recover(self) -> None:
        """Take over the jobs an earlier hub process ran.

        A running job whose replicas all still hold their GPUs is supervised again: the
        replicas that run are adopted (their shell writes its exit code beside the log,
        so one that ends, even while no hub watched, is judged as if it had been seen),
        those that had ended count as they ended. A job caught starting, or whose
        replica lost its GPU (it was between restarts), is stopped and marked failed.
        Queued jobs go on waiting in their place in the queue.
        """
        queued = {w.server for w in self.ledger.queue()}
        for job in self.store.active():
            if job.state == "queued":
                if job.waiter is not None and job.queue_key not in queued:
                    self.store.update(job.id, waiter=None)
                continue
            why = self._cannot_resume(job)
            if why is None:
                self._resume(job)
                continue
            for r in job.replicas:
                if r.pid:
                    adopted = self.runner.adopt(
                        job.user, job.log_path(r.name), r.pid, r.pid_started
                    )
                    await self.runner.stop(adopted, self.settings.jobs.stop_grace_seconds)
                self.ledger.release(job.user, job.replica_key(r.name), "the hub restarted")
            await self.runner.close_group(job.user, job.group)
            message = f"Failed: the hub restarted while the job {why}; its replicas were stopped"
            self.store.update(job.id, state="failed", message=message, event=message)
            self.store.stop_replicas(job, "stopped")

    def _cannot_resume(self, job: Job) -> str | None:
        if job.state != "running" or any(r.state == "pending" for r in job.replicas):
            return "was starting"
        spec = spec_from_json(job.spec)
        held = {g.server for g in self.ledger.grants(job.user)}
        for r in job.replicas:
            if r.state in ("running", "restarting") and spec.group(r.role).gpus:
                if job.replica_key(r.name) not in held:
                    return f"ran ({r.name} no longer held its GPU)"
        return None

    def _resume(self, job: Job) -> None:
        spec = spec_from_json(job.spec)
        runs = {}
        for r in job.replicas:
            runs[r.name] = ReplicaRun(
                spec.group(r.role), r.index, r.name, r.address, r.gpus, restarts=r.restarts
            )
            self.ports.hold(runs[r.name].port)
        resumed = {}
        for r in job.replicas:
            adopted = None
            if r.state == "running":
                adopted = self.runner.adopt(job.user, job.log_path(r.name), r.pid, r.pid_started)
            resumed[r.name] = (r.state, r.exit_code, adopted)
        self.store.event(job.id, "Taken over after a hub restart")
        log.info("Job %s/%s: supervised again after a hub restart", job.user, job.name)
        self._supervise(job, spec, runs, resumed)

    def _supervise(self, job: Job, spec: JobSpec, runs, resumed: dict | None = None) -> None:
        """Run the job in a task of its own, known by the job's id while it runs."""
        task = asyncio.ensure_future(JobRun(self, job, spec, runs, resumed).run())
        self._tasks[job.id] = task
        task.add_done_callback(lambda _t, jid=job.id: self._tasks.pop(jid, None))
