"""Return GPU's driver path: which kernels it parks, and the helper that calls the CUDA
driver's process checkpoint API.

Parking itself needs an NVIDIA GPU and driver r570+; it is measured and checked on one by
``benchmarks/return_gpu_device.py``. Here: the policy, the argument structs' layout
against cuda.h, and what the helper answers on a machine whose driver cannot park.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import subprocess
import sys

import pytest

from gpulab.extensions.server import cudackpt
from gpulab.extensions.server.parking import gpu_pairs, to_park
from gpulab.extensions.server.records import KernelReport
from gpulab.hub.movers import where_kernels_run


def reports() -> list[KernelReport]:
    return [
        KernelReport("k1", "train.ipynb", saved=["model"], failed={"batches": "generator"}),
        KernelReport("k2", "eval.ipynb", saved=["x"]),
        KernelReport("k3", "cpu.ipynb", saved=["df"], failed={"f": "open file"}),
    ]


@pytest.mark.parametrize(
    "mode, parked",
    [
        # auto: only a kernel on the GPU that its namespace checkpoint cannot hold whole
        ("auto", ["train.ipynb"]),
        ("driver", ["train.ipynb", "eval.ipynb"]),
        ("namespace", []),
    ],
)
def test_which_kernels_a_return_parks(mode, parked):
    on_gpu = {"k1", "k2"}  # k3 never touched the GPU: it restarts on the CPU in any mode
    assert [r.path for r in to_park(mode, reports(), on_gpu)] == parked


def test_a_parked_kernel_keeps_its_device_numbers_on_other_gpus():
    # a kernel of a two-GPU server that used only its second GPU (cuda:1): at Get GPU
    # onto two other GPUs, its memory goes to the new second GPU, where cuda:1 points
    assert gpu_pairs(["GPU-a", "GPU-b"], ["GPU-b"], ["GPU-c", "GPU-d"]) == [("GPU-b", "GPU-d")]
    assert gpu_pairs(["GPU-a"], ["GPU-a"], ["GPU-a"]) == [("GPU-a", "GPU-a")]  # its own again
    # another number of GPUs: in order; too few: it cannot be brought back
    assert gpu_pairs(["GPU-a", "GPU-b"], ["GPU-b"], ["GPU-c"]) == [("GPU-b", "GPU-c")]
    assert gpu_pairs(["GPU-a", "GPU-b"], ["GPU-a", "GPU-b"], ["GPU-c"]) == []


def test_the_return_message_names_the_parked_kernels():
    kernels = [{"path": "train.ipynb", "kept_by": "driver"}, {"path": "b", "kept_by": "namespace"}]
    assert where_kernels_run({"path": "namespace", "kernels": kernels[1:]}) == (
        "your kernels now run on the CPU"
    )
    mixed = where_kernels_run({"path": "mixed", "kernels": kernels})
    assert mixed.startswith("your kernels now run on the CPU, but for train.ipynb: kept running")
    parked = where_kernels_run({"path": "driver", "kernels": kernels[:1]})
    assert parked.startswith("your kernels keep running (train.ipynb)")


def test_the_argument_structs_have_cuda_h_layout():
    # CUcheckpointLockArgs, CUcheckpointRestoreArgs, ...Checkpoint/UnlockArgs: 64 bytes,
    # the timeout and the GPU pairs first; CUcheckpointGpuPair: two 16-byte CUuuids
    for struct in (cudackpt._LockArgs, cudackpt._RestoreArgs, cudackpt._ReservedArgs):
        assert ctypes.sizeof(struct) == 64, struct
    assert cudackpt._LockArgs.timeout_ms.offset == 0
    assert (cudackpt._RestoreArgs.pairs.offset, cudackpt._RestoreArgs.count.offset) == (0, 8)
    assert ctypes.sizeof(cudackpt._GpuPair) == 32 and cudackpt._GpuPair.new.offset == 16


def test_gpu_uuids_are_read_as_nvml_prints_them():
    text = "GPU-5c6e1a2b-0f3d-4e5f-8a9b-0123456789ab"
    assert cudackpt.uuid_bytes(text) == bytes.fromhex("5c6e1a2b0f3d4e5f8a9b0123456789ab")
    with pytest.raises(ValueError, match="not a GPU UUID"):
        cudackpt.uuid_bytes("GPU-1234")


def _driver_here() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def test_the_helper_says_why_it_cannot_park_here():
    answer = asyncio.run(cudackpt.run("park", "1"))
    if _driver_here():  # a GPU machine: pid 1 holds no GPU, or the driver is too old
        assert answer["ok"] is False
        assert answer["unavailable"] or "cuCheckpointProcessLock" in answer["error"]
        return
    assert answer == {
        "ok": False,
        "unavailable": True,
        "error": answer["error"],
        "seconds": answer["seconds"],
    }
    assert answer["error"].startswith("no NVIDIA driver here (libcuda.so.1")

    # the command line: one JSON line and a failing exit status; bad arguments: usage
    cli = [sys.executable, "-m", "gpulab.extensions.server.cudackpt"]
    done = subprocess.run([*cli, "probe"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and json.loads(done.stdout)["unavailable"] is True
    done = subprocess.run([*cli, "park", "me"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid int value: 'me'" in done.stderr
    assert "Traceback" not in done.stderr
