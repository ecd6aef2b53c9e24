"""The replayed day of ``benchmarks/gpu_day.py``, small: 8 users on 2 GPUs for 4 hours.

Under gpulab's reclaim (the real ledger and ``GpuSwitch.reclaim_idle`` on the replay's
clock) idle GPUs go back to the pool without any kernel losing its state, so fewer
GPU-hours sit held and idle than under the idle culler, and the ledger's usage
accounting agrees with the replay on the GPU time held."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_day():
    spec = importlib.util.spec_from_file_location("gpu_day", REPO / "benchmarks" / "gpu_day.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def day(gpu_day):
    return gpu_day.main(["--seed", "3", "--users", "8", "--gpus", "2", "--hours", "4"])


def test_the_reclaim_returns_idle_gpus_and_no_kernel_loses_its_state(day):
    a, b = day.a, day.b
    assert b.returns > 0  # the real reclaim gave GPUs back
    assert b.gets > 0  # and users got them again
    assert (b.culled, b.redone_hours, b.lost_later_hours) == (0, 0, 0)
    assert a.idle_hours > 0
    assert b.idle_hours < a.idle_hours
    # freed GPUs went to the users who waited: more of the day's cells ran
    assert b.done_hours > a.done_hours


def test_the_ledgers_usage_accounting_agrees_with_the_replay(day):
    b = day.b
    assert b.held_hours > 0
    assert b.ledger_held_hours == pytest.approx(b.held_hours, rel=0.01)
    assert b.ledger_job_hours == pytest.approx(b.job_hours, rel=0.01, abs=1e-6)
    # the reclaim's rounds sample the time held (all but the minute before each return),
    # busy where a round found a cell computing
    assert b.ledger_sampled_hours == pytest.approx(b.held_hours, rel=0.05)
    assert 0 < b.ledger_busy_hours < b.ledger_sampled_hours


def test_the_last_line_is_the_ratio_of_idle_gpu_hours(day, gpu_day, capsys):
    last = day.lines[-1]
    assert re.fullmatch(r"idle_gpu_hours_saved_ratio: \d+\.\d{3}", last), last
    assert float(last.split(": ")[1]) == pytest.approx(
        day.b.idle_hours / day.a.idle_hours, abs=1e-3
    )
    gpu_day.main(["--seed", "3", "--users", "2", "--gpus", "1", "--hours", "1"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("idle_gpu_hours_saved_ratio: ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--users", "0"], "--users: 1 to 10000"),
        (["--hours", "-1"], "--hours: more than 0"),
        (["--idle-return", "soon"], "expected a duration like 90s, 30m or 2h"),
        (["--idle-return", "0"], "--idle-return: more than 0"),
    ],
)
def test_bad_arguments_are_refused_with_a_message(gpu_day, capsys, args, message):
    with pytest.raises(SystemExit) as exit:
        gpu_day.main(args)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err
