"""The kernel-side checkpoint code (extensions/server/namespace.py) on its own, where a
device array has to make two hops: GPU -> a kernel without a GPU -> a GPU again.

Return GPU restores a kernel's device arrays to host memory; Get GPU checkpoints that
CPU kernel again. The arrays must still go back to their device then, or a model would
stay on the CPU after Get GPU. (The PyTorch path is measured on a real GPU by
benchmarks/return_gpu_device.py; this machine has neither a GPU nor CuPy, so the CuPy
path is the one that can be followed here.) TensorFlow's variables, tensors and models
are checked for real, on the CPU.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from hubfixture import REPO


@pytest.fixture
def namespace():
    spec = importlib.util.spec_from_file_location(
        "gpulab_kernel_state", REPO / "extensions" / "server" / "namespace.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.__dict__.pop("_gpulab_home_devices", None)
    sys.__dict__.pop("_gpulab_arrays_on_host", None)


def roundtrip(namespace, value):
    buffer = io.BytesIO()
    moved = namespace._dump({"values": {"a": value}}, buffer)
    return moved, pickle.loads(buffer.getvalue())["values"]["a"]


def test_an_array_restored_to_the_host_still_goes_back_to_its_device(namespace):
    # a CuPy array checkpointed by Return GPU arrives in a kernel without a GPU
    on_host = namespace._to_device(np.arange(6.0), "cupy")
    assert isinstance(on_host, np.ndarray) and namespace._home(on_host) == "cupy"
    # Get GPU checkpoints that kernel: the array travels as a device array again
    moved, again = roundtrip(namespace, on_host)
    assert moved == 1
    assert np.array_equal(again, np.arange(6.0)) and namespace._home(again) == "cupy"


def test_arrays_made_on_the_cpu_stay_there(namespace):
    moved, again = roundtrip(namespace, np.arange(3))
    assert moved == 0 and namespace._home(again) is None


def test_the_home_is_forgotten_with_the_array(namespace):
    on_host = namespace._to_device(np.arange(3.0), "cupy")
    key = id(on_host)
    del on_host
    assert key not in sys.__dict__["_gpulab_home_devices"]


def test_a_checkpoint_replaces_the_data_file_of_the_one_before(namespace, tmp_path):
    user_ns = {"a": np.arange(4.0), "label": "run 3"}
    namespace._user_namespace = lambda: (user_ns, dict(user_ns))
    path = str(tmp_path / "kernel.pkl")
    stale = tmp_path / "kernel.pkl.0123456789ab.data"
    stale.write_bytes(b"tensors of the checkpoint before")

    report = namespace.save(path)
    assert report["saved"] == ["a", "label"] and not report["failed"]
    # nothing big on a device here: no data file, and the older one is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernel.pkl", "kernel.pkl.json"]

    user_ns.clear()
    namespace.load(path)
    assert np.array_equal(user_ns["a"], np.arange(4.0)) and user_ns["label"] == "run 3"


def test_tensorflow_variables_tensors_and_models_come_back(namespace, tmp_path):
    """Real TensorFlow (CPU): what a notebook holds is back, values, names and all."""
    import tensorflow as tf

    weights = tf.Variable([[1.0, 2.0], [3.0, 4.0]], name="weights")
    step = tf.Variable(7, dtype=tf.int64, name="step", trainable=False)

    class Scale(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(2.0)

        def __call__(self, x):
            return self.w * x

    scale = Scale()
    scale.w.assign(5.0)
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    answer = model(tf.ones((1, 3))).numpy()
    user_ns = {
        "weights": weights,
        "step": step,
        "batch": tf.constant(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "scale": scale,
        "model": model,
    }
    namespace._user_namespace = lambda: (user_ns, dict(user_ns))
    path = str(tmp_path / "kernel.pkl")
    report = namespace.save(path)
    assert report["saved"] == sorted(user_ns) and not report["failed"]
    assert report["device_arrays"] >= 3  # weights, step and batch went through the host

    user_ns.clear()
    namespace.load(path)
    assert isinstance(user_ns["weights"], tf.Variable)
    assert user_ns["weights"].name == "weights:0" and user_ns["weights"].trainable
    assert np.array_equal(user_ns["weights"].numpy(), [[1.0, 2.0], [3.0, 4.0]])
    assert user_ns["step"].dtype == tf.int64 and not user_ns["step"].trainable
    assert int(user_ns["step"].numpy()) == 7
    assert isinstance(user_ns["batch"], tf.Tensor)
    assert np.array_equal(user_ns["batch"].numpy(), np.arange(6).reshape(2, 3))
    assert float(user_ns["scale"](3.0)) == 15.0
    assert np.allclose(user_ns["model"](tf.ones((1, 3))).numpy(), answer)
    # the restored variables train on
    user_ns["weights"].assign_add(tf.ones((2, 2)))
    assert float(tf.reduce_sum(user_ns["weights"])) == 14.0


def test_a_kept_kernel_hands_its_new_gpus_to_what_it_starts(namespace, monkeypatch):
    # a kernel parked by the CUDA driver keeps its process, so its own environment is
    # changed in place: a script it starts after Return GPU gets no GPU
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "GPULAB_GPUS"):
        monkeypatch.setenv(name, "0")
    namespace.set_gpus("")
    child = "import os; print([os.environ[n] for n in ('CUDA_VISIBLE_DEVICES', 'GPULAB_GPUS')])"
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['', '']"
    namespace.set_gpus("1")
    assert os.environ["NVIDIA_VISIBLE_DEVICES"] == "1"


NO_ROOM = """
import importlib.util, os, sys, torch
spec = importlib.util.spec_from_file_location("gpulab_kernel_state", sys.argv[1])
namespace = importlib.util.module_from_spec(spec)
spec.loader.exec_module(namespace)
weights = torch.arange(1 << 20, dtype=torch.float32)  # 4 MiB
namespace._remember(weights, "cuda:0")  # as a GPU tensor is after a return: it goes back
user_ns = {"weights": weights, "step": 3}
namespace._user_namespace = lambda: (user_ns, dict(user_ns))
try:
    namespace.save(os.path.join(sys.argv[2], "kernel.pkl"))
except namespace.NoRoomForCheckpoint as e:
    print(e)
# where it fits: the tensor goes to the data file, and comes back from it
path = os.path.join(sys.argv[3], "kernel.pkl")
namespace.save(path)
print(sorted(p.rsplit(".", 1)[-1] for p in os.listdir(sys.argv[3])))
user_ns.clear()
namespace.load(path)
print(bool((user_ns["weights"] == torch.arange(1 << 20, dtype=torch.float32)).all()))
"""


def test_a_checkpoint_that_does_not_fit_says_so_and_leaves_nothing_behind(tmp_path):
    # a home that is full or over its quota: a big tensor's pages are written through a
    # mapping, where a full disk would kill the kernel (SIGBUS) and lose everything in it
    small, roomy = tmp_path / "home", tmp_path / "roomy"
    small.mkdir()
    roomy.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        code = [sys.executable, "-c", NO_ROOM, str(REPO / "extensions/server/namespace.py")]
        out = subprocess.run([*code, small, roomy], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr  # the kernel lives, with its variables
        lines = out.stdout.splitlines()
        assert lines[0] == f"the checkpoint needs 4.0 MiB, and 2.0 MiB is free in {small}"
        assert list(small.iterdir()) == []  # the half-written checkpoint takes no room
        assert lines[1:] == ["['data', 'json', 'pkl']", "True"]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_variables_come_back_into_a_home_that_filled_up_since_the_checkpoint(namespace, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(home)], check=True)
    try:
        user_ns = {"weights": np.arange(1000.0), "step": 3}
        namespace._user_namespace = lambda: (user_ns, dict(user_ns))
        path = str(home / "kernel.pkl")
        namespace.save(path)
        with open(home / "filler", "wb", buffering=0) as f:  # the user fills the home
            with pytest.raises(OSError):
                while True:
                    f.write(b"x" * 4096)
        user_ns.clear()
        report = namespace.load(path)  # its report file cannot be written: no error
        assert report["restored"] == ["step", "weights"]
        assert np.array_equal(user_ns["weights"], np.arange(1000.0)) and user_ns["step"] == 3
        assert not (home / "kernel.pkl.restored.json").exists()
    finally:
        subprocess.run(["umount", str(home)], check=True)


def test_random_generators_go_on_where_they_were(namespace, tmp_path):
    import random

    user_ns = {"step": 1}
    namespace._user_namespace = lambda: (user_ns, dict(user_ns))
    random.seed(3)
    np.random.seed(3)
    random.random(), np.random.rand()
    path = str(tmp_path / "kernel.pkl")
    namespace.save(path)
    expected = random.random(), np.random.rand()
    random.seed(), np.random.seed()  # a restarted kernel's generators: seeded anew
    namespace.load(path)
    assert (random.random(), np.random.rand()) == expected
