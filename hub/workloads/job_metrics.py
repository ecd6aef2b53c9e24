"""A job's metrics, as Katib's collectors read them: from a replica's output
(``gpulab-metric:`` lines, ``name=value`` or ``name: value``, or the job's own
``metrics_format``, a regular expression applied with a time budget) and from the
TensorBoard event files of a folder (``metrics_events``, read in the replica's own shell
by :mod:`.tfevents`); and the checks a ``metrics_format`` passes before it is used.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import regex

from . import tfevents
from .bodies import FieldError

if TYPE_CHECKING:
    from .spec import JobSpec

METRIC_PREFIX = "gpulab-metric:"
"""A line ``gpulab-metric: loss=0.25 accuracy=0.91`` in a replica's output reports metrics."""
FORMAT_BUDGET = 1.0
"""Seconds a job's ``metrics_format`` may take over the whole log it reads (in a thread
of its own, so the hub answers meanwhile); what it found by then counts."""
MAX_METRICS_FORMAT = 256
MAX_UNROLLED = 20_000
"""The most a metrics_format's length times its counted repetitions (``x{m,n}``) may
come to: the ``regex`` module unrolls each ``m`` times when it compiles, so big or
nested ones could take the hub seconds and gigabytes before any timeout applies (at
this bound a compile takes milliseconds)."""


def _unrolled(pattern: str) -> int:
    """An upper bound of how big the ``regex`` module makes a pattern when it unrolls its
    counted repetitions: its length times every ``{m`` in it plus one (any ``{`` followed
    by digits counts, as nesting is not worked out)."""
    return len(pattern) * math.prod(int(m) + 1 for m in re.findall(r"\{\s*(\d+)", pattern))


@functools.lru_cache(maxsize=64)
def metrics_pattern(text: str) -> regex.Pattern:
    """``text`` compiled as a metrics_format, or a FieldError saying what is wrong with it:
    a regular expression (the ``regex`` module's, Python's ``re`` syntax and more) of
    exactly two groups, whose counted repetitions stay small."""
    if len(text) > MAX_METRICS_FORMAT:
        raise FieldError(f"at most {MAX_METRICS_FORMAT} characters (got {len(text)})")
    if _unrolled(text) > MAX_UNROLLED:
        raise FieldError(
            "its counted repetitions ({m,n}) are too big: its length times each m + 1 "
            f"may come to at most {MAX_UNROLLED}"
        )
    try:
        pattern = regex.compile(text)
    except (regex.error, ValueError, OverflowError, RecursionError) as e:
        raise FieldError(f"not a regular expression: {e}") from None
    if pattern.groups != 2:
        raise FieldError(
            f"needs exactly two groups, (name) and (value); it has {pattern.groups}: "
            "make the others non-capturing, (?:...)"
        )
    return pattern


def events_env(spec: JobSpec, since: float) -> dict[str, str]:
    """The variables that have a replica's shell read the job's TensorBoard scalars into
    its metrics file once the command ended (``tfevents``; the shell unsets the source
    before the command runs), from the event files written ``since`` then (seconds since
    the epoch); none without ``metrics_events``."""
    if not spec.metrics_events:
        return {}
    return {
        "GPULAB_METRICS_EVENTS": spec.metrics_events,
        "GPULAB_METRICS_NAMES": " ".join(spec.metrics),
        "GPULAB_METRICS_SINCE": f"{since:.3f}",
        "GPULAB_METRICS_READER": tfevents.source(),
    }


STDOUT_METRIC = re.compile(
    r"(?<![\w./-])([A-Za-z_][\w./-]*)\s*[=:]\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?![\w.])"
)
"""``name=value`` (Katib's StdOut collector's format) or ``name: value`` (Keras', most
print statements'), anywhere in a line: ``epoch 3 - loss: 0.25 - val_loss=0.31``."""


@dataclass
class ScannedMetrics:
    values: dict[str, float]
    stopped_at: int = 0
    """The line (from 1) the ``metrics_format`` ran out of time on, and was not applied
    from; 0: it read every line."""


def parse_metrics(
    output: bytes, names: Iterable[str] = (), metrics_format: str = ""
) -> dict[str, float]:
    """The metrics in a replica's output (``scan_metrics``)."""
    return scan_metrics(output, names, metrics_format).values


def scan_metrics(
    output: bytes,
    names: Iterable[str] = (),
    metrics_format: str = "",
    budget: float = FORMAT_BUDGET,
) -> ScannedMetrics:
    """The metrics in a replica's output: every ``gpulab-metric:`` line's ``name=value``
    pairs, and the ``names`` asked for wherever ``STDOUT_METRIC`` (or the job's
    ``metrics_format``, whose first group is the name and second the value) finds them
    in a line; the last value of each wins. A ``metrics_format`` gets ``budget`` seconds
    for the whole output; where it runs out it is applied no further."""
    wanted = set(names)
    pattern = metrics_pattern(metrics_format) if metrics_format else None
    ends = time.monotonic() + budget
    scanned = ScannedMetrics({})
    metrics = scanned.values
    for at, line in enumerate(output.decode(errors="replace").splitlines(), 1):
        line = line.strip()
        if line.startswith(METRIC_PREFIX):
            for pair in line[len(METRIC_PREFIX) :].replace(",", " ").split():
                key, sep, value = pair.partition("=")
                found = number(value) if sep else None
                if key and found is not None:
                    metrics[key] = found
        elif not wanted:
            continue
        elif pattern is None:
            for found in STDOUT_METRIC.finditer(line):
                value = number(found[2])
                if found[1] in wanted and value is not None:
                    metrics[found[1]] = value
        elif not scanned.stopped_at:
            pairs = _format_pairs(pattern, line, ends - time.monotonic())
            if pairs is None:
                scanned.stopped_at = at
                continue
            for name, text in pairs:
                value = number(text)
                if name.strip() in wanted and value is not None:
                    metrics[name.strip()] = value
    return scanned


def _format_pairs(pattern, line: str, seconds: float) -> list[tuple[str, str]] | None:
    """(name, value) of each match of a metrics_format in ``line``; None if that takes
    longer than ``seconds``. ``concurrent`` lets other threads run meanwhile."""
    if seconds <= 0:
        return None
    try:
        return pattern.findall(line, timeout=seconds, concurrent=True)
    except TimeoutError:
        return None


def number(value) -> float | None:
    """``value`` as a finite float, or None (not a number, a bool, NaN or infinite)."""
    if isinstance(value, bool):
        return None
    try:
        found = float(value)
    except (TypeError, ValueError):
        return None
    return found if math.isfinite(found) else None  # NaN and inf are not JSON
