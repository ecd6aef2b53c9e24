"""The services of a hub process: settings, backend, inventory, ledger, S3 accounts, and
the GPU switch, job manager and model manager built on them.

``hubconfig.configure`` builds one ``Context`` when the hub reads its configuration and
puts it in the hub's tornado settings (``settings["gpulab"]``), where the API handlers
(``self.settings``), the spawners (``self.user.settings``) and the background tasks find
it. Nothing below this layer (the backends, the workloads) imports it: they are handed
what they need.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpulab.spawner.backend import Backend, backend_for

from .inventory import Gpu
from .ledger import GpuLedger
from .metrics import GpuCollector, observe, observe_queue_wait, serve
from .names import registry
from .secretfiles import read_secret_files
from .settings import Settings, load_settings
from .storage.s3 import RgwAccounts

if TYPE_CHECKING:
    from .environments.manager import EnvironmentManager
    from .gpuswitch import GpuSwitch
    from .sharing import UseLimits, ViewLinks
    from .workloads.jobs import JobManager
    from .workloads.models import ModelManager


@dataclass(eq=False)
class Context:
    settings: Settings
    backend: Backend
    """Where workloads run: this machine or a cluster (``gpulab.spawner.backend``)."""
    inventory: list[Gpu]
    ledger: GpuLedger
    s3: RgwAccounts | None
    """Per-user S3 on Ceph RGW, when storage.s3_endpoint is set."""
    clock: Callable[[], float] = time.time
    """The wall clock of what happens after a time (idle reclaim)."""

    def __post_init__(self) -> None:
        # /hub/metrics serves the ledger's GPU series (a process: those of its latest hub)
        serve(GpuCollector(self.ledger, self.settings))
        self.ledger.on_operation_finished(observe)
        self.ledger.on_queue_granted(observe_queue_wait)

    @functools.cached_property
    def switch(self) -> GpuSwitch:
        """Return GPU, Get GPU and idle reclaim for running servers."""
        from .gpuswitch import GpuSwitch

        return GpuSwitch(
            self.ledger, self.settings, clock=self.clock, utilization=self.backend.utilization()
        )

    @functools.cached_property
    def jobs(self) -> JobManager:
        """Training jobs and sweeps, run by the backend's runner: processes on this
        machine, or pods (which run the image's ``python``)."""
        from .workloads.jobs import JobManager

        return JobManager(
            self.ledger,
            self.settings,
            *self.backend.job_runner(),
            s3=self.s3,
            environments=lambda: self.environments,
        )

    @functools.cached_property
    def models(self) -> ModelManager:
        """Model deployments, with the backend's way of running replicas."""
        from .workloads.models import ModelManager

        manager = ModelManager(self.ledger, self.settings, s3=self.s3)
        manager.backend = self.backend.model_backend(manager)
        return manager

    @functools.cached_property
    def environments(self) -> EnvironmentManager:
        """Environment snapshots and the registry they go to (``SnapshotError`` where the
        backend has none)."""
        return self.backend.environments(self.ledger)

    @functools.cached_property
    def views(self) -> ViewLinks:
        """Read-only links to users' notebooks (``hub/sharing.py``)."""
        from .sharing import ViewLinks

        return ViewLinks(self.ledger.engine)

    @functools.cached_property
    def use_limits(self) -> UseLimits:
        """How many times each share link may be used (``hub/sharing.py``)."""
        from .sharing import UseLimits

        return UseLimits(self.ledger.engine)

    def __deepcopy__(self, memo) -> Context:
        # traitlets deep-copies configuration values (tornado_settings among them) into
        # the application; a process has one set of services, shared, never copied
        return self


def build_context() -> Context:
    """Read the settings (and the secrets files they name) and build the services."""
    settings = load_settings()
    read_secret_files(settings)
    backend = backend_for(settings)
    inventory = backend.inventory()
    ledger = GpuLedger(settings.ledger_url, inventory, settings.gpus)
    st = settings.storage
    s3 = None
    if st.s3_endpoint:
        s3 = RgwAccounts(
            st.s3_endpoint,
            st.s3_admin_access_key,
            st.s3_admin_secret_key,
            bucket_prefix=st.s3_prefix,
            uid_prefix=st.s3_prefix,
            quota_bytes=st.s3_quota_bytes,
            names=registry(settings.data_path),  # RGW users and buckets are claimed names
        )
    return Context(settings, backend, inventory, ledger, s3)
