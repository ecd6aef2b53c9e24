"""What the fake's own tests share: clients of a FakeKube, a polling wait, pod and claim
bodies. Imported as ``fakekube.tests.helpers`` (``tests/`` is on ``sys.path``)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.config import kube_config

from fakekube import FakeKube

MERGE = "application/merge-patch+json"


@asynccontextmanager
async def core(kube: FakeKube) -> AsyncIterator[client.CoreV1Api]:
    conf = client.Configuration(host=kube.url)
    async with client.ApiClient(configuration=conf) as api:
        yield client.CoreV1Api(api)


@asynccontextmanager
async def apis(kube: FakeKube) -> AsyncIterator[client.ApiClient]:
    conf = client.Configuration(host=kube.url)
    async with client.ApiClient(configuration=conf) as api:
        yield api


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 10, what: str = ""
) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


def pod(name: str, gpus: int = 0, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "notebook",
        "image": "quay.io/jupyter/base-notebook:2025-01-01",
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return {
        "metadata": {"name": name, "labels": {"app": "gpulab"}},
        "spec": {"containers": [container], **spec},
    }


async def phase_of(v1: client.CoreV1Api, name: str, ns: str = "default") -> str:
    return (await v1.read_namespaced_pod(name, ns)).status.phase


async def phase_is(v1: client.CoreV1Api, name: str, phase: str, ns: str = "default") -> bool:
    try:
        return await phase_of(v1, name, ns) == phase
    except ApiException:
        return False


def command_pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    body = pod(name, restartPolicy="Never", **spec)
    body["spec"]["containers"][0]["command"] = command
    return body


def claim(name: str, size: str, storage_class: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    }
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {"metadata": {"name": name}, "spec": spec}


@contextmanager
def kubespawner_configured(kube: FakeKube, monkeypatch: pytest.MonkeyPatch):
    """KubeSpawner's client configuration, as it configures itself, on ``kube``: a
    kubeconfig file, not in a cluster (kubernetes_asyncio reads KUBECONFIG once, when
    it is imported)."""
    from kubespawner.clients import load_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kube.kubeconfig)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    saved = client.Configuration.get_default_copy()
    load_config.cache_clear()
    load_config()
    try:
        yield
    finally:
        client.Configuration.set_default(saved)
        load_config.cache_clear()


async def is_true(value: bool) -> bool:
    return value


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now, for a pod's process to listen on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
