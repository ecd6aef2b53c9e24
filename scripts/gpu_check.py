"""The body of scripts/gpu-check: Return GPU on a real GPU, measured (see that script)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tests' hub harness

from hubfixture import Hub, run_in_kernel, wait_for  # noqa: E402

ALLOCATE = """
import torch
x = torch.randn({n}, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
torch.cuda.synchronize()
print(float(x.double().sum()), torch.cuda.get_device_name(0))
"""
CHECK = "import json, torch; print(json.dumps([str(x.device), float(x.double().sum())]))"


def nvml_used(uuid: str) -> int:
    import pynvml

    return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByUUID(uuid)).used)


def checkpoint_api() -> str:
    """Can the driver park processes (cuCheckpointProcess*, r570+)?"""
    from gpulab.extensions.server import cudackpt

    try:
        driver = cudackpt.Driver()
    except cudackpt.Unavailable as e:
        return f"CUDA process checkpoint API: not here ({e})"
    return f"CUDA driver API {driver.version}: process checkpoint API present"


def main() -> int:
    parser = argparse.ArgumentParser(description="Return GPU on a real GPU, measured")
    parser.add_argument("--gib", type=float, default=4.0, help="GiB to fill on the GPU")
    parser.add_argument(
        "--kernel-checkpoint",
        choices=("auto", "driver", "namespace"),
        default="auto",
        help="the hub's gpus.kernel_checkpoint: driver parks the kernel with the CUDA driver",
    )
    args = parser.parse_args()
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        print(f"driver {pynvml.nvmlSystemGetDriverVersion()}, {count} GPU(s)")
    except Exception as e:  # noqa: BLE001
        print(f"gpu-check: no NVIDIA GPU here ({e})", file=sys.stderr)
        return 2
    print(checkpoint_api())

    hub = Hub(
        {
            "profiles": [{"slug": "gpu-1", "gpus": 1, "default": True}],
            "gpus": {"kernel_checkpoint": args.kernel_checkpoint},
        }
    ).start()
    try:
        user = hub.create_user("gpucheck")
        r = user.spawn(profile="gpu-1")
        assert r.status_code in (201, 202), r.text
        uuid = next(g["id"] for g in hub.gpus()["gpus"] if g.get("user") == "gpucheck")
        r = user.session.post(
            user.server_url + "/api/sessions",
            json={"path": "check.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
            timeout=60,
        )
        kernel = r.json()["kernel"]["id"]
        idle = nvml_used(uuid)
        n = int(args.gib * 2**30 / 4)
        out = run_in_kernel(user.server_url, kernel, user.token, ALLOCATE.format(n=n), 300)
        checksum, name = out.strip().split(" ", 1)
        held = nvml_used(uuid)
        print(f"{name} ({uuid}): {(held - idle) / 2**30:.2f} GiB in use by the kernel")

        t0 = time.perf_counter()
        r = user.session.post(hub.api("/gpulab/gpu/return"), json={}, timeout=300)
        t_ledger = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        op = r.json()["operation"]
        wait_for(lambda: nvml_used(uuid) <= idle + (held - idle) * 0.05, 60, "memory freed", 0.005)
        t_memory = time.perf_counter() - t0
        print(f"ledger shows the GPU free after {t_ledger:.3f} s")
        print(f"nvidia-smi shows the memory freed after {t_memory:.3f} s")
        print(f"path: {op['path']}")
        for k in op["detail"].get("kernels", []):
            print(f"  {k['path']}: kept by {k['kept_by']}. {k['note']}")

        r = user.session.post(hub.api("/gpulab/gpu/get"), json={"gpus": 1}, timeout=60)
        t0 = time.perf_counter()

        def done():
            state = user.session.get(hub.api("/gpulab/gpu"), timeout=30).json()["operation"]
            if state["state"] in ("failed", "cancelled"):
                raise RuntimeError(state["message"])
            return state["state"] == "done"

        wait_for(done, 300, "Get GPU", 0.02)
        t_back = time.perf_counter() - t0
        device, again = json.loads(run_in_kernel(user.server_url, kernel, user.token, CHECK, 120))
        intact = abs(float(checksum) - again) <= 1e-6 * max(1.0, abs(float(checksum)))
        print(f"Get GPU with the kernel's state back after {t_back:.3f} s, tensor on {device}")
        print(f"tensor values intact after Get GPU: {'yes' if intact else 'NO'}")
        return 0 if intact else 1
    finally:
        hub.cleanup()


if __name__ == "__main__":
    sys.exit(main())
