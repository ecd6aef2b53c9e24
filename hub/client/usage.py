"""``gpulab usage``: GPU-hours held and busy over a period, by user, group, profile, kind
of holder, GPU model or day (``GET /hub/api/gpulab/usage``; docs/usage.md)."""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime

from rich.table import Table
from rich.text import Text

from ..ledger.usage import GROUPINGS
from ..settings import Settings
from .api import GpulabClient
from .output import console

CSV_FIELDS = (
    "held_seconds",
    "sampled_seconds",
    "busy_seconds",
    "idle_seconds",
    "utilization_seconds",
    "busy_share",
    "holdings",
)
"""The columns of ``--csv`` after the key, as the API names them."""

TOTAL = "total"
"""The key of the last row, the whole period's."""


def add_parsers(sub) -> None:
    usage = sub.add_parser(
        "usage",
        help="GPU-hours held and busy over a period, by user, group, profile, ...",
        description="GPU-hours held and busy over a period (default: this month so far, "
        "UTC). Users see their own; admins everyone's.",
    )
    usage.add_argument(
        "--from",
        dest="start",
        metavar="DATE",
        help="start: an ISO 8601 date or time, UTC unless it says (default: this month's first)",
    )
    usage.add_argument("--to", dest="end", metavar="DATE", help="end (default: now)")
    usage.add_argument(
        "--by",
        default="user",
        metavar="|".join(GROUPINGS),
        help="one row per user (the default), group, profile, kind of holder (server, job, "
        "model), GPU model or day",
    )
    usage.add_argument("--user", metavar="NAME", help="only this user's holdings (admins)")
    usage.add_argument(
        "--csv",
        action="store_true",
        help="print CSV: a header, a row per key, the total last; seconds, not hours",
    )
    usage.add_argument("--url", help="hub URL (default: $GPULAB_URL or this machine's hub)")
    usage.add_argument("--token", help="API token (default: $GPULAB_TOKEN)")


def cmd_usage(args, settings: Settings) -> int:
    client = GpulabClient.from_environment(args.url, args.token, settings)
    asked = {"from": args.start, "to": args.end, "by": args.by, "user": args.user}
    report = client.request(
        "GET", "/gpulab/usage", params={k: v for k, v in asked.items() if v is not None}
    )
    if args.csv:
        write_csv(report)
    else:
        console.print(period(report), highlight=False, markup=False, soft_wrap=True)
        if report["rows"]:
            console.print(usage_table(report), highlight=False)
        else:
            console.print("No GPU was held in this period.")
    return 0


def period(report: dict) -> str:
    """``GPU usage [of alice ]from 2026-12-01 00:00 to 2026-12-07 14:02 UTC, by user``."""
    whose = f"of {report['user']} " if report.get("user") else ""
    return (
        f"GPU usage {whose}from {_minute(report['from'])} to {_minute(report['to'])} UTC, "
        f"by {report['by']}"
    )


def usage_table(report: dict) -> Table:
    """A row per key, GPU-hours held, sampled, busy and idle, the busy share, then the
    total."""
    by = report["by"]
    table = Table()
    table.add_column(Text(by.replace("_", " ")))
    for column in (
        "held GPU-h",
        "sampled GPU-h",
        "busy GPU-h",
        "idle GPU-h",
        "busy share",
        "holdings",
    ):
        table.add_column(column, justify="right")
    rows = report["rows"]
    for i, row in enumerate(rows):
        table.add_row(Text(_key(by, row[by])), *_cells(row), end_section=i == len(rows) - 1)
    table.add_row(TOTAL, *_cells(report["total"]), style="bold")
    return table


def write_csv(report: dict) -> None:
    """The report as CSV on stdout: seconds as numbers, ``busy_share`` a fraction (empty
    when nothing was sampled), the key empty for holders in no group."""
    by = report["by"]
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow((by, *CSV_FIELDS))
    for key, row in [*((r[by], r) for r in report["rows"]), (TOTAL, report["total"])]:
        out.writerow((key, *("" if row[f] is None else row[f] for f in CSV_FIELDS)))


def _cells(row: dict) -> list[str]:
    share = row["busy_share"]
    return [
        *(
            _hours(row[f])
            for f in ("held_seconds", "sampled_seconds", "busy_seconds", "idle_seconds")
        ),
        "—" if share is None else f"{share:.0%}",
        str(row["holdings"]),
    ]


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return "<0.01" if 0 < hours < 0.005 else f"{hours:,.2f}"


def _key(by: str, key: str) -> str:
    if key:
        return key
    return "(no group)" if by == "group" else "-"


def _minute(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


COMMANDS = {"usage": cmd_usage}
