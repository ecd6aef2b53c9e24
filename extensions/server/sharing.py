"""Sharing this server with teammates, for the lab's Share dialog, and the guests' end.

Under the server's base URL, for its owner only (a guest gets 403), relayed to the hub's
sharing API (JupyterHub's, under gpulab's rules: ``gpulab.hub.api.sharing``) with the
server's own token:

- ``GET gpulab/share``: what the owner may do (``/hub/api/gpulab/sharing``), the links
  (share codes, with their use counts) and who has access (users and groups);
- ``POST gpulab/share/codes`` ``{"expires_in": 3600, "path": "a.ipynb", "max_uses": 1}``:
  a new link (``path``: it opens that notebook; ``max_uses``: how many people may use
  it); ``DELETE gpulab/share/codes/sc_N``: revoke one;
- ``POST gpulab/share/guests`` ``{"user": "bob"}`` or ``{"group": "team"}``: share
  directly; ``DELETE gpulab/share/guests/user/bob`` (or ``group/team``): revoke;
- ``POST gpulab/share/views`` ``{"path": "a.ipynb", "expires_in": 86400}``: a read-only
  link to one notebook (``gpulab.hub.sharing``); ``DELETE gpulab/share/views/v_N``: revoke;
- ``DELETE gpulab/share``: stop sharing (every link, read-only link and share).

A guest's access ends with its share, but the server would still know them for minutes
(the single-user server caches the hub's answer about a token, and an open websocket is
never checked again). So the hub, once it has revoked a share (from here or through its
API), tells the server (``POST gpulab/internal/guests/end``, ``end_guests``): it forgets
every cached answer and closes the guests' websockets (``Sessions``). Whoever still has
access reconnects at once; the revoked guest gets 403.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from urllib.parse import quote, unquote

from tornado import web
from tornado.websocket import WebSocketHandler

from .base import Base, owner, server_name
from .hubstatus import hub_request

REVOKED = 4003
"""The close code of a guest's websocket whose access was revoked."""


class Sessions:
    """The server's open websockets (kernels, terminals, shared documents) with their
    users: the guests' can be closed when their access ends."""

    def __init__(self):
        self.open: weakref.WeakSet[WebSocketHandler] = weakref.WeakSet()

    def install(self) -> None:
        """Record every websocket this server accepts from now on (each of Jupyter's
        websocket handlers goes through tornado's ``WebSocketHandler.get`` once it has
        authenticated its user)."""
        if getattr(WebSocketHandler.get, "gpulab_sessions", None) is not None:
            WebSocketHandler.get.gpulab_sessions.append(self)
            return
        accept = WebSocketHandler.get
        recorders = [self]

        async def get(handler, *args, **kwargs):
            for sessions in recorders:
                sessions.open.add(handler)
            return await accept(handler, *args, **kwargs)

        get.gpulab_sessions = recorders
        WebSocketHandler.get = get

    def end_guests(self, reason: str) -> int:
        """Close every open websocket of anyone but the owner; how many were closed."""
        closed = 0
        for handler in list(self.open):
            if handler.ws_connection is None:  # closed, or never upgraded
                continue
            name = getattr(handler.current_user, "username", None)
            if name != owner():
                handler.close(REVOKED, reason)
                closed += 1
        return closed


def end_guests(serverapp, sessions: Sessions, reason: str) -> int:
    """A guest's access was revoked: ask the hub again about every token at its next
    request (a revoked guest's is then refused at once, not when the cached answer
    expires), and close the guests' websockets; how many were closed."""
    hub_auth = getattr(serverapp.identity_provider, "hub_auth", None)
    if hub_auth is not None:
        hub_auth.cache = type(hub_auth.cache)(hub_auth.cache_max_age)
    closed = sessions.end_guests(reason)
    serverapp.log.info("gpulab: %s; closed %d guest connection(s)", reason, closed)
    return closed


class ShareHandler(Base):
    """The Share dialog's API (see the module's doc); the owner's only."""

    async def prepare(self):
        await super().prepare()
        self.require_owner("share this server")

    def server_path(self) -> str:
        return f"{quote(owner(), safe='')}/{quote(server_name(), safe='')}"

    async def hub(self, method: str, path: str, body: dict | None = None, **query):
        """The hub's sharing API: (status, JSON answer); an error answer is passed on."""
        status, raw, _ = await hub_request(method, path, query or None, body, under="")
        try:
            model = json.loads(raw) if raw else {}
        except ValueError:
            raise web.HTTPError(502, "the hub's answer is not JSON") from None
        if status >= 400:
            message = model.get("message") if isinstance(model, dict) else None
            raise web.HTTPError(status, message or f"the hub answered {status}")
        return status, model

    async def state(self) -> dict:
        status, policy = await self.hub("GET", "/gpulab/sharing")
        codes, guests, views = [], [], []
        if policy.get("enabled"):
            # JupyterHub answers these only to an owner who may share
            found = await asyncio.gather(
                self.hub("GET", f"/share-codes/{self.server_path()}"),
                self.hub("GET", f"/shares/{self.server_path()}"),
                return_exceptions=True,
            )
            if not any(isinstance(f, BaseException) for f in found):
                codes = [code_model(c) for c in items(found[0][1])]
                guests = [guest_model(s) for s in items(found[1][1])]
            views = await self.views()
        return {
            "owner": owner(),
            "server": server_name(),
            **{k: policy.get(k) for k in ("enabled", "allowed", "reason", "max_expiry")},
            **{k: policy.get(k) for k in ("user_directory", "users", "groups")},
            "codes": codes,
            "guests": guests,
            "views": views,
        }

    async def views(self) -> list[dict]:
        """This server's read-only links (``gpulab.hub.sharing``)."""
        _, model = await self.hub("GET", "/gpulab/views", server=server_name())
        keep = ("id", "path", "created_at", "expires_at", "view_count", "last_viewed_at")
        return [{k: v.get(k) for k in keep} for v in model.get("views", [])]

    @web.authenticated
    async def get(self, *parts):
        if any(parts):
            raise web.HTTPError(405)
        self.answer(200, await self.state())

    @web.authenticated
    async def post(self, what: str | None = None, kind=None, name=None):
        body = self.body()
        if what == "codes" and kind is None:
            self.answer(200, await self.new_link(body))
        elif what == "guests" and kind is None:
            self.answer(200, await self.add_guest(body))
        elif what == "views" and kind is None:
            request = {k: body[k] for k in ("path", "expires_in") if k in body}
            _, model = await self.hub("POST", "/gpulab/views", {**request, "server": server_name()})
            keep = ("id", "path", "expires_at", "url")
            self.answer(200, {k: model.get(k) for k in keep})
        else:
            raise web.HTTPError(404, "POST gpulab/share/codes, guests or views")

    @web.authenticated
    async def delete(self, what: str | None = None, kind=None, name=None):
        path = self.server_path()
        name = unquote(name) if name else name
        if what is None:
            await self.hub("DELETE", f"/share-codes/{path}")
            await self.hub("DELETE", f"/shares/{path}")
            for view in await self.views():
                await self.hub("DELETE", f"/gpulab/views/{view['id']}")
        elif what == "codes" and kind and name is None:
            await self.hub("DELETE", f"/share-codes/{path}", id=kind)
        elif what == "guests" and kind in ("user", "group") and name:
            await self.hub("PATCH", f"/shares/{path}", {kind: name})
        elif what == "views" and kind and name is None:
            await self.hub("DELETE", f"/gpulab/views/{kind}")
        else:
            raise web.HTTPError(
                404, "DELETE gpulab/share/codes/ID, views/ID or guests/user|group/NAME"
            )
        self.set_status(204)
        self.finish()

    async def new_link(self, body: dict) -> dict:
        request = {k: body[k] for k in ("expires_in", "max_uses") if k in body}
        notebook = body.get("path")
        if notebook is not None and (not isinstance(notebook, str) or "\x00" in notebook):
            raise web.HTTPError(400, '"path" must be the path of a file in the server')
        _, model = await self.hub("POST", f"/share-codes/{self.server_path()}", request)
        url = model.get("accept_url", "")
        full = model.get("full_accept_url")
        if notebook:
            prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
            target = f"{prefix}lab/tree/{quote(notebook.lstrip('/'))}"
            url += f"&next={quote(target, safe='')}"
            full = f"{full}&next={quote(target, safe='')}" if full else None
        return {
            "id": model.get("id"),
            "expires_at": model.get("expires_at"),
            "max_uses": model.get("max_uses"),
            "url": url,
            "full_url": full,
        }

    async def add_guest(self, body: dict) -> dict:
        kinds = [k for k in ("user", "group") if body.get(k)]
        if len(kinds) != 1 or not isinstance(body[kinds[0]], str):
            raise web.HTTPError(400, 'give {"user": NAME} or {"group": NAME}')
        kind, name = kinds[0], body[kinds[0]].strip()
        try:
            _, model = await self.hub("POST", f"/shares/{self.server_path()}", {kind: name})
        except web.HTTPError as e:
            if e.status_code == 400 and (e.log_message or "").startswith("No such"):
                raise web.HTTPError(404, f"no hub {kind} named {name}") from None
            raise
        return guest_model(model)


def items(answer) -> list:
    """A JupyterHub list answer's items, paginated or not."""
    return answer.get("items", []) if isinstance(answer, dict) else list(answer or [])


def code_model(code: dict) -> dict:
    keep = ("id", "created_at", "expires_at", "exchange_count", "last_exchanged_at", "max_uses")
    return {k: code.get(k) for k in keep}


def guest_model(share: dict) -> dict:
    kind = share.get("kind") or ("group" if share.get("group") else "user")
    return {
        "kind": kind,
        "name": (share.get(kind) or {}).get("name", ""),
        "created_at": share.get("created_at"),
    }
