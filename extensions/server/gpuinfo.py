"""Live figures of GPUs from NVML: memory in use and utilisation, for the top bar and
for idle reclaim; the processes on them and their UUIDs, for Return GPU. Without an
NVIDIA driver every figure is simply absent."""

from __future__ import annotations

from contextlib import contextmanager


def device(pynvml, ident: str):
    """NVML's handle for a CUDA_VISIBLE_DEVICES entry: an index or a GPU-/MIG- UUID."""
    if ident.startswith(("GPU-", "MIG-")):
        return pynvml.nvmlDeviceGetHandleByUUID(ident)
    return pynvml.nvmlDeviceGetHandleByIndex(int(ident))


@contextmanager
def _nvml():
    """pynvml, initialised for the block; None without a driver or the library."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 -- no driver, no library: no figures
        yield None
        return
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def _each(pynvml, ids: list[str]):
    """``(id, handle)`` for the ids NVML knows."""
    for ident in ids:
        try:
            yield ident, device(pynvml, ident)
        except (pynvml.NVMLError, ValueError):
            continue


def stats(ids: list[str]) -> dict[str, dict]:
    """``{id: {"memory_used", "memory_total", "utilization"}}`` for the GPUs NVML knows."""
    out = {}
    with _nvml() as pynvml:
        for ident, handle in _each(pynvml, ids) if pynvml and ids else ():
            try:
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            except pynvml.NVMLError:
                continue
            out[ident] = {
                "memory_used": int(memory.used),
                "memory_total": int(memory.total),
                "utilization": int(util.gpu),
            }
    return out


def compute_processes(ids: list[str]) -> list[tuple[int, str]]:
    """``(pid, id)`` of every process with a CUDA context on the given GPUs."""
    out = []
    with _nvml() as pynvml:
        for ident, handle in _each(pynvml, ids) if pynvml and ids else ():
            try:
                procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except pynvml.NVMLError:
                continue
            out.extend((p.pid, ident) for p in procs)
    return out


def uuids(ids: list[str]) -> list[str] | None:
    """The GPU UUIDs (``GPU-...``) of the given ids; None when one is unknown."""
    out = []
    with _nvml() as pynvml:
        found = dict(_each(pynvml, ids)) if pynvml and ids else {}
        for ident in ids:
            if ident not in found:
                return None
            uuid = pynvml.nvmlDeviceGetUUID(found[ident])
            out.append(uuid.decode() if isinstance(uuid, bytes) else uuid)
    return out
