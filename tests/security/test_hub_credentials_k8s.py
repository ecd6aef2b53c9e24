"""The attack of test_hub_credentials.py on the kubernetes backend: Mallory's server logs
every request it receives, and nothing the hub sends it opens anything at the hub.

A module of its own: the suite's parallel workers run everything on the fake cluster in
one worker (tests/conftest.py), and the other attacks need none.
"""

from __future__ import annotations

from test_hub_credentials import assert_no_credential, captured_internal_calls, capturing_server

from hubfixture import wait_for


def test_nothing_the_hub_sends_a_pod_is_a_credential_at_the_hub(k8s):
    """The same on Kubernetes, where Return GPU checkpoints the pod before replacing it."""
    hub = k8s
    victim = hub.create_user("victim")
    mallory = hub.create_user("mallory")
    assert victim.spawn(profile="cpu").status_code in (201, 202)
    capturing_server(mallory, "gpu-1")

    r = mallory.session.post(hub.api("/gpulab/gpu/return"), json={}, timeout=120)
    assert r.status_code in (200, 202), r.text
    wait_for(
        lambda: (
            mallory.session.get(hub.api("/gpulab/gpu"), timeout=10).json()["operation"]["state"]
            == "done"
        ),
        90,
        "Mallory's server to move to a CPU pod",
    )
    internal = captured_internal_calls(mallory)
    assert {c["path"].rsplit("/", 1)[1] for c in internal} >= {"checkpoint"}, internal
    assert_no_credential(hub, internal, victim)
