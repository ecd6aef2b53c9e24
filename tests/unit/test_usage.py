"""Usage accounting: a period's GPU time from the ledger's holdings, cut to the period,
by user, group, profile, kind of holder, GPU model or day; and the ledger that writes
the holdings (a real SQLite ledger)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gpulab.hub.inventory import Gpu
from gpulab.hub.ledger import GpuLedger
from gpulab.hub.ledger.usage import Holding, Sample, summarize, total

T0 = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
H = timedelta(hours=1)


def holding(user="alice", start=T0, hours=2.0, sampled=0.0, busy=0.0, **kw) -> Holding:
    fields = dict(
        gpu_id="0", gpu_model="H100", user=user, server="", groups=(), profile="gpu-1",
        start=start, end=None if hours is None else start + hours * H,
        sampled_seconds=sampled, busy_seconds=busy, utilization_seconds=busy / 2,
    )  # fmt: skip
    fields.update(kw)
    return Holding(**fields)


def test_a_period_counts_the_part_of_each_holding_inside_it():
    # two hours from 22:00, of which the period 23:00..midnight holds one
    rows = summarize([holding(sampled=7200, busy=3600)], T0 + H, T0 + 2 * H, "user", T0 + 9 * H)
    (row,) = rows
    assert row["user"] == "alice"
    assert row["held_seconds"] == 3600
    # samples are totals per holding: taken in the same proportion
    assert (row["sampled_seconds"], row["busy_seconds"], row["idle_seconds"]) == (3600, 1800, 1800)
    assert row["busy_share"] == 0.5
    assert row["holdings"] == 1


def test_a_holding_still_open_counts_until_now_and_one_outside_the_period_not_at_all():
    now = T0 + 3 * H
    open_one = holding(hours=None)
    before = holding(user="bob", start=T0 - 5 * H, hours=1)
    (row,) = summarize([open_one, before], T0, T0 + 10 * H, "user", now)
    assert (row["user"], row["held_seconds"]) == ("alice", 3 * 3600)
    # nothing sampled (a job's replica): the share is unknown, not 0
    assert row["busy_share"] is None


def test_rows_by_group_count_a_member_of_two_in_both_and_others_under_no_group():
    holdings = [
        holding(user="alice", groups=("nlp", "vision")),
        holding(user="bob", groups=("vision",)),
        holding(user="carol"),
    ]
    rows = summarize(holdings, T0, T0 + 2 * H, "group", T0 + 5 * H)
    held = {row["group"]: row["held_seconds"] for row in rows}
    assert held == {"vision": 4 * 3600, "nlp": 2 * 3600, "": 2 * 3600}
    assert rows[0]["group"] == "vision"  # the most held first
    assert total(holdings, T0, T0 + 2 * H, T0 + 5 * H)["held_seconds"] == 6 * 3600


def test_rows_by_kind_profile_and_model():
    holdings = [
        holding(server="", profile="gpu-1"),
        holding(server="job/7/worker-0", profile=""),
        holding(server="model/3/replica-0", profile="", gpu_model="A100"),
    ]
    window = (T0, T0 + 2 * H, "kind", T0 + 5 * H)
    assert sorted(r["kind"] for r in summarize(holdings, *window)) == ["job", "model", "server"]
    by_model = summarize(holdings, T0, T0 + 2 * H, "gpu_model", T0 + 5 * H)
    assert {r["gpu_model"]: r["holdings"] for r in by_model} == {"H100": 2, "A100": 1}
    by_profile = summarize(holdings, T0, T0 + 2 * H, "profile", T0 + 5 * H)
    assert {r["profile"]: r["holdings"] for r in by_profile} == {"gpu-1": 1, "": 2}


def test_rows_by_day_split_a_holding_at_midnight_utc():
    rows = summarize([holding(hours=4)], T0 - 24 * H, T0 + 24 * H, "day", T0 + 30 * H)
    assert [(r["day"], r["held_seconds"]) for r in rows] == [
        ("2026-12-01", 2 * 3600),
        ("2026-12-02", 2 * 3600),
    ]


def test_an_unknown_grouping_is_refused():
    with pytest.raises(ValueError, match="by: one of"):
        summarize([], T0, T0 + H, "colour", T0)


def test_the_ledger_keeps_a_holding_per_gpu_from_grant_to_release(tmp_path):
    ledger = GpuLedger(
        f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        [Gpu(id="0", index=0, model="H100"), Gpu(id="1", index=1, model="H100")],
    )
    ledger.reserve("alice", "", 2, groups=["nlp"], profile="gpu-2")
    woken = []
    ledger.on_change(lambda: woken.append(ledger.version))
    ledger.sample([Sample("alice", "", 60, 50, True)])
    assert woken == []  # a round of samples wakes no waiting lab nor Get GPU
    ledger.release("alice", "")
    ledger.reserve("alice", "", 1, profile="gpu-1")  # a new holding, sampled afresh
    now = datetime.now(UTC)
    holdings = ledger.usage(now - H, now + H)
    assert [(h.gpu_id, h.profile, h.end is None) for h in holdings] == [
        ("0", "gpu-2", False),
        ("1", "gpu-2", False),
        ("0", "gpu-1", True),
    ]
    assert [h.busy_seconds for h in holdings] == [60, 60, 0]
    assert holdings[0].groups == ("nlp",) and holdings[0].gpu_model == "H100"
    # a user's own
    assert ledger.usage(now - H, now + H, user="bob") == []
    # a period before any of them
    assert ledger.usage(now - 3 * H, now - 2 * H) == []


def test_grants_made_before_accounting_are_accounted_from_their_grant(tmp_path):
    """A hub upgraded while servers hold GPUs: their holdings start at their grants."""
    from sqlalchemy import delete

    from gpulab.hub.ledger.tables import usage_table

    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    inventory = [Gpu(id="0", index=0, model="H100")]
    ledger = GpuLedger(url, inventory)
    ledger.reserve("alice", "", 1, groups=["nlp"])
    granted = ledger.grants()[0].granted_at
    with ledger.engine.begin() as conn:  # as an earlier version left it: no holdings
        conn.execute(delete(usage_table))
    again = GpuLedger(url, inventory)  # the upgraded hub starts
    now = datetime.now(UTC)
    (h,) = again.usage(now - H, now + H)
    assert (h.user, h.gpu_id, h.gpu_model, h.groups, h.start, h.end) == (
        "alice", "0", "H100", ("nlp",), granted, None,
    )  # fmt: skip
    assert len(GpuLedger(url, inventory).usage(now - H, now + H)) == 1  # once only


def test_a_usage_table_from_before_holdings_kept_their_length_is_brought_up_to_date(
    tmp_path,
):
    """A ledger whose usage table has no held_seconds column (made by an earlier build)
    opens, its ended holdings counted in the all-time totals."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    inventory = [Gpu(id="0", index=0)]
    ledger = GpuLedger(url, inventory)
    ledger.reserve("alice", "", 1)
    ledger.release("alice", "")
    (ended,) = ledger.usage(datetime.now(UTC) - H, datetime.now(UTC) + H)
    with ledger.engine.begin() as conn:  # as the earlier build left it
        conn.exec_driver_sql("ALTER TABLE gpu_usage DROP COLUMN held_seconds")
    ledger.engine.dispose()
    again = GpuLedger(url, inventory)
    (total,) = again.usage_totals(datetime.now(UTC))
    assert total.user == "alice"
    assert total.held_seconds == pytest.approx((ended.end - ended.start).total_seconds(), abs=1e-3)
