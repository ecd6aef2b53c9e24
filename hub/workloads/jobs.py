"""The hub's job manager: queue, gang-schedule, run, restart and stop training jobs.

A submitted job waits until every replica's GPUs can be granted at once (the ledger's
queue keeps the order; GPUs the queue waits for are not given to later spawns), then
each replica starts through the backend's runner with its framework's cluster variables.
The manager watches every replica: one that fails is restarted as its group's policy
says, or fails the job; the success policy ends it. However a job ends, every replica
still running is stopped before its GPUs go back to the ledger, so a GPU is never free
while a replica can still use it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from dataclasses import dataclass

from gpulab.hub.app import context
from gpulab.hub.inventory import visible_devices_env
from gpulab.hub.ledger import GpuLedger, LedgerError, NoGpuFree, QuotaExceeded, utcnow

from . import spec as specs
from .runner import JobError, Launch, PortPool, last_line
from .spec import JobSpec, ReplicaGroup, SpecError, replica_name, spec_from_json
from .store import Job, JobStore
from .sweeps import SweepManager

log = logging.getLogger(__name__)

METRIC_PREFIX = "gpulab-metric:"
"""A line ``gpulab-metric: loss=0.25 accuracy=0.91`` in a replica's output reports metrics."""


@dataclass
class _ReplicaRun:
    group: ReplicaGroup
    index: int
    name: str
    address: str
    gpus: list[str]
    started: object = None
    restarts: int = 0

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


class JobManager:
    def __init__(self, ledger: GpuLedger, settings, runner, python: str = "python"):
        self.ledger = ledger
        self.settings = settings
        self.runner = runner
        self.python = python
        self.store = JobStore(ledger.engine)
        self._tasks: dict[int, asyncio.Task] = {}
        self._changed = asyncio.Event()
        self._ports = PortPool()
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
            self._stop_replica_records(job, "stopped")
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
            runs[name] = _ReplicaRun(
                group, index, name, self._address(job, name), gpus.get(job.replica_key(name), [])
            )
        self._supervise(job, spec, runs)

    def _waiting(self, job: Job, message: str) -> None:
        if job.message != message:
            self.store.update(job.id, message=message)

    # -- running one job -----------------------------------------------------------------

    async def _run(
        self, job: Job, spec: JobSpec, runs: dict[str, _ReplicaRun], resumed: dict | None = None
    ) -> None:
        """Run the job's replicas to a verdict. ``resumed``: per replica (state, exit
        code, adopted process) when taking over a job an earlier hub process started."""
        events: asyncio.Queue = asyncio.Queue()
        watchers: list[asyncio.Task] = []
        verdict = None
        try:
            env = await self._job_env(job, spec)
            await self.runner.open_group(job.user, job.group, env)
            if spec.package and resumed is None:
                env, verdict = await self._install_package(job, spec, env)
                if verdict is not None:
                    return
            elif spec.package:
                env = self._package_env(job, env)
            addresses = {(r.group.role, r.index): r.address for r in runs.values()}
            if resumed is None:
                self.store.update_replicas(
                    job.id,
                    {r.name: {"address": r.address, "gpus": r.gpus} for r in runs.values()},
                )
                self.store.update(job.id, state="running", started=utcnow(), message="Running")
            for run in runs.values():
                state, code, adopted = (resumed or {}).get(run.name, ("pending", None, None))
                if state in ("succeeded", "failed"):  # ended before the hub restarted
                    await events.put((run.name, code or 0, True, ""))
                    continue
                replica_env = {
                    **env,
                    **specs.cluster_env(spec, addresses, run.group.role, run.index),
                    **visible_devices_env(run.gpus),
                    "GPULAB_REPLICA": run.name,
                }
                watchers.append(
                    asyncio.ensure_future(self._watch(job, spec, run, replica_env, events, adopted))
                )
            started = job.started if resumed is not None else None
            verdict = await self._until_done(job, spec, runs, events, started)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 -- recorded on the job, never lost in a task
            log.exception("Job %s/%s failed in the hub", job.user, job.name)
            verdict = ("failed", f"Failed: {e}")
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await asyncio.shield(self._finish(job, runs, verdict))

    async def _until_done(self, job, spec, runs, events, started=None) -> tuple[str, str]:
        """Wait for the job's verdict: (state, message). ``started``: when the job began,
        if before now (the deadline counts from then)."""
        deciding = specs.success_roles(spec)
        deadline = spec.active_deadline
        loop = asyncio.get_running_loop()
        ran = (utcnow() - started).total_seconds() if started else 0.0
        ends = loop.time() + deadline - ran if deadline else None
        succeeded: set[str] = set()
        while True:
            timeout = None if ends is None else max(0.0, ends - loop.time())
            try:
                name, code, final, detail = await asyncio.wait_for(events.get(), timeout)
            except TimeoutError:
                return "failed", f"Failed: DeadlineExceeded: ran longer than {deadline:g}s"
            if not final:
                continue
            run = runs[name]
            if code == 0:
                succeeded.add(name)
                if deciding is None:
                    done = len(succeeded) == len(runs)
                else:
                    role, indexes = deciding
                    done = all(replica_name(role, i) in succeeded for i in indexes)
                if done:
                    who = "every replica" if deciding is None else _names(deciding)
                    self._collect_metrics(job, spec)
                    return "succeeded", f"Succeeded: {who} finished"
                continue
            if detail:
                why = f"{name} {detail}"
            else:
                tail = self._last_line(job, name)
                why = f"{name} exited with code {code}" + (f": {tail}" if tail else "")
            if run.restarts >= run.group.backoff_limit and run.group.restart_policy != "Never":
                why += f" (after {run.restarts} restart(s), backoff limit reached)"
            self._collect_metrics(job, spec)
            return "failed", f"Failed: {why}"

    async def _watch(self, job, spec, run: _ReplicaRun, env, events, adopted=None) -> None:
        """Run one replica until it is done for good, restarting it as its policy says;
        ``adopted``: its process, already running, started by an earlier hub."""
        log_path = job.log_path(run.name)
        while True:
            if adopted is not None:
                run.started, adopted = adopted, None
                returncode = await run.started.wait()
            else:
                returncode = await self._start_attempt(job, spec, run, env, log_path, events)
                if returncode is None:
                    return
            code = specs.exit_code(returncode)
            if code == 0:
                self.store.update_replica(
                    job.id,
                    run.name,
                    state="succeeded",
                    exit_code=0,
                    finished=utcnow(),
                    event="Exited with code 0",
                )
                await events.put((run.name, 0, True, ""))
                return
            if specs.should_restart(run.group, code, run.restarts):
                run.restarts += 1
                delay = min(
                    self.settings.jobs.restart_backoff_seconds * 2 ** (run.restarts - 1), 60.0
                )
                self.store.update_replica(
                    job.id,
                    run.name,
                    state="restarting",
                    exit_code=code,
                    restarts=run.restarts,
                    message=f"exited with code {code}; restarting in {delay:g}s",
                    event=f"Exited with code {code}; restart {run.restarts} in {delay:g}s",
                )
                await events.put((run.name, code, False, ""))
                await asyncio.sleep(delay)
                continue
            self.store.update_replica(
                job.id,
                run.name,
                state="failed",
                exit_code=code,
                finished=utcnow(),
                event=f"Exited with code {code}",
            )
            await events.put((run.name, code, True, ""))
            return

    async def _start_attempt(self, job, spec, run: _ReplicaRun, env, log_path, events):
        """Start the replica's next attempt and wait for it: its return code, or None when
        it could not start (the job is told)."""
        attempt = run.restarts + 1
        header = (
            f"==> gpulab: {run.name} of job {job.name}, attempt {attempt}, "
            f"{utcnow():%Y-%m-%d %H:%M:%S} UTC"
        )
        launch = Launch(
            argv=spec.command_for(run.group),
            env=env,
            workdir=spec.workdir,
            log=log_path,
            header=header,
            name=run.name,
            group=job.group,
            gpus=tuple(run.gpus),
            node=self._node_of(run.gpus),
            ports=(run.port,),
            image=spec.image,
            outputs=(job.metrics_path,),
        )
        try:
            run.started = await self.runner.start(job.user, launch)
        except OSError as e:
            return await self._not_started(job, run, events, e, 127)
        # the grant names its holder, so a hub restart keeps it while the process runs
        self.ledger.attach(
            job.user, job.replica_key(run.name), run.started.pid, run.started.pid_started
        )
        self.store.update_replica(
            job.id,
            run.name,
            state="running",
            pid=run.started.pid,
            pid_started=run.started.pid_started,
            started=utcnow(),
            exit_code=None,
            message="",
            event=f"Started (attempt {attempt})",
        )
        try:
            return await run.started.wait()
        except OSError as e:  # its pod could not start (not scheduled, no image)
            return await self._not_started(job, run, events, e, 128)

    async def _not_started(self, job, run: _ReplicaRun, events, error: OSError, code: int):
        """A replica that could not start fails for good with the reason; None."""
        self.store.update_replica(
            job.id, run.name, state="failed", message=str(error), finished=utcnow()
        )
        await events.put((run.name, code, True, str(error)))
        return None

    async def _finish(self, job: Job, runs: dict[str, _ReplicaRun], verdict) -> None:
        """Stop every replica still running, give its GPUs and port back, and only then
        say how the job ended: a job shown as finished holds nothing any more."""
        grace = self.settings.jobs.stop_grace_seconds
        live = [r for r in runs.values() if r.started is not None]
        if verdict is not None and live:
            self.store.update(job.id, message=f"{verdict[1]}; stopping its replicas")
        await asyncio.gather(
            *(self.runner.stop(r.started, grace) for r in live), return_exceptions=True
        )
        try:
            await self.runner.close_group(job.user, job.group)
        except Exception:  # noqa: BLE001 -- its processes are stopped; what is left is logged
            log.exception("Job %s/%s: removing what its replicas shared failed", job.user, job.name)
        for run in runs.values():
            self.ledger.release(job.user, job.replica_key(run.name), f"job {job.name} ended")
            self._ports.release(run.port)
        current = self.store.get_by_id(job.id)
        if current is not None:
            self._stop_replica_records(current, "stopped")
            if current.active:  # not cancelled meanwhile
                state, message = verdict or ("failed", "Failed: stopped by the hub")
                self.store.update(job.id, state=state, message=message, event=message)
        self.wake()

    def _stop_replica_records(self, job: Job, state: str) -> None:
        now = utcnow()
        unfinished = ("pending", "running", "restarting")
        changes = {
            r.name: {"state": state, "finished": now} for r in job.replicas if r.state in unfinished
        }
        if changes:
            self.store.update_replicas(job.id, changes)

    async def _job_env(self, job: Job, spec: JobSpec) -> dict[str, str]:
        env = self.runner.base_env(job.user)
        s3 = context().s3
        if s3 is not None:
            account = await asyncio.to_thread(s3.ensure, job.user)
            env.update(account.env())
        env.update(
            GPULAB_JOB=job.name,
            GPULAB_JOB_ID=str(job.id),
            GPULAB_METRICS_FILE=f"{env['HOME']}/{job.metrics_path}",
            PYTHONUNBUFFERED="1",
        )
        for key, value in job.params.items():
            env[f"GPULAB_PARAM_{key.upper()}"] = str(value)
        env.update(spec.env)
        return env

    async def _install_package(
        self, job: Job, spec: JobSpec, env: dict
    ) -> tuple[dict, tuple | None]:
        """pip-install the job's package into a folder of the job's: (the env that sees it,
        None), or (env, the job's verdict) when the install failed."""
        self.store.update(
            job.id, message=f"Installing {spec.package}", event=f"Installing ~/{spec.package}"
        )
        launch = Launch(
            argv=[self.python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                  "--target", job.site_dir, spec.package],
            env=env,
            workdir="",
            log=job.log_path("install"),
            header=f"==> gpulab: installing ~/{spec.package} for job {job.name}",
            name="install",
            group=job.group,
            image=spec.image,
        )  # fmt: skip
        started = await self.runner.start(job.user, launch)
        try:
            code = specs.exit_code(await started.wait())
        finally:
            await self.runner.stop(started, 1.0)
        if code != 0:
            tail = self._last_line(job, "install")
            message = f"Failed: installing ~/{spec.package} exited with code {code}: {tail}"
            return env, ("failed", message)
        return self._package_env(job, env), None

    @staticmethod
    def _package_env(job: Job, env: dict) -> dict:
        """``env`` with the job's installed package first on PYTHONPATH."""
        site = f"{env['HOME']}/{job.site_dir}"
        return {**env, "PYTHONPATH": ":".join(p for p in (site, env.get("PYTHONPATH")) if p)}

    def _address(self, job: Job, replica: str) -> str:
        """Where the job's other replicas reach ``replica``: its host name from the
        runner, on a port no other replica of this hub was given."""
        return f"{self.runner.host(job.group, replica)}:{self._ports.take()}"

    def _node_of(self, gpu_ids: list[str]) -> str:
        """The node a replica's GPUs are on (the ledger grants a replica's on one)."""
        nodes = {g.node for g in self.ledger.inventory if g.id in gpu_ids}
        return nodes.pop() if len(nodes) == 1 else ""

    def _last_line(self, job: Job, replica: str) -> str:
        return last_line(self.runner, job.user, job.log_path(replica))

    def _collect_metrics(self, job: Job, spec: JobSpec) -> None:
        """The metrics the deciding replica reported (the last value of each wins)."""
        role, indexes = specs.success_roles(spec) or ("worker", [0])
        metrics = parse_metrics(
            self.runner.read_log(job.user, job.log_path(replica_name(role, indexes[0])))
        )
        raw = self.runner.read_log(job.user, job.metrics_path)
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            if isinstance(data, dict):
                metrics.update({k: v for k, v in data.items() if _number(v) is not None})
        if metrics:
            self.store.update(job.id, metrics=metrics)

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
            self._stop_replica_records(job, "stopped")

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
            runs[r.name] = _ReplicaRun(
                spec.group(r.role), r.index, r.name, r.address, r.gpus, restarts=r.restarts
            )
            self._ports.hold(runs[r.name].port)
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
        task = asyncio.ensure_future(self._run(job, spec, runs, resumed))
        self._tasks[job.id] = task
        task.add_done_callback(lambda _t, jid=job.id: self._tasks.pop(jid, None))


def parse_metrics(output: bytes) -> dict[str, float]:
    """``name=value`` pairs of every ``gpulab-metric:`` line; the last value of each wins."""
    metrics: dict[str, float] = {}
    for line in output.decode(errors="replace").splitlines():
        line = line.strip()
        if not line.startswith(METRIC_PREFIX):
            continue
        for pair in line[len(METRIC_PREFIX) :].replace(",", " ").split():
            key, sep, value = pair.partition("=")
            number = _number(value) if sep else None
            if key and number is not None:
                metrics[key] = number
    return metrics


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None  # NaN and inf are not JSON


def _names(deciding: tuple[str, list[int]]) -> str:
    role, indexes = deciding
    return ", ".join(replica_name(role, i) for i in indexes)


@functools.cache
def job_manager() -> JobManager:
    """The hub's one JobManager, over the ledger of ``context()`` and the backend's
    runner: processes on this machine, or pods (which run the image's ``python``)."""
    ctx = context()
    return JobManager(ctx.ledger, ctx.settings, *ctx.backend.job_runner())
