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

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "index": self.index,
            "model": self.model,
            "memory_bytes": self.memory_bytes,
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


def discover(configured_ids: list[str]) -> list[Gpu]:
    """The inventory: the configured ids when given, else what NVML sees (maybe nothing)."""
    if configured_ids:
        return [Gpu(id=gpu_id, index=i) for i, gpu_id in enumerate(configured_ids)]
    try:
        return nvml_gpus()
    except NvmlUnavailable as e:
        log.warning("No GPUs: NVML is unavailable (%s) and gpus.ids is not set", e)
        return []
