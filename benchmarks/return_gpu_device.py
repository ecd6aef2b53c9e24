"""Return GPU on a real NVIDIA GPU, measured where no hub can run.

A GPU machine lent for measurements may have no JupyterHub, proxy or npm. This runs
what Return GPU does inside a user's server, unchanged: a Jupyter server with gpulab's
server extension, a notebook kernel holding ``--gib`` GiB in a PyTorch tensor, and the
extension's ``KernelSwitch`` moving that kernel off the GPU (checkpoint, restart without
the device, restore) and back. The hub's part of a return (two SQLite transactions) is
measured by ``benchmarks/return_gpu.py``.

Figures, with NVML reading the GPU's memory every millisecond:

- Return GPU: switch requested -> the kernel's GPU memory is free (the grant is released
  at that moment); then the variables back in the CPU kernel, and after Get GPU back on
  the GPU, checked against the tensor's checksum;
- reference: the same kernel shut down (what stopping the server does to it) -> memory
  free, in the same run;
- Return GPU's driver path (``gpus.kernel_checkpoint: driver``; ``auto`` takes it for a
  kernel holding what cannot be pickled): the same kernel parked by the CUDA driver's
  process checkpoint API (``cuCheckpointProcess*``, r570+) -> memory free, the same
  process still running CPU code (a generator goes on), then Get GPU -> the tensor
  intact on the GPU, in the same process.

    python3 benchmarks/return_gpu_device.py [--gib 4]

On a GPU machine with PyTorch and nvidia-ml-py but no network, ``scripts/device-check``
runs it as root and as an ordinary account from the Jupyter server's wheels, made on a
machine with PyPI by ``scripts/device-check --bundle`` (its header says what to carry).

Last line: ``return_vs_kernel_stop_ratio: <return seconds / shutdown seconds>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ALLOCATE = """
import torch
x = torch.randn({n}, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
half = x[:1000].to(torch.bfloat16)
model = torch.nn.Linear(64, 8).cuda()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
model(torch.randn(4, 64, device="cuda")).sum().backward()
opt.step()
torch.cuda.synchronize()
print(float(x.sum(dtype=torch.float64)), torch.cuda.get_device_name(0))
"""
# where x is, its checksum, and whether the model still trains with its optimizer
CHECK = """
import json, torch
p = next(model.parameters())
trains = isinstance(p, torch.nn.Parameter) and opt.param_groups[0]["params"][0] is p
model(torch.randn(4, 64, device=p.device)).sum().backward()
opt.step()
same = bool((half.float() == x[:1000].to(torch.bfloat16).float()).all())
print(json.dumps([str(x.device), float(x.sum(dtype=torch.float64)), str(p.device), trains and same]))
"""


class Nvml:
    def __init__(self):
        import pynvml

        self.nvml = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.name = pynvml.nvmlDeviceGetName(self.handle)
        self.driver = pynvml.nvmlSystemGetDriverVersion()

    def used(self) -> int:
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    async def until_below(self, limit: int, since: float, timeout: float = 60) -> float:
        """Seconds from ``since`` until the used memory is at or below ``limit``."""
        while self.used() > limit:
            if time.perf_counter() - since > timeout:
                raise TimeoutError(f"GPU memory still {self.used() / 2**30:.2f} GiB")
            await asyncio.sleep(0.001)
        return time.perf_counter() - since


# -- one Jupyter server with gpulab's extension, in this process ----------------------


async def run_code(km, kernel_id: str, code: str, timeout: float = 300) -> str:
    client = km.get_kernel(kernel_id).client()
    client.start_channels()
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    try:
        await client.wait_for_ready(timeout=60)
        reply = await client.execute_interactive(code, timeout=timeout, output_hook=hook)
    finally:
        client.stop_channels()
    if reply["content"]["status"] != "ok":
        raise RuntimeError("".join(out))
    # the server follows the kernel's state on its own channel: wait until it saw idle
    deadline = time.monotonic() + 30
    while getattr(km.get_kernel(kernel_id), "execution_state", "idle") == "busy":
        if time.monotonic() > deadline:
            raise TimeoutError("the server still sees the kernel busy")
        await asyncio.sleep(0.01)
    return "".join(out).strip()


def intact(expected: float, got: float) -> bool:
    return abs(expected - got) <= 1e-6 * max(1.0, abs(expected))


async def measure(app, gib: float, nvml: Nvml) -> int:
    from gpulab.extensions.server.kernels import KernelSwitch

    km = app.kernel_manager
    switch: KernelSwitch = app.web_app.settings["gpulab_switch"]
    session = await app.session_manager.create_session(
        path="check.ipynb", type="notebook", kernel_name="python3"
    )
    kernel = session["kernel"]["id"]
    idle = nvml.used()
    checksum, name = (await run_code(km, kernel, ALLOCATE.format(n=int(gib * 2**30 / 4)))).split(
        " ", 1
    )
    checksum = float(checksum)
    held = nvml.used()
    print(f"{name}, driver {nvml.driver}: the kernel holds {(held - idle) / 2**30:.2f} GiB")
    freed = idle + (held - idle) * 0.05

    # Return GPU: what the hub asks the server to do, timed until the memory is free
    visible = os.environ["CUDA_VISIBLE_DEVICES"]
    os.environ["GPULAB_KERNEL_CHECKPOINT"] = "namespace"
    t0 = time.perf_counter()
    result = await switch.switch("", wait_restore=False)
    answered = time.perf_counter() - t0
    returned = await nvml.until_below(freed, t0)
    if switch._restoring is not None:
        await switch._restoring
    restored = time.perf_counter() - t0
    device, value, where, trains = json.loads(await run_code(km, kernel, CHECK))
    cpu_ok = device == "cpu" == where and trains and intact(checksum, value)
    print(
        f"Return GPU: answered after {answered:.3f} s (checkpoint {result['checkpoint_seconds']}"
        f" s, old kernel gone {result['release_seconds']} s); memory free after "
        f"{returned:.3f} s; variables back on the CPU after {restored:.3f} s: "
        f"{'intact' if cpu_ok else 'WRONG'} (x on {device}, model on {where}, trains: {trains})"
    )

    # Get GPU: back onto the device, tensors moved back
    t0 = time.perf_counter()
    await switch.switch(visible, wait_restore=True)
    back = time.perf_counter() - t0
    device, value, where, trains = json.loads(await run_code(km, kernel, CHECK))
    gpu_ok = device.startswith("cuda") and where.startswith("cuda") and trains
    gpu_ok = gpu_ok and intact(checksum, value)
    print(
        f"Get GPU: kernel on the GPU with its variables after {back:.3f} s: "
        f"{'intact' if gpu_ok else 'WRONG'} (x on {device}, model on {where}, trains: {trains})"
    )

    driver_ok = await measure_driver_path(km, switch, kernel, visible, checksum, nvml, idle)

    # reference: shutting the kernel down, as stopping the server does
    held = nvml.used()
    t0 = time.perf_counter()
    await km.shutdown_kernel(kernel, now=True)
    stopped = await nvml.until_below(idle + (held - idle) * 0.05, t0)
    print(f"reference: kernel shut down, memory free after {stopped:.3f} s")
    print(f"return_gpu_seconds: {returned:.3f}")
    print(f"return_vs_kernel_stop_ratio: {returned / stopped:.3f}")
    return 0 if cpu_ok and gpu_ok and driver_ok else 1


async def measure_driver_path(km, switch, kernel, visible, checksum, nvml, idle) -> bool:
    """Return GPU and Get GPU with the driver parking the kernel; False if it went wrong
    (not when this driver cannot park: then the namespace path is taken, and said)."""
    os.environ["GPULAB_KERNEL_CHECKPOINT"] = "driver"
    await run_code(km, kernel, "batches = (i * i for i in range(10)); next(batches)")
    pid = switch.calls.pid(kernel)
    await asyncio.sleep(1)
    held = nvml.used()
    t0 = time.perf_counter()
    result = await switch.switch("", wait_restore=False)
    answered = time.perf_counter() - t0
    freed = await nvml.until_below(idle + (held - idle) * 0.05, t0, timeout=60)
    if switch._restoring is not None:
        await switch._restoring
    note = "; ".join(k["note"] for k in result["kernels"] if k["note"])
    if result["path"] != "driver":
        print(f"driver path not taken ({result['path']}): {note}")
        await switch.switch(visible, wait_restore=True)
        return True
    t1 = time.perf_counter()
    going_on = await run_code(km, kernel, "print(next(batches), sum(range(10)))", timeout=30)
    cpu_code = time.perf_counter() - t1
    same = switch.calls.pid(kernel) == pid
    t0 = time.perf_counter()
    back = await switch.switch(visible, wait_restore=True)
    got_back = time.perf_counter() - t0
    device, value, where, trains = json.loads(await run_code(km, kernel, CHECK))
    ok = same and going_on == "1 45" and back["path"] == "driver" and device.startswith("cuda")
    ok = ok and where.startswith("cuda") and trains and intact(checksum, value)
    print(
        f"Return GPU, driver path: answered after {answered:.3f} s, memory free after "
        f"{freed:.3f} s; same process: {same}, CPU code ran in {cpu_code:.3f} s "
        f"({going_on!r}); Get GPU: back after {got_back:.3f} s, "
        f"{'intact' if ok else 'WRONG'} (x on {device}, model on {where}, trains: {trains}); "
        f"{note}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description="Return GPU on a real GPU, measured")
    parser.add_argument("--gib", type=float, default=4.0, help="GiB the kernel holds")
    parser.add_argument(
        "--checkpoint-dir", help="where checkpoints go (default ~/.gpulab/checkpoints)"
    )
    args = parser.parse_args()
    try:
        nvml = Nvml()
    except Exception as e:  # noqa: BLE001
        print(f"return_gpu_device: no NVIDIA GPU here ({e})", file=sys.stderr)
        return 2
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
    os.environ["HOME"] = tempfile.mkdtemp(prefix="gpulab-device-home-")

    from jupyter_server.serverapp import ServerApp
    from tornado.ioloop import IOLoop

    app = ServerApp.instance()
    app.initialize(
        argv=[
            "--ServerApp.port=0",
            "--ServerApp.open_browser=False",
            "--allow-root",
            f"--ServerApp.root_dir={os.environ['HOME']}",
            "--ServerApp.jpserver_extensions={'gpulab.extensions.server': True}",
        ]
    )
    status = {"code": 1}

    async def run():
        try:
            if args.checkpoint_dir:
                app.web_app.settings["gpulab_switch"].dir = Path(args.checkpoint_dir)
            status["code"] = await measure(app, args.gib, nvml)
        except Exception:
            traceback.print_exc()
        finally:
            await app.kernel_manager.shutdown_all()
            IOLoop.current().stop()

    IOLoop.current().add_callback(run)
    app.start()
    return status["code"]


if __name__ == "__main__":
    sys.exit(main())
