"""A user's objects beside their server's pod: the home claim and the S3 Secret.

The home is a PersistentVolumeClaim on the ceph-csi RBD StorageClass, made before the
pod, kept when it stops, grown when the home size grows; S3 keys come from a Secret,
replaced when they rotate. Both are the user's, shared by their named servers; one made
for another hub user is refused (409). API calls the API server answers busy (429),
failing (5xx) or not at all are retried with backoff; any other refusal is a 503.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from kubernetes_asyncio.client.rest import ApiException
from tornado import web

from gpulab.hub.kube import api_reason

from . import objects


class UserObjects:
    """Makes, grows and updates one user's home claim and S3 Secret in ``namespace``."""

    def __init__(
        self,
        core,
        namespace: str,
        user: str,
        labels: dict[str, str],
        report: Callable[[int, str], None],
        log: logging.Logger | logging.LoggerAdapter,
        request_timeout: float,
        retry_timeout: float,
    ):
        self.core = core
        self.namespace = namespace
        self.user = user
        """The hub user's name."""
        self.labels = labels
        self.report = report
        """``(progress, message)``: a spawn progress event."""
        self.log = log
        self.request_timeout = request_timeout
        """Seconds one API call may take (``KubeSpawner.k8s_api_request_timeout``)."""
        self.retry_timeout = retry_timeout
        """Seconds a call is retried for (``KubeSpawner.k8s_api_request_retry_timeout``)."""

    def _refuse_if_not_ours(self, what: str, name: str, annotations: dict | None) -> None:
        """An existing object made for another hub user (from before the registry) is
        not this user's to use."""
        owner = (annotations or {}).get(objects.ANNOTATION_USER)
        if owner is not None and owner != self.user:
            message = f"the {what} {name} belongs to another hub user; refusing to share it"
            self.report(100, f"Spawn failed: {message}")
            raise web.HTTPError(409, message)

    async def _api(
        self, what: str, call, *args, missing_ok: bool = False, conflict_ok: bool = False, **kwargs
    ):
        """One API call, retried with backoff while the API server answers 429 or 5xx
        or not at all, for up to ``retry_timeout`` seconds; any other failure is a 503
        with the API server's message. ``missing_ok``: None for 404; ``conflict_ok``: None
        for 409 (it exists already)."""
        delay = 0.1
        deadline = time.monotonic() + self.retry_timeout
        while True:
            try:
                return await asyncio.wait_for(call(*args, **kwargs), self.request_timeout)
            except (TimeoutError, ApiException) as e:
                status = getattr(e, "status", None)
                if (status == 404 and missing_ok) or (status == 409 and conflict_ok):
                    return None
                retry = status is None or status == 429 or status >= 500
                if not retry or time.monotonic() + delay > deadline:
                    raise web.HTTPError(
                        503, f"Kubernetes refused to {what}: {api_reason(e)}"
                    ) from None
                self.log.warning("Retrying to %s after %s", what, api_reason(e))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    async def ensure_home(
        self, name: str, size: int, storage_class: str, likely_new: bool = False
    ) -> None:
        """Make the user's home claim ``name`` of ``size`` bytes, or grow it to that.

        ``likely_new``: no spawn of this hub process has seen the claim yet (a burst of
        first spawns, a class starting): ask to make it at once, one call when there is
        none, and look at the one there is only when the API server says so."""
        ns = self.namespace
        body = objects.home_pvc(
            name, ns, size, storage_class, self.labels, objects.owner_annotations(self.user, "")
        )
        # a 409 is a claim made already (or meanwhile, by another spawn of this user's)
        create = functools.partial(
            self._api,
            f"create home volume {name}",
            self.core.create_namespaced_persistent_volume_claim,
            ns,
            body,
            conflict_ok=True,
        )
        if likely_new and await create() is not None:
            self.report(30, f"Created home volume {name} ({objects.quantity(size)})")
            return
        pvc = await self._api(
            f"read home volume {name}",
            self.core.read_namespaced_persistent_volume_claim,
            name,
            ns,
            missing_ok=True,
        )
        if pvc is None:
            self.report(30, f"Creating home volume {name} ({objects.quantity(size)})")
            await create()
        else:
            self._refuse_if_not_ours("home volume claim", name, pvc.metadata.annotations)
            requested = objects.parse_quantity(pvc.spec.resources.requests["storage"])
            if requested < size:
                self.report(30, f"Growing home volume {name} to {objects.quantity(size)}")
                await self._api(
                    f"grow home volume {name}",
                    self.core.patch_namespaced_persistent_volume_claim,
                    name,
                    ns,
                    objects.pvc_resize_patch(size),
                )

    async def ensure_s3_secret(self, name: str, env: dict[str, str]) -> None:
        """Put the user's S3 keys in their Secret ``name`` (made, or replaced after a
        rotation)."""
        body = objects.env_secret(
            name,
            self.namespace,
            env,
            self.labels,
            objects.owner_annotations(self.user, ""),
        )
        found = await self._api(
            f"read secret {name}",
            self.core.read_namespaced_secret,
            name,
            self.namespace,
            missing_ok=True,
        )
        if found is not None:
            self._refuse_if_not_ours("secret", name, found.metadata.annotations)
            await self._api(
                f"update secret {name}",
                self.core.replace_namespaced_secret,
                name,
                self.namespace,
                body,
            )
        else:
            await self._api(
                f"create secret {name}", self.core.create_namespaced_secret, self.namespace, body
            )
