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
  (``workload-logs/<user>/<path on the home>``) that ``read_log`` reads, so a job's logs
  stay readable through the API after its pods are gone; a copy keeps at most
  ``jobs.log_copy_limit`` (the newer output). Files a process hands back (a
  job's metrics) arrive on its log's last lines, base64, and are kept beside it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import signal
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from gpulab.hub.kube import api_call, api_reason, core_api, follow_pods, namespace, owned_object
from gpulab.hub.workloads.runner import Launch, WorkloadError

from . import objects

log = logging.getLogger(__name__)

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
CONTAINER = "main"
MAX_LINE = 1 << 20
"""The longest line the hub waits for the end of; a longer one is copied as it comes."""


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
        self.logs = settings.data_path / "workload-logs"
        self._groups: dict[str, _Group] = {}
        self._pods: dict[str, dict] = {}
        self._expected: set[str] = set()
        """Pods this hub created that the watch has not shown yet."""
        self._listed = asyncio.Event()
        self._changed = asyncio.Event()
        self._watch: asyncio.Task | None = None
        self._copies: dict[str, asyncio.Task] = {}

    # -- names --------------------------------------------------------------------------

    @staticmethod
    def service(group: str) -> str:
        return f"gpulab-{group}"

    def host(self, group: str, name: str) -> str:
        return f"{name}.{self.service(group)}.{self.namespace}.svc.{self.k8s.cluster_domain}"

    def base_env(self, user: str) -> dict[str, str]:
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
            body = objects.workload_service(name, ns, group, {}, notes)
            service = await self._api("create the job's Service", core.create_namespaced_service,
                                      ns, body)  # fmt: skip
        owner = objects.owner_reference("v1", "Service", name, service.metadata.uid)
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
        body = objects.workload_pod(
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
        self._copy_log(user, launch.log, pod, fresh=True)
        return PodProcess(self, user, launch.log, pod)

    def adopt(self, user: str, log: str, pid: int | None, pid_started: str | None) -> PodProcess:
        self._ensure_watch()
        pod = pid_started or ""
        if pod:
            self._copy_log(user, log, pod, fresh=False)
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
                await self._copied(process.pod)
                return -signal.SIGKILL  # deleted by someone else
            code = _exit_code(pod) if pod is not None else None
            if code is not None:
                await self._copied(process.pod)
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
        await self._copied(process.pod)

    # -- logs -------------------------------------------------------------------------------

    def read_log(self, user: str, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        try:
            with self._copy_path(user, path).open("rb") as f:
                f.seek(offset)
                return f.read(limit)
        except (FileNotFoundError, ValueError):
            return b""

    def _copy_path(self, user: str, path: str) -> Path:
        """Where the hub keeps its copy of a file of the user's home."""
        rel = PurePosixPath(path)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"not a path in the home: {path}")
        return self.logs / quote(user, safe="") / rel

    def _copy_log(self, user: str, log_path: str, pod: str, fresh: bool) -> None:
        """Follow ``pod``'s container log into the copy of ``log_path``. The copy's index
        says where each pod's part of it begins; a pod followed again (after a hub
        restart) is copied again from there."""
        target = self._copy_path(user, log_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        index_path = target.with_name(target.name + ".pods")
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            index = {}
        size = target.stat().st_size if target.exists() else 0
        if fresh or pod not in index:
            index[pod] = size
        else:
            with target.open("ab") as f:
                f.truncate(min(index[pod], size))
        index_path.write_text(json.dumps(index))
        old = self._copies.pop(pod, None)
        if old is not None:
            old.cancel()
        self._copies[pod] = asyncio.ensure_future(self._follow_log(user, pod, target))

    async def _follow_log(self, user: str, pod: str, target: Path) -> None:
        core = core_api()
        taken = 0  # bytes of the container log already copied
        partial = b""
        while True:
            if not await self._until_started(pod):
                break
            try:
                response = await core.read_namespaced_pod_log(
                    pod, self.namespace, container=CONTAINER, follow=True,
                    _preload_content=False, _request_timeout=None,
                )  # fmt: skip
                skip = taken
                try:
                    async for chunk in response.content.iter_any():
                        if skip:  # a stream again from the start: what was copied
                            dropped = min(skip, len(chunk))
                            chunk, skip = chunk[dropped:], skip - dropped
                        taken += len(chunk)
                        partial = self._append(user, target, partial + chunk)
                finally:
                    response.release()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 -- not started yet, or the API is away
                status = getattr(e, "status", None)
                if status == 404:
                    break
                log.debug("Following the log of pod %s: %s", pod, api_reason(e))
                await asyncio.sleep(0.5)
                continue
            if self._ended(pod):
                break
            await asyncio.sleep(0.2)  # the stream broke while the container runs: again
        if partial:
            self._append(user, target, partial + b"\n")

    def _append(self, user: str, target: Path, data: bytes) -> bytes:
        """Write the whole lines of ``data`` to the copy (a handed-back file's line to
        that file's copy instead); the incomplete last line is returned, unless it is
        longer than a line may be (then it is written as it is)."""
        *lines, rest = data.split(b"\n")
        if len(rest) > MAX_LINE:
            lines.append(rest)
            rest = b""
        kept = []
        marker = objects.HANDED_BACK.encode()
        for line in lines:
            if line.startswith(marker):
                self._handed_back(user, target, line[len(marker) :])
            else:
                kept.append(line + b"\n")
        if kept:
            with target.open("ab") as f:
                f.write(b"".join(kept))
                size = f.tell()
            if size > self.settings.jobs.log_copy_limit_bytes:
                self._drop_oldest(target, size)
        return rest

    def _drop_oldest(self, target: Path, size: int) -> None:
        """Keep the newer half of a copy that outgrew ``jobs.log_copy_limit`` (the hub's
        disk is shared; the whole log stays on the user's home)."""
        with target.open("rb") as f:
            f.seek(size // 2)
            newer = f.read()
        start = newer.find(b"\n") + 1  # from a line's start, if one begins there
        if 0 < start < len(newer):
            newer = newer[start:]
        note = (
            b"==> gpulab: earlier output dropped from the hub's copy "
            b"(jobs.log_copy_limit); the whole log is on the home\n"
        )
        target.write_bytes(note + newer)
        index_path = target.with_name(target.name + ".pods")
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            return
        index_path.write_text(json.dumps({pod: 0 for pod in index}))

    def _handed_back(self, user: str, log_copy: Path, line: bytes) -> None:
        """Keep a file a pod handed back, if it is one it may hand back: beside its log
        (a job's metrics file), never a log or an index (a process can print such a
        line itself)."""
        path, _, encoded = line.decode(errors="replace").partition(" ")
        try:
            data = base64.b64decode(encoded.strip(), validate=True)
            target = self._copy_path(user, path)
        except (binascii.Error, ValueError):
            target = None
        if (
            target is None
            or target.parent != log_copy.parent
            or target.suffix
            in (
                ".log",
                ".pods",
            )
        ):
            log.warning("A workload of %s handed back a file it may not: %.200s", user, path)
            return
        target.write_bytes(data)

    async def _copied(self, pod: str) -> None:
        """Wait (a while) for the log of an ended pod to be copied whole."""
        task = self._copies.pop(pod, None)
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), 15)
        except TimeoutError:
            task.cancel()
            log.warning("Copying the log of pod %s did not finish", pod)
        except Exception:  # noqa: BLE001 -- a broken copy is logged, never fatal
            log.exception("Copying the log of pod %s failed", pod)

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
        labels = {objects.LABEL_GROUP: group}
        if process is not None:
            labels[objects.LABEL_PROCESS] = process
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
