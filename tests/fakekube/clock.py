"""Timestamps in the two wire formats the API uses: ``metav1.Time`` (RFC 3339, whole
seconds, "2024-05-01T12:00:00Z") and ``metav1.MicroTime`` (microseconds)."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(at: float | None = None) -> str:
    moment = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro(at: float | None = None) -> str:
    moment = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(stamp: str) -> float:
    text = stamp.replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()
