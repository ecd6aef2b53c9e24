"""The TensorBoard event reader a job replica's shell runs (gpulab.hub.workloads.tfevents),
against event files written by real TensorFlow: TF2 ``tf.summary.scalar`` and TF1
``simple_value`` summaries, a run killed mid-write, and the reader run as a replica runs
it, by a Python with no TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gpulab.hub.workloads import tfevents

WRITE = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf

    root = sys.argv[1]

    def tf2(run, points, **more):
        writer = tf.summary.create_file_writer(os.path.join(root, run))
        with writer.as_default():
            for tag, step, value in points:
                tf.summary.scalar(tag, value, step=step)
            for tag, step, value in more.get("ints", ()):
                tf.summary.scalar(tag, tf.constant(value, tf.int64), step=step)
            for tag, step, value in more.get("halves", ()):
                tf.summary.scalar(tag, tf.constant(value, tf.float16), step=step)
            for tag, step, text in more.get("texts", ()):
                tf.summary.text(tag, text, step=step)
            for tag, step, values in more.get("histograms", ()):
                tf.summary.histogram(tag, values, step=step)
        writer.close()

    def tf1(run, points):
        writer = tf.summary.create_file_writer(os.path.join(root, run))
        with writer.as_default():
            for tag, step, value in points:
                summary = tf.compat.v1.Summary(
                    value=[tf.compat.v1.Summary.Value(tag=tag, simple_value=value)]
                )
                tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)
        writer.close()

    # Keras' layout: one folder per run, the same tags in each
    tf2("keras/train", [("epoch_loss", s, 1.0 / (s + 1)) for s in range(5)])
    tf2(
        "keras/validation",
        [("epoch_loss", s, 2.0 / (s + 1)) for s in range(5)]
        + [("epoch_accuracy", s, 0.5 + s / 10) for s in range(5)]
        # the highest step wins, not the last written; on a tie, the last written
        + [("epoch_accuracy", 2, 0.01), ("epoch_accuracy", 4, 0.95)],
        ints=[("batches", 3, 120), ("batches", 4, -7)],
        halves=[("half", 1, 0.25)],
        texts=[("notes", 9, "not a number")],
        histograms=[("weights", 9, [1.0, 2.0, 3.0])],
    )
    tf2("keras/validation", [("diverged", 1, 0.5), ("diverged", 2, float("nan"))])
    # TF1's summaries (PyTorch's SummaryWriter writes these too), at the top
    tf1("", [("Loss/train", 1, 0.5), ("Loss/train", 2, 0.25), ("top1", 2, 0.9)])
    """
)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    """A folder of event files written by real TensorFlow (in a process of its own)."""
    root = tmp_path_factory.mktemp("tensorboard")
    subprocess.run(
        [sys.executable, "-c", WRITE, str(root)],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    return root


def test_every_scalar_is_read_with_its_highest_step(logs):
    tags, files = tfevents.latest_scalars(str(logs))
    assert files == 4  # train, validation (twice: two writers), and the top folder's
    assert tags["keras/train/epoch_loss"] == (4, 0.2)
    assert tags["keras/validation/epoch_loss"] == (4, 0.4)
    # highest step, last written of the two at step 4; shown as TensorBoard shows float32s
    assert tags["keras/validation/epoch_accuracy"] == (4, 0.95)
    assert tags["keras/validation/batches"] == (4, -7.0)  # an int64 scalar
    assert tags["keras/validation/half"] == (1, 0.25)  # a float16 scalar
    assert tags["Loss/train"] == (2, 0.25) and tags["top1"] == (2, 0.9)  # TF1 simple_value
    # text and histogram summaries are no scalars
    assert not any(t.endswith(("notes", "weights")) for t in tags)


def test_names_match_a_tag_or_its_last_parts_when_only_one_ends_so(logs):
    names = [
        "epoch_loss",  # in both runs: ambiguous, not read
        "validation/epoch_loss",
        "epoch_accuracy",
        "keras/train/epoch_loss",
        "Loss/train",
        "top1",
        "diverged",
        "missing",
    ]
    values, lines = tfevents.read_scalars(str(logs), names)
    assert values == {
        "validation/epoch_loss": 0.4,
        "epoch_accuracy": 0.95,
        "keras/train/epoch_loss": 0.2,
        "Loss/train": 0.25,
        "top1": 0.9,
    }
    assert lines[0].startswith("read validation/epoch_loss (keras/validation/epoch_loss) at step 4")
    assert lines[0].endswith(f"from 4 event files under {logs}")
    assert lines[1:] == [
        "epoch_loss is the end of keras/train/epoch_loss, keras/validation/epoch_loss: "
        "name one of them",
        "diverged (keras/validation/diverged) is nan at step 2: not reported",
        "no scalar named missing",
    ]


def test_a_file_cut_short_counts_up_to_its_last_whole_record(logs, tmp_path):
    (source,) = (logs / "keras" / "train").iterdir()
    data = source.read_bytes()
    cut = tmp_path / source.name
    cut.write_bytes(data[:-5])  # the last record (step 4's) lost its end
    assert tfevents.latest_scalars(str(tmp_path))[0] == {"epoch_loss": (3, 0.25)}
    cut.write_bytes(data[:-30] + b"\0" * 7)  # and in its header: the same
    assert tfevents.latest_scalars(str(tmp_path))[0] == {"epoch_loss": (3, 0.25)}
    # a record whose data does not match its checksum (step 0's tag changed) is skipped,
    # the rest still read
    broken = bytearray(data)
    broken[data.index(b"epoch_loss")] ^= 0xFF
    cut.write_bytes(bytes(broken))
    assert tfevents.latest_scalars(str(tmp_path))[0] == {"epoch_loss": (4, 0.2)}


def test_the_reader_runs_as_a_replica_runs_it_without_tensorflow(logs, tmp_path):
    """``python3 -c SOURCE`` in the working folder, by a Python that has no TensorFlow:
    the scalars are merged into the metrics file the job already wrote. The folder may
    name the replica's variables."""
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"accuracy": 0.5, "top1": 0.1}))
    env = {
        "PATH": "/usr/bin:/bin",
        "RUNS": logs.name,
        "GPULAB_METRICS_EVENTS": "$RUNS",
        "GPULAB_METRICS_NAMES": "top1 epoch_accuracy nope",
        "GPULAB_METRICS_FILE": str(metrics),
        "GPULAB_METRICS_SINCE": f"{time.time() - 3600:.3f}",
    }
    bare = "/usr/bin/python3"  # Debian's, without gpulab's environment
    assert subprocess.run([bare, "-c", "import tensorflow"], capture_output=True).returncode
    done = subprocess.run(
        [bare, "-I", "-c", tfevents.source()],
        cwd=logs.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(metrics.read_text()) == {"accuracy": 0.5, "top1": 0.9, "epoch_accuracy": 0.95}
    out = done.stdout.splitlines()
    assert out[0].startswith("==> gpulab: TensorBoard metrics: read top1 at step 2, ")
    assert out[1:] == ["==> gpulab: TensorBoard metrics: no scalar named nope"]
    # files last written before the job started are an earlier run's: one line says so,
    # and the metrics file is left as it was
    env["GPULAB_METRICS_SINCE"] = f"{time.time() + 60:.3f}"
    metrics.write_text(json.dumps({"top1": 0.1}))
    done = subprocess.run(
        [bare, "-I", "-c", tfevents.source()],
        cwd=logs.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == (
        f"==> gpulab: TensorBoard metrics: no event files under {logs.name} written by this run\n"
    )
    assert json.loads(metrics.read_text()) == {"top1": 0.1}
