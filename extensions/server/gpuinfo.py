"""Live figures of GPUs from NVML: memory in use and utilisation, for the top bar and
for idle reclaim. Without an NVIDIA driver every figure is simply absent."""

from __future__ import annotations


def device(pynvml, ident: str):
    """NVML's handle for a CUDA_VISIBLE_DEVICES entry: an index or a GPU-/MIG- UUID."""
    if ident.startswith(("GPU-", "MIG-")):
        return pynvml.nvmlDeviceGetHandleByUUID(ident)
    return pynvml.nvmlDeviceGetHandleByIndex(int(ident))


def stats(ids: list[str]) -> dict[str, dict]:
    """``{id: {"memory_used", "memory_total", "utilization"}}`` for the GPUs NVML knows."""
    if not ids:
        return {}
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 -- no driver, no library: no figures
        return {}
    out = {}
    try:
        for ident in ids:
            try:
                handle = device(pynvml, ident)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            except (pynvml.NVMLError, ValueError):
                continue
            out[ident] = {
                "memory_used": int(memory.used),
                "memory_total": int(memory.total),
                "utilization": int(util.gpu),
            }
    finally:
        pynvml.nvmlShutdown()
    return out
