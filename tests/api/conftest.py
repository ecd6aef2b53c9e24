"""The API tier: the hub in the test process (``apihub.InProcessHub``), with users'
servers recorded. ``hub`` here is that hub, shared by a module and cleaned after each
test as the e2e one is. JupyterHub is one application per process: a module has one
hub at a time, so the settings below hold what every module of the tier needs."""

import pytest

from apihub import InProcessHub
from hubfixture import SHARED_SETTINGS, clean_hub

API_SETTINGS = {
    **SHARED_SETTINGS,
    "gpus": {**SHARED_SETTINGS["gpus"], "reclaim_interval": 1},
    "profiles": [
        {"slug": "cpu", "display_name": "CPU only", "default": True},
        {"slug": "gpu-1", "display_name": "1 GPU", "gpus": 1},
        {"slug": "gpu-2", "display_name": "2 GPUs", "gpus": 2},
        {"slug": "gpu-idle", "display_name": "1 GPU, returned after an idle hour", "gpus": 1,
         "idle_return": "1h"},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def shared_hub():
    hub = InProcessHub(API_SETTINGS).start()
    yield hub
    hub.cleanup()


@pytest.fixture
def hub(shared_hub):
    yield shared_hub
    clean_hub(shared_hub)
    shared_hub.recorder.calls.clear()
    shared_hub.clock.offset = 0.0
