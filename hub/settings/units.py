"""Sizes and durations as the settings write them, and the error every setting raises.

``parse_size`` reads ``10GiB``, ``500 MB`` or a number of bytes, ``parse_duration``
reads ``90s``, ``30m``, ``2h`` or a number of seconds, and ``format_size`` writes bytes
for people. ``SettingsError`` is what a malformed value, file or override raises, with
a message that says where.
"""

from __future__ import annotations

import re


class SettingsError(ValueError):
    """The settings file or an override is invalid; the message says where."""


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_SECONDS = 100 * 365 * 86400
MAX_SIZE_BYTES = 2**60


def parse_duration(value: object, where: str = "duration") -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` -> seconds; empty means 0 (never)."""
    text = str(value).strip().lower()
    if not text:
        return 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text)
    if not m:
        raise SettingsError(f"{where}: expected a duration like 90s, 30m or 2h, got {value!r}")
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds > MAX_DURATION_SECONDS:  # 400 nines is inf: no JSON can hold it
        days = MAX_DURATION_SECONDS // 86400
        raise SettingsError(f"{where}: at most {days} days, got {text[:24]}")
    return seconds


_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "KIB": 1024,
    "M": 10**6,
    "MB": 10**6,
    "MIB": 2**20,
    "G": 10**9,
    "GB": 10**9,
    "GIB": 2**30,
    "T": 10**12,
    "TB": 10**12,
    "TIB": 2**40,
}


def parse_size(value: object, where: str = "size", allow_unlimited: bool = False) -> int:
    """``10GiB``, ``500 MB``, ``1048576`` -> bytes; ``-1`` means no limit where allowed."""
    text = str(value).strip()
    if allow_unlimited and text == "-1":
        return -1
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise SettingsError(f"{where}: expected a size like 10GiB or 500MB, got {value!r}")
    number = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if number > MAX_SIZE_BYTES:  # 400 digits is inf, which int() cannot take
        raise SettingsError(f"{where}: at most 1 EiB, got {text[:24]}")
    n = int(number)
    if n <= 0:
        raise SettingsError(f"{where}: a size must be more than 0, got {value!r}")
    return n


def format_size(n: int | None) -> str:
    """Bytes for people: ``1.5 GiB``; None or negative: ``unlimited``."""
    if n is None or n < 0:
        return "unlimited"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
