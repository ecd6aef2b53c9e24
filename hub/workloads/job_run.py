"""One job's run: its replicas started through the backend's runner, watched, restarted
as their group's policy says, and judged; then every replica stopped and its GPUs and
port given back before the job is shown as finished.

The ``JobManager`` (``jobs.py``) makes a ``JobRun`` once a job's GPUs are granted, or
when a hub restart takes over a job an earlier hub process ran, and runs it as a task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpulab.hub.inventory import visible_devices_env
from gpulab.hub.ledger import utcnow

from . import spec as specs
from .job_metrics import FORMAT_BUDGET, events_env, number, scan_metrics
from .runner import Launch, last_line
from .spec import JobSpec, ReplicaGroup, replica_name
from .store import Job

if TYPE_CHECKING:
    from .jobs import JobManager

log = logging.getLogger(__name__)


@dataclass
class ReplicaRun:
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


class JobRun:
    def __init__(
        self,
        manager: JobManager,
        job: Job,
        spec: JobSpec,
        runs: dict[str, ReplicaRun],
        resumed: dict | None = None,
    ):
        """``resumed``: per replica (state, exit code, adopted process) when taking over a
        job an earlier hub process started."""
        self.manager = manager
        self.store = manager.store
        self.runner = manager.runner
        self.ledger = manager.ledger
        self.settings = manager.settings
        self.job = job
        self.spec = spec
        self.runs = runs
        self.resumed = resumed

    async def run(self) -> None:
        """Run the job's replicas to a verdict, then stop them and give back what they
        held."""
        events: asyncio.Queue = asyncio.Queue()
        watchers: list[asyncio.Task] = []
        verdict = None
        try:
            env = await self._env()
            await self.runner.open_group(self.job.user, self.job.group, env)
            if self.spec.package and self.resumed is None:
                env, verdict = await self._install_package(env)
                if verdict is not None:
                    return
            elif self.spec.package:
                env = self._package_env(env)
            addresses = {(r.group.role, r.index): r.address for r in self.runs.values()}
            since = time.time()  # the job's start: event files of earlier runs do not count
            if self.resumed is not None and self.job.started is not None:
                since -= (utcnow() - self.job.started).total_seconds()
            if self.resumed is None:
                self.store.update_replicas(
                    self.job.id,
                    {r.name: {"address": r.address, "gpus": r.gpus} for r in self.runs.values()},
                )
                self.store.update(self.job.id, state="running", started=utcnow(), message="Running")
            for run in self.runs.values():
                state, code, adopted = (self.resumed or {}).get(run.name, ("pending", None, None))
                if state in ("succeeded", "failed"):  # ended before the hub restarted
                    await events.put((run.name, code or 0, True, ""))
                    continue
                replica_env = {
                    **env,
                    **specs.cluster_env(self.spec, addresses, run.group.role, run.index),
                    **visible_devices_env(run.gpus),
                    "GPULAB_REPLICA": run.name,
                }
                if run.name == self._metrics_replica():
                    replica_env.update(events_env(self.spec, since))
                watchers.append(
                    asyncio.ensure_future(self._watch(run, replica_env, events, adopted))
                )
            started = self.job.started if self.resumed is not None else None
            verdict = await self._until_done(events, started)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 -- recorded on the job, never lost in a task
            log.exception("Job %s/%s failed in the hub", self.job.user, self.job.name)
            verdict = ("failed", f"Failed: {e}")
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await asyncio.shield(self._finish(verdict))

    async def _until_done(self, events, started=None) -> tuple[str, str]:
        """Wait for the job's verdict: (state, message). ``started``: when the job began,
        if before now (the deadline counts from then)."""
        deciding = specs.success_roles(self.spec)
        deadline = self.spec.active_deadline
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
            run = self.runs[name]
            if code == 0:
                succeeded.add(name)
                if deciding is None:
                    done = len(succeeded) == len(self.runs)
                else:
                    role, indexes = deciding
                    done = all(replica_name(role, i) in succeeded for i in indexes)
                if done:
                    who = "every replica" if deciding is None else _names(deciding)
                    note = await self._collect_metrics()
                    return "succeeded", f"Succeeded: {who} finished" + note
                continue
            if detail:
                why = f"{name} {detail}"
            else:
                tail = self._last_line(name)
                why = f"{name} exited with code {code}" + (f": {tail}" if tail else "")
            if run.restarts >= run.group.backoff_limit and run.group.restart_policy != "Never":
                why += f" (after {run.restarts} restart(s), backoff limit reached)"
            note = await self._collect_metrics()
            return "failed", f"Failed: {why}" + note

    async def _watch(self, run: ReplicaRun, env, events, adopted=None) -> None:
        """Run one replica until it is done for good, restarting it as its policy says;
        ``adopted``: its process, already running, started by an earlier hub."""
        log_path = self.job.log_path(run.name)
        while True:
            if adopted is not None:
                run.started, adopted = adopted, None
                returncode = await run.started.wait()
            else:
                returncode = await self._start_attempt(run, env, log_path, events)
                if returncode is None:
                    return
            code = specs.exit_code(returncode)
            if code == 0:
                self.store.update_replica(
                    self.job.id,
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
                    self.job.id,
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
                self.job.id,
                run.name,
                state="failed",
                exit_code=code,
                finished=utcnow(),
                event=f"Exited with code {code}",
            )
            await events.put((run.name, code, True, ""))
            return

    async def _start_attempt(self, run: ReplicaRun, env, log_path, events):
        """Start the replica's next attempt and wait for it: its return code, or None when
        it could not start (the job is told)."""
        attempt = run.restarts + 1
        header = (
            f"==> gpulab: {run.name} of job {self.job.name}, attempt {attempt}, "
            f"{utcnow():%Y-%m-%d %H:%M:%S} UTC"
        )
        launch = Launch(
            argv=self.spec.command_for(run.group),
            env=env,
            workdir=self.spec.workdir,
            log=log_path,
            header=header,
            name=run.name,
            group=self.job.group,
            gpus=tuple(run.gpus),
            node=self._node_of(run.gpus),
            ports=(run.port,),
            image=self.spec.image,
            outputs=(self.job.metrics_path,),
        )
        try:
            run.started = await self.runner.start(self.job.user, launch)
        except OSError as e:
            return await self._not_started(run, events, e, 127)
        # the grant names its holder, so a hub restart keeps it while the process runs
        self.ledger.attach(
            self.job.user, self.job.replica_key(run.name), run.started.pid, run.started.pid_started
        )
        self.store.update_replica(
            self.job.id,
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
            return await self._not_started(run, events, e, 128)

    async def _not_started(self, run: ReplicaRun, events, error: OSError, code: int):
        """A replica that could not start fails for good with the reason; None."""
        self.store.update_replica(
            self.job.id, run.name, state="failed", message=str(error), finished=utcnow()
        )
        await events.put((run.name, code, True, str(error)))
        return None

    async def _finish(self, verdict) -> None:
        """Stop every replica still running, give its GPUs and port back, and only then
        say how the job ended: a job shown as finished holds nothing any more."""
        grace = self.settings.jobs.stop_grace_seconds
        live = [r for r in self.runs.values() if r.started is not None]
        if verdict is not None and live:
            self.store.update(self.job.id, message=f"{verdict[1]}; stopping its replicas")
        await asyncio.gather(
            *(self.runner.stop(r.started, grace) for r in live), return_exceptions=True
        )
        try:
            await self.runner.close_group(self.job.user, self.job.group)
        except Exception:  # noqa: BLE001 -- its processes are stopped; what is left is logged
            log.exception(
                "Job %s/%s: removing what its replicas shared failed", self.job.user, self.job.name
            )
        for run in self.runs.values():
            self.ledger.release(
                self.job.user, self.job.replica_key(run.name), f"job {self.job.name} ended"
            )
            self.manager.ports.release(run.port)
        current = self.store.get_by_id(self.job.id)
        if current is not None:
            state, message = verdict or ("failed", "Failed: stopped by the hub")
            why = message if current.active else current.message  # cancelled meanwhile
            self.store.stop_replicas(
                current, "stopped", f"Stopped by the hub as the job ended: {why}"
            )
            if current.active:
                self.store.update(self.job.id, state=state, message=message, event=message)
        self.manager.wake()

    async def _env(self) -> dict[str, str]:
        layers = None
        if self.spec.environment:
            layers = await self.manager.environments().prepare(
                self.job.user,
                self.job.groups,
                self.spec.environment,
                lambda message: self.store.update(self.job.id, message=message),
            )
        env = self.runner.base_env(self.job.user, layers)
        s3 = self.manager.s3
        if s3 is not None:
            account = await asyncio.to_thread(s3.ensure, self.job.user)
            env.update(account.env())
        env.update(
            GPULAB_JOB=self.job.name,
            GPULAB_JOB_ID=str(self.job.id),
            GPULAB_METRICS_FILE=f"{env['HOME']}/{self.job.metrics_path}",
            PYTHONUNBUFFERED="1",
        )
        for key, value in self.job.params.items():
            env[f"GPULAB_PARAM_{key.upper()}"] = str(value)
        env.update(self.spec.env)
        return env

    async def _install_package(self, env: dict) -> tuple[dict, tuple | None]:
        """pip-install the job's package into a folder of the job's: (the env that sees it,
        None), or (env, the job's verdict) when the install failed."""
        self.store.update(
            self.job.id,
            message=f"Installing {self.spec.package}",
            event=f"Installing ~/{self.spec.package}",
        )
        launch = Launch(
            argv=[self.manager.python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                  "--target", self.job.site_dir, self.spec.package],
            env=env,
            workdir="",
            log=self.job.log_path("install"),
            header=f"==> gpulab: installing ~/{self.spec.package} for job {self.job.name}",
            name="install",
            group=self.job.group,
            image=self.spec.image,
        )  # fmt: skip
        started = await self.runner.start(self.job.user, launch)
        try:
            code = specs.exit_code(await started.wait())
        finally:
            await self.runner.stop(started, 1.0)
        if code != 0:
            tail = self._last_line("install")
            message = f"Failed: installing ~/{self.spec.package} exited with code {code}: {tail}"
            return env, ("failed", message)
        return self._package_env(env), None

    def _package_env(self, env: dict) -> dict:
        """``env`` with the job's installed package first on PYTHONPATH."""
        site = f"{env['HOME']}/{self.job.site_dir}"
        return {**env, "PYTHONPATH": ":".join(p for p in (site, env.get("PYTHONPATH")) if p)}

    def _node_of(self, gpu_ids: list[str]) -> str:
        """The node a replica's GPUs are on (the ledger grants a replica's on one)."""
        nodes = {g.node for g in self.ledger.inventory if g.id in gpu_ids}
        return nodes.pop() if len(nodes) == 1 else ""

    def _last_line(self, replica: str) -> str:
        return last_line(self.runner, self.job.user, self.job.log_path(replica))

    def _metrics_replica(self) -> str:
        """The replica whose metrics are the job's: the first that decides success."""
        role, indexes = specs.success_roles(self.spec) or ("worker", [0])
        return replica_name(role, indexes[0])

    async def _collect_metrics(self) -> str:
        """Keep the metrics the deciding replica reported (the last value of each wins):
        its log's, then its metrics file's (where its TensorBoard scalars went). Returns
        what the job's message should add ("" or why some lines were not read)."""
        replica = self._metrics_replica()
        output = self.runner.read_log(self.job.user, self.job.log_path(replica))
        # in a thread: a user's metrics_format may take all of its budget
        scanned = await asyncio.to_thread(
            scan_metrics, output, self.spec.metrics, self.spec.metrics_format
        )
        metrics = scanned.values
        raw = self.runner.read_log(self.job.user, self.job.metrics_path)
        if raw:
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            if isinstance(data, dict):
                metrics.update({k: v for k, v in data.items() if number(v) is not None})
        if metrics:
            self.store.update(self.job.id, metrics=metrics)
        if not scanned.stopped_at:
            return ""
        return (
            f"; metrics_format took longer than {FORMAT_BUDGET:g}s on {replica}'s log: "
            f"metrics from the lines before line {scanned.stopped_at} only"
        )


def _names(deciding: tuple[str, list[int]]) -> str:
    role, indexes = deciding
    return ", ".join(replica_name(role, i) for i in indexes)
