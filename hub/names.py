"""Names derived from hub user names: safe for files, unix accounts and Ceph."""

from __future__ import annotations

import hashlib
import re


def safe_name(hub_name: str) -> str:
    """A file- and unix-safe form of a hub user name, unique per name."""
    cleaned = re.sub(r"[^a-z0-9_-]", "-", hub_name.lower()).strip("-") or "user"
    if cleaned != hub_name or len(cleaned) > 20:
        digest = hashlib.sha256(hub_name.encode()).hexdigest()[:6]
        cleaned = f"{cleaned[:13]}-{digest}"
    return cleaned
