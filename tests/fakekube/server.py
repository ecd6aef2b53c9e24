"""``FakeKube``: the fake cluster as a test starts and stops it.

The API server, control plane and kubelets share one asyncio event loop on a
background thread, so tests (sync or async) talk to it over HTTP exactly as
KubeSpawner or kubectl would. ``kube.kubeconfig`` is the cluster admin's;
``kube.service_account_token(ns, name)`` and ``kube.kubeconfig_for(token)`` give a
client a ServiceAccount's identity, which RBAC then restricts (see ``rbac``).
``kube.faults`` and ``kube.drop_watches()`` inject faults (see ``faults``);
``kube.hosts_file`` holds the cluster DNS records (see ``dns``); stopping kills every
process the kubelet started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .api import Api
from .cluster import Cluster, NodeSpec
from .containers import hosts_wrapper
from .faults import Faults
from .rbac import ADMIN_TOKEN, Tokens
from .resources import POD
from .tls import ClusterCA

log = logging.getLogger("fakekube")


class FakeKube:
    """A Kubernetes API server with a simulated scheduler, kubelets and controllers.

    ``nodes``: the inventory (``NodeSpec`` or dicts: ``name``, ``gpus``, ``labels``,
    ``taints``, ``cpu``, ``memory``, ``resources``, ``unschedulable``); default one
    node ``gpu-node-1`` with 2 GPUs. ``gpu_resource``: the resource name ``gpus``
    is advertised as. ``run_containers``: run each container's ``command`` as a
    local process (see ``fakekube.containers``). ``restart_backoff``: the kubelet's
    initial back-off in seconds (10 in a real cluster).
    ``history_size``: how many changes a watch can resume across before it gets
    410 Gone. ``bookmark_interval``: seconds between BOOKMARK events on watches that
    allow them (about 60 in a real cluster). ``watch_timeout``: how long a watch
    without ``timeoutSeconds`` lasts (a real apiserver: 30 to 60 minutes).
    ``storage_classes``: StorageClass objects to create at start. ``image_env``: the
    environment a container process starts from, as an image's ``ENV`` (default:
    this process's, without ``HOME``). ``port``: 0 picks a free one. ``rbd_images``:
    what ceph-csi's controller does to RBD images, for a test with a real Ceph: an
    object with ``create(pool, image, size_bytes)`` and ``grow(pool, image,
    size_bytes)``, called when an ``rbd.csi.ceph.com`` claim is provisioned or
    expanded (an exception fails that step, as ceph-csi's errors do); None: no image.
    """

    def __init__(
        self,
        nodes: list[NodeSpec | dict[str, Any]] | None = None,
        *,
        port: int = 0,
        gpu_resource: str = "nvidia.com/gpu",
        run_containers: bool = False,
        restart_backoff: float = 10.0,
        history_size: int = 2000,
        bookmark_interval: float = 60.0,
        watch_timeout: int = 1800,
        storage_classes: list[dict[str, Any]] | None = None,
        image_env: dict[str, str] | None = None,
        rbd_images: Any = None,
    ):
        self.nodes = [
            NodeSpec.of(n)
            for n in (nodes if nodes is not None else [{"name": "gpu-node-1", "gpus": 2}])
        ]
        self.requested_port = port
        self.gpu_resource = gpu_resource
        self.run_containers = run_containers
        self.restart_backoff = restart_backoff
        self.history_size = history_size
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self.storage_classes = storage_classes or []
        if image_env is None:
            image_env = {k: v for k, v in os.environ.items() if k != "HOME"}
        self.image_env = dict(image_env)
        self.rbd_images = rbd_images
        self.port = 0
        self.https_port = 0
        self.workdir: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._cluster: Cluster | None = None
        self._runner: web.AppRunner | None = None
        self._api: Api | None = None
        self.faults = Faults()
        self._tokens = Tokens()

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> str:
        """A kubeconfig file pointing at this server (for ``KUBECONFIG``)."""
        assert self.workdir is not None, "FakeKube is not started"
        return str(self.workdir / "kubeconfig")

    @property
    def hosts_file(self) -> Path:
        """The cluster DNS records as a hosts file (see ``fakekube.dns``): this host's
        ``/etc/hosts`` followed by the pod hostname records of headless Services."""
        assert self._cluster is not None, "FakeKube is not started"
        return self._cluster.dns.hosts_file

    @property
    def pod_dns(self) -> bool:
        """Whether container processes see ``hosts_file`` as their ``/etc/hosts`` (FakeKube
        runs as root and can give them mount namespaces; see ``fakekube.containers``)."""
        return hosts_wrapper() is not None

    def start(self) -> FakeKube:
        self.workdir = Path(tempfile.mkdtemp(prefix="fakekube-"))
        os.chmod(self.workdir, 0o755)
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as e:
                ready.set_exception(e)
                loop.close()
                return
            ready.set_result(None)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="fakekube", daemon=True)
        self._thread.start()
        ready.result(timeout=30)
        self._write_kubeconfig(Path(self.kubeconfig), "fakekube", ADMIN_TOKEN, "default")
        return self

    def _write_kubeconfig(self, path: Path, user: str, token: str, namespace: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fakekube", "cluster": {"server": self.url}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "fakekube",
                    "context": {"cluster": "fakekube", "user": user, "namespace": namespace},
                }
            ],
            "current-context": "fakekube",
        }
        path.write_text(json.dumps(config, indent=2))

    async def _start(self) -> None:
        assert self.workdir is not None
        self._ca = ClusterCA(self.workdir / "pki")
        self._cluster = Cluster(
            self.nodes,
            gpu_resource=self.gpu_resource,
            run_containers=self.run_containers,
            restart_backoff=self.restart_backoff,
            history_size=self.history_size,
            root=self.workdir,
            image_env=self.image_env,
            storage_classes=self.storage_classes,
            rbd_images=self.rbd_images,
            ca_pem=self._ca.ca_pem,
            tokens=self._tokens,
        )
        self._cluster.start()
        self._api = Api(
            self._cluster,
            self.faults,
            self._tokens,
            bookmark_interval=self.bookmark_interval,
            watch_timeout=self.watch_timeout,
        )
        self._runner = web.AppRunner(self._api.app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.requested_port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        # what in-cluster clients in pods use (see ``tls``)
        secure = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ca.server_context())
        await secure.start()
        self.https_port = self._runner.addresses[1][1]
        self._cluster.apiserver = ("127.0.0.1", self.https_port)

    async def _shutdown(self) -> None:
        assert self._cluster is not None and self._runner is not None
        await self._cluster.stop()
        await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = self._thread = None
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- identities ------------------------------------------------------------------

    def service_account_token(self, namespace: str, name: str) -> str:
        """A bearer token for ServiceAccount ``namespace/name``, as the TokenRequest API
        (``kubectl create token``) gives one: requests carrying it are
        ``system:serviceaccount:<namespace>:<name>`` and may do what RBAC bindings
        allow that account (see ``fakekube.rbac``). The same token every time for one
        account; it is accepted only while the ServiceAccount exists (401 otherwise).
        May be called before ``start``."""
        return self._tokens.issue(namespace, name)

    def kubeconfig_for(self, token: str, path: str | Path | None = None) -> str:
        """Write a kubeconfig like ``kubeconfig`` (same server) whose user carries
        ``token``, its context's namespace that of the token's ServiceAccount
        (``default`` for a token this fake did not issue); returns its path (by default
        a file in the fake's working directory)."""
        assert self.workdir is not None, "FakeKube is not started"
        account = self._tokens.account(token)
        namespace = account[0] if account else "default"
        user = "-".join(account) if account else hashlib.sha256(token.encode()).hexdigest()[:12]
        target = Path(path) if path is not None else self.workdir / f"kubeconfig-{user}"
        self._write_kubeconfig(target, user, token, namespace)
        return str(target)

    # -- helpers for tests -----------------------------------------------------------

    def call(self, fn: Callable[[Cluster], Any], timeout: float = 10) -> Any:
        """Run ``fn(cluster)`` on the cluster's event loop and return its result."""
        assert self._loop is not None and self._cluster is not None, "FakeKube is not started"
        cluster = self._cluster

        async def run() -> Any:
            return fn(cluster)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def exit_container(
        self, namespace: str, pod: str, exit_code: int = 0, container: str | None = None
    ) -> None:
        """End a simulated container (one that runs no real process) with
        ``exit_code``, as if its process had exited; ``container`` None ends all."""

        def end(cluster: Cluster) -> None:
            worker = cluster.kubelet.worker(namespace, pod)
            if worker is None:
                raise KeyError(f"pod {namespace}/{pod} is not running on any node")
            worker.exit_simulated(container, exit_code)

        self.call(end)

    def drop_watches(self) -> int:
        """Cut every open watch stream mid-stream, as a lost connection or a restarting
        apiserver would; returns how many were cut."""
        assert self._api is not None, "FakeKube is not started"
        api = self._api
        return self.call(lambda _: api.drop_watches())

    def pod_pids(self, namespace: str, name: str) -> dict[str, int]:
        """Container name -> pid of the local process running it (run_containers)."""

        def pids(cluster: Cluster) -> dict[str, int]:
            pod = cluster.store.peek(POD, namespace, name)
            worker = cluster.kubelet.workers.get(pod["metadata"]["uid"]) if pod else None
            if worker is None:
                return {}
            return {
                c.name: c.process.proc.pid
                for c in worker.all_containers()
                if c.process is not None and c.running
            }

        return self.call(pids)
