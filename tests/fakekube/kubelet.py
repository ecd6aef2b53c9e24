"""A kubelet for every node of the inventory, in one object.

Each pod bound to a node gets a worker that walks it through what a real kubelet
reports, one MODIFIED event per step:

1. volumes: PVCs must exist and be Bound, Secret/ConfigMap volumes must exist (unless
   optional); meanwhile the pod stays Pending, containers ``ContainerCreating``, with
   ``FailedMount`` events;
2. sandbox: ``hostIP``/``podIP`` 127.0.0.1, ``startTime``, condition
   ``PodReadyToStartContainers``;
3. init containers one after another, then all containers: Pulled / Created /
   Started events, ``state.running``, ``started``/``ready`` (after the startup and
   readiness probes when there are any), conditions ``Initialized``,
   ``ContainersReady``, ``Ready``; a configuration error is
   ``CreateContainerConfigError`` (retried until the Secret/ConfigMap appears);
4. container exits: ``state.terminated`` with the exit code; ``restartPolicy``
   decides: restart (``restartCount``, ``lastState``, ``CrashLoopBackOff`` with
   exponential back-off from the second restart on) or finish: phase ``Succeeded``
   (all exited 0) or ``Failed``, as kubelet's ``getPhase`` rules;
5. deletion: ``Killing`` events, SIGTERM, SIGKILL after the pod's grace period (2 s
   minimum when the pod was force-deleted), a terminal status, then the final delete
   with grace 0 that removes the object.

With ``run_containers`` a container that has a ``command`` or ``args`` runs as a real
local process (see ``containers``); otherwise, and for containers with neither (the
image's entrypoint cannot run here), the container is simulated: it runs until the pod is
deleted or a test ends it with ``FakeKube.exit_container``. Probes only run against
real processes; simulated containers are ready once started. Unlike a real kubelet,
this one does not check that a pod bound straight to a node (``spec.nodeName`` set by
its creator, bypassing the scheduler) fits there.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import clock, probes
from .containers import ConfigError, Process, container_env
from .controller import Controller
from .errors import ApiError
from .resources import CONFIGMAP, NODE, POD, PVC, SECRET
from .volumes import VolumeManager

if TYPE_CHECKING:
    from .cluster import Cluster

log = logging.getLogger("fakekube")
Obj = dict[str, Any]
MIN_GRACE = 2  # kubelet's minimumGracePeriodInSeconds, for force-deleted pods
MAX_BACKOFF = 300


def _image_id(image: str) -> str:
    repo = image.split("@")[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    if "/" not in repo:
        repo = f"docker.io/library/{repo}"
    elif "." not in repo.split("/")[0]:
        repo = f"docker.io/{repo}"
    return f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


class ContainerState:
    """What the kubelet knows about one container of a pod."""

    def __init__(self, spec: Obj, init: bool):
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.state: Obj = {
            "waiting": {"reason": "PodInitializing" if init else "ContainerCreating"}
        }
        self.last_state: Obj = {}
        self.restart_count = 0
        self.ready = self.started = self.ever_ran = False
        self.container_id: str | None = None
        self.process: Process | None = None
        self.simulated: asyncio.Future[int] | None = None
        self.log: Path | None = None  # the current (or last) instance's
        self.last_log: Path | None = None  # the last terminated instance's
        self.tasks: list[asyncio.Future] = []

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> bool:
        return "terminated" in self.state

    @property
    def exit_code(self) -> int | None:
        return self.state["terminated"]["exitCode"] if self.terminated else None

    def wait(self, reason: str, message: str | None = None) -> None:
        self.state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        self.ready = self.started = False

    def finish(self, code: int, reason: str | None = None, message: str | None = None) -> None:
        term = {
            "exitCode": code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "startedAt": self.state.get("running", {}).get("startedAt") or clock.rfc3339(),
            "finishedAt": clock.rfc3339(),
        }
        if message:
            term["message"] = message
        if self.container_id:
            term["containerID"] = self.container_id
        self.state = {"terminated": term}
        self.last_log = self.log
        self.ready = self.started = False
        for task in self.tasks:
            task.cancel()
        self.tasks = []

    def status(self) -> Obj:
        out: Obj = {
            "name": self.name,
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "restartCount": self.restart_count,
            "image": self.spec.get("image", ""),
            "imageID": _image_id(self.spec.get("image", "")) if self.container_id else "",
            "started": self.started,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


class PodWorker:
    """Runs one pod on its node, from its volumes to the final delete."""

    def __init__(self, kubelet: Kubelet, pod: Obj):
        self.kubelet = kubelet
        self.cluster = kubelet.cluster
        meta = pod["metadata"]
        self.uid, self.namespace, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.node = pod["spec"]["nodeName"]
        self.spec = pod["spec"]
        self.sandbox = kubelet.root / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        self.init_containers = [
            ContainerState(c, True) for c in self.spec.get("initContainers") or []
        ]
        self.containers = [ContainerState(c, False) for c in self.spec["containers"]]
        if self.init_containers:
            for c in self.containers:
                c.wait("PodInitializing")
        self.changed = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.kill_deadline = float("inf")
        self.gone = False
        self.sandbox_ready = False
        self.initialized = not self.init_containers
        self.terminal_phase: str | None = None
        self.start_time: str | None = None
        self._since: dict[str, tuple[str, str]] = {}
        self._restarts: dict[str, asyncio.Task] = {}
        self._kills: set[asyncio.Future] = set()
        self._last_status: Obj | None = None
        self.task = asyncio.get_running_loop().create_task(
            self.run(), name=f"pod {self.namespace}/{self.name}"
        )

    def request_stop(self, grace: float, gone: bool = False) -> None:
        """Stop the pod: SIGKILL after ``grace`` seconds; ``gone``: its object was
        deleted already (force delete), so no status is written any more."""
        grace = max(MIN_GRACE, grace) if gone else max(0.0, grace)
        self.kill_deadline = min(self.kill_deadline, time.monotonic() + grace)
        self.gone = self.gone or gone
        self.stop_requested.set()
        self.changed.set()

    def current(self) -> Obj | None:
        return self.cluster.store.get(POD, self.namespace, self.name)

    def all_containers(self) -> list[ContainerState]:
        return self.init_containers + self.containers

    def find(self, name: str) -> ContainerState | None:
        return next((c for c in self.all_containers() if c.name == name), None)

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        lifecycle = asyncio.ensure_future(self._lifecycle())
        try:
            await self.stop_requested.wait()
            lifecycle.cancel()
            await asyncio.gather(lifecycle, return_exceptions=True)
            await self._terminate()
        except Exception:
            log.exception("pod %s/%s: kubelet worker failed", self.namespace, self.name)
        finally:
            lifecycle.cancel()

    async def _wait_changed(self, timeout: float) -> None:
        """Wait for news about this pod; every lifecycle step ends here once the pod
        is being stopped (cancellation alone can be lost in a racing wakeup)."""
        try:
            async with asyncio.timeout(timeout):
                await self.changed.wait()
        except TimeoutError:
            pass
        self.changed.clear()
        if self.stop_requested.is_set():
            raise asyncio.CancelledError

    async def _lifecycle(self) -> None:
        try:
            await self._run_pod()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s: kubelet lifecycle failed", self.namespace, self.name)

    async def _run_pod(self) -> None:
        self.start_time = clock.rfc3339()
        self.publish()
        while (problem := self._volumes_problem()) is not None:
            self.event("FailedMount", problem, type="Warning")
            await self._wait_changed(1.0)
        self.sandbox.mkdir(parents=True, exist_ok=True)
        self.sandbox_ready = True
        self.publish()
        for c in self.init_containers:
            while not (c.terminated and c.exit_code == 0):
                await self._start(c)
                if c.running:
                    c.finish(await self._exit_of(c))
                if c.terminated and c.exit_code != 0:
                    if self.spec.get("restartPolicy") == "Never":
                        self.terminal_phase = "Failed"
                        self.publish()
                        return
                    await self._backoff(c)
                elif not c.terminated:
                    await self._wait_changed(1.0)
            self.publish()
        self.initialized = True
        for c in self.containers:
            c.wait("ContainerCreating")
        pending = list(self.containers)
        while pending:
            for c in list(pending):
                await self._start(c)
                if c.running or c.terminated:
                    pending.remove(c)
            self.publish()
            if pending:
                await self._wait_changed(1.0)
        await self._supervise()

    def _volumes_problem(self) -> str | None:
        store = self.cluster.store
        for volume in self.spec.get("volumes") or []:
            name = volume.get("name")
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                pvc = store.peek(PVC, self.namespace, claim)
                if pvc is None:
                    return f'MountVolume.SetUp failed for volume "{name}" : persistentvolumeclaim "{claim}" not found'
                if pvc.get("status", {}).get("phase") != "Bound":
                    return f'Unable to attach or mount volumes: unmounted volumes=[{name}]: persistentvolumeclaim "{claim}" is not bound'
            for source, rt, key in (
                ("secret", SECRET, "secretName"),
                ("configMap", CONFIGMAP, "name"),
            ):
                ref = volume.get(source)
                if (
                    ref
                    and not ref.get("optional")
                    and store.peek(rt, self.namespace, ref.get(key, "")) is None
                ):
                    return f'MountVolume.SetUp failed for volume "{name}" : {source.lower()} "{ref.get(key)}" not found'
        return None

    async def _start(self, c: ContainerState) -> None:
        """Create and start a container (or leave it waiting on a config error)."""
        pod = self.current()
        if pod is None:
            return
        argv = (c.spec.get("command") or []) + (c.spec.get("args") or [])
        real = self.kubelet.run_containers and bool(argv)
        try:
            env = container_env(self.cluster.store, pod, c.spec, self.kubelet.base_env())
            mounts = self.kubelet.volumes.mounts(pod, c.spec, self.sandbox) if real else []
        except ConfigError as e:
            if c.state.get("waiting", {}).get("reason") != "CreateContainerConfigError":
                self.event("Failed", f"Error: {e}", type="Warning", container=c)
            c.wait("CreateContainerConfigError", str(e))
            return
        image = c.spec.get("image", "")
        if c.spec.get("imagePullPolicy") == "Always":
            self.event("Pulling", f'Pulling image "{image}"', container=c)
            self.event(
                "Pulled",
                f'Successfully pulled image "{image}" in 0s (0s including waiting). Image size: 0 bytes.',
                container=c,
            )
        else:
            self.event(
                "Pulled", f'Container image "{image}" already present on machine', container=c
            )
        c.container_id = "containerd://" + uuid.uuid4().hex + uuid.uuid4().hex
        self.event("Created", f"Created container: {c.name}", container=c)
        c.log = self.sandbox / "logs" / c.name / f"{c.restart_count}.log"
        c.log.parent.mkdir(parents=True, exist_ok=True)
        c.log.touch()
        started_at = clock.rfc3339()
        c.process = c.simulated = None
        cwd = Path(c.spec.get("workingDir") or self.sandbox / "workdir" / c.name)
        if real:
            try:
                c.process = await Process.start(
                    c.spec, pod, env, cwd, c.log, self.cluster.dns.hosts_file, mounts
                )
            except (OSError, ValueError) as e:
                argv0 = argv[0]
                detail = (  # runc's words: ExecError has them already
                    f'exec: "{argv0}": executable file not found in $PATH'
                    if isinstance(e, FileNotFoundError)
                    else str(e)
                )
                message = f"failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: {detail}: unknown"
                c.state = {"running": {"startedAt": started_at}}
                c.finish(128, "StartError", message)
                self.event("Failed", f"Error: {message}", type="Warning", container=c)
                self.changed.set()
                return
        else:
            c.simulated = asyncio.get_running_loop().create_future()
        c.state = {"running": {"startedAt": started_at}}
        c.ever_ran = True
        self.event("Started", f"Started container {c.name}", container=c)
        c.started = not (real and c.spec.get("startupProbe"))
        c.ready = c.started and not (real and c.spec.get("readinessProbe"))
        if not c.init:
            c.tasks.append(asyncio.ensure_future(self._watch(c)))
            first = ("startup",) if not c.started else ("readiness", "liveness")
            for kind in first if real else ():
                if c.spec.get(f"{kind}Probe"):
                    c.tasks.append(asyncio.ensure_future(self._probe(c, kind)))
        self.changed.set()

    async def _exit_of(self, c: ContainerState) -> int:
        if c.process is not None:
            return await c.process.wait()
        assert c.simulated is not None
        return 0 if c.init else await c.simulated  # a simulated init container completes at once

    async def _watch(self, c: ContainerState) -> None:
        code = await self._exit_of(c)
        if c.running:
            c.finish(code)
            self.changed.set()

    async def _probe(self, c: ContainerState, kind: str) -> None:
        """Run one of the container's probes and act on its verdicts."""
        async for ok, output, verdict in probes.results(c.spec[f"{kind}Probe"], c.spec):
            if not ok:
                self.event(
                    "Unhealthy",
                    f"{kind.capitalize()} probe failed: {output}",
                    type="Warning",
                    container=c,
                )
            if verdict is None or not c.running:
                continue
            if kind == "readiness":
                if c.ready != verdict:
                    c.ready = verdict
                    self.changed.set()
            elif not verdict:
                assert c.process is not None
                self.event(
                    "Killing",
                    f"Container {c.name} failed {kind} probe, will be restarted",
                    container=c,
                )
                deadline = time.monotonic() + self.spec.get("terminationGracePeriodSeconds", 30)
                kill = asyncio.ensure_future(c.process.stop(lambda d=deadline: d))
                self._kills.add(kill)  # not c.tasks: the exit it causes cancels those
                kill.add_done_callback(self._kills.discard)
                return
            elif kind == "startup":
                c.started = True
                c.ready = not c.spec.get("readinessProbe")
                self.changed.set()
                for later in ("readiness", "liveness"):
                    if c.spec.get(f"{later}Probe"):
                        c.tasks.append(asyncio.ensure_future(self._probe(c, later)))
                return

    async def _backoff(self, c: ContainerState) -> None:
        """Wait before restarting ``c``: none before the first restart, then the
        kubelet's doubling back-off from ``restart_backoff`` up to 5 minutes."""
        delay = (
            0.0
            if c.restart_count == 0
            else min(self.kubelet.restart_backoff * 2 ** (c.restart_count - 1), MAX_BACKOFF)
        )
        c.last_state = c.state
        if delay > 0:
            pod_ref = f"{self.name}_{self.namespace}({self.uid})"
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {int(delay)}s restarting failed container={c.name} pod={pod_ref}",
                }
            }
            self.event(
                "BackOff",
                f"Back-off restarting failed container {c.name} in pod {pod_ref}",
                type="Warning",
                container=c,
            )
            self.publish()
            await asyncio.sleep(delay)
        c.restart_count += 1
        c.wait("ContainerCreating")

    async def _restart(self, c: ContainerState) -> None:
        await self._backoff(c)
        while not (c.running or c.terminated):
            await self._start(c)
            if not (c.running or c.terminated):
                await self._wait_changed(1.0)
        self.changed.set()

    async def _supervise(self) -> None:
        policy = self.spec.get("restartPolicy", "Always")
        while True:
            for c in self.containers:
                again = policy == "Always" or (policy == "OnFailure" and c.exit_code != 0)
                if c.terminated and again and c.name not in self._restarts:
                    self._restarts[c.name] = asyncio.ensure_future(self._restart(c))
            for name, task in list(self._restarts.items()):
                if task.done():
                    del self._restarts[name]
            phase = self.phase()
            if phase in ("Succeeded", "Failed"):
                self.terminal_phase = phase
                self.publish()
                return
            self.publish()
            await self._wait_changed(1.0)

    async def _terminate(self) -> None:
        for task in self._restarts.values():
            task.cancel()
        running = [c for c in self.all_containers() if c.running]
        for c in self.all_containers():
            for task in c.tasks:
                task.cancel()
            if c.running:
                self.event("Killing", f"Stopping container {c.name}", container=c)

        async def stop(c: ContainerState) -> None:
            if c.process is not None:
                code = await c.process.stop(lambda: self.kill_deadline)
            elif c.simulated is not None and c.simulated.done():
                code = c.simulated.result()
            else:
                code = 137 if self.kill_deadline <= time.monotonic() else 0
            c.finish(code)

        await asyncio.gather(*(stop(c) for c in running), return_exceptions=True)
        if not self.terminal_phase and any(c.ever_ran for c in self.containers):
            failed = any(c.exit_code for c in self.containers if c.terminated)
            self.terminal_phase = "Failed" if failed else "Succeeded"
        if self.gone:
            return
        self.publish()
        try:
            options = {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}
            self.cluster.registry.delete(POD, self.namespace, self.name, options)
        except ApiError:
            pass

    # -- status ------------------------------------------------------------------

    def phase(self) -> str:
        """kubelet's getPhase."""
        if self.terminal_phase:
            return self.terminal_phase
        if not self.initialized:
            return "Pending"
        waiting = running = stopped = succeeded = 0
        for c in self.containers:
            if c.running:
                running += 1
            elif c.terminated:
                stopped += 1
                succeeded += c.exit_code == 0
            elif c.last_state.get("terminated"):
                stopped += 1
            else:
                waiting += 1
        if waiting:
            return "Pending"
        if running or not stopped:
            return "Running" if running else "Pending"
        policy = self.spec.get("restartPolicy", "Always")
        if policy == "Always":
            return "Running"
        if stopped == succeeded and all(c.terminated for c in self.containers):
            return "Succeeded"
        return "Failed" if policy == "Never" else "Running"

    def _condition(
        self, kind: str, ok: bool, reason: str | None = None, message: str | None = None
    ) -> Obj:
        status = "True" if ok else "False"
        since = self._since.get(kind)
        if since is None or since[0] != status:
            since = self._since[kind] = (status, clock.rfc3339())
        cond: Obj = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": since[1],
        }
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        return cond

    def build_status(self, pod: Obj) -> Obj:
        phase = self.phase()
        terminal = phase in ("Succeeded", "Failed")
        unready = [c.name for c in self.containers if not c.ready]
        conditions = [
            self._condition("PodReadyToStartContainers", self.sandbox_ready and not terminal)
        ]
        if self.initialized:
            conditions.append(self._condition("Initialized", True))
        else:
            pending = " ".join(
                c.name for c in self.init_containers if not (c.terminated and c.exit_code == 0)
            )
            conditions.append(
                self._condition(
                    "Initialized",
                    False,
                    "ContainersNotInitialized",
                    f"containers with incomplete status: [{pending}]",
                )
            )
        if terminal:
            reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
            ready = [self._condition(k, False, reason) for k in ("Ready", "ContainersReady")]
        elif unready:
            message = f"containers with unready status: [{' '.join(unready)}]"
            ready = [
                self._condition(k, False, "ContainersNotReady", message)
                for k in ("Ready", "ContainersReady")
            ]
        else:
            ready = [self._condition(k, True) for k in ("Ready", "ContainersReady")]
        old = pod.get("status") or {}
        conditions += ready + [
            c for c in old.get("conditions") or [] if c["type"] == "PodScheduled"
        ]
        status: Obj = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
        }
        if self.sandbox_ready:
            status["podIP"] = "127.0.0.1"
            status["podIPs"] = [{"ip": "127.0.0.1"}]
        if self.start_time:
            status["startTime"] = self.start_time
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        status["containerStatuses"] = [c.status() for c in self.containers]
        status["qosClass"] = old.get("qosClass", "BestEffort")
        return status

    def publish(self) -> None:
        """Write the pod's status if it changed (and the pod is still this one)."""
        pod = None if self.gone else self.current()
        if pod is None or pod["metadata"]["uid"] != self.uid:
            return
        status = self.build_status(pod)
        if status == self._last_status:
            return
        pod["status"] = status
        try:
            self.cluster.registry.write_status(POD, pod)
            self._last_status = status
        except ApiError as e:
            log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, e)

    def event(
        self,
        reason: str,
        message: str,
        *,
        type: str = "Normal",
        container: ContainerState | None = None,
    ) -> None:
        pod = self.current()
        if pod is None:
            return
        path = None
        if container is not None:
            path = (
                f"spec.{'initContainers' if container.init else 'containers'}{{{container.name}}}"
            )
        self.cluster.recorder.record(
            pod, reason, message, type=type, component="kubelet", host=self.node, field_path=path
        )

    def exit_simulated(self, container: str | None, code: int) -> None:
        targets = [c for c in self.containers if container in (None, c.name)]
        if not targets:
            raise KeyError(f"container {container} is not valid for pod {self.name}")
        for c in targets:
            if c.process is not None:
                raise ValueError(
                    f"container {c.name} runs a real process; end that process instead"
                )
            if c.simulated is not None and not c.simulated.done() and c.running:
                c.simulated.set_result(code)


class Kubelet(Controller):
    name = "kubelet"
    watches = ("pods", "secrets", "configmaps", "persistentvolumeclaims", "nodes")

    def __init__(
        self,
        cluster: Cluster,
        root: Path,
        run_containers: bool,
        restart_backoff: float,
        image_env: dict[str, str],
    ):
        super().__init__(cluster)
        self.root = root
        self.run_containers = run_containers
        self.restart_backoff = restart_backoff
        self.image_env = image_env
        self.volumes = VolumeManager(cluster.store, cluster.tokens, root)
        self.workers: dict[str, PodWorker] = {}

    def base_env(self) -> dict[str, str]:
        """The image's environment and the ``kubernetes`` Service's variables, which the
        kubelet gives every container (they point at the fake's HTTPS port here)."""
        env = dict(self.image_env)
        if self.cluster.apiserver is not None:
            host, port = self.cluster.apiserver
            env.update(
                KUBERNETES_SERVICE_HOST=host,
                KUBERNETES_SERVICE_PORT=str(port),
                KUBERNETES_SERVICE_PORT_HTTPS=str(port),
            )
        return env

    def sync(self) -> None:
        nodes = {n["metadata"]["name"] for n in self.store.iter(NODE)}
        live = set()
        for pod in self.store.iter(POD):
            if pod["spec"].get("nodeName") not in nodes:
                continue
            uid = pod["metadata"]["uid"]
            live.add(uid)
            worker = self.workers.get(uid)
            if worker is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                worker = self.workers[uid] = PodWorker(self, pod)
                worker.task.add_done_callback(lambda _: self.kick())
            if pod["metadata"].get("deletionTimestamp"):
                worker.request_stop(pod["metadata"].get("deletionGracePeriodSeconds", 0))
            worker.changed.set()
        for uid, worker in list(self.workers.items()):
            if uid in live:
                continue
            if worker.task.done():
                del self.workers[uid]
            else:
                worker.request_stop(0, gone=True)

    def worker(self, namespace: str, name: str) -> PodWorker | None:
        pod = self.store.peek(POD, namespace, name)
        return self.workers.get(pod["metadata"]["uid"]) if pod is not None else None

    async def stop(self) -> None:
        """FakeKube is stopping: SIGTERM every process, SIGKILL half a second later."""
        await super().stop()
        for worker in self.workers.values():
            worker.request_stop(0, gone=True)
            worker.kill_deadline = min(worker.kill_deadline, time.monotonic() + 0.5)
        await asyncio.gather(*(w.task for w in self.workers.values()), return_exceptions=True)
