"""The hub's access to the Kubernetes API (kubernetes backend): one place for the
kubeconfig, the namespace of user pods, and the clients, shared with KubeSpawner."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from pathlib import Path

from .settings import KubernetesSettings

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def use_kubeconfig(path: str) -> None:
    """Make the Kubernetes client (KubeSpawner's too) read ``path``, even if it was
    imported before (it reads ``$KUBECONFIG`` once, at import)."""
    from kubernetes_asyncio.config import kube_config

    os.environ["KUBECONFIG"] = path
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = path


def namespace(settings: KubernetesSettings) -> str:
    """The namespace of user pods: the configured one, else the hub's own, else default."""
    if settings.namespace:
        return settings.namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        return "default"


def core_api(host: str | None = None, ssl_ca_cert: str | None = None):
    """The CoreV1Api client of this event loop, shared with KubeSpawner (and its config:
    kubeconfig or the in-cluster service account)."""
    from kubespawner.clients import load_config, shared_client

    load_config(host=host, ssl_ca_cert=ssl_ca_cert)
    return shared_client("CoreV1Api")


def run_sync(call):
    """``await call(api_client)`` from synchronous code, even inside a running event
    loop (hub start-up, the CLI): in a thread of its own, with a client of its own."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes_asyncio import client
    from kubespawner.clients import load_config

    async def run():
        async with client.ApiClient() as api:
            return await call(api)

    load_config()
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def api_reason(e: BaseException) -> str:
    """What went wrong with an API call, in the API server's words when it gave some."""
    from kubernetes_asyncio.client.rest import ApiException

    if isinstance(e, ApiException):
        try:
            return json.loads(e.body)["message"]
        except (TypeError, ValueError, KeyError):
            return f"HTTP {e.status} {e.reason}"
    if isinstance(e, TimeoutError):
        return "the API server did not answer in time"
    return str(e)


async def api_call(what: str, call, *args, error, missing_ok: bool = False, **kwargs):
    """``await call(*args)`` with a timeout; a refusal or no answer raises
    ``error(503, message)`` naming ``what`` was being done; 404 gives None when
    ``missing_ok``."""
    from kubernetes_asyncio.client.rest import ApiException

    try:
        return await call(*args, _request_timeout=30, **kwargs)
    except ApiException as e:
        if e.status == 404 and missing_ok:
            return None
        raise error(503, f"Kubernetes refused to {what}: {e.status} {e.reason}") from None
    except (OSError, TimeoutError) as e:
        raise error(503, f"Kubernetes did not answer to {what}: {e}") from None


async def owned_object(core, ns: str, user: str, kind: str, component: str, *, error):
    """The name of the user's own object of ``kind`` (``persistentvolumeclaims``:
    their home claim, ``secrets``: their S3 keys) with the ``gpulab.io/component``
    label ``component``, made by the first start of their server; None when there is none."""
    from gpulab.spawner import objects

    lister = {
        "persistentvolumeclaims": core.list_namespaced_persistent_volume_claim,
        "secrets": core.list_namespaced_secret,
    }[kind]
    found = await api_call(
        f"list {kind}", lister, ns, label_selector=f"{objects.LABEL_COMPONENT}={component}",
        error=error,
    )  # fmt: skip
    for item in found.items:
        notes = item.metadata.annotations or {}
        if notes.get(objects.ANNOTATION_USER) == user and not notes.get(objects.ANNOTATION_SERVER):
            return item.metadata.name
    return None


async def follow_pods(core, ns: str, selector: str, on_list, on_event, what: str) -> None:
    """Forever: list the pods ``selector`` picks and give them to ``on_list``, then
    watch them from that list's resourceVersion, giving each event's type and pod (raw
    JSON) to ``on_event``. A watch that ends or breaks resumes from the last version it
    saw, so no event is missed; only a version the server no longer has (410 Gone) means
    a new list. ``what`` names the watch in warnings."""
    from kubernetes_asyncio import watch
    from kubernetes_asyncio.client.rest import ApiException

    version = None
    while True:
        try:
            # raw JSON (_preload_content=False): no client models built per event
            pods_of = functools.partial(core.list_namespaced_pod, _preload_content=False)
            if version is None:
                response = await pods_of(ns, label_selector=selector, _request_timeout=30)
                listed = json.loads(await response.read())
                on_list(listed["items"])
                version = listed["metadata"]["resourceVersion"]
            stream = watch.Watch().stream(
                pods_of,
                ns,
                label_selector=selector,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=300,
                _request_timeout=330,
            )
            async with stream as events:
                async for event in events:
                    pod = event["raw_object"]
                    version = pod["metadata"].get("resourceVersion") or version
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        on_event(event["type"], pod)
        except asyncio.CancelledError:
            raise
        except ApiException as e:
            if e.status == 410:  # too old to resume: list again
                version = None
                continue
            log.warning("Watching pods for %s: %s; retrying", what, api_reason(e))
            await asyncio.sleep(2)
        except Exception as e:  # noqa: BLE001 -- the API may be away; keep watching
            log.warning("Watching pods for %s: %s; retrying", what, api_reason(e))
            await asyncio.sleep(2)
