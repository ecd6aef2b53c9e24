"""GET /hub/api/gpulab/usage: GPU-hours held and busy over a period, by user, group,
profile, kind of holder, GPU model or day (``ledger/usage.py``).

Users see their own holdings (``?user=`` themselves); admins everyone's, or one user's
with ``?user=NAME``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tornado import web

from gpulab.hub.ledger import utcnow
from gpulab.hub.ledger.usage import GROUPINGS, summarize, total

from .base import GpulabAPIHandler

LONGEST = timedelta(days=400)
"""The longest period one request may cover."""


def parse_time(value: str, name: str) -> datetime:
    """An ISO 8601 date or time (UTC unless it says otherwise), or a 400 saying so."""
    try:
        at = datetime.fromisoformat(value.strip())
        return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except (ValueError, OverflowError):
        raise web.HTTPError(
            400, f"{name}: a date or time in ISO 8601 (2026-12-01 or 2026-12-01T09:00Z)"
        ) from None


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class UsageHandler(GpulabAPIHandler):
    async def get(self):
        me, admin = self.prepare_gpulab()
        only = self.target_user(me, admin)
        now = utcnow()
        start = parse_time(self.get_argument("from", month_start(now).isoformat()), "from")
        end = parse_time(self.get_argument("to", now.isoformat()), "to")
        if end <= start:
            raise web.HTTPError(400, "to must come after from")
        if end - start > LONGEST:
            raise web.HTTPError(400, f"a period of at most {LONGEST.days} days, please")
        by = self.get_argument("by", "user")
        if by not in GROUPINGS:
            raise web.HTTPError(400, f"by: one of {', '.join(GROUPINGS)}, not {by!r}")
        holdings = self.gpulab.ledger.usage(start, end, user=only)
        self.write_json(
            {
                "from": start.isoformat(),
                "to": min(end, now).isoformat(),
                "by": by,
                "user": only,
                "rows": summarize(holdings, start, end, by, now),
                "total": total(holdings, start, end, now),
            }
        )


default_handlers = [(r"/api/gpulab/usage", UsageHandler)]
