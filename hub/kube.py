"""The hub's access to the Kubernetes API (kubernetes backend): one place for the
kubeconfig, the namespace of user pods, and the clients, shared with KubeSpawner."""

from __future__ import annotations

import os
from pathlib import Path

from .settings import KubernetesSettings

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
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes_asyncio import client
    from kubespawner.clients import load_config

    async def run():
        async with client.ApiClient() as api:
            return await call(api)

    load_config()
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()
