"""The GPUs this machine can hand out: from NVML, or a configured list of ids."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    id: str
    """What CUDA_VISIBLE_DEVICES gets: the GPU's UUID from NVML, or the configured id."""
    index: int
    """Position in the inventory, as nvidia-smi numbers the devices."""
    model: str = ""
    memory_bytes: int = 0
    node: str = ""
    """The cluster node the GPU is on (kubernetes backend); empty on this machine."""

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "index": self.index,
            "model": self.model,
            "memory_bytes": self.memory_bytes,
            "node": self.node,
        }


class NvmlUnavailable(RuntimeError):
    """NVML could not be loaded or initialised (no driver, no GPU)."""


def nvml_gpus() -> list[Gpu]:
    """The GPUs NVML reports, in NVML index order; raises NvmlUnavailable without a driver."""
    try:
        import pynvml
    except ImportError as e:  # nvidia-ml-py is a dependency; this is a broken install
        raise NvmlUnavailable(f"nvidia-ml-py is not installed: {e}") from e
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise NvmlUnavailable(str(e)) from e
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(
                Gpu(
                    id=uuid.decode() if isinstance(uuid, bytes) else uuid,
                    index=i,
                    model=name.decode() if isinstance(name, bytes) else name,
                    memory_bytes=int(mem),
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def configured(ids: list[str]) -> list[Gpu]:
    """GPUs named in the settings; ``<node>/<n>`` ids are GPU slots of a cluster node."""
    return [
        Gpu(id=gpu_id, index=i, node=gpu_id.rsplit("/", 1)[0] if "/" in gpu_id else "")
        for i, gpu_id in enumerate(ids)
    ]


def slots_of_nodes(nodes: list[dict], resource: str, type_label: str) -> list[Gpu]:
    """A cluster's GPUs: one slot ``<node>/<n>`` per ``resource`` a schedulable node can
    give (its ``status.allocatable``), nodes in name order. ``nodes`` are Node objects
    as the API serialises them."""
    gpus: list[Gpu] = []
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        if node.get("spec", {}).get("unschedulable"):
            continue  # cordoned: pods cannot go there
        name = node["metadata"]["name"]
        allocatable = node.get("status", {}).get("allocatable") or {}
        try:
            count = int(allocatable.get(resource, 0))
        except ValueError:
            log.warning("Node %s: cannot read %s=%r", name, resource, allocatable[resource])
            continue
        model = (node["metadata"].get("labels") or {}).get(type_label, "")
        for n in range(count):
            gpus.append(Gpu(id=f"{name}/{n}", index=len(gpus), model=model, node=name))
    return gpus


def cluster_gpus(resource: str, type_label: str) -> list[Gpu]:
    """The GPUs of the cluster's nodes, read once through the API (kubeconfig or the
    in-cluster service account); from synchronous code, even inside an event loop."""
    from kubernetes_asyncio import client

    from .kube import run_sync

    async def read(api) -> list[dict]:
        nodes = await client.CoreV1Api(api).list_node(_request_timeout=30)
        return api.sanitize_for_serialization(nodes)["items"]

    return slots_of_nodes(run_sync(read), resource, type_label)


def discover(configured_ids: list[str]) -> list[Gpu]:
    """The inventory: the configured ids when given, else what NVML sees (maybe nothing)."""
    if configured_ids:
        return configured(configured_ids)
    try:
        return nvml_gpus()
    except NvmlUnavailable as e:
        log.warning("No GPUs: NVML is unavailable (%s) and gpus.ids is not set", e)
        return []


def visible_devices_env(ids: list[str]) -> dict[str, str]:
    """The variables that give a process exactly the GPUs ``ids``: none when empty."""
    visible = ",".join(ids)
    return {
        "CUDA_VISIBLE_DEVICES": visible,
        "NVIDIA_VISIBLE_DEVICES": visible,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GPULAB_GPUS": visible,
    }
