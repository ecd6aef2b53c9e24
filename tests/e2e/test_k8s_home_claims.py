"""A user's home claim beside their pod (``UserObjects.ensure_home``) on the fake API
server: a first spawn makes it with one call; one that exists is looked at only when
the API server says so, and refused when it was made for another hub user."""

from __future__ import annotations

import logging

import pytest
from kubernetes_asyncio import client
from tornado import web

from fakekube import FakeKube
from fakekube.tests.helpers import kubespawner_configured
from gpulab.spawner import objects
from gpulab.spawner.kube_user_objects import UserObjects

GIB = 2**30


class Counted:
    """The CoreV1Api, with the name of each call it makes recorded."""

    def __init__(self, core):
        self.core, self.calls = core, []

    def __getattr__(self, name):
        call = getattr(self.core, name)

        def counted(*args, **kwargs):
            self.calls.append(name.removesuffix("_namespaced_persistent_volume_claim"))
            return call(*args, **kwargs)

        return counted


async def test_a_first_spawn_makes_the_home_in_one_call_and_never_takes_another_users(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeKube() as kube, kubespawner_configured(kube, monkeypatch):
        async with client.ApiClient() as api:
            v1 = client.CoreV1Api(api)
            core = Counted(v1)
            said = []

            def homes(user: str) -> UserObjects:
                return UserObjects(
                    core, "default", user, {"app": "jupyterhub"}, lambda _, m: said.append(m),
                    logging.getLogger("test"), request_timeout=10, retry_timeout=5,
                )  # fmt: skip

            async def size_of(name: str) -> str:
                pvc = await v1.read_namespaced_persistent_volume_claim(name, "default")
                return pvc.spec.resources.requests["storage"]

            # a class starting: each first spawn makes its claim at once
            await homes("ada").ensure_home("home-ada", 10 * GIB, "ceph-rbd", likely_new=True)
            assert core.calls == ["create"]
            assert said == ["Created home volume home-ada (10Gi)"]
            assert await size_of("home-ada") == "10Gi"

            # the next spawn of this hub process knows it: one look, nothing made
            core.calls.clear()
            await homes("ada").ensure_home("home-ada", 10 * GIB, "ceph-rbd")
            assert core.calls == ["read"]

            # after a hub restart it is likely new again: the API server says it exists
            core.calls.clear()
            await homes("ada").ensure_home("home-ada", 10 * GIB, "ceph-rbd", likely_new=True)
            assert core.calls == ["create", "read"]

            # a claim made for another hub user (before the name registry) is not shared
            theirs = objects.home_pvc(
                "home-bob", "default", GIB, "ceph-rbd", {}, objects.owner_annotations("bob", "")
            )
            await v1.create_namespaced_persistent_volume_claim("default", theirs)
            for likely_new in (True, False):
                with pytest.raises(web.HTTPError) as refused:
                    await homes("mallory").ensure_home(
                        "home-bob", 10 * GIB, "ceph-rbd", likely_new=likely_new
                    )
                assert refused.value.status_code == 409
                assert "belongs to another hub user" in refused.value.log_message
            assert await size_of("home-bob") == "1Gi"  # untouched
