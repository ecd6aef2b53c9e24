"""GpuKubeSpawner: a user's server as a pod, with the GPUs the ledger grants.

The ledger stays the authority: it grants GPU slots (``<node>/<n>``, one per GPU a node
advertises) and the pod asks for that many of ``kubernetes.gpu_resource`` on that node.
The home is a PersistentVolumeClaim on the ceph-csi RBD StorageClass, made before the
pod, kept when it stops, grown when the home size grows; S3 keys come from a Secret
(both made by ``kube_user_objects``). Every manifest gpulab adds is built in
``objects``. The spawners wait on their pods through ``kube_reflector``; the hub's own
watch that frees the grants of pods that are gone is in ``kube_grants``.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlparse

from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from tornado import web
from traitlets import default

from gpulab.hub.inventory import Gpu
from gpulab.hub.kube import api_reason, core_api, namespace
from gpulab.hub.names import K8S_POD, K8S_PVC, K8S_SECRET, NameConflict, registry
from gpulab.hub.settings import KubernetesSettings

from . import objects
from .base import GpuSpawnerMixin
from .kube_reflector import WakingPodReflector
from .kube_user_objects import UserObjects

SWAP_GRACE_SECONDS = 1
"""The grace period of a pod replaced by Return GPU / Get GPU: its kernels were
checkpointed and shut down already, so only the Jupyter server is left to end."""


class Unschedulable(web.HTTPError):
    """No node can run the pod; the message is the scheduler's."""

    def __init__(self, message: str):
        super().__init__(503, message)


class GpuKubeSpawner(GpuSpawnerMixin, KubeSpawner):
    """Spawn each user's JupyterLab as a pod with the GPUs the ledger grants."""

    gpu_switch_mode = "pod"
    """Return GPU / Get GPU replace the server's pod (see ``remove_pod``/``recreate_pod``)."""

    swapping = False
    """The pod is being replaced: no pod, or a new one starting, is not a server that
    stopped (``poll``), and the grant watcher leaves its GPUs alone."""

    @property
    def k8s(self) -> KubernetesSettings:
        return self.gpulab.settings.kubernetes

    @default("image")
    def _image_default(self):
        return self.k8s.image

    @default("cmd")
    def _cmd_default(self):
        # the image's jupyterhub-singleuser, through gpulab's entry point (a second sooner)
        return ["gpulab-singleuser"]

    @default("image_pull_policy")
    def _image_pull_policy_default(self):
        return self.k8s.image_pull_policy

    @default("namespace")
    def _namespace_default(self):
        return namespace(self.k8s)

    @default("delete_grace_period")
    def _delete_grace_period_default(self):
        return self.k8s.delete_grace_period

    @default("uid")
    def _uid_default(self):
        return self.k8s.uid  # job pods run as the same account

    @default("gid")
    def _gid_default(self):
        return self.k8s.gid

    @default("fs_gid")
    def _fs_gid_default(self):
        return self.k8s.gid

    @default("working_dir")
    def _working_dir_default(self):
        return self.k8s.home_mount

    @default("pvc_name_template")
    def _pvc_name_template_default(self):
        return "home-{username}"  # one home per user, shared by their named servers

    @default("storage_pvc_ensure")
    def _storage_pvc_ensure_default(self):
        return False  # gpulab makes (and grows) the home claim itself

    @default("extra_annotations")
    def _extra_annotations_default(self):
        return {}

    # -- what the pod gets ---------------------------------------------------------

    @property
    def s3_secret_name(self) -> str:
        return self._expand_user_properties("gpulab-s3-{username}")

    # -- names: each object name is one hub user's ---------------------------------------

    @property
    def _pod_owner(self) -> str:
        # hub user names never hold a "/", so this names one server of one user
        return f"{self.user.name}/{self.name}" if self.name else self.user.name

    def claim_names(self) -> None:
        """Claim this server's claim, secret and pod names in the hub's registry: a name
        another hub user holds (KubeSpawner's slugs end in a short hash that can be
        brute-forced) fails the spawn with 409 instead of sharing their objects."""
        names = registry(self.gpulab.settings.data_path)
        try:
            names.claim_all(
                [
                    (K8S_PVC, self.user.name, self.pvc_name),
                    (K8S_SECRET, self.user.name, self.s3_secret_name),
                    (K8S_POD, self._pod_owner, self.pod_name),
                ]
            )
        except NameConflict as e:
            self.report(100, f"Spawn failed: {e}")
            raise web.HTTPError(409, str(e)) from None

    def _pod_is_ours(self) -> bool:
        """Whether the pod named ``pod_name`` may be deleted by this spawner."""
        owner = registry(self.gpulab.settings.data_path).owner(K8S_POD, self.pod_name)
        if owner is not None and owner != self._pod_owner:
            return False
        reflector = self.pod_reflector
        pod = reflector.pods.get(f"{self.namespace}/{self.pod_name}") if reflector else None
        annotations = (pod or {}).get("metadata", {}).get("annotations") or {}
        return annotations.get(objects.ANNOTATION_USER, self.user.name) == self.user.name

    def _configure_pod(self, gpus: list[Gpu], s3_env: dict[str, str]) -> None:
        """Set this spawn's pod settings from scratch, from the profile and the grant.

        Every value is assigned on every spawn, so nothing of an earlier spawn on this
        spawner object (a GPU limit, a node) carries over to the next.
        """
        profile = self.gpulab.settings.profile(self.profile_slug or None)
        k8s = self.k8s
        limits = objects.gpu_limits(k8s.gpu_resource, len(gpus))
        self.extra_resource_limits = limits
        self.extra_resource_guarantees = dict(limits)
        nodes = {g.node for g in gpus if g.node}
        self.node_selector = objects.node_selector(
            profile, k8s.gpu_type_label, nodes.pop() if len(nodes) == 1 else "", bool(gpus)
        )
        self.tolerations = objects.tolerations(
            profile.tolerations + (k8s.gpu_tolerations if gpus else [])
        )
        self.volumes, self.volume_mounts = objects.home_volume(self.pvc_name, k8s.home_mount)
        self.extra_annotations = {
            **objects.owner_annotations(self.user.name, self.name),
            objects.ANNOTATION_GPUS: ",".join(self.gpu_ids),
        }
        self.extra_container_config = (
            {"envFrom": objects.env_from_secret(self.s3_secret_name)} if s3_env else {}
        )

    def get_env(self):
        env = super().get_env()
        env.update(self.gpu_env())
        env.update(self.tensorboard_env())
        # the device plugin decides which GPUs the container sees
        for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
            env.pop(name, None)
        env["HOME"] = self.k8s.home_mount
        env["PYTHONUSERBASE"] = f"{self.k8s.home_mount}/.local"
        env["JUPYTERLAB_WORKSPACES_DIR"] = f"{self.k8s.home_mount}/.jupyter/lab/workspaces"
        profile = self.gpulab.settings.profile(self.profile_slug or None)
        env.update(profile.env)
        return env

    # -- objects beside the pod ------------------------------------------------------

    def _user_objects(self) -> UserObjects:
        return UserObjects(
            core_api(host=self.k8s_api_host, ssl_ca_cert=self.k8s_api_ssl_ca_cert),
            self.namespace,
            self.user.name,
            self._build_common_labels({}),
            self.report,
            self.log,
            request_timeout=self.k8s_api_request_timeout,
            retry_timeout=self.k8s_api_request_retry_timeout,
        )

    async def ensure_home(self) -> None:
        """Make the user's home claim, or grow it to the configured home size."""
        size = self.gpulab.settings.storage.home_size_bytes
        await self._user_objects().ensure_home(
            self.pvc_name, size, self.k8s.storage_class, likely_new=not self._pvc_exists
        )
        self._pvc_exists = True

    async def ensure_s3_secret(self, env: dict[str, str]) -> None:
        """Put the user's S3 keys in their Secret (made, or replaced after a rotation)."""
        await self._user_objects().ensure_s3_secret(self.s3_secret_name, env)

    # -- start and stop --------------------------------------------------------------

    def start(self):
        self._start_future = asyncio.ensure_future(self._start_with_gpus())
        return self._start_future

    async def load_user_options(self):
        """The profile was resolved by gpulab (``reserve_gpus``), from gpulab's profile
        list; KubeSpawner's own ``profile_list`` is not used."""

    async def _start_with_gpus(self):
        self.reserve_gpus()
        try:
            self.claim_names()
            s3_env = await self.storage_env()
            granted = {g.id: g for g in self.gpulab.inventory}
            gpus = [granted[i] for i in self.gpu_ids if i in granted]
            await self.ensure_home()
            if s3_env:
                await self.ensure_s3_secret(s3_env)
            self._configure_pod(gpus, s3_env)
            self.report(40, f"Creating pod {self.pod_name}")
            self._pod_requested = True
            self._create_refused = ""
            try:
                return await self._until_scheduled(super()._start())
            except ApiException as e:
                raise self._refused(api_reason(e)) from None
            except TimeoutError:
                if self._create_refused:  # KubeSpawner gave up retrying the API server
                    raise self._refused(self._create_refused) from None
                raise
        except BaseException:
            self.release_gpus("spawn failed")
            raise

    async def _start_watching_pods(self, replace=False):
        """KubeSpawner's pod reflector (same labels), as a ``WakingPodReflector``."""
        return await self._start_reflector(
            kind="pods",
            reflector_class=WakingPodReflector,
            labels={"component": self.component_label},
            omit_namespace=self.enable_user_namespaces,
            replace=replace,
        )

    async def _make_create_pod_request(self, pod, request_timeout):
        """KubeSpawner's, but an API server that is busy (429) or failing (5xx) is
        retried like one that timed out, instead of failing the spawn at once."""
        try:
            created = await super()._make_create_pod_request(pod, request_timeout)
        except ApiException as e:
            if e.status == 429 or e.status >= 500:
                self._create_refused = api_reason(e)
                self.log.warning("Retrying to create pod %s after %s", self.pod_name, api_reason(e))
                return False
            raise
        self._create_refused = ""
        self._pod_created = bool(created)
        return created

    def _refused(self, reason: str) -> web.HTTPError:
        return web.HTTPError(503, f"Kubernetes refused to create pod {self.pod_name}: {reason}")

    def _only_waits_for_running(self) -> bool:
        """Is all KubeSpawner's start has left to do, once its pod is created, to wait
        until it runs? (Not with the extras it makes once the pod exists.)"""
        extras = self.internal_ssl or self.services_enabled or self.after_pod_created_hook
        return self._pod_created and not extras

    async def _until_scheduled(self, start):
        """Run KubeSpawner's start, but fail it once the pod has been unschedulable
        for ``kubernetes.unschedulable_timeout`` seconds, with the scheduler's reason.
        Answer as soon as the watch reports the pod running (see ``_sooner``)."""
        self._pod_created = False
        since = None

        def placed(pod: dict | None) -> None:
            nonlocal since
            reason = unschedulable_reason(pod)
            if reason is None:
                since = None
            elif since is None:
                since = time.monotonic()
                self.report(45, f"Waiting for a node: {reason}")
            elif time.monotonic() - since >= self.k8s.unschedulable_timeout:
                raise Unschedulable(f"No node can run this server: {reason}")

        task = asyncio.ensure_future(start)
        pod = await self._sooner(
            task, lambda pod: self.is_pod_running(pod) and self._only_waits_for_running(), placed
        )
        if pod is None:
            return task.result()
        self.pod_id = pod["metadata"]["uid"]  # what KubeSpawner's start ends with
        return self._get_pod_url(pod)

    async def _make_delete_pod_request(self, *args, **kwargs):
        deleted = await super()._make_delete_pod_request(*args, **kwargs)
        self._pod_deleted = bool(deleted)
        return deleted

    async def _delete_pod(self, now: bool) -> None:
        """KubeSpawner's stop: delete the pod, answer once the watch has it gone (as
        soon as it does, see ``_sooner``)."""
        self._pod_deleted = False
        task = asyncio.ensure_future(KubeSpawner.stop(self, now=now))
        await self._sooner(task, lambda pod: pod is None and self._pod_deleted)
        if not task.cancelled():  # it ended on its own: with its error, if any
            task.result()

    async def _sooner(self, task: asyncio.Future, over, each=None) -> dict | None:
        """Await ``task``, a KubeSpawner start or stop, which ends by polling its pod
        reflector until the server's pod runs or is gone, with a growing backoff (up to
        seconds between looks). Here the watch's news of the pod wake the wait: once
        ``over(pod)`` holds, ``task``, which then only waits, is cancelled. Gives the pod
        (None if gone) that ended the wait, or None when ``task`` ended on its own.
        ``each(pod)`` is called at each look; what it raises ends ``task`` too."""
        key = f"{self.namespace}/{self.pod_name}"
        while not task.done():
            # KubeSpawner starts its pod reflector inside start(): none at first
            reflector = self.pod_reflector
            pod = reflector.pods.get(key) if reflector else None
            if over(pod):
                task.cancel()
                try:
                    await task  # unless it ended on its own meanwhile
                except asyncio.CancelledError:
                    if not task.cancelled():  # the caller is cancelled, not task
                        raise
                    return pod
                return None
            if each is not None:
                try:
                    each(pod)
                except BaseException:
                    task.cancel()
                    raise
            news = [reflector.changed(key)] if isinstance(reflector, WakingPodReflector) else []
            await asyncio.wait([task, *news], timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            for future in news:
                future.cancel()
        return None

    # -- Return GPU / Get GPU: a new pod on the same home --------------------------

    async def remove_pod(self) -> None:
        """Delete the server's pod with a short grace period; answer once the watch has
        seen it gone (its GPUs are then free). The server stays "running" for the hub."""
        self.swapping = True
        grace = self.delete_grace_period
        self.delete_grace_period = min(grace, SWAP_GRACE_SECONDS)
        try:
            await self._delete_pod(now=False)
        except BaseException:
            self.swapping = False  # the pod may well still serve
            raise
        finally:
            self.delete_grace_period = grace

    async def pod_gpus(self) -> list[str] | None:
        """The GPUs the server's pod was made with (None: no pod, or one being deleted),
        from the watch."""
        await self._start_watching_pods()
        pod = self.pod_reflector.pods.get(f"{self.namespace}/{self.pod_name}")
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return None
        annotations = pod["metadata"].get("annotations") or {}
        return sorted(filter(None, annotations.get(objects.ANNOTATION_GPUS, "").split(",")))

    async def recreate_pod(self, gpu_ids: list[str]) -> None:
        """Start the server again as a pod with ``gpu_ids`` (none: a CPU pod), on the same
        home claim, and point the proxy at it once it is ready."""
        self.swapping = True
        try:
            self.gpu_ids = list(gpu_ids)
            granted = {g.id: g for g in self.gpulab.inventory}
            s3_env = await self.storage_env()
            if s3_env:
                await self.ensure_s3_secret(s3_env)
            self._configure_pod([granted[i] for i in self.gpu_ids if i in granted], s3_env)
            if self.server is None or self._stop_pending:
                raise web.HTTPError(409, "the server was stopped meanwhile")
            try:
                await self._serve_at(await self._until_scheduled(KubeSpawner._start(self)))
            except BaseException:
                await self._delete_pod(now=True)  # nothing half-started is left
                raise
        finally:
            self.swapping = False

    async def adopt_pod(self, timeout: float = 120) -> None:
        """After a hub restart in the middle of a replacement: once the new pod runs,
        the hub's record and the proxy lead to it."""
        await self._start_watching_pods()
        key = f"{self.namespace}/{self.pod_name}"
        deadline = time.monotonic() + timeout
        while not self.is_pod_running(self.pod_reflector.pods.get(key)):
            if time.monotonic() > deadline or key not in self.pod_reflector.pods:
                raise TimeoutError(f"pod {key} is not running")
            await self.pod_reflector.next_change(key, 0.5)
        await self._serve_at(self._get_pod_url(self.pod_reflector.pods[key]))

    async def _serve_at(self, url: str) -> None:
        """Once the Jupyter server at ``url`` answers, the hub's record of the server and
        the proxy's route lead to it (as after a spawn)."""
        from jupyterhub.app import JupyterHub

        parsed = urlparse(url)
        if self.server is None:  # stopped while the pod started
            raise web.HTTPError(409, "the server was stopped meanwhile")
        self.server.ip = parsed.hostname
        self.server.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        await self.server.wait_up(http=True, timeout=self.http_timeout, extra_path="api")
        self.save_state()
        await JupyterHub.instance().proxy.add_user(self.user, self.name)

    async def progress(self):
        """gpulab's own steps, then the pod's events as KubeSpawner reports them."""
        async for event in GpuSpawnerMixin.progress(self):
            yield event
            if getattr(self, "_pod_requested", False):
                break
        if getattr(self, "_pod_requested", False):
            async for event in KubeSpawner.progress(self):
                yield event

    async def stop(self, now=False):
        self._pod_requested = False
        if self._pod_is_ours():  # a refused spawn's pod name is someone else's pod
            await self._delete_pod(now=now)
        self.release_gpus("stopped")

    async def poll(self):
        if self.swapping:
            return None  # its pod is being replaced; the server itself keeps running
        status = await super().poll()
        if status is not None and not (self._spawn_pending or self._stop_pending):
            self.release_gpus("server exited")
        return status


def unschedulable_reason(pod: dict | None) -> str | None:
    """The scheduler's message when ``pod`` cannot be placed on any node, else None."""
    if not pod or pod.get("status", {}).get("phase") != "Pending":
        return None
    for condition in pod["status"].get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return condition.get("message") or "no node fits"
    return None
