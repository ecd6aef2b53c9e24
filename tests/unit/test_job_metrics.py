"""How a job's metrics are read from its output with a custom ``metrics_format`` (Katib's
``metricsFormat``), and how a bad format, or a bad ``metrics_events`` folder, is
refused at submit with a message naming the field."""

from __future__ import annotations

import time

import pytest

from gpulab.hub.workloads.bodies import SpecError
from gpulab.hub.workloads.job_metrics import parse_metrics, scan_metrics
from gpulab.hub.workloads.spec import parse_job
from gpulab.hub.workloads.sweeps import parse_sweep, trial_job

KATIB_FORMAT = r"([\w|-]+)\s*=\s*([+-]?\d*(?:\.\d+)?(?:[Ee][+-]?\d+)?)"
"""Katib's default metricsFormat, its inner groups made non-capturing."""

OUTPUT = b"""\
Epoch 1/2 - loss: 0.50 - Validation-accuracy=0.8
Epoch 2/2 - loss: 0.25 - Validation-accuracy=0.9
gpulab-metric: throughput=120
Train-accuracy = 0.95 ; note=abc
"""


def test_a_metrics_format_replaces_the_default_pattern():
    names = ["Validation-accuracy", "Train-accuracy", "loss", "note"]
    assert parse_metrics(OUTPUT, names, KATIB_FORMAT) == {
        "Validation-accuracy": 0.9,  # the last value wins
        "Train-accuracy": 0.95,
        "throughput": 120.0,  # gpulab-metric: lines still count
    }
    # without it, "loss: 0.25" counts too
    assert parse_metrics(OUTPUT, names)["loss"] == 0.25
    # the first group is the name (spaces around it dropped), the second the value
    assert parse_metrics(b"[epoch 3] acc is 0.7\n", ["acc"], r"\] (\w+) is ([\d.]+)") == {
        "acc": 0.7
    }
    # only the names asked for; no names, no format applied
    assert parse_metrics(OUTPUT, [], KATIB_FORMAT) == {"throughput": 120.0}


def test_a_format_that_takes_too_long_keeps_what_it_found_and_says_where_it_stopped():
    hostile = r"((?:a|aa)+)=(\d+)"  # catastrophic backtracking on a run of a's without '='
    output = b"aa=5\n" + (b"a" * 60 + b"!\n") * 3 + b"gpulab-metric: later=1\naa=7\n"
    started = time.monotonic()
    scanned = scan_metrics(output, ["aa"], hostile, budget=0.3)
    assert time.monotonic() - started < 3  # the budget, not the pattern's own time
    assert scanned.values == {"aa": 5.0, "later": 1.0}  # gpulab's lines still count
    assert scanned.stopped_at == 2
    assert scan_metrics(b"aa=5\naa=7\n", ["aa"], hostile).stopped_at == 0


JOB = {"name": "j", "command": "python train.py", "metrics": ["acc"]}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"metrics_format": "(a"}, "metrics_format: not a regular expression: missing )"),
        (
            {"metrics_format": r"acc=(\d+)"},
            "metrics_format: needs exactly two groups, (name) and (value); it has 1",
        ),
        ({"metrics_format": r"(\w+)=((\d+)(\.\d+)?)"}, "it has 4: make the others non-capturing"),
        (
            {"metrics_format": "(a)(b)" + "x" * 251},
            "metrics_format: a regular expression of at most 256 characters (got '(a)(b)xxx",
        ),
        ({"metrics_format": 7}, "metrics_format: a regular expression of at most 256"),
        # the regex module unrolls counted repetitions when it compiles: refused unread
        (
            {"metrics_format": r"((?:(?:\w{100}){100}))=(\d)"},
            "metrics_format: its counted repetitions ({m,n}) are too big",
        ),
        ({"metrics_format": "(a)(b)", "metrics": []}, "metrics: name the metrics that"),
        ({"metrics_events": "/tmp/logs"}, "metrics_events: a folder relative to workdir"),
        ({"metrics_events": "logs/../../x"}, "metrics_events: 'logs/../../x' is outside workdir"),
        ({"metrics_events": ["logs"]}, "metrics_events: a folder relative to workdir"),
        ({"metrics_events": "logs", "metrics": []}, "metrics: name the metrics that"),
    ],
)
def test_bad_formats_and_folders_are_refused_naming_the_field(fields, message):
    started = time.monotonic()
    with pytest.raises(SpecError) as e:
        parse_job({**JOB, **fields})
    assert message in str(e.value)
    assert time.monotonic() - started < 0.5


def test_good_ones_are_kept_on_the_spec():
    spec = parse_job({**JOB, "metrics_format": KATIB_FORMAT, "metrics_events": "./runs/"})
    assert spec.metrics_format == KATIB_FORMAT and spec.metrics_events == "runs"
    assert parse_job({**JOB, "metrics_events": "."}).metrics_events == "."
    assert parse_job(JOB).metrics_format == "" and parse_job(JOB).metrics_events == ""


SWEEP = {
    "name": "s",
    "job": {"script": "train.py"},
    "parameters": {"lr": [0.1, 0.2]},
    "objective": {"metric": "Validation-accuracy", "goal": "maximize"},
}


def test_a_sweep_passes_its_format_and_folder_to_every_trial():
    sweep = parse_sweep({**SWEEP, "metrics_format": KATIB_FORMAT, "metrics_events": "logs"})
    trial = parse_job(trial_job(sweep.job, "s-2", sweep.trials[1], sweep.metric))
    assert trial.metrics_format == KATIB_FORMAT and trial.metrics_events == "logs"
    assert trial.metrics == ("Validation-accuracy",)  # the objective: nothing else named
    # given in the job template instead: the same
    template = {**SWEEP, "job": {"script": "train.py", "metrics_events": "logs"}}
    assert parse_sweep(template).job["metrics_events"] == "logs"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"metrics_format": r"(\w+)"}, "metrics_format: needs exactly two groups"),
        ({"metrics_events": "../x"}, "metrics_events: '../x' is outside workdir"),
        (
            {"job": {"script": "t.py", "metrics_events": "a"}, "metrics_events": "b"},
            "job.metrics_events: given for the sweep too; give it once",
        ),
        ({"job": {"script": "t.py", "metrics_format": "(x)"}}, "job.metrics_format: needs"),
    ],
)
def test_bad_sweep_collectors_are_refused(fields, message):
    with pytest.raises(SpecError) as e:
        parse_sweep({**SWEEP, **fields})
    assert message in str(e.value)
