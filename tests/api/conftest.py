"""The API tier: the hub in the test process (``apihub.InProcessHub``), with users'
servers recorded. ``hub`` here is that hub, shared by a module and cleaned after each
test as the e2e one is. JupyterHub is one application per process: a module has one
hub at a time, with ``apihub.API_SETTINGS`` (a module that needs other settings starts
its own, as ``test_sharing_api.py`` does)."""

import pytest

from apihub import API_SETTINGS, InProcessHub
from hubfixture import clean_hub


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
