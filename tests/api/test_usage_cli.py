"""The ``gpulab usage`` command, run as a user runs it: the CLI as a subprocess with
GPULAB_URL / GPULAB_TOKEN, against the hub in-process, whose ledger accounts a (recorded)
server's GPU."""

from __future__ import annotations

import csv
import io
from datetime import datetime

from hubfixture import cells, gpulab, lines_with, wait_for

COLUMNS = [
    "held_seconds",
    "sampled_seconds",
    "busy_seconds",
    "idle_seconds",
    "utilization_seconds",
    "busy_share",
    "holdings",
]


def api_usage(hub, **params) -> dict:
    r = hub.admin.get(hub.api("/gpulab/usage"), params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def held_by(hub, user: str) -> float:
    return sum(row["held_seconds"] for row in api_usage(hub)["rows"] if row["user"] == user)


def minute(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")


def test_a_spawned_servers_gpu_shows_in_the_table_the_csv_and_by_kind(hub):
    ursula = hub.create_user("ursula")
    assert ursula.spawn(profile="gpu-1").status_code in (201, 202)
    wait_for(lambda: held_by(hub, "ursula") > 0, 30, "ursula's held seconds to count")
    admin = (hub.data_root / "cli-token").read_text().strip()

    # the table: the period, a row for ursula, the total, as the admin sees everyone
    before = api_usage(hub)
    out = gpulab(hub, admin, "usage")
    assert out.returncode == 0, (out.stdout, out.stderr)
    first, *rest = out.stdout.splitlines()
    assert first.startswith(f"GPU usage from {minute(before['from'])} to ")
    assert first.endswith(" UTC, by user")
    table = "\n".join(rest)
    assert cells(lines_with(table, "held GPU-h")[0]) == [
        "user",
        "held GPU-h",
        "sampled GPU-h",
        "busy GPU-h",
        "idle GPU-h",
        "busy share",
        "holdings",
    ]
    (row,) = lines_with(table, "ursula")
    name, held, sampled, busy, idle, share, holdings = cells(row)
    assert name == "ursula" and holdings == "1"
    assert held == "<0.01" or float(held) > 0  # a few seconds of one GPU
    assert (share == "—") if sampled == "0.00" else share.endswith("%")
    (total,) = lines_with(table, "total")
    assert cells(total) == ["total", held, sampled, busy, idle, share, "1"]  # the only holder

    # --csv: numbers in seconds, ursula's row, then the total
    out = gpulab(hub, admin, "usage", "--csv")
    after = held_by(hub, "ursula")
    assert out.returncode == 0, (out.stdout, out.stderr)
    reader = csv.DictReader(io.StringIO(out.stdout))
    assert reader.fieldnames == ["user", *COLUMNS]
    rows = list(reader)
    assert [r["user"] for r in rows] == ["ursula", "total"]
    mine, everyone = rows
    assert before["total"]["held_seconds"] <= float(mine["held_seconds"]) <= after
    assert float(everyone["held_seconds"]) == float(mine["held_seconds"])
    assert mine["holdings"] == everyone["holdings"] == "1"
    sampled_seconds = float(mine["sampled_seconds"])
    if sampled_seconds:
        assert 0 <= float(mine["busy_share"]) <= 1
    else:
        assert mine["busy_share"] == ""

    # --by kind: a notebook server's GPU; --by profile with --user: ursula's profile
    out = gpulab(hub, admin, "usage", "--by", "kind")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.splitlines()[0].endswith(" UTC, by kind")
    (row,) = lines_with(out.stdout, "server")
    assert cells(row)[0] == "server" and cells(row)[-1] == "1"
    out = gpulab(hub, admin, "usage", "--by", "profile", "--user", "ursula")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.startswith("GPU usage of ursula from ")
    (row,) = lines_with(out.stdout, "gpu-1")
    assert cells(row)[0] == "gpu-1" and cells(row)[-1] == "1"

    # ursula herself sees her own
    out = gpulab(hub, ursula.token, "usage", "--csv")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert [r["user"] for r in csv.DictReader(io.StringIO(out.stdout))] == ["ursula", "total"]


def test_bad_arguments_exit_1_with_the_hubs_message(hub):
    admin = (hub.data_root / "cli-token").read_text().strip()
    victor = hub.create_user("victor")
    for args, status, message in (
        (
            ("--by", "colour"),
            "400",
            "by: one of user, group, profile, kind, gpu_model, day, not 'colour'",
        ),
        (("--from", "2026-12-07", "--to", "2026-12-01"), "400", "to must come after from"),
        (("--from", "last tuesday"), "400", "from: a date or time in ISO 8601"),
    ):
        out = gpulab(hub, admin, "usage", *args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert out.stderr.startswith(f"gpulab: {status}: {message}"), out.stderr
        assert "Traceback" not in out.stderr and out.stdout == ""

    out = gpulab(hub, victor.token, "usage", "--user", "ursula")
    assert out.returncode == 1
    assert "403: Only admins act for other users; you are not ursula" in out.stderr
