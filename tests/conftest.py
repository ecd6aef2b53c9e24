"""Fixtures for gpulab tests.

- ``hub``: a real hub (JupyterHub + configurable-http-proxy + gpulab) running as root
  with three configured GPU ids (``0``, ``1``, ``2``), a per-user limit of 2 and a
  group ``team`` limited to 1 GPU. Shared by a module; every server is stopped and
  every GPU free again after each test (``clean_hub``).
- ``make_hub``: a factory for hubs with other settings; each is cleaned up after the test.
"""

import os

import pytest

from hubfixture import Hub

SHARED_SETTINGS = {
    "gpus": {"ids": ["0", "1", "2"], "per_user": 2, "groups": {"team": 1}},
}


def pytest_configure(config):
    if os.geteuid() != 0:
        raise pytest.UsageError(
            "gpulab's tests run the hub as root, as on a shared GPU machine (unix accounts per "
            "user); run them as root (CI does)."
        )


@pytest.fixture(scope="module")
def shared_hub():
    hub = Hub(SHARED_SETTINGS).start()
    yield hub
    hub.cleanup()


@pytest.fixture
def hub(shared_hub):
    yield shared_hub
    clean_hub(shared_hub)


def clean_hub(hub: Hub) -> None:
    """Stop every server so the next test starts from a free pool."""
    for user in hub.admin.get(hub.api("/users"), timeout=10).json():
        for server in user.get("servers", {}):
            hub.admin.delete(hub.api(f"/users/{user['name']}/servers/{server}"), timeout=60)
    from hubfixture import wait_for

    wait_for(lambda: hub.gpus()["free"] == hub.gpus()["total"], 60, "every GPU to be free")


@pytest.fixture
def make_hub():
    hubs = []

    def make(settings=None):
        hub = Hub(settings)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.cleanup()
