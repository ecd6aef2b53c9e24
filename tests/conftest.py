"""Fixtures for gpulab tests.

- ``hub``: a real hub (JupyterHub + configurable-http-proxy + gpulab) running as root
  with three configured GPU ids (``0``, ``1``, ``2``), a per-user limit of 2 (4 for
  ``lab``, more than the pool) and a group ``team`` limited to 1 GPU. Shared by a module; every server is stopped and
  every GPU free again after each test (``clean_hub``).
- ``make_hub``: a factory for hubs with other settings; each is cleaned up after the test.
- ``kube``, ``k8s_hub``, ``k8s``: the fake cluster and a hub on the kubernetes backend
  (``k8sfixture``).
- ``ceph``: a real single-node Ceph (mon, memstore OSD, mgr, radosgw) started once per
  test session by ``scripts/ceph`` on free ports: ``.conf`` (ceph.conf path),
  ``.s3_endpoint``, ``.s3_admin_access_key``, ``.s3_admin_secret_key``.
"""

import functools
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import pytest

from hubfixture import REPO, SHARED_SETTINGS, Hub, clean_hub, free_port

pytest_plugins = ["k8sfixture"]  # the kubernetes backend's test cluster and hub


ON_THE_CLUSTER = re.compile(r"def \w+\([^)]*\b(kube|k8s|k8s_hub)\b")
"""A module on the fake cluster (and its Ceph): a fixture or test that takes one."""
ON_CEPH = re.compile(r"def \w+\([^)]*\bceph\b")
"""A module on Ceph alone."""


@functools.cache
def _scope(path: str) -> str:
    text = (REPO / path).read_text()
    if path.startswith("tests/fakekube/"):  # the fake's own tests: clusters of their own
        return path
    if ON_THE_CLUSTER.search(text):
        return "the fake cluster"
    return "ceph" if ON_CEPH.search(text) else path


def pytest_xdist_make_scheduler(config, log):
    """``scripts/test`` runs modules in parallel workers (``--dist loadfile``): the modules
    on the fake cluster all in one worker, which starts the cluster, its Ceph and its hub
    once, and those on Ceph alone in one (which may be another, with a Ceph of its own)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModulesAndTheCluster(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid.split("::", 1)[0])

    return ModulesAndTheCluster(config, log)


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
def page():
    """A Chromium page of 1400×900 for a browser test; its waits last up to 30 s."""
    import browsing

    with browsing.chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(30_000)
        yield page


@pytest.fixture
def hub(shared_hub):
    yield shared_hub
    clean_hub(shared_hub)


@pytest.fixture
def make_hub():
    hubs = []

    def make(settings=None):
        hub = Hub(settings)
        hubs.append(hub)
        return hub

    make.hubs = hubs  # for pytest_runtest_makereport
    yield make
    for hub in hubs:
        hub.cleanup()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the last lines of the logs of every hub it used
    and of its users' servers."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    hubs = []
    for value in getattr(item, "funcargs", {}).values():
        for hub in [value, *getattr(value, "hubs", ())]:
            if isinstance(hub, Hub) and hub not in hubs:
                hubs.append(hub)
    for hub in hubs:
        report.sections.append((f"hub log ({hub.log_path}, last 80 lines)", hub.log_tail(80)))
        for path, tail in hub.server_log_tails(40).items():
            report.sections.append((f"server log ({path.name}, last 40 lines)", tail))


@dataclass
class Ceph:
    conf: str
    s3_endpoint: str
    s3_admin_access_key: str
    s3_admin_secret_key: str


@pytest.fixture(scope="session")
def ceph():
    data = tempfile.mkdtemp(prefix="gpulab-ceph-")
    env = {**os.environ, "CEPH_MON_PORT": str(free_port()), "CEPH_RGW_PORT": str(free_port())}
    script = str(REPO / "scripts" / "ceph")
    try:
        started = subprocess.run(
            [script, "start", data], env=env, timeout=300, capture_output=True, text=True
        )
        if started.returncode != 0:
            raise RuntimeError(
                f"scripts/ceph start failed ({started.returncode}):\n{started.stdout}{started.stderr}"
            )
        out = subprocess.run(
            [script, "env", data], env=env, check=True, timeout=60, capture_output=True, text=True
        ).stdout
        values = {}
        for line in out.splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export ") :].partition("=")
                values[key] = shlex.split(value)[0] if value else ""
        yield Ceph(
            conf=values["CEPH_CONF"],
            s3_endpoint=values["CEPH_RGW_ENDPOINT"],
            s3_admin_access_key=values["CEPH_RGW_ADMIN_ACCESS_KEY"],
            s3_admin_secret_key=values["CEPH_RGW_ADMIN_SECRET_KEY"],
        )
    finally:
        subprocess.run([script, "stop", data], env=env, timeout=120)
        shutil.rmtree(data, ignore_errors=True)
