"""How busy each GPU is, as the hub reads it: for usage accounting and idle reclaim.

Where the hub shares the machine with the GPUs (the local backend) it reads NVML itself,
GPU by GPU: a user's server cannot make its own GPU look busy or idle there. Where the
GPUs are on other machines (kubernetes nodes), the hub has no NVML of theirs and takes
what each server's extension reports (``GET /gpulab/activity``, its GPUs' highest
utilisation), which the user controls: docs/usage.md says so. Each backend says which
(``Backend.utilization``); a GPU the hub cannot read falls back to its server's report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Utilization(Protocol):
    def read(self, gpu_ids: Sequence[str]) -> dict[str, float]:
        """The utilisation in percent of those of ``gpu_ids`` this source can read."""


class NvmlUtilization:
    """NVML on the hub's own machine: each GPU's utilisation over the driver's last sample
    period (1/6 s to 1 s)."""

    def read(self, gpu_ids: Sequence[str]) -> dict[str, float]:
        from gpulab.extensions.server.gpuinfo import stats

        return {
            gpu: float(figures["utilization"])
            for gpu, figures in stats(list(gpu_ids)).items()
            if figures.get("utilization") is not None
        }


class ServerReported:
    """No reading of the hub's own: each server's report counts."""

    def read(self, gpu_ids: Sequence[str]) -> dict[str, float]:
        return {}


def readings(
    read: dict[str, float], gpu_ids: Sequence[str], reported: float | None
) -> dict[str, float]:
    """Each of ``gpu_ids``'s utilisation: the hub's own reading (``read``), else the
    server's report (``reported``; 0 when it has none)."""
    return {gpu: read.get(gpu, reported or 0.0) for gpu in gpu_ids}
