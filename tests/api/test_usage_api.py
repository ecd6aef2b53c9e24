"""GET /hub/api/gpulab/usage against the hub in-process: the GPU time a user's server
held, and how much of it the hub's samples saw busy; who sees whose; what bad periods
and groupings get."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hubfixture import wait_for


def usage(hub, who, **query) -> dict:
    r = who.session.get(hub.api("/gpulab/usage"), params=query, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_users_gpu_time_held_and_busy_and_who_sees_it(hub):
    alice, bob = hub.create_user("alice"), hub.create_user("bob")
    admin = hub.create_user("usage-admin", admin=True)
    assert alice.spawn(profile="gpu-1").status_code in (201, 202)
    wait_for(lambda: "alice" in hub.holders().values(), 30, "alice's GPU")
    hub.app.users["alice"].spawner.recorded().utilization = 90.0  # a cell computes on it

    # the hub's rounds (every second here) sample her server: busy
    def sampled():
        row = usage(hub, alice)["total"]
        return row if row["busy_seconds"] >= 2 else None

    total = wait_for(sampled, 30, "two busy seconds sampled")
    assert total["held_seconds"] >= total["sampled_seconds"] > 0
    assert total["busy_share"] > 0.5
    assert total["utilization_seconds"] > 0

    mine = usage(hub, alice)
    assert mine["user"] == "alice" and [r["user"] for r in mine["rows"]] == ["alice"]
    # by profile, kind, GPU model and day
    assert [r["profile"] for r in usage(hub, alice, by="profile")["rows"]] == ["gpu-1"]
    assert [r["kind"] for r in usage(hub, alice, by="kind")["rows"]] == ["server"]
    today = datetime.now(UTC).date().isoformat()
    assert usage(hub, alice, by="day")["rows"][-1]["day"] == today

    # bob sees his own (nothing), not alice's; the admin sees alice's
    assert usage(hub, bob)["rows"] == []
    r = bob.session.get(hub.api("/gpulab/usage"), params={"user": "alice"}, timeout=30)
    assert r.status_code == 403 and "alice" in r.json()["message"]
    everyone = usage(hub, admin)
    assert everyone["user"] is None and "alice" in [r["user"] for r in everyone["rows"]]
    assert usage(hub, admin, user="alice")["rows"][0]["held_seconds"] > 0

    # a period before her server: nothing
    long_ago = {"from": "2020-01-01", "to": "2020-02-01"}
    assert usage(hub, alice, **long_ago)["total"]["held_seconds"] == 0


def test_bad_periods_and_groupings_get_a_400_with_a_message(hub):
    alice = hub.create_user("alice")
    now = datetime.now(UTC)
    for query, words in (
        ({"by": "colour"}, "by: one of"),
        ({"from": "yesterday"}, "ISO 8601"),
        ({"from": now.isoformat(), "to": (now - timedelta(days=1)).isoformat()}, "after"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "at most 400 days"),
        ({"to": "9999-12-31T23:00-05:00"}, "ISO 8601"),
    ):
        r = alice.session.get(hub.api("/gpulab/usage"), params=query, timeout=30)
        assert r.status_code == 400, (query, r.text)
        assert words in r.json()["message"], (query, r.text)
