"""TF Serving's monitoring: its metrics, by its names, on its Prometheus endpoint.

``--monitoring_config_file`` is TF Serving's own ``MonitoringConfig`` (protobuf text)::

    prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }

and, when enabled, the REST port answers ``GET <path>`` with the Prometheus text format,
so scrape configurations, dashboards and alerts made for TF Serving (its names begin
``:tensorflow:serving:``) work unchanged. The metrics are TF Serving's:

- ``:tensorflow:serving:request_count{model_name, status}``: requests by canonical status;
- ``:tensorflow:serving:request_latency{model_name, API, entrypoint}``: a request's wall
  time in microseconds, from its arrival to its answer (``entrypoint`` ``REST`` or
  ``GRPC``), a histogram on TF Serving's buckets;
- ``:tensorflow:serving:runtime_latency{model_name, API, runtime}``: the model call alone;
- ``:tensorflow:serving:batching_session:queuing_latency{thread_pool_name}``: how long a
  request waited for its batch (with ``--enable_batching``);
- ``:tensorflow:core:graph_runs`` and ``:tensorflow:core:graph_run_time_usecs``: model
  calls (a batch is one) and their time;
- ``:tensorflow:cc:saved_model:load_attempt_count{model_path, status}`` and
  ``:tensorflow:cc:saved_model:load_latency{model_path}``: SavedModel loads.
"""

from __future__ import annotations

import bisect
import re
import threading
from dataclasses import dataclass

from google.protobuf import text_format

from .protos import parse

DEFAULT_PATH = "/monitoring/prometheus/metrics"
LATENCY_BUCKETS = tuple(10 * 1.8**i for i in range(33))
"""TF Serving's latency buckets in microseconds: 10, 18, 32.4, ... (about 20 minutes)."""


class Counter:
    """A counter by label values."""

    kind = "counter"

    def __init__(self, name: str, help_: str, *labels: str):
        self.name, self.help, self.labels = name, help_, labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def add(self, *values: str, by: float = 1) -> None:
        with self._lock:
            self._values[values] = self._values.get(values, 0) + by

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labels, k)} {_number(v)}" for k, v in items]


class Sampler:
    """A histogram by label values (TF's ``monitoring::Sampler``), on ``buckets``."""

    kind = "histogram"

    def __init__(self, name: str, help_: str, *labels: str, buckets=LATENCY_BUCKETS):
        self.name, self.help, self.labels, self.buckets = name, help_, labels, tuple(buckets)
        self._cells: dict[tuple[str, ...], list] = {}
        """label values -> [counts per bucket (the last: over every bound), sum, count]"""
        self._lock = threading.Lock()

    def add(self, *values: str, sample: float) -> None:
        at = bisect.bisect_left(self.buckets, sample)
        with self._lock:
            cell = self._cells.get(values)
            if cell is None:
                cell = self._cells[values] = [[0] * (len(self.buckets) + 1), 0.0, 0]
            cell[0][at] += 1
            cell[1] += sample
            cell[2] += 1

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, ([*c[0]], c[1], c[2])) for k, c in self._cells.items())
        out = []
        for values, (counts, total, count) in items:
            running = 0
            bounds = [*(format(b, ".6g") for b in self.buckets), "+Inf"]
            for bound, n in zip(bounds, counts, strict=True):
                running += n
                le = _labels((*self.labels, "le"), (*values, bound))
                out.append(f"{self.name}_bucket{le} {running}")
            out.append(f"{self.name}_sum{_labels(self.labels, values)} {_number(total)}")
            out.append(f"{self.name}_count{_labels(self.labels, values)} {count}")
        return out


class Metrics:
    """The model server's metrics (one set per process)."""

    def __init__(self):
        self.request_count = Counter(
            ":tensorflow:serving:request_count", "The total number of requests.",
            "model_name", "status",
        )  # fmt: skip
        self.request_latency = Sampler(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            "model_name", "API", "entrypoint",
        )  # fmt: skip
        self.runtime_latency = Sampler(
            ":tensorflow:serving:runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            "model_name", "API", "runtime",
        )  # fmt: skip
        self.queuing_latency = Sampler(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            "thread_pool_name",
        )
        self.graph_runs = Counter(":tensorflow:core:graph_runs", "The number of graph executions.")
        self.graph_run_time = Counter(
            ":tensorflow:core:graph_run_time_usecs",
            "The total time spent on executing graphs in microseconds.",
        )
        self.load_attempts = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count",
            "The number of times a SavedModel was successfully loaded.",
            "model_path", "status",
        )  # fmt: skip
        self.load_latency = Counter(
            ":tensorflow:cc:saved_model:load_latency",
            "Latency in microseconds for SavedModels that were successfully loaded.",
            "model_path",
        )
        self._all = (
            self.request_count, self.request_latency, self.runtime_latency,
            self.queuing_latency, self.graph_runs, self.graph_run_time,
            self.load_attempts, self.load_latency,
        )  # fmt: skip

    def request(self, model: str, api: str, entrypoint: str, status: str, seconds: float):
        """One request answered: its count and wall time."""
        self.request_count.add(model or "", status)
        self.request_latency.add(model or "", api, entrypoint, sample=seconds * 1e6)

    def model_call(self, model: str, api: str, seconds: float) -> None:
        """One call of a model's signature (a batch is one)."""
        usecs = seconds * 1e6
        self.runtime_latency.add(model, api, "TF2", sample=usecs)
        self.graph_runs.add()
        self.graph_run_time.add(by=round(usecs))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric that has a value."""
        out = []
        for metric in self._all:
            lines = metric.lines()
            if lines:
                out += [
                    f"# HELP {metric.name} {metric.help}",
                    f"# TYPE {metric.name} {metric.kind}",
                ]
                out += lines
        return ("\n".join(out) + "\n").encode()


def _labels(names, values) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# -- the config file ----------------------------------------------------------------------


class MonitoringConfigError(ValueError):
    """A monitoring config that cannot be read; the message says why."""


@dataclass(frozen=True)
class Prometheus:
    enable: bool = False
    path: str = DEFAULT_PATH


_PATH = re.compile(r"/[A-Za-z0-9/_.\-]*")


def read_config(text: str) -> Prometheus:
    """The ``prometheus_config`` of a TF Serving ``MonitoringConfig`` text."""
    try:
        message = parse("MonitoringConfig", text)
    except text_format.ParseError as e:
        raise MonitoringConfigError(
            f"the monitoring config is not a MonitoringConfig: {e}"
        ) from None
    config = message.prometheus_config
    path = config.path or DEFAULT_PATH
    if not _PATH.fullmatch(path) or path.lower().startswith("/v1"):
        raise MonitoringConfigError(
            f"prometheus_config.path {path!r}: a URL path of letters, digits and /_.- outside /v1"
        )
    return Prometheus(config.enable, path)
