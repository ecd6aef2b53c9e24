"""Undeploying a model ends its servers even where no replica task knows the process:
one an earlier hub process started that was not (or not yet) taken over after a restart.

Driven at the level of ``LocalModels`` with a real ``LocalRunner`` (a process as the
user's unix account), so the moment of the stop can be chosen exactly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

from gpulab.hub.ledger import GpuLedger
from gpulab.hub.settings import Settings
from gpulab.hub.workloads.model_spec import ModelSpec
from gpulab.hub.workloads.models import ModelManager, new_replicas
from gpulab.hub.workloads.runner import Launch
from gpulab.spawner.local import holder_alive
from gpulab.spawner.local_models import LocalModels
from gpulab.spawner.local_runner import LocalRunner, _signal_group
from hubfixture import wait_for

USER = "ms-ada"


@pytest.fixture
def models():
    settings = Settings(data_root=tempfile.mkdtemp(prefix="gpulab-test-"))
    settings.servers.unix_user_prefix = f"glm{uuid.uuid4().hex[:4]}-"
    settings.jobs.stop_grace = "1s"
    manager = ModelManager(GpuLedger("sqlite://", []), settings)
    runner = LocalRunner(settings)
    manager.backend = LocalModels(manager, runner, sys.executable)
    started = []
    yield manager, runner, started
    for s in started:
        _signal_group(s.pid, 9)
    subprocess.run(["userdel", runner.account(USER).name], check=False, capture_output=True)
    shutil.rmtree(settings.data_root, ignore_errors=True)


async def earlier_hubs_server(manager: ModelManager, runner: LocalRunner, started: list):
    """A deployment whose replica runs, started and recorded as an earlier hub did."""
    spec = ModelSpec(name="line", base_path="models/line")
    model = manager.store.create(USER, spec, new_replicas(0, 1, manager._ports.take))
    launch = Launch(
        argv=[sys.executable, "-c", "import time; time.sleep(300)"],
        env=runner.base_env(USER),
        workdir="",
        log=model.log_path(0),
    )
    s = await runner.start(USER, launch)
    started.append(s)
    manager.set_replica(model.id, 0, state="available", pid=s.pid, pid_started=s.pid_started)
    return manager.store.get_by_id(model.id), s


async def test_undeploy_ends_a_server_no_task_took_over(models):
    manager, runner, started = models
    model, server = await earlier_hubs_server(manager, runner, started)
    # the takeover after a restart failed for this model: no task follows its replica
    manager.taken_over.set()
    await manager.undeploy(model)
    wait_for(lambda: not holder_alive(server.pid, server.pid_started), 10, "the server to end")
    assert manager.store.get_by_id(model.id) is None


async def test_undeploy_right_after_takeover_ends_the_adopted_server(models):
    manager, runner, started = models
    model, server = await earlier_hubs_server(manager, runner, started)
    await manager.backend.resume(model)
    # stopped before the replica's task has run a step: it never saw its process
    await manager.backend.stop(model)
    wait_for(lambda: not holder_alive(server.pid, server.pid_started), 10, "the server to end")
