"""Save and restore a kernel's variables: the code the server extension runs *inside* a kernel.

The server sends this file's source to a Python kernel and calls ``save(path)`` or
``load(path)`` there, in a private namespace, so nothing is added to the user's. It may
only import the standard library and, when present, cloudpickle and the array libraries
whose device memory it moves (PyTorch, TensorFlow, CuPy).

- ``save`` pickles the user's variables together (shared references stay shared: an
  optimizer still points at its model's parameters) with device arrays copied to host
  memory; a variable that cannot be pickled is left out and reported by name with the
  reason. It writes ``path`` and ``path + ".json"`` (the report), which also holds the
  shell's state (``_shell_state``: the cell count, %load_ext extensions, autoreload's
  mode) and the process's (``_process_state``: working folder, module search path,
  environment variables the notebook set).
- ``load`` reads ``path`` back into the namespace, moving device arrays back to a GPU
  when the kernel has one (else they stay on the CPU, and the report says so), and puts
  the shell's and the process's state back.
- ``set_gpus`` sets the GPU variables of a kernel that keeps its process across a
  return (parked by the CUDA driver).
"""

import errno
import functools
import glob
import io
import json
import os
import pickle
import re
import sys
import time

try:
    import cloudpickle

    _Pickler = cloudpickle.Pickler
except ImportError:  # functions and classes defined in the notebook will be reported
    cloudpickle = None
    _Pickler = pickle.Pickler

FORMAT = 1
# IPython's own names: outputs, inputs, history and the session helpers
_IPYTHON_NAMES = re.compile(r"^(_|__|___|_\d+|_i+|_i\d+|_ih|_oh|_dh|In|Out|exit|quit|get_ipython)$")


def _shell():
    """The kernel's IPython shell; None in plain Python (this module's tests)."""
    try:
        return get_ipython()  # noqa: F821 -- provided by the kernel
    except NameError:
        return None


def _user_namespace():
    ip = _shell()
    hidden = ip.user_ns_hidden
    names = {}
    for name, value in ip.user_ns.items():
        if _IPYTHON_NAMES.match(name) or (name.startswith("__") and name.endswith("__")):
            continue
        if name in hidden and hidden[name] is value:
            continue
        names[name] = value
    return ip.user_ns, names


# -- device arrays ------------------------------------------------------------------


def _to_device(host, device):
    """Move a host copy back to the device it came from, when this process has it; one
    left on the host remembers that device, so the next checkpoint sends it back."""
    mod = type(host).__module__.split(".")[0]
    try:
        if mod == "torch":
            import torch

            if device.startswith("cuda") and torch.cuda.is_available():
                return host.to(
                    device if _cuda_index(device) < torch.cuda.device_count() else "cuda"
                )
        elif mod == "numpy" and device == "cupy":
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return cupy.asarray(host)
    except Exception as e:  # noqa: BLE001 -- a value on the CPU beats no value
        _on_host().append(f"{device}: {type(e).__name__}: {e}")
        _remember(host, device)
        return host
    _on_host().append(device)
    _remember(host, device)
    return host


def _torch_from_host(array, dtype, device):
    """A tensor from the numpy array it was pickled as (no copy), then to its device."""
    import torch

    tensor = torch.from_numpy(array)
    if str(tensor.dtype) != dtype:  # bfloat16 and friends travel as raw integers
        tensor = tensor.view(getattr(torch, dtype.split(".")[1]))
    return _to_device(tensor, device)


def _torch_parameter(rebuild, args, requires_grad, device):
    """A module's parameter: still a Parameter, on its device when there is one."""
    import torch

    parameter = torch.nn.Parameter(rebuild(*args), requires_grad=requires_grad)
    if device and parameter.device.type == "cpu" and not device.startswith("cpu"):
        _remember(parameter, device)
    return parameter


def _homes():
    # arrays restored to the host for want of a GPU, by id: (weak reference, device)
    return sys.__dict__.setdefault("_gpulab_home_devices", {})


def _remember(obj, device):
    import weakref

    homes, key = _homes(), id(obj)
    try:
        homes[key] = (weakref.ref(obj, lambda _ref, k=key: homes.pop(k, None)), device)
    except TypeError:  # a type without weak references: it stays where it is
        pass


def _home(obj):
    entry = _homes().get(id(obj))
    return entry[1] if entry is not None and entry[0]() is obj else None


_TORCH_AS_INT = {
    "torch.bfloat16": "int16",
    "torch.float8_e4m3fn": "int8",
    "torch.float8_e5m2": "int8",
}


def _torch_reduce(tensor, device):
    """How a tensor that belongs on ``device`` travels: as a host numpy array when numpy
    can hold its dtype (pickled without the copies torch's own pickling makes)."""
    host = tensor.detach().cpu()
    dtype = str(host.dtype)
    try:
        if dtype in _TORCH_AS_INT:
            import torch

            array = host.contiguous().view(getattr(torch, _TORCH_AS_INT[dtype])).numpy()
        else:
            array = host.contiguous().numpy()
    except (TypeError, RuntimeError):  # a dtype numpy has no match for
        return _to_device, (host, device)
    return _torch_from_host, (array, dtype, device)


_DIRECT_BYTES = 1 << 20  # tensors this big skip the pickle stream (see _DataFile)


class _DataFile:
    """The big tensors of one checkpoint, beside its pickle: each is copied from the
    device straight into pages of this file (mapped), with no host copy in between
    and nothing for the pickler to copy again; restoring maps it back without reading."""

    def __init__(self, path):
        self.path, self.size = path, 0
        self.f = open(path, "w+b")  # noqa: SIM115 -- closed by save()

    def put(self, tensor):
        import numpy as np
        import torch

        nbytes = tensor.numel() * tensor.element_size()
        offset = -(-self.size // 4096) * 4096
        _reserve(self.f.fileno(), offset, nbytes)
        self.size = offset + nbytes
        raw = np.memmap(self.f, dtype=np.uint8, mode="r+", offset=offset, shape=(nbytes,))
        torch.from_numpy(raw).view(tensor.dtype).view(tensor.shape).copy_(tensor.detach())
        return _torch_from_data, (self.path, offset, str(tensor.dtype), tuple(tensor.shape))


def _reserve(fd, offset, nbytes):
    """Take the file's blocks for ``nbytes`` at ``offset`` now, so that a full disk or
    quota is an OSError here and not a SIGBUS that kills the kernel when the copy writes
    a page of a sparse file that has no room.

    Linux's fallocate(2) does it at once; where the filesystem has none (NFS v3, some
    FUSE ones; glibc's posix_fallocate would write every block), the free space is
    checked instead and the file extended sparse."""
    import ctypes

    fallocate = _fallocate()
    if fallocate is not None:
        if fallocate(fd, 0, offset, nbytes) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(code, os.strerror(code))
    st = os.fstatvfs(fd)
    if st.f_bavail * st.f_frsize < nbytes:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.ftruncate(fd, max(os.fstat(fd).st_size, offset + nbytes))


@functools.cache
def _fallocate():
    """libc's fallocate(2), looked up once per checkpoint (each big tensor takes it)."""
    import ctypes

    fallocate = getattr(ctypes.CDLL(None, use_errno=True), "fallocate", None)
    if fallocate is not None:
        fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    return fallocate


def _torch_from_data(path, offset, dtype, shape, device=None):
    """A tensor mapped from a checkpoint's data file (copy-on-write), then to its device."""
    import numpy as np
    import torch

    dt = getattr(torch, dtype.split(".")[1])
    count = 1
    for n in shape:
        count *= n
    nbytes = count * torch.empty((), dtype=dt).element_size()
    raw = np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=(nbytes,))
    tensor = torch.from_numpy(raw).view(dt).view(shape)
    return tensor if device is None else _to_device(tensor, device)


def _tf_variable(value, dtype, name, trainable):
    import tensorflow as tf

    return tf.Variable(value, dtype=dtype, name=name.split(":")[0], trainable=trainable)


def _tf_tensor(value, dtype):
    import tensorflow as tf

    return tf.constant(value, dtype=dtype)


def _cuda_index(device):
    return int(device.split(":")[1]) if ":" in device else 0


def _on_host():
    # unpickling rebuilds this module's functions with globals of their own, so the
    # arrays left on the host are counted in a place both copies see
    return sys.__dict__.setdefault("_gpulab_arrays_on_host", [])


class _HostPickler(_Pickler):
    """Pickles device arrays as host copies that know where they came from."""

    data = None
    """A ``_DataFile`` for the big tensors; None: everything in the pickle stream."""

    def _tensor(self, tensor, device):
        import torch

        big = tensor.numel() * tensor.element_size() >= _DIRECT_BYTES
        if self.data is not None and big and tensor.layout == torch.strided:
            rebuild, args = self.data.put(tensor)
            return rebuild, (*args, device)
        return _torch_reduce(tensor, device)

    def reducer_override(self, obj):
        mod = type(obj).__module__.split(".")[0]
        if mod == "torch" and "torch" in sys.modules:
            import torch

            if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
                on_device = obj.device.type != "cpu"
                device = str(obj.device) if on_device else _home(obj)
                if device:
                    self.moved += 1
                    rebuild, args = self._tensor(obj, device)
                    if isinstance(obj, torch.nn.Parameter):
                        return _torch_parameter, (rebuild, args, obj.requires_grad, device)
                    return rebuild, args
        elif mod == "numpy" and _home(obj):
            self.moved += 1
            return _to_device, (obj.view(), _home(obj))
        elif mod == "cupy" and "cupy" in sys.modules:
            import cupy

            if isinstance(obj, cupy.ndarray):
                self.moved += 1
                return _to_device, (obj.get(), "cupy")
        elif mod in ("tensorflow", "tf_keras", "keras") and "tensorflow" in sys.modules:
            import tensorflow as tf

            # a plain variable (TensorFlow 2 gives every one a ``_distribute_strategy``,
            # None outside a strategy); a strategy's own variables pickle their own way
            if isinstance(obj, tf.Variable) and getattr(obj, "_distribute_strategy", None) is None:
                self.moved += 1
                return _tf_variable, (obj.numpy(), obj.dtype.name, obj.name, obj.trainable)
            if isinstance(obj, tf.Tensor) and hasattr(obj, "numpy"):
                self.moved += 1
                return _tf_tensor, (obj.numpy(), obj.dtype.name)
        if _Pickler is pickle.Pickler:
            return NotImplemented
        return super().reducer_override(obj)


class _Counter(io.RawIOBase):
    """A file that only counts: for finding which variable does not pickle, and how big
    a checkpoint is."""

    size = 0

    def writable(self):
        return True

    def write(self, b):
        n = memoryview(b).nbytes  # large arrays come as PickleBuffers
        self.size += n
        return n


class NoRoomForCheckpoint(Exception):
    """The checkpoint does not fit on the filesystem it goes to (full, or over quota)."""


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def _dump(obj, f, data=None):
    p = _HostPickler(f, protocol=pickle.HIGHEST_PROTOCOL)
    p.moved, p.data = 0, data
    p.dump(obj)
    return p.moved


def _dump_checkpoint(names, tmp):
    """Pickle ``names`` to ``tmp`` with their big tensors in a new data file beside it;
    the data file's path (a new one each time: the tensors of a kernel restored from
    an earlier checkpoint are mapped from that one)."""
    import uuid

    data = _DataFile(f"{tmp[: -len('.tmp')]}.{uuid.uuid4().hex[:12]}.data")
    try:
        with open(tmp, "wb") as f:
            moved = _dump({"format": FORMAT, "values": names, "rng": _rng_state()}, f, data)
    except BaseException:
        data.f.close()
        for left in (data.path, tmp):  # a half-written checkpoint only takes room
            if os.path.exists(left):
                os.unlink(left)
        raise
    data.f.close()
    if not data.size:
        os.unlink(data.path)
    return moved, data.path if data.size else None


def _reason(e):
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def save(path):
    t0 = time.monotonic()
    _, names = _user_namespace()
    failed = {}
    tmp = path + ".tmp"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        moved, data = _dump_checkpoint(names, tmp)
    except Exception as e:
        _raise_if_no_room(e, names, path)
        # find the culprits one by one, then save the others together
        for name, value in list(names.items()):
            try:
                _dump(value, _Counter())
            except Exception as e:  # noqa: BLE001 -- anything a pickler raises
                failed[name] = _reason(e)
                del names[name]
        try:
            moved, data = _dump_checkpoint(names, tmp)
        except OSError as e:
            _raise_if_no_room(e, names, path)
            raise
    os.replace(tmp, path)
    # earlier data files of this checkpoint: unlinked, they stay readable where mapped
    for old in glob.glob(glob.escape(path) + ".*.data"):
        if old != data:
            os.unlink(old)
    report = {
        "saved": sorted(names),
        "failed": failed,
        "bytes": os.path.getsize(path) + (os.path.getsize(data) if data else 0),
        "device_arrays": moved,
        "seconds": round(time.monotonic() - t0, 3),
        "pickler": "cloudpickle" if cloudpickle else "pickle",
        # read back before the variables (their modules may need the path, libraries
        # the environment as they are imported)
        "state": {"shell": _shell_state(_shell()), "process": _process_state()},
    }
    _write_report(path, report)
    return report


def _raise_if_no_room(error, names, path):
    """NoRoomForCheckpoint, saying what the checkpoint needs and what is free, if
    ``error`` is a full disk or quota (the half-written checkpoint is already gone)."""
    if not (isinstance(error, OSError) and error.errno in _NO_ROOM):
        return
    import shutil

    counter = _Counter()
    try:
        _dump(names, counter)
        need = _size(counter.size)
    except Exception:  # noqa: BLE001 -- a variable that does not pickle: at least this
        need = f"more than {_size(counter.size)}"
    folder = os.path.dirname(path)
    free = _size(shutil.disk_usage(folder).free)
    raise NoRoomForCheckpoint(f"the checkpoint needs {need}, and {free} is free in {folder}")


def _size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def load(path):
    t0 = time.monotonic()
    ns, _ = _user_namespace()
    del _on_host()[:]
    if os.path.exists(path + ".restored.json"):  # an earlier restore's, not this one's
        os.unlink(path + ".restored.json")
    state = _saved_state(path)
    _restore_environment(state.get("process") or {})
    with open(path, "rb") as f:
        data = pickle.load(f)
    values = data["values"]
    ns.update(values)
    _restore_rng(data.get("rng") or {})
    not_loaded = _restore_shell(_shell(), state.get("shell") or {})
    not_loaded += _restore_folder(state.get("process") or {})
    report = {
        "restored": sorted(values),
        "seconds": round(time.monotonic() - t0, 3),
    }
    on_host = _on_host()
    report["on_host"] = len(on_host)
    notes = list(not_loaded)
    if on_host:
        notes.insert(0, f"{len(on_host)} device array(s) stayed in host memory (no GPU here)")
    if notes:
        report["note"] = "; ".join(notes)
    try:
        _write_report(path, report, suffix=".restored.json")
    except OSError:  # a home full since the checkpoint: the variables are back all the same
        pass
    return report


# the global random generators kept: module, its state's getter and setter
_GENERATORS = (
    ("random", "getstate", "setstate"),
    ("numpy.random", "get_state", "set_state"),
    ("torch", "get_rng_state", "set_rng_state"),
)


def _rng_state():
    """The states of the global random number generators of the libraries the notebook
    imported, so that what it draws next is what it would have drawn (PyTorch's CPU
    generator; a CUDA generator's state needs the GPU, which the new kernel may lack)."""
    return {
        module: getattr(sys.modules[module], get)()
        for module, get, _ in _GENERATORS
        if module in sys.modules
    }


def _restore_rng(state):
    import importlib

    for module, _, put in _GENERATORS:
        if module in state:
            try:
                getattr(importlib.import_module(module), put)(state[module])
            except Exception:  # noqa: BLE001 -- a generator left as it is beats no variables
                pass


# autoreload's mode (%autoreload 2: enabled, check_all; 3: autoload_obj as well)
_AUTORELOAD = ("enabled", "check_all", "autoload_obj")


def _autoreloader(shell):
    magics = shell.magics_manager.registry.get("AutoreloadMagics")
    return getattr(magics, "_reloader", None)


def _shell_state(shell):
    """What a restarted kernel needs besides its variables to carry on: the next cell's
    number (the notebook's In [n] go on), the IPython extensions loaded with %load_ext
    (%tensorboard's, autoreload) and autoreload's mode."""
    if shell is None:
        return {}
    state = {
        "execution_count": shell.execution_count,
        "extensions": sorted(shell.extension_manager.loaded),
    }
    reloader = _autoreloader(shell)
    if reloader is not None:
        state["autoreload"] = {k: getattr(reloader, k) for k in _AUTORELOAD if hasattr(reloader, k)}
    return state


def _restore_shell(shell, state):
    """Put ``_shell_state``'s ``state`` back; what could not be, in words."""
    if shell is None:
        return []
    count = state.get("execution_count")
    if isinstance(count, int) and count > shell.execution_count:
        shell.execution_count = count
    failed = []
    for name in state.get("extensions", []):
        try:
            shell.extension_manager.load_extension(name)
        except Exception as e:  # noqa: BLE001 -- the variables matter more
            failed.append(f"%load_ext {name} failed: {_reason(e)}")
    reloader = _autoreloader(shell)
    for key, value in (state.get("autoreload") or {}).items():
        if reloader is not None and key in _AUTORELOAD and isinstance(value, bool):
            setattr(reloader, key, value)
    return failed


# gpulab sets these for the kernel's GPUs: the restarted kernel's own are the right ones
_GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "GPULAB_GPUS")


def _process_state():
    """The kernel process's working folder (``%cd``, ``os.chdir``), module search path
    (``sys.path.append("../src")``) and the environment variables the notebook set or
    changed (``%env``, ``os.environ``): those that differ from the environment the
    process started with, which ``/proc`` keeps."""
    state = {"cwd": os.getcwd(), "sys_path": [p for p in sys.path if isinstance(p, str)]}
    try:
        with open("/proc/self/environ", "rb") as f:
            start = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    except OSError:  # not Linux: the environment is not kept
        return state
    start = {os.fsdecode(k): os.fsdecode(v) for k, v in start.items()}
    state["environ"] = {
        k: v for k, v in os.environ.items() if start.get(k) != v and k not in _GPU_VARIABLES
    }
    return state


def _saved_state(path):
    """The state ``save`` put in its report beside the checkpoint ({} without one)."""
    try:
        with open(path + ".json") as f:
            state = json.load(f).get("state")
    except (OSError, ValueError, AttributeError):
        return {}
    return state if isinstance(state, dict) else {}


def _restore_environment(state):
    """Before the variables are read back: the environment variables and module search
    path of ``_process_state``'s ``state``."""
    for key, value in (state.get("environ") or {}).items():
        if isinstance(key, str) and isinstance(value, str) and key not in _GPU_VARIABLES:
            os.environ[key] = value
    saved = [p for p in state.get("sys_path") or [] if isinstance(p, str)]
    if saved:
        sys.path[:] = saved + [p for p in sys.path if p not in saved]


def _restore_folder(state):
    """After them (modules beside the notebook are found from its folder): the working
    folder; what could not be, in words."""
    cwd = state.get("cwd")
    if isinstance(cwd, str) and cwd != os.getcwd():
        try:
            os.chdir(cwd)
        except OSError as e:
            return [f"the working folder {cwd} is gone ({_reason(e)})"]
    return []


def set_gpus(visible):
    """For a kernel the CUDA driver parked or brought back, which keeps its process: the
    GPUs what it starts from now on (a script, ``!nvidia-smi``) gets."""
    for name in _GPU_VARIABLES:
        os.environ[name] = visible


def _write_report(path, report, suffix=".json"):
    with open(path + suffix + ".tmp", "w") as f:
        json.dump(report, f)
    os.replace(path + suffix + ".tmp", path + suffix)
