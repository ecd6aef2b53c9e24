"""Read-only links (``hub/sharing.py``): the owner's API, and the pages a viewer opens.

- ``GET /hub/api/gpulab/views`` (``?user=`` for admins, ``?server=``): the user's live
  links; ``POST`` ``{"path": "a.ipynb", "expires_in": 86400, "server": ""}``: a new one,
  under the sharing settings (``api/sharing.py``: who may share, ``max_expiry``);
  ``DELETE /hub/api/gpulab/views/v_N``: revoke it.
- ``/hub/gpulab/view/TOKEN``: the page (any logged-in hub user with the link), which
  frames ``.../content`` (the notebook rendered, sandboxed) and reloads it when
  ``.../version`` changes.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

from jupyterhub.handlers.base import BaseHandler
from tornado import web

from gpulab.hub.servercalls import SwitchError, call_server
from gpulab.hub.sharing import CONTENT_POLICY, NotebookTooLarge, ViewLink, ViewLinks, render

from .base import GpulabAPIHandler
from .sharing import DEFAULT_EXPIRY, refusal

VIEW_CALL_TIMEOUT = 30


def check_path(path) -> str:
    """A notebook's path in the owner's server, as the link keeps it, or a 400."""
    if not isinstance(path, str) or not path.strip("/") or "\x00" in path or len(path) > 4096:
        raise web.HTTPError(400, '"path": the path of a notebook in your server')
    path = path.strip("/")
    if not path.endswith(".ipynb") or ".." in path.split("/"):
        raise web.HTTPError(400, f'"path": {path!r} is not a notebook path (a.ipynb, work/b.ipynb)')
    return path


class ViewsHandler(GpulabAPIHandler):
    @property
    def views(self) -> ViewLinks:
        return self.gpulab.views

    async def get(self, ident: str | None = None):
        if ident is not None:
            raise web.HTTPError(405)
        user = self.subject()
        server = self.get_argument("server", None)
        self.write_json({"views": [v.as_json() for v in self.views.of(user, server)]})

    async def post(self, ident: str | None = None):
        if ident is not None:
            raise web.HTTPError(405)
        user = self.subject()
        body = self.body()
        server = body.get("server", "")
        if not isinstance(server, str):
            raise web.HTTPError(400, '"server": a server name ("" for the default server)')
        path = check_path(body.get("path"))
        owner = self.find_user(user)
        reason = refusal(self.gpulab.settings, owner)
        if reason:
            raise web.HTTPError(403, reason)
        longest = self.gpulab.settings.sharing.max_expiry_seconds
        seconds = body.get("expires_in", min(DEFAULT_EXPIRY, longest))
        if not isinstance(seconds, int) or isinstance(seconds, bool) or not 60 <= seconds:
            raise web.HTTPError(400, '"expires_in": whole seconds, 60 or more')
        if seconds > longest:
            raise web.HTTPError(
                400,
                f"expires_in: a link lasts at most {longest} seconds on this hub "
                "(sharing.max_expiry)",
            )
        link, token = self.views.create(user, server, path, seconds)
        self.write_json({**link.as_json(), "url": f"{self.hub.base_url}gpulab/view/{token}"})

    async def delete(self, ident: str | None = None):
        user = self.subject()
        if ident is None:
            raise web.HTTPError(405, "DELETE /hub/api/gpulab/views/v_N")
        if not self.views.revoke(user, ident):
            raise web.HTTPError(404, f"{user} has no read-only link {ident}")
        self.set_status(204)


class _ViewBase(BaseHandler):
    """A viewer's request: any logged-in hub user holding a live link's token."""

    def link(self, token: str) -> ViewLink:
        link = self.settings["gpulab"].views.find(token)
        if link is None:
            raise web.HTTPError(404, "This read-only link was revoked or has expired.")
        return link

    async def notebook(self, link: ViewLink, content: bool) -> dict:
        """The notebook from the owner's running server; a 409 page when it is not."""
        owner = self.find_user(link.user)
        spawner = owner.spawners.get(link.server) if owner is not None else None
        if spawner is None or not spawner.ready:
            raise web.HTTPError(
                409, f"{link.user}'s server is not running: the notebook shows while it runs."
            )
        path = f"notebook?path={quote(link.path)}&content={int(content)}"
        try:
            return await call_server(spawner, "GET", path, timeout=VIEW_CALL_TIMEOUT)
        except SwitchError as e:
            raise web.HTTPError(502 if e.status >= 500 else e.status, e.message) from None


class ViewPage(_ViewBase):
    @web.authenticated
    async def get(self, token: str):
        link = self.link(token)
        self.settings["gpulab"].views.viewed(link)
        html = await self.render_template(
            "gpulab-view.html", owner=link.user, path=link.path, base=f"{token}/"
        )
        self.finish(html)


class ViewContent(_ViewBase):
    """The rendered notebook, in a sandbox: no script of the owner's runs for a viewer."""

    cache: dict[tuple[int, str], str] = {}
    """(link id, the notebook's version) -> its rendering; the last few are kept."""

    @web.authenticated
    async def get(self, token: str):
        link = self.link(token)
        answer = await self.notebook(link, content=True)
        key = (link.id, str(answer.get("last_modified")))
        html = self.cache.get(key)
        if html is None:
            try:
                html = await asyncio.to_thread(render, answer.get("content") or {})
            except NotebookTooLarge as e:
                raise web.HTTPError(413, str(e)) from None
            except ValueError as e:
                raise web.HTTPError(422, str(e)) from None
            while len(self.cache) >= 16:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = html
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(html)

    def set_default_headers(self):
        super().set_default_headers()
        # also on error pages: whatever this URL answers is the owner's, sandboxed
        self.set_header("Content-Security-Policy", CONTENT_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")


class ViewVersion(_ViewBase):
    """The notebook's version (when it was last saved): the page reloads on a change."""

    @web.authenticated
    async def get(self, token: str):
        try:
            answer = await self.notebook(self.link(token), content=False)
        except web.HTTPError as e:
            self.set_status(e.status_code)
            self.finish(json.dumps({"message": e.log_message}))
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"version": answer.get("last_modified")}))


default_handlers = [(r"/api/gpulab/views(?:/([^/]+))?", ViewsHandler)]

page_handlers = [
    (r"/gpulab/view/([A-Za-z0-9_-]{20,})", ViewPage),
    (r"/gpulab/view/([A-Za-z0-9_-]{20,})/content", ViewContent),
    (r"/gpulab/view/([A-Za-z0-9_-]{20,})/version", ViewVersion),
]
