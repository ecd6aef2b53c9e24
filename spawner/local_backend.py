"""The local backend: user servers, job and model replicas as processes of unix accounts
on this machine, homes as directories under the data root."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from gpulab.hub.settings import Settings, SettingsError

from .accounts import privileged
from .userenv import user_environment

if TYPE_CHECKING:
    from .backend import Check

log = logging.getLogger("gpulab")


class LocalBackend:
    name = "local"
    shares_machine = True

    def __init__(self, settings: Settings):
        self.settings = settings

    def check(self) -> None:
        problem = user_environment(self.settings).problem()
        if problem:
            raise SettingsError(f"servers.environment: {problem}")
        if self.settings.storage.home_quota and not privileged():
            raise SettingsError(
                "storage.home_quota needs the hub to run as root: it makes and mounts a "
                "filesystem for each user's home"
            )

    def inventory(self):
        from gpulab.hub.inventory import discover

        return discover(self.settings.gpus.ids)

    def configure_hub(self, c, ctx) -> None:
        c.JupyterHub.spawner_class = "gpulab-local"
        # the proxy serves on across hub restarts (hub/proxy.py adopts it), writing its own log
        c.JupyterHub.cleanup_proxy = False
        c.GpulabProxy.output_file = str(self.settings.data_path / "jupyterhub-proxy.log")
        if not privileged():
            log.warning(
                "\n%s\ngpulab: the hub is NOT running as root. This is single-user/dev mode:\n"
                "every server runs as %s, with no isolation between hub users.\n"
                "Run the hub as root on a shared GPU machine.\n%s",
                "!" * 72,
                os.environ.get("USER", "this account"),
                "!" * 72,
            )

    def settle(self, ledger):
        from .local import reconcile_local_grants

        return reconcile_local_grants(ledger)

    def job_runner(self):
        from .local_runner import LocalRunner

        # a job's ``python`` is the user environment's, where the user's packages are
        return LocalRunner(self.settings), str(user_environment(self.settings).python)

    def model_backend(self, manager):
        from .local_models import LocalModels
        from .local_runner import LocalRunner, gpulab_python

        # the model server is gpulab's own code
        return LocalModels(manager, LocalRunner(self.settings), gpulab_python())

    async def homes(self, user: str, running: bool):
        from gpulab.hub.storage.local import local_homes

        return local_homes(self.settings, in_use=lambda _user: running)

    def environments(self, ledger):
        from gpulab.hub.environments.manager import EnvironmentManager
        from gpulab.hub.names import registry

        from .local_runner import LocalRunner

        return EnvironmentManager(
            self.settings,
            ledger.engine,
            registry(self.settings.data_path),
            LocalRunner(self.settings).account,
            user_environment(self.settings),
        )

    def utilization(self):
        from gpulab.hub.utilization import NvmlUtilization

        return NvmlUtilization()  # the hub reads the GPUs of its own machine

    def doctor(self) -> list[Check]:
        env = user_environment(self.settings)
        problem = env.problem()
        return [
            ("GPUs", self._check_gpus()),
            ("User environment", ("FAIL", problem) if problem else ("OK", str(env.root))),
            ("Kubernetes", ("OK", f"not used (backend: {self.name})")),
        ]

    def _check_gpus(self) -> tuple[str, str]:
        from gpulab.hub.inventory import NvmlUnavailable, nvml_gpus

        ids = self.settings.gpus.ids
        try:
            seen = nvml_gpus()
            nvml = f"NVML sees {len(seen)} GPU(s)" + (
                ": " + ", ".join(f"{g.index} {g.model}" for g in seen) if seen else ""
            )
            nvml_ok = True
        except NvmlUnavailable as e:
            nvml, nvml_ok = f"NVML unavailable ({e})", False
        if ids:
            return "OK", f"{len(ids)} configured GPU id(s) {','.join(ids)}; {nvml}"
        if nvml_ok and seen:
            return "OK", nvml
        return "WARN", f"{nvml}; no gpus.ids configured: only CPU profiles can start"
