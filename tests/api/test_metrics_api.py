"""The GPU series at ``/hub/metrics`` (Prometheus) of the hub in-process: served beside
JupyterHub's own to an admin's token, refused to a user's, following the ledger."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from hubfixture import wait_for

HELD = "gpulab_gpu_held_seconds_total"


def scrape(hub, session: requests.Session) -> dict[tuple, float]:
    """Each sample's value by (name, its labels sorted)."""
    r = session.get(hub.url + "/hub/metrics", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def of_alice(name: str) -> tuple:
    return (name, (("group", "team"), ("profile", "gpu-1"), ("user", "alice")))


def pool(values: dict) -> tuple[float, float]:
    """(free, held) GPUs."""
    return values["gpulab_gpus", (("state", "free"),)], values["gpulab_gpus", (("state", "held"),)]


def test_an_admin_scrapes_the_gpus_held_busy_and_free_at_hub_metrics(hub):
    alice = hub.create_user("alice", groups=("team",))
    admin = hub.create_user("ops", admin=True).session
    values = scrape(hub, admin)
    assert pool(values) == (3, 0) and values["gpulab_gpu_queue_length", ()] == 0
    assert any(name.startswith("jupyterhub_") for name, _ in values)  # the hub's own too

    assert alice.spawn(profile="gpu-1").status_code in (201, 202)
    values = scrape(hub, admin)
    assert pool(values) == (2, 1)
    first = values[of_alice(HELD)]
    assert values[of_alice("gpulab_gpu_busy_seconds_total")] == 0  # no kernels: idle
    # a held GPU's seconds go on counting
    wait_for(lambda: scrape(hub, admin)[of_alice(HELD)] > first, 30, "alice's held seconds")

    # a user may not read who holds what; nor may anyone without a token
    r = alice.session.get(hub.url + "/hub/metrics", timeout=30)
    assert r.status_code == 403 and "gpulab_" not in r.text
    r = requests.get(hub.url + "/hub/metrics", timeout=30)
    assert r.status_code == 403 and "gpulab_" not in r.text

    # stopped: the GPU is free, and what alice held stays counted, no longer growing
    assert alice.stop().status_code in (202, 204)
    wait_for(lambda: pool(scrape(hub, admin)) == (3, 0), 30, "alice's GPU to be free")
    stopped = scrape(hub, admin)[of_alice(HELD)]
    assert stopped > first
    assert scrape(hub, admin)[of_alice(HELD)] == stopped
