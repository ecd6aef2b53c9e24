"""The kubernetes workload runner: each process of a job a pod, each job a headless Service.

What the local runner does with processes, this does with pods, so jobs and sweeps run
unchanged above the seam (``gpulab.hub.workloads.runner``):

- ``open_group``: a headless Service ``gpulab-<group>`` over the group's pods, published
  before they are ready, so process ``worker-0`` is
  ``worker-0.gpulab-job-5.<namespace>.svc.<cluster domain>`` from the start; and a
  Secret with the environment the group's processes share (the user's S3 keys among
  it), owned by the Service. Both go with ``close_group``.
- ``start``: a pod that runs once (``restartPolicy: Never``; a restart is the job's
  policy, and a new pod); on the user's home claim, as the notebook's account, with
  as many GPUs as the ledger granted, on their node. Its shell writes the output to the
  log on the home, as the local runner does, and to the container log.
- ``wait``: the container's exit code, from one watch over every workload pod. A pod
  deleted by someone else counts as killed (137); one that cannot start (not
  scheduled, its image not pulled, a bad config) for ``kubernetes.unschedulable_timeout``
  is deleted and the start fails with the reason.
- ``stop``: delete with the grace period and wait for the pod to be gone, so a GPU goes
  back to the ledger only once no container holds it.
- logs: the hub follows each pod's container log into a copy under its data root
  that ``read_log`` reads, with the files a process hands back (``workload_logs``).
"""

from __future__ import annotations

import asyncio
import math
import signal
from dataclasses import dataclass

from gpulab.hub.kube import api_call, api_reason, core_api, follow_pods, namespace, owned_object
from gpulab.hub.workloads.runner import Launch, WorkloadError

from . import objects, workload_objects
from .workload_logs import LogCopies
from .workload_objects import CONTAINER

DEVICE_VARIABLES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
"""Left to the device plugin: it decides which GPUs a container sees."""
STUCK = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}
"""Waiting reasons of a container that will not start by itself."""


@dataclass
class PodProcess:
    """A started workload pod; ``pid_started`` is its name (what ``adopt`` takes back)."""

    runner: KubeRunner
    user: str
    log: str
    pod: str
    pid: int = 0

    @property
    def pid_started(self) -> str:
        return self.pod

    async def wait(self) -> int:
        """The container's exit code once it ended and its log is copied (negative: the
        pod was deleted, as if killed by that signal); OSError when it cannot start."""
        return await self.runner.wait(self)


@dataclass
class _Group:
    user: str
    env: dict[str, str]
    claim: str
    owner: dict


class KubeRunner:
    """Starts, follows and stops the pods of users' workloads."""

    def __init__(self, settings):
        self.settings = settings
        self.k8s = settings.kubernetes
        self.namespace = namespace(self.k8s)
        self._groups: dict[str, _Group] = {}
        self._pods: dict[str, dict] = {}
        self._expected: set[str] = set()
        """Pods this hub created that the watch has not shown yet."""
        self._listed = asyncio.Event()
        self._changed = asyncio.Event()
        self._watch: asyncio.Task | None = None
        self.log_copies = LogCopies(
            settings.data_path / "workload-logs",
            self.namespace,
            settings.jobs.log_copy_limit_bytes,
            self._until_started,
            self._ended,
        )

    # -- names --------------------------------------------------------------------------

    @staticmethod
    def service(group: str) -> str:
        return f"gpulab-{group}"

    def host(self, group: str, name: str) -> str:
        return f"{name}.{self.service(group)}.{self.namespace}.svc.{self.k8s.cluster_domain}"

    def base_env(self, user: str, layers=None) -> dict[str, str]:
        # snapshots are refused before a job reaches this backend (no layers here)
        home = self.k8s.home_mount
        return {"HOME": home, "PYTHONUSERBASE": f"{home}/.local"}

    # -- groups --------------------------------------------------------------------------

    async def open_group(self, user: str, group: str, env: dict[str, str]) -> None:
        core = core_api()
        ns, name = self.namespace, self.service(group)
        claim = await owned_object(
            core, ns, user, "persistentvolumeclaims", "home", error=WorkloadError
        )
        if claim is None:
            raise WorkloadError(
                400,
                f"{user} has no home volume in the cluster yet (it is made at the first "
                "start of their server); start it once, then submit",
            )
        notes = objects.owner_annotations(user, "")
        service = await self._api("read the job's Service", core.read_namespaced_service,
                                  name, ns, missing_ok=True)  # fmt: skip
        if service is None:
            body = workload_objects.workload_service(name, ns, group, {}, notes)
            service = await self._api("create the job's Service", core.create_namespaced_service,
                                      ns, body)  # fmt: skip
        owner = workload_objects.owner_reference("v1", "Service", name, service.metadata.uid)
        secret = objects.env_secret(name, ns, env, {}, notes, component="workload-env",
                                    owner=owner)  # fmt: skip
        if await self._api("read the job's Secret", core.read_namespaced_secret, name, ns,
                           missing_ok=True) is None:  # fmt: skip
            await self._api("create the job's Secret", core.create_namespaced_secret, ns, secret)
        else:
            await self._api("replace the job's Secret", core.replace_namespaced_secret, name,
                            ns, secret)  # fmt: skip
        self._groups[group] = _Group(user, dict(env), claim, owner)
        self._ensure_watch()

    async def close_group(self, user: str, group: str) -> None:
        core = core_api()
        ns, name = self.namespace, self.service(group)
        self._groups.pop(group, None)
        for pod in self._pods_of(group):
            await self._delete(pod, 0)
        await self._api("delete the job's Secret", core.delete_namespaced_secret, name, ns,
                        missing_ok=True)  # fmt: skip
        await self._api("delete the job's Service", core.delete_namespaced_service, name, ns,
                        body={"propagationPolicy": "Background"}, missing_ok=True)  # fmt: skip

    # -- processes -------------------------------------------------------------------------

    async def start(self, user: str, launch: Launch) -> PodProcess:
        group = self._groups.get(launch.group)
        if group is None:
            raise OSError(f"could not start {launch.name}: its job's Service is not there")
        for earlier in self._pods_of(launch.group, launch.name):  # ended attempts
            await self._delete(earlier, 0)
        env = {
            k: v
            for k, v in launch.env.items()
            if k not in DEVICE_VARIABLES and group.env.get(k) != v
        }
        k8s = self.k8s
        body = workload_objects.workload_pod(
            f"{self.service(launch.group)}-{launch.name}-",
            self.namespace,
            group=launch.group,
            process=launch.name,
            subdomain=self.service(launch.group),
            image=launch.image or k8s.image,
            pull_policy=k8s.image_pull_policy,
            argv=launch.argv,
            log=launch.log,
            header=launch.header,
            workdir=launch.workdir,
            outputs=launch.outputs,
            env=env,
            env_secret=self.service(launch.group),
            home_claim=group.claim,
            home_mount=k8s.home_mount,
            uid=k8s.uid,
            gid=k8s.gid,
            gpus=len(launch.gpus),
            gpu_resource=k8s.gpu_resource,
            node=launch.node if launch.gpus else "",
            ports=launch.ports,
            tolerations=objects.tolerations(k8s.gpu_tolerations) if launch.gpus else None,
            grace_seconds=math.ceil(self.settings.jobs.stop_grace_seconds),
            labels={},
            annotations={
                **objects.owner_annotations(user, ""),
                objects.ANNOTATION_GPUS: ",".join(launch.gpus),
            },
            owner=group.owner,
        )
        try:
            created = await core_api().create_namespaced_pod(
                self.namespace, body, _request_timeout=30
            )
        except Exception as e:  # noqa: BLE001 -- refused or unanswered: the start failed
            raise OSError(f"could not start {launch.name}: {api_reason(e)}") from None
        pod = created.metadata.name
        self._expected.add(pod)
        self.log_copies.follow(user, launch.log, pod, fresh=True)
        return PodProcess(self, user, launch.log, pod)

    def adopt(self, user: str, log: str, pid: int | None, pid_started: str | None) -> PodProcess:
        self._ensure_watch()
        pod = pid_started or ""
        if pod:
            self.log_copies.follow(user, log, pod, fresh=False)
        return PodProcess(self, user, log, pod)

    async def wait(self, process: PodProcess) -> int:
        self._ensure_watch()
        await self._listed.wait()
        loop = asyncio.get_running_loop()
        stuck_since = None
        while True:
            changed = self._changed
            pod = self._pods.get(process.pod)
            if pod is None and process.pod not in self._expected:
                await self.log_copies.finished(process.pod)
                return -signal.SIGKILL  # deleted by someone else
            code = _exit_code(pod) if pod is not None else None
            if code is not None:
                await self.log_copies.finished(process.pod)
                return code
            stuck = _stuck(pod) if pod is not None else None
            if stuck is None:
                stuck_since = None
            elif stuck_since is None:
                stuck_since = loop.time()
            elif loop.time() - stuck_since > self.k8s.unschedulable_timeout:
                await self._delete(process.pod, 0)
                raise OSError(f"could not start: {stuck}")
            await _next(changed)

    async def stop(self, process: PodProcess, grace: float) -> None:
        """Delete the pod (TERM, KILL after ``grace``) and wait until it is gone."""
        if not process.pod:
            return
        self._ensure_watch()
        await self._listed.wait()
        await self._delete(process.pod, math.ceil(grace))
        loop = asyncio.get_running_loop()
        ends = loop.time() + grace + 60
        while process.pod in self._pods and loop.time() < ends:
            await _next(self._changed)
        await self.log_copies.finished(process.pod)

    # -- logs -------------------------------------------------------------------------------

    def read_log(self, user: str, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        return self.log_copies.read(user, path, offset, limit)

    async def _until_started(self, pod: str) -> bool:
        """Wait until the pod's container has started; False when it never will."""
        await self._listed.wait()
        while True:
            changed = self._changed
            found = self._pods.get(pod)
            if found is None and pod not in self._expected:
                return False
            if found is not None:
                state = _container_state(found)
                if "running" in state or "terminated" in state:
                    return True
                if found["status"].get("phase") in ("Succeeded", "Failed"):
                    return False
            await _next(changed)

    def _ended(self, pod: str) -> bool:
        found = self._pods.get(pod)
        if found is None:
            return pod not in self._expected
        return "terminated" in _container_state(found)

    # -- the watch ----------------------------------------------------------------------------

    def _ensure_watch(self) -> None:
        if self._watch is None or self._watch.done():
            selector = f"{objects.LABEL_COMPONENT}=workload"
            self._watch = asyncio.ensure_future(
                follow_pods(
                    core_api(), self.namespace, selector, self._on_list, self._on_event, "workloads"
                )  # fmt: skip
            )

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _on_list(self, pods: list[dict]) -> None:
        self._pods = {p["metadata"]["name"]: p for p in pods}
        self._expected -= set(self._pods)
        self._listed.set()
        self._notify()

    def _on_event(self, kind: str, pod: dict) -> None:
        name = pod["metadata"]["name"]
        self._expected.discard(name)
        if kind == "DELETED":
            self._pods.pop(name, None)
        else:
            self._pods[name] = pod
        self._notify()

    def _pods_of(self, group: str, process: str | None = None) -> list[str]:
        labels = {workload_objects.LABEL_GROUP: group}
        if process is not None:
            labels[workload_objects.LABEL_PROCESS] = process
        return [
            name
            for name, pod in self._pods.items()
            if labels.items() <= (pod["metadata"].get("labels") or {}).items()
        ]

    async def _delete(self, pod: str, grace: int) -> None:
        await self._api("delete a workload pod", core_api().delete_namespaced_pod, pod,
                        self.namespace, body={"gracePeriodSeconds": grace}, missing_ok=True)  # fmt: skip

    @staticmethod
    async def _api(what: str, call, *args, missing_ok: bool = False, **kwargs):
        return await api_call(what, call, *args, error=WorkloadError, missing_ok=missing_ok,
                              **kwargs)  # fmt: skip


async def _next(changed: asyncio.Event, timeout: float = 1.0) -> None:
    """Until the watch brings a change (``changed``, taken before looking), or a while."""
    try:
        await asyncio.wait_for(changed.wait(), timeout)
    except TimeoutError:
        pass


def _container_state(pod: dict) -> dict:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return status.get("state") or {}
    return {}


def _exit_code(pod: dict) -> int | None:
    """The container's exit code once the pod ended; None while it runs."""
    terminated = _container_state(pod).get("terminated")
    if terminated is not None:
        return int(terminated.get("exitCode", 137))
    phase = (pod.get("status") or {}).get("phase")
    if phase == "Succeeded":
        return 0
    if phase == "Failed":  # evicted, or its node lost, before the container ran or said
        return 128 + signal.SIGKILL
    return None


def _stuck(pod: dict) -> str | None:
    """Why a pod cannot start by itself (not scheduled, image or config), if it cannot."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"not scheduled: {condition.get('message') or condition.get('reason')}"
    waiting = _container_state(pod).get("waiting") or {}
    if waiting.get("reason") in STUCK:
        return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    return None
