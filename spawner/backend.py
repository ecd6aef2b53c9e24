"""The one seam between the hub and where user workloads run.

A ``Backend`` is everything that differs between this machine (``local``: processes as
unix accounts, directory homes) and a cluster (``kubernetes``: pods, claims on Ceph RBD):
the GPUs to hand out, the JupyterHub configuration (spawner class and what goes with it),
what to settle when the hub starts, how job and model replicas run, the home volumes,
where GPU utilisation is read, and the checks ``gpulab doctor`` makes. ``backend_for``
picks one from the settings; no other code asks which backend runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gpulab.hub.app import Context
    from gpulab.hub.environments.manager import EnvironmentManager
    from gpulab.hub.inventory import Gpu
    from gpulab.hub.ledger import GpuLedger, Grant
    from gpulab.hub.settings import Settings
    from gpulab.hub.storage import HomeVolumes
    from gpulab.hub.utilization import Utilization
    from gpulab.hub.workloads.models import ModelManager
    from gpulab.hub.workloads.runner import Runner

Check = tuple[str, tuple[str, str]]
"""A ``gpulab doctor`` row: (check, (OK | WARN | FAIL, detail))."""


class Backend(Protocol):
    name: str

    shares_machine: bool
    """Users' processes run on the hub's own machine, as unix accounts: the hub's files
    (secrets, settings) must be closed to them, and it refuses to start otherwise."""

    def check(self) -> None:
        """Raise ``SettingsError`` for settings this backend cannot run with here."""

    def inventory(self) -> list[Gpu]:
        """The GPUs the ledger hands out."""

    def configure_hub(self, c, ctx: Context) -> None:
        """The JupyterHub configuration that goes with this backend (spawner class, hub
        address, proxy lifetime, background watches over ``ctx``'s ledger)."""

    def settle(self, ledger: GpuLedger) -> list[Grant]:
        """At hub start: release grants whose holder ended while the hub was down."""

    def job_runner(self) -> tuple[Runner, str]:
        """How job replicas run, and the ``python`` their commands start with."""

    def model_backend(self, manager: ModelManager):
        """How model replicas run (``LocalModels`` or ``KubeModels``)."""

    async def homes(self, user: str, running: bool) -> HomeVolumes:
        """``user``'s home volume (``running``: their server runs, so some changes wait)."""

    def doctor(self) -> list[Check]:
        """This backend's rows of ``gpulab doctor``."""

    def utilization(self) -> Utilization:
        """Where the hub reads how busy each GPU is (``gpulab.hub.utilization``)."""

    def environments(self, ledger: GpuLedger) -> EnvironmentManager:
        """Environment snapshots: saved from users' homes, unpacked for their servers;
        ``SnapshotError`` (501) where this backend cannot yet."""


def backend_for(settings: Settings) -> Backend:
    """The backend the settings name (validated by ``load_settings``)."""
    if settings.backend == "kubernetes":
        from .kube_backend import KubernetesBackend

        return KubernetesBackend(settings)
    from .local_backend import LocalBackend

    return LocalBackend(settings)
