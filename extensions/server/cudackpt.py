"""Park a kernel's GPU state in host memory with the CUDA driver, and bring it back.

The driver's process checkpoint API (``cuCheckpointProcess*``, driver r570 and newer)
moves everything a process holds on its GPUs into host memory and releases the GPUs,
while the process keeps running ("parked"): its CPU code goes on, and each CUDA call it
makes waits until the state is restored onto a GPU. Restoring can put it on other GPUs
of the same chip type (UUID pairs, where the driver supports remapping).

The calls run in a short helper process (``python -m gpulab.extensions.server.cudackpt``)
started with every GPU visible: the Jupyter server itself never initialises CUDA (its
``CUDA_VISIBLE_DEVICES`` follows the server's GPUs, and may be empty), and a call that
waits for the driver does not hold up the server's event loop. It prints one JSON line:
``{"ok": true, "seconds": ...}`` or ``{"ok": false, "error": "..."}``.

    python -m gpulab.extensions.server.cudackpt park PID [--timeout-ms 10000]
    python -m gpulab.extensions.server.cudackpt unpark PID [--map OLD_UUID=NEW_UUID ...]
    python -m gpulab.extensions.server.cudackpt probe
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import sys
import time

STEPS = ("Lock", "Checkpoint", "Restore", "Unlock")
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


class Unavailable(Exception):
    """This machine's driver cannot checkpoint processes (no driver, or older than r570)."""


class DriverError(Exception):
    """A checkpoint call failed."""


class _Uuid(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_char * 16)]


class _GpuPair(ctypes.Structure):
    _fields_ = [("old", _Uuid), ("new", _Uuid)]


class _LockArgs(ctypes.Structure):
    _fields_ = [("timeout_ms", ctypes.c_uint), ("reserved0", ctypes.c_uint),
                ("reserved1", ctypes.c_uint64 * 7)]  # fmt: skip


class _RestoreArgs(ctypes.Structure):
    # gpuPairs, gpuPairsCount, then reserved bytes (64 in all in every driver so far)
    _fields_ = [("pairs", ctypes.POINTER(_GpuPair)), ("count", ctypes.c_uint),
                ("reserved", ctypes.c_char * 52)]  # fmt: skip


class _ReservedArgs(ctypes.Structure):  # CUcheckpointCheckpointArgs / UnlockArgs
    _fields_ = [("reserved", ctypes.c_uint64 * 8)]


def uuid_bytes(text: str) -> bytes:
    """``GPU-5c6e1a2b-...`` (NVML's spelling) as the driver's 16 bytes."""
    hexdigits = text.removeprefix("GPU-").replace("-", "")
    raw = bytes.fromhex(hexdigits)
    if len(raw) != 16:
        raise ValueError(f"not a GPU UUID: {text!r}")
    return raw


class Driver:
    """``libcuda``'s checkpoint calls, on other processes of this account."""

    def __init__(self):
        try:
            self.cuda = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise Unavailable(f"no NVIDIA driver here ({e})") from None
        version = ctypes.c_int()
        self.cuda.cuDriverGetVersion(ctypes.byref(version))
        self.version = f"{version.value // 1000}.{version.value % 1000 // 10}"
        missing = [s for s in STEPS if not hasattr(self.cuda, f"cuCheckpointProcess{s}")]
        if missing:
            raise Unavailable(
                f"the NVIDIA driver (CUDA {self.version}) has no process checkpoint API "
                "(driver r570 or newer has it)"
            )
        code = self.cuda.cuInit(0)
        if code != 0:
            raise Unavailable(f"the NVIDIA driver did not start: {self._error(code)}")

    def _error(self, code: int) -> str:
        text = ctypes.c_char_p()
        self.cuda.cuGetErrorString(code, ctypes.byref(text))
        return f"CUDA error {code} ({(text.value or b'?').decode()})"

    def _call(self, step: str, pid: int, args) -> None:
        code = getattr(self.cuda, f"cuCheckpointProcess{step}")(ctypes.c_int(pid), args)
        if code != 0:
            raise DriverError(f"cuCheckpointProcess{step}: {self._error(code)}")

    def park(self, pid: int, timeout_ms: int) -> None:
        """Lock the process (its CUDA work done) and move its GPU state to host memory;
        on failure it is left running as it was."""
        self._call("Lock", pid, ctypes.byref(_LockArgs(timeout_ms=timeout_ms)))
        try:
            self._call("Checkpoint", pid, ctypes.byref(_ReservedArgs()))
        except DriverError:
            self._call("Unlock", pid, ctypes.byref(_ReservedArgs()))
            raise

    def unpark(self, pid: int, pairs: list[tuple[bytes, bytes]]) -> None:
        """Put the state back on the GPUs (``pairs``: old -> new UUID, every GPU it had,
        or none to restore onto the same GPUs) and let the process call CUDA again."""
        args = _RestoreArgs()
        if pairs:
            array = (_GpuPair * len(pairs))(*(_GpuPair(_Uuid(o), _Uuid(n)) for o, n in pairs))
            args.pairs = ctypes.cast(array, ctypes.POINTER(_GpuPair))
            args.count = len(pairs)
        self._call("Restore", pid, ctypes.byref(args))
        self._call("Unlock", pid, ctypes.byref(_ReservedArgs()))


async def run(*argv: str, timeout: float = 300) -> dict:
    """Run this module as a helper process; its JSON answer (``ok`` false on any failure)."""
    env = {k: v for k, v in os.environ.items() if k not in GPU_VARIABLES}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, *argv, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except OSError as e:
        return {"ok": False, "error": f"the checkpoint helper did not start: {e}"}
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"ok": False, "error": f"the CUDA driver did not answer in {timeout:.0f} s"}
    try:
        return json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = err.decode(errors="replace").strip()[-300:]
        return {"ok": False, "error": f"the checkpoint helper failed ({proc.returncode}): {tail}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpulab.extensions.server.cudackpt")
    sub = parser.add_subparsers(dest="command", required=True)
    park = sub.add_parser("park", help="move a process's GPU state to host memory")
    park.add_argument("pid", type=int)
    park.add_argument("--timeout-ms", type=int, default=10000)
    unpark = sub.add_parser("unpark", help="put a parked process's GPU state back")
    unpark.add_argument("pid", type=int)
    unpark.add_argument("--map", action="append", default=[], metavar="OLD=NEW")
    sub.add_parser("probe", help="can this machine's driver checkpoint processes?")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        driver = Driver()
        if args.command == "park":
            driver.park(args.pid, args.timeout_ms)
        elif args.command == "unpark":
            pairs = []
            for item in args.map:
                old, _, new = item.partition("=")
                pairs.append((uuid_bytes(old), uuid_bytes(new)))
            driver.unpark(args.pid, pairs)
        answer = {"ok": True, "driver": driver.version}
    except (Unavailable, DriverError, ValueError) as e:
        answer = {"ok": False, "error": str(e), "unavailable": isinstance(e, Unavailable)}
    answer["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(answer), flush=True)
    return 0 if answer["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
