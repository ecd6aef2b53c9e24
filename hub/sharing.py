"""gpulab's own records of sharing, beside JupyterHub's: read-only links (``ViewLinks``)
and how many times each share link may be used (``UseLimits``).

Read-only links: one notebook of a user's server, rendered for whoever has the link.

JupyterHub's sharing gives a guest the whole server, as its owner. A read-only link
gives one notebook and nothing else: the hub asks the owner's running server for the
notebook (``gpulab/internal/notebook``, with the server's secret, as for Return GPU),
renders it with nbconvert, and serves it under the hub's own pages to any logged-in hub
user who holds the link (``hub/api/views.py``). No kernel runs for a viewer; the page
follows the owner's edits (the notebook's version is asked for every few seconds).

The owner's permission is a row here: who, which notebook, until when; only a hash of
the link's token is kept, and a link is revoked by deleting its row.

What the owner's notebook holds is the owner's to write: its outputs may carry HTML and
scripts. The rendered notebook is therefore served in a sandbox (``CONTENT_POLICY``: no
script runs, no request leaves it, and it has no origin, so it cannot read or use the
viewer's hub session), framed by a hub page whose only script reloads it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
    update,
)

from gpulab.hub.ledger import as_utc, utcnow

ID_PREFIX = "v_"
MAX_NOTEBOOK_BYTES = 20 * 2**20
"""The largest notebook the hub renders. The owner's server refuses to send a larger
one, but that server is the owner's to change: the hub checks too."""


class NotebookTooLarge(ValueError):
    """What a server sent is larger than ``MAX_NOTEBOOK_BYTES``."""


CONTENT_POLICY = (
    "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "font-src data:; frame-ancestors 'self'"
)
"""The rendered notebook's Content-Security-Policy: a unique opaque origin (no cookies,
no same-origin requests), no scripts, nothing fetched, framed only by the hub's page."""

metadata = MetaData()

views_table = Table(
    "view_links",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("user", String(255), nullable=False, index=True),
    Column("server", String(255), nullable=False),
    Column("path", String(4096), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=False),
    Column("views", Integer, nullable=False, default=0),
    Column("last_viewed", DateTime(timezone=True), nullable=True),
)


limits_table = Table(
    "share_code_limits",
    metadata,
    Column("code_id", Integer, primary_key=True),
    Column("max_uses", Integer, nullable=False),
)


class UseLimits:
    """How many times a share link (a JupyterHub share code, by its id) may be used; a
    link without one works until it expires or is revoked, as in JupyterHub."""

    def __init__(self, engine):
        self.engine = engine
        metadata.create_all(engine)

    def set(self, code_id: int, max_uses: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(limits_table).where(limits_table.c.code_id == code_id))
            conn.execute(insert(limits_table).values(code_id=code_id, max_uses=max_uses))

    def of(self, code_ids: list[int]) -> dict[int, int]:
        if not code_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(limits_table).where(limits_table.c.code_id.in_(code_ids)))
            return {r.code_id: r.max_uses for r in rows}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ViewLink:
    id: int
    user: str
    server: str
    path: str
    created: datetime
    expires: datetime
    views: int
    last_viewed: datetime | None

    @property
    def ident(self) -> str:
        return f"{ID_PREFIX}{self.id}"

    def as_json(self) -> dict:
        def iso(at):
            return at.isoformat().replace("+00:00", "Z") if at else None

        return {
            "id": self.ident,
            "user": self.user,
            "server": self.server,
            "path": self.path,
            "created_at": iso(self.created),
            "expires_at": iso(self.expires),
            "view_count": self.views,
            "last_viewed_at": iso(self.last_viewed),
        }


class ViewLinks:
    """The read-only links, in the ledger's database."""

    def __init__(self, engine):
        self.engine = engine
        metadata.create_all(engine)

    def create(self, user: str, server: str, path: str, seconds: int) -> tuple[ViewLink, str]:
        """A new link to ``path`` of ``user``'s server: the record and its token (given
        once: only its hash is kept)."""
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self.engine.begin() as conn:
            new_id = conn.execute(
                insert(views_table).values(
                    token_hash=token_hash(token),
                    user=user,
                    server=server,
                    path=path,
                    created=now,
                    expires=now + timedelta(seconds=seconds),
                    views=0,
                )
            ).inserted_primary_key[0]
        return self._one(views_table.c.id == new_id), token

    def of(self, user: str, server: str | None = None) -> list[ViewLink]:
        """The user's links that have not expired (of one server, if named)."""
        where = [views_table.c.user == user, views_table.c.expires > utcnow()]
        if server is not None:
            where.append(views_table.c.server == server)
        return self._rows(*where)

    def find(self, token: str) -> ViewLink | None:
        """The live link of ``token`` (None if there is none, or it expired)."""
        link = self._one(views_table.c.token_hash == token_hash(token))
        return link if link is not None and link.expires > utcnow() else None

    def viewed(self, link: ViewLink) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(views_table)
                .where(views_table.c.id == link.id)
                .values(views=views_table.c.views + 1, last_viewed=utcnow())
            )

    def revoke(self, user: str, ident: str) -> bool:
        """Delete the user's link ``v_N``; whether there was one."""
        number = ident.removeprefix(ID_PREFIX)
        if not ident.startswith(ID_PREFIX) or not number.isdigit():
            return False
        with self.engine.begin() as conn:
            gone = conn.execute(
                delete(views_table).where(
                    views_table.c.id == int(number), views_table.c.user == user
                )
            )
        return gone.rowcount > 0

    def revoke_all(self, user: str, server: str) -> int:
        with self.engine.begin() as conn:
            gone = conn.execute(
                delete(views_table).where(
                    views_table.c.user == user, views_table.c.server == server
                )
            )
        return gone.rowcount

    def _one(self, *where) -> ViewLink | None:
        return next(iter(self._rows(*where)), None)

    def _rows(self, *where) -> list[ViewLink]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(views_table).where(*where).order_by(views_table.c.id))
            return [
                ViewLink(
                    id=r.id,
                    user=r.user,
                    server=r.server,
                    path=r.path,
                    created=as_utc(r.created),
                    expires=as_utc(r.expires),
                    views=r.views,
                    last_viewed=as_utc(r.last_viewed),
                )
                for r in rows
            ]


def render(notebook: dict) -> str:
    """The notebook as a standalone HTML page (nbconvert's lab look), to be served under
    ``CONTENT_POLICY``. A notebook nbformat cannot read raises ValueError, one larger
    than ``MAX_NOTEBOOK_BYTES`` ``NotebookTooLarge``, before any work on it."""
    import nbformat
    from nbconvert import HTMLExporter

    if len(json.dumps(notebook)) > MAX_NOTEBOOK_BYTES:
        raise NotebookTooLarge(f"the notebook is larger than {MAX_NOTEBOOK_BYTES >> 20} MiB")
    try:
        html, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.from_dict(notebook))
    except Exception as e:  # noqa: BLE001 -- nbformat and nbconvert raise many kinds
        raise ValueError(f"not a notebook nbconvert can render: {e}") from None
    return html
