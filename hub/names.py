"""Names derived from hub user names (unix accounts, homes, RGW users, buckets, Kubernetes
objects), and the registry that keeps them one-to-one.

A derived name is the hub name itself when that is already safe, else a cleaned form with
a short hash of the hub name (``data.team`` -> ``data-team-78209d``). Two rules make the
map injective, against someone who picks their name to collide:

- a safe name that looks like a hashed one (ends in ``-`` and the hash's number of hex
  digits) is hashed too, so no typed name equals another name's hashed form;
- a short hash can still be brute-forced (2**24 tries for 6 hex digits), so every derived
  name is recorded, at first use, with the hub name that owns it (``NameRegistry``, in
  the hub's database, one row per kind and name). A second hub name that maps to a taken
  name is refused (``NameConflict``); nothing is ever shared.

A hub name keeps the name recorded for it forever, so the rules may change without
moving anyone's home: when a kind is first used, the existing hub users get theirs by the
rule they had (``legacy``), in order of creation.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from .ledger import sqlite_immediate_transactions
from .storage import StorageError

log = logging.getLogger(__name__)

HOME = "home"
"""Unix account (prefix + name), home directory, its volume files and snapshots."""
RGW_USER = "rgw-user"
"""The RGW user (uid prefix + name)."""
BUCKET = "bucket"
"""The S3 bucket (the whole bucket name)."""
K8S_PVC = "k8s-pvc"
K8S_SECRET = "k8s-secret"
K8S_POD = "k8s-pod"
IMAGE_REPO = "image-repo"
"""The user's folder in the image registry (their environment snapshots)."""

WHAT = {
    HOME: "unix account and home",
    RGW_USER: "S3 (RGW) user",
    BUCKET: "S3 bucket",
    K8S_PVC: "home volume claim",
    K8S_SECRET: "Kubernetes secret",
    K8S_POD: "Kubernetes pod",
    IMAGE_REPO: "image repository",
}

MADE_FOR = "gpulab user "
"""How an object made for a hub user says whose it is: an account's comment (GECOS), an
RGW user's display name."""


def made_for(hub_name: str) -> str:
    return f"{MADE_FOR}{hub_name}"


def made_for_another(note: str, hub_name: str) -> bool:
    """Whether an object's ``note`` (see ``MADE_FOR``) says it is another hub user's."""
    return note.startswith(MADE_FOR) and note != made_for(hub_name)


_SAFE_HASH = re.compile(r"-[0-9a-f]{6}$")
_BUCKET_HASH = re.compile(r"-[0-9a-f]{8}$")


def _digest(hub_name: str, n: int) -> str:
    return hashlib.sha256(hub_name.encode()).hexdigest()[:n]


def safe_name(hub_name: str) -> str:
    """A file- and unix-safe form of a hub user name (at most 20 characters).

    The name itself when it is already safe and short, else ``<cleaned[:13]>-<6 hex>``;
    a safe name that ends like a hashed one is hashed too, so the two forms never meet.
    """
    cleaned = re.sub(r"[^a-z0-9_-]", "-", hub_name.lower()).strip("-") or "user"
    if cleaned != hub_name or len(cleaned) > 20 or _SAFE_HASH.search(cleaned):
        cleaned = f"{cleaned[:13]}-{_digest(hub_name, 6)}"
    return cleaned


def legacy_safe_name(hub_name: str) -> str:
    """``safe_name`` before names that look hashed were hashed (for existing users)."""
    cleaned = re.sub(r"[^a-z0-9_-]", "-", hub_name.lower()).strip("-") or "user"
    if cleaned != hub_name or len(cleaned) > 20:
        cleaned = f"{cleaned[:13]}-{_digest(hub_name, 6)}"
    return cleaned


def bucket_name(prefix: str, user: str, legacy: bool = False) -> str:
    """A valid S3 bucket name for a hub user: ``gpulab-alice``.

    Lower-case letters, digits and hyphens; names that had to change, are too long, or
    end like a hashed one (unless ``legacy``, the rule existing users were named by) end
    with an 8-hex hash of the user name.
    """
    cleaned = re.sub(r"[^a-z0-9-]", "-", user.lower()).strip("-") or "user"
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    name = f"{prefix}{cleaned}"
    looks_hashed = not legacy and _BUCKET_HASH.search(cleaned)
    if cleaned != user or len(name) > 63 or looks_hashed:
        name = f"{prefix}{cleaned[: 63 - len(prefix) - 9]}-{_digest(user, 8)}"
    return name


def image_repo_name(user: str) -> str:
    """A path component of an OCI repository for a hub user (lower-case letters and
    digits, single '-' between them): the name itself when it already is one, else a
    cleaned form with an 8-hex hash."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", user.lower()).strip("-") or "user"
    if cleaned != user or len(cleaned) > 40 or _BUCKET_HASH.search(cleaned):
        cleaned = f"{cleaned[:31].strip('-')}-{_digest(user, 8)}"
    return cleaned


# -- the registry ------------------------------------------------------------------------

metadata = MetaData()

claims_table = Table(
    "name_claims",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("name", String(255), primary_key=True),  # the database refuses a second owner
    Column("owner", Text, nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
    Index("name_claims_owner", "kind", "owner"),
)

kinds_table = Table(
    "name_kinds",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("since", DateTime(timezone=True), nullable=False),
)


class NameConflict(StorageError):
    """A hub name maps to a derived name that another hub name owns."""

    def __init__(self, kind: str, owner: str, name: str):
        self.kind, self.owner, self.name = kind, owner, name
        super().__init__(
            f"the hub name {owner!r} maps to the {WHAT.get(kind, kind)} {name!r}, which "
            "belongs to another hub user; ask an admin to give this user another name",
            status=409,
        )


class NameRegistry:
    """Which hub name owns each derived name, per kind; first use wins, for good.

    ``hub_users()`` lists the existing hub users in order of creation: when a kind is
    first used, they are given their names by its ``legacy`` rule, in that order.
    """

    def __init__(self, url: str, hub_users: Callable[[], list[str]] = list):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        self.engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            **({"poolclass": StaticPool} if memory else {}),
        )
        if url.startswith("sqlite"):
            sqlite_immediate_transactions(self.engine)
        if url.startswith("sqlite:///") and not memory:
            path = url.split("///", 1)[1]
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        metadata.create_all(self.engine)
        if url.startswith("sqlite:///") and not memory:
            os.chmod(path, 0o600)  # the hub's database: only the hub reads it
        self.hub_users = hub_users
        self._known: dict[tuple[str, str], str] = {}
        """(kind, owner) -> name, and (below) (kind, name) -> owner: claims made here."""
        self._owners: dict[tuple[str, str], str] = {}
        self._guard = threading.Lock()  # one claim at a time in this process (StaticPool)
        self._kinds: set[str] = set()
        """Kinds in use: recorded in the database, for good."""

    def name_for(
        self,
        kind: str,
        owner: str,
        derive: Callable[[str], str],
        legacy: Callable[[str], str] | None = None,
    ) -> str:
        """``owner``'s name of this kind: the one recorded for it, else ``derive(owner)``,
        recorded now; ``NameConflict`` when another hub name owns that."""
        known = self._known.get((kind, owner))
        if known is not None:
            return known  # a claim is never taken back
        with self._guard, self.engine.begin() as conn:
            self._first_use(conn, kind, legacy)
            name = conn.execute(
                select(claims_table.c.name)
                .where(claims_table.c.kind == kind, claims_table.c.owner == owner)
                .order_by(claims_table.c.claimed_at)
            ).scalar()
            if name is None:
                name = derive(owner)
                self._insert(conn, kind, owner, name)
        self._known[(kind, owner)] = name
        return name

    def claim(self, kind: str, owner: str, name: str) -> None:
        """Record that ``name`` (an object name someone else chose, as a pod's) is
        ``owner``'s; ``NameConflict`` when it is another hub name's."""
        self.claim_all([(kind, owner, name)])

    def claim_all(self, claims: list[tuple[str, str, str]]) -> None:
        """``claim`` each (kind, owner, name), in one transaction: all are recorded, or
        none (``NameConflict`` for the first that is another hub name's)."""
        todo = [c for c in claims if self._owners.get((c[0], c[2])) != c[1]]
        if not todo:
            return
        with self._guard, self.engine.begin() as conn:
            for kind, owner, name in todo:
                self._first_use(conn, kind, None)
                self._insert(conn, kind, owner, name)
        self._owners.update({(kind, name): owner for kind, owner, name in todo})

    def owner(self, kind: str, name: str) -> str | None:
        """The hub name that owns ``name`` of this kind, if any."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(claims_table.c.owner).where(
                    claims_table.c.kind == kind, claims_table.c.name == name
                )
            ).scalar()

    def _insert(self, conn, kind: str, owner: str, name: str) -> None:
        other = conn.execute(
            select(claims_table.c.owner).where(
                claims_table.c.kind == kind, claims_table.c.name == name
            )
        ).scalar()
        if other == owner:
            return
        if other is not None:
            log.warning("Refused %s name %r to %r: it is %r's", kind, name, owner, other)
            raise NameConflict(kind, owner, name)
        try:
            conn.execute(
                insert(claims_table).values(
                    kind=kind, name=name, owner=owner, claimed_at=datetime.now(UTC)
                )
            )
        except IntegrityError:  # the key says no, whatever the read above saw
            raise NameConflict(kind, owner, name) from None

    def _first_use(self, conn, kind: str, legacy: Callable[[str], str] | None) -> None:
        """The first time a kind is used, existing hub users get their names by the rule
        they had, oldest first (a later user whose name collided gets none here)."""
        if kind in self._kinds:
            return
        if conn.execute(select(kinds_table.c.kind).where(kinds_table.c.kind == kind)).first():
            self._kinds.add(kind)
            return
        conn.execute(insert(kinds_table).values(kind=kind, since=datetime.now(UTC)))
        if legacy is None:
            return
        for user in self.hub_users():
            name = legacy(user)
            taken = conn.execute(
                select(claims_table.c.owner).where(
                    claims_table.c.kind == kind,
                    (claims_table.c.name == name) | (claims_table.c.owner == user),
                )
            ).first()
            if taken is None:
                conn.execute(
                    insert(claims_table).values(
                        kind=kind, name=name, owner=user, claimed_at=datetime.now(UTC)
                    )
                )
            else:
                log.warning("%s: %r's legacy name %r was taken first", kind, user, name)


def hub_users_of(db: Path) -> Callable[[], list[str]]:
    """The users in a JupyterHub sqlite database, oldest first (none if it is missing)."""

    def users() -> list[str]:
        if not db.exists():
            return []
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            try:
                rows = conn.execute("SELECT name FROM users ORDER BY created, id").fetchall()
            except sqlite3.OperationalError:  # no users table yet
                return []
        return [r[0] for r in rows]

    return users


@functools.cache
def _registry(data_root: str) -> NameRegistry:
    root = Path(data_root)
    return NameRegistry(
        f"sqlite:///{root / 'gpulab.sqlite'}", hub_users_of(root / "jupyterhub.sqlite")
    )


def registry(data_root: Path | str) -> NameRegistry:
    """The registry of a data root, in the hub's database (``gpulab.sqlite``, beside the
    ledger), with the hub's users (``jupyterhub.sqlite``) for a kind's first use."""
    return _registry(os.path.abspath(data_root))


def home_name(data_root: Path | str, hub_name: str) -> str:
    """The claimed ``safe_name`` of a hub user: their unix account is the prefix and this,
    their home ``homes/<this>``."""
    return registry(data_root).name_for(HOME, hub_name, safe_name, legacy_safe_name)
