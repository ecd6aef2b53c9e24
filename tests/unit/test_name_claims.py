"""A server's object names are claimed together (``NameRegistry.claim_all``): all of
them, or none when one is another hub user's."""

from __future__ import annotations

import pytest

from gpulab.hub.names import NameConflict, NameRegistry


def test_a_servers_names_are_claimed_all_or_none(tmp_path):
    names = NameRegistry(f"sqlite:///{tmp_path / 'gpulab.sqlite'}")
    ada = [("k8s-pvc", "ada", "home-ada"), ("k8s-pod", "ada", "jupyter-ada")]
    names.claim_all(ada)
    names.claim_all(ada)  # a second spawn: nothing new, no conflict
    assert names.owner("k8s-pod", "jupyter-ada") == "ada"

    # mallory's pod name is ada's: nothing of mallory's is recorded, not even the claim
    # name that was free
    with pytest.raises(NameConflict):
        names.claim_all(
            [("k8s-pvc", "mallory", "home-mallory"), ("k8s-pod", "mallory", "jupyter-ada")]
        )
    assert names.owner("k8s-pvc", "home-mallory") is None
    assert names.owner("k8s-pod", "jupyter-ada") == "ada"

    # a registry opened anew (a hub restart) knows them all
    again = NameRegistry(f"sqlite:///{tmp_path / 'gpulab.sqlite'}")
    with pytest.raises(NameConflict):
        again.claim("k8s-pvc", "mallory", "home-ada")
    again.claim_all([("k8s-pvc", "mallory", "home-mallory")])
    assert again.owner("k8s-pvc", "home-mallory") == "mallory"
