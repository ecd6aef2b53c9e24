"""Sharing a server with teammates: JupyterHub's own sharing API, under gpulab's rules.

JupyterHub (>= 5) shares a server two ways: share codes (links a teammate accepts at
``/hub/accept-share``) and direct shares with a named user or group. gpulab gives users
the scopes for both (``hub/sharing.py``) and serves, in front of JupyterHub's handlers at
the same paths, subclasses that apply ``sharing`` in ``gpulab.yaml``:

- ``sharing.enabled: false`` refuses every new link and share, an admin's too;
- ``sharing.groups``: only servers of those groups' members may be shared;
- ``sharing.max_expiry``: no link lasts longer (a link asked without an expiry gets
  JupyterHub's day, or the maximum when that is shorter);
- a link may say how many people may use it (``max_uses``, which JupyterHub does not
  have: gpulab keeps it, and its ``/hub/accept-share`` says when a link is used up);
- without ``sharing.user_directory`` a user may still share with a teammate whose exact
  name they type, or with one of their own groups, though they cannot list names.

``GET /hub/api/gpulab/sharing`` tells a user (the lab's Share dialog, through their
server) what they may do.
"""

from __future__ import annotations

import inspect
import json
import logging

from jupyterhub import orm
from jupyterhub.apihandlers.shares import ServerShareAPIHandler, ServerShareCodeAPIHandler
from jupyterhub.handlers.pages import AcceptShareHandler as BaseAcceptShareHandler
from tornado import web

from gpulab.hub.servercalls import call_server, reason

from .base import GpulabAPIHandler

log = logging.getLogger("gpulab")

DEFAULT_EXPIRY = 86400
"""JupyterHub's expiry of a share code when none is asked for."""


def refusal(settings, owner) -> str:
    """Why the servers of ``owner`` (a JupyterHub user) may not be shared, or ""."""
    sharing = settings.sharing
    if not sharing.enabled:
        return "Sharing is turned off on this hub (sharing.enabled)."
    if sharing.groups and not {g.name for g in owner.groups} & set(sharing.groups):
        allowed = ", ".join(sorted(sharing.groups))
        return (
            f"Only members of the group(s) {allowed} may share their servers; "
            f"{owner.name} is not one. Ask a hub admin."
        )
    return ""


class _PolicyMixin:
    """Refuses new shares of a server its owner may not share (``refusal``), and keeps
    what JupyterHub's handler answers (``answer_of``) so it can be added to, or sent
    only once something else is done."""

    _held: list | None = None

    def check_policy(self, user_name: str) -> None:
        owner = self.find_user(user_name)
        if owner is None:
            raise web.HTTPError(404, f"No such user: {user_name}")
        reason = refusal(self.settings["gpulab"].settings, owner)
        if reason:
            raise web.HTTPError(403, reason)

    async def answer_of(self, call) -> dict | list | None:
        """Run JupyterHub's ``call()`` and give its JSON answer instead of sending it
        (None if it answered nothing); an error it raises is sent as usual."""
        self._held = []
        try:
            result = call()
            if inspect.isawaitable(result):
                await result
        finally:
            held, self._held = self._held, None
        body = b"".join(c if isinstance(c, bytes) else str(c).encode() for c in held if c)
        return json.loads(body) if body else None

    def finish(self, *args, **kwargs):
        if self._held is not None:
            self._held.extend(args)
            return None
        return super().finish(*args, **kwargs)

    def send(self, model) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(model))


MAX_USES = 1000


class ShareCodesHandler(_PolicyMixin, ServerShareCodeAPIHandler):
    """``/hub/api/share-codes/{user}/{server}``: JupyterHub's, with the expiry bounded
    and an optional use limit (``max_uses``, kept by gpulab: ``UseLimits``)."""

    @property
    def limits(self):
        return self.settings["gpulab"].use_limits

    async def post(self, user_name, server_name=None):
        if server_name is None:
            return await super().post(user_name, server_name)  # JupyterHub's 405
        self.check_policy(user_name)
        longest = self.settings["gpulab"].settings.sharing.max_expiry_seconds
        model = self.get_json_body() or {}
        if not isinstance(model, dict):
            raise web.HTTPError(400, "the request body must be a JSON object")
        expires = model.get("expires_in")
        if expires is None:
            model["expires_in"] = min(DEFAULT_EXPIRY, longest)
        elif isinstance(expires, int) and expires > longest:
            raise web.HTTPError(
                400,
                f"expires_in: a share link lasts at most {longest} seconds on this hub "
                "(sharing.max_expiry)",
            )
        uses = model.pop("max_uses", None)
        if uses is not None and (
            not isinstance(uses, int) or isinstance(uses, bool) or not 1 <= uses <= MAX_USES
        ):
            raise web.HTTPError(400, f"max_uses: how many people may use the link, 1 to {MAX_USES}")
        self.request.body = json.dumps(model).encode()
        answer = await self.answer_of(
            lambda: super(ShareCodesHandler, self).post(user_name, server_name)
        )
        if uses is not None:
            self.limits.set(code_number(answer["id"]), uses)
        self.send({**answer, "max_uses": uses})

    async def get(self, user_name, server_name=None):
        answer = await self.answer_of(
            lambda: super(ShareCodesHandler, self).get(user_name, server_name)
        )
        items = answer.get("items", []) if isinstance(answer, dict) else answer or []
        limits = self.limits.of([code_number(c["id"]) for c in items])
        for code in items:
            code["max_uses"] = limits.get(code_number(code["id"]))
        self.send(answer)


def code_number(ident: str) -> int:
    """The database id in a share code's id as JupyterHub writes it (``sc_12``)."""
    return int(ident.removeprefix("sc_"))


class AcceptShareHandler(BaseAcceptShareHandler):
    """``/hub/accept-share``: JupyterHub's, but a link used as many times as its owner
    allowed says so (someone it already admitted passes: they have access anyway)."""

    def check_uses(self) -> None:
        code = orm.ShareCode.find(self.db, code=self.get_argument("code", ""))
        if code is None or self.current_user is None:
            return  # JupyterHub answers
        limit = self.settings["gpulab"].use_limits.of([code.id]).get(code.id)
        if limit is None or code.exchange_count < limit:
            return
        me = self.current_user.orm_user
        if any(share.user == me for share in code.spawner.shares):
            return
        owner = code.owner.name
        times = "once" if limit == 1 else f"{limit} times"
        raise web.HTTPError(
            410,
            f"This link was already used {times}, as many as {owner} allowed: ask {owner} for a new one.",
        )

    @web.authenticated
    async def get(self):
        self.check_uses()
        return await super().get()

    @web.authenticated
    async def post(self):
        self.check_uses()
        return super().post()


class SharesHandler(_PolicyMixin, ServerShareAPIHandler):
    """``/hub/api/shares/{user}/{server}``: JupyterHub's, and sharing with a named user
    or one's own group needs no user directory (``read:users:name``)."""

    _owner: str | None = None

    async def post(self, user_name, server_name=None):
        if server_name is not None:
            self.check_policy(user_name)
            model = self.get_json_body()
            if isinstance(model, dict) and model.get("user") == user_name:
                raise web.HTTPError(400, f"{user_name} owns this server already")
            self._owner = user_name
        return await super().post(user_name, server_name)

    async def patch(self, user_name, server_name=None):
        """A revocation, answered once the running server has ended the guests' sessions
        (a guest's next request is then refused, whoever sends it first)."""
        answer = await self.answer_of(
            lambda: super(SharesHandler, self).patch(user_name, server_name)
        )
        model = self.get_json_body() or {}
        who = model.get("user") or (f"group {model['group']}" if model.get("group") else "")
        await self.end_guests(user_name, server_name, f"{user_name} revoked {who}'s access")
        if answer is not None:
            self.send(answer)

    async def delete(self, user_name, server_name=None):
        # JupyterHub's sets 204 and lets tornado answer once this returns
        await super().delete(user_name, server_name)
        await self.end_guests(user_name, server_name, f"{user_name} stopped sharing")

    async def end_guests(self, user_name: str, server_name: str, why: str) -> None:
        """Revoked: the running server forgets the guests and closes their connections
        (its own cache of the hub's answers would keep a revoked guest in for minutes)."""
        user = self.find_user(user_name)
        spawner = user.spawners.get(server_name) if user is not None else None
        if spawner is None or not spawner.ready or not getattr(spawner, "internal_secret", ""):
            return  # not running: nobody is connected to it
        try:
            await call_server(spawner, "POST", "guests/end", {"reason": why}, timeout=15)
        except Exception as e:  # noqa: BLE001 -- the share is revoked whatever the server says
            log.warning(
                "Ending the guests' sessions on %s/%s: %s", user_name, server_name, reason(e)
            )

    def has_scope(self, scope: str) -> bool:
        if self._owner is not None:  # checks of the share being granted
            kind, _, name = scope.partition("!")
            if kind == "read:users:name" and name.startswith("user="):
                # the owner names a teammate; an unknown name is answered "No such user"
                return True
            if kind == "read:groups:name" and name.startswith("group="):
                owner = self.find_user(self._owner)
                mine = {g.name for g in owner.groups} if owner is not None else set()
                if name.removeprefix("group=") in mine:
                    return True
        return super().has_scope(scope)


class SharingPolicyHandler(GpulabAPIHandler):
    """``GET /hub/api/gpulab/sharing``: what a user may share (``?user=`` for admins)."""

    async def get(self):
        user = self.subject()
        owner = self.find_user(user)
        sharing = self.gpulab.settings.sharing
        reason = refusal(self.gpulab.settings, owner)
        users = None
        if sharing.user_directory:
            users = [name for (name,) in self.db.query(orm.User.name).order_by(orm.User.name)]
        self.write_json(
            {
                "user": user,
                "enabled": sharing.enabled,
                "allowed": not reason,
                "reason": reason,
                "max_expiry": sharing.max_expiry_seconds,
                "user_directory": sharing.user_directory,
                "users": users,
                "groups": sorted(g.name for g in owner.groups),
            }
        )


# in front of JupyterHub's handlers of the same paths (the authenticator's come first)
hub_handlers = [
    (r"/api/shares/([^/]+)", SharesHandler),
    (r"/api/shares/([^/]+)/([^/]*)", SharesHandler),
    (r"/api/share-codes/([^/]+)", ShareCodesHandler),
    (r"/api/share-codes/([^/]+)/([^/]*)", ShareCodesHandler),
    (r"/accept-share", AcceptShareHandler),
]

default_handlers = [(r"/api/gpulab/sharing", SharingPolicyHandler)]
