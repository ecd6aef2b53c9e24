"""Server-side batching, as TF Serving's ``--enable_batching``: requests that arrive
together are run as one call of the model.

Each (loaded version, signature) has a queue; a pool of ``num_batch_threads`` threads
serves every queue (TF Serving's shared batch scheduler). A thread takes the queue whose
oldest request has waited longest, once that queue holds ``max_batch_size`` rows or its
oldest request has waited ``batch_timeout_micros`` (with the default 0: whatever has
queued while the model was busy), concatenates the requests' inputs along their first
dimension (padded up to the next of ``allowed_batch_sizes`` by repeating the last row),
calls the model once and hands each request its rows of every output.

Only requests whose inputs have the same shape past the first dimension go in one batch
(TF Serving refuses others when it does not pad them); a request of more rows than a
batch holds is refused, as TF Serving does without large-batch splitting.
``--batching_parameters_file`` is TF Serving's ``BatchingParameters`` text.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from google.protobuf import text_format

from .errors import INTERNAL, INVALID_ARGUMENT, UNAVAILABLE, ServingError
from .protos import parse

log = logging.getLogger("gpulab.serving")


SETTABLE = (
    "max_batch_size",
    "batch_timeout_micros",
    "num_batch_threads",
    "max_enqueued_batches",
    "allowed_batch_sizes",
)
"""The parameters a gpulab deployment may set (``batching`` in docs/serving.md)."""


class BatchingConfigError(ValueError):
    """A batching parameters file that cannot be used; the message says why."""


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's ``BatchingParameters`` and their defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    @classmethod
    def from_text(cls, text: str) -> BatchingParameters:
        """From a ``--batching_parameters_file``'s text; BatchingConfigError for what TF
        Serving refuses."""
        try:
            message = parse("BatchingParameters", text)
        except text_format.ParseError as e:
            raise BatchingConfigError(
                f"the batching parameters are not BatchingParameters: {e}"
            ) from None
        given = {
            name: getattr(message, name).value
            for name in (
                "max_batch_size",
                "batch_timeout_micros",
                "max_enqueued_batches",
                "num_batch_threads",
                "thread_pool_name",
            )  # fmt: skip
            if message.HasField(name)
        }
        params = cls(
            **given,
            allowed_batch_sizes=tuple(message.allowed_batch_sizes),
            pad_variable_length_inputs=message.pad_variable_length_inputs,
        )
        params.check()
        if message.pad_variable_length_inputs:
            log.warning(
                "pad_variable_length_inputs is not supported: such requests go in batches of their own shape"
            )
        if (
            message.HasField("enable_large_batch_splitting")
            and message.enable_large_batch_splitting.value
        ):
            log.warning(
                "enable_large_batch_splitting is not supported: a request larger than max_batch_size is refused"
            )
        return params

    def check(self) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise BatchingConfigError(f"{name} must be positive")
        if self.batch_timeout_micros < 0:
            raise BatchingConfigError("batch_timeout_micros must not be negative")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] < 1:
                raise BatchingConfigError("allowed_batch_sizes must be positive and increasing")
            if sizes[-1] != self.max_batch_size:
                raise BatchingConfigError(
                    "the last allowed_batch_sizes entry must equal max_batch_size "
                    f"({sizes[-1]} != {self.max_batch_size})"
                )


@dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    rows: int
    shapes: tuple
    """Each input's name, dtype and shape past the first dimension: what must match."""
    future: Future
    queued: float


class _Queue:
    def __init__(self, call):
        self.call = call
        """``inputs -> outputs`` (numpy in, numpy out): one call of the model."""
        self.tasks: deque[_Task] = deque()
        self.rows = 0


class Batcher:
    """The shared batch scheduler: queues per (servable, signature), ``num_batch_threads``
    threads that run their batches; ``metrics`` records how long requests queued."""

    def __init__(self, params: BatchingParameters, metrics):
        self.params = params
        self.metrics = metrics
        self._queues: weakref.WeakKeyDictionary[object, dict[str, _Queue]] = (
            weakref.WeakKeyDictionary()
        )
        """servable -> signature -> its queue (gone with the servable once unloaded)."""
        self._ready = threading.Condition()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{params.thread_pool_name}-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    def submit(self, servable, signature: str, call, inputs: dict[str, np.ndarray]) -> Future:
        """The future of ``call(inputs)``'s outputs, computed in a batch with other
        requests' inputs to the same signature of ``servable``."""
        rows = _rows(inputs)
        if rows > self.params.max_batch_size:
            raise ServingError(
                INVALID_ARGUMENT,
                f"Task size {rows} is larger than maximum input batch size "
                f"{self.params.max_batch_size}",
            )
        shapes = tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))
        task = _Task(inputs, rows, shapes, Future(), time.monotonic())
        with self._ready:
            queues = self._queues.setdefault(servable, {})
            queue = queues.get(signature)
            if queue is None:
                queue = queues[signature] = _Queue(call)
            limit = self.params.max_enqueued_batches * self.params.max_batch_size
            if queue.rows + rows > limit:
                raise ServingError(
                    UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full",
                )
            queue.tasks.append(task)
            queue.rows += rows
            self._ready.notify()
        return task.future

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify_all()

    # -- the threads -----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._ready:
                batch = self._next_batch()
                while batch is None:
                    if self._stopped:
                        return
                    self._ready.wait(self._wait())
                    batch = self._next_batch()
            queue, tasks = batch
            self._run(queue, tasks)

    def _next_batch(self) -> tuple[_Queue, list[_Task]] | None:
        """The ready queue whose oldest request waited longest, and the requests of its
        next batch (taken off it); None if no queue is ready (under ``_ready``)."""
        now = time.monotonic()
        timeout = self.params.batch_timeout_micros / 1e6
        best = None
        for queues in list(self._queues.values()):
            for queue in queues.values():
                if not queue.tasks:
                    continue
                oldest = queue.tasks[0].queued
                full = queue.rows >= self.params.max_batch_size
                if (full or now - oldest >= timeout) and (
                    best is None or oldest < best.tasks[0].queued
                ):
                    best = queue
        if best is None:
            return None
        first = best.tasks[0]
        taken, rows, left = [], 0, deque()
        while best.tasks:
            task = best.tasks.popleft()
            if task.shapes == first.shapes and rows + task.rows <= self.params.max_batch_size:
                taken.append(task)
                rows += task.rows
            else:
                left.append(task)
        best.tasks = left
        best.rows -= rows
        if best.tasks:
            self._ready.notify()  # what is left may be ready for another thread
        return best, taken

    def _wait(self) -> float | None:
        """Seconds until the oldest request's timeout (None: nothing queued)."""
        oldest = [q.tasks[0].queued for qs in self._queues.values() for q in qs.values() if q.tasks]
        if not oldest:
            return None
        return max(0.0, min(oldest) + self.params.batch_timeout_micros / 1e6 - time.monotonic())

    def _run(self, queue: _Queue, tasks: list[_Task]) -> None:
        started = time.monotonic()
        for task in tasks:
            self.metrics.queuing_latency.add(
                self.params.thread_pool_name, sample=(started - task.queued) * 1e6
            )
        rows = sum(t.rows for t in tasks)
        size = self._padded(rows)
        try:
            inputs = {
                name: _pad(np.concatenate([t.inputs[name] for t in tasks]), size)
                for name in tasks[0].inputs
            }
            outputs = queue.call(inputs)
            for name, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != size:
                    raise ServingError(
                        INVALID_ARGUMENT,
                        f"Batched output tensor {name}'s 0th dimension does not equal the sum of "
                        "the 0th dimension sizes of the input tensors",
                    )
        except Exception as e:  # noqa: BLE001 -- each request of the batch gets it
            error = e if isinstance(e, ServingError) else ServingError(INTERNAL, f"batching: {e}")
            for task in tasks:
                task.future.set_exception(error)
            return
        at = 0
        for task in tasks:
            task.future.set_result(
                {name: value[at : at + task.rows] for name, value in outputs.items()}
            )
            at += task.rows

    def _padded(self, rows: int) -> int:
        return next((b for b in self.params.allowed_batch_sizes if b >= rows), rows)


def _rows(inputs: dict[str, np.ndarray]) -> int:
    """The request's batch size: the first dimension its inputs share."""
    sizes = set()
    for name, value in inputs.items():
        if value.ndim == 0:
            raise ServingError(
                INVALID_ARGUMENT,
                f"Batching session Run() input tensors must have at least one dimension ({name})",
            )
        sizes.add(value.shape[0])
    if len(sizes) > 1:
        raise ServingError(
            INVALID_ARGUMENT, "Batching Run() input tensors must have equal 0th-dimension size"
        )
    return sizes.pop() if sizes else 0


def _pad(value: np.ndarray, size: int) -> np.ndarray:
    """``value`` with its last row repeated up to ``size`` rows."""
    if value.shape[0] >= size:
        return value
    return np.concatenate([value, np.repeat(value[-1:], size - value.shape[0], axis=0)])
