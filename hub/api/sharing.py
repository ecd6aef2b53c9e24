"""Sharing a server with teammates: JupyterHub's own sharing API, under gpulab's rules.

JupyterHub (>= 5) shares a server two ways: share codes (links a teammate accepts at
``/hub/accept-share``) and direct shares with a named user or group. gpulab gives users
the scopes for both (``hub/sharing.py``) and serves, in front of JupyterHub's handlers at
the same paths, subclasses that apply ``sharing`` in ``gpulab.yaml``:

- ``sharing.enabled: false`` refuses every new link and share, an admin's too;
- ``sharing.groups``: only servers of those groups' members may be shared;
- ``sharing.max_expiry``: no link lasts longer (a link asked without an expiry gets
  JupyterHub's day, or the maximum when that is shorter);
- without ``sharing.user_directory`` a user may still share with a teammate whose exact
  name they type, or with one of their own groups, though they cannot list names.

``GET /hub/api/gpulab/sharing`` tells a user (the lab's Share dialog, through their
server) what they may do.
"""

from __future__ import annotations

import json
import logging

from jupyterhub import orm
from jupyterhub.apihandlers.shares import ServerShareAPIHandler, ServerShareCodeAPIHandler
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
    """Refuses new shares of a server its owner may not share (``refusal``)."""

    def check_policy(self, user_name: str) -> None:
        owner = self.find_user(user_name)
        if owner is None:
            raise web.HTTPError(404, f"No such user: {user_name}")
        reason = refusal(self.settings["gpulab"].settings, owner)
        if reason:
            raise web.HTTPError(403, reason)


class ShareCodesHandler(_PolicyMixin, ServerShareCodeAPIHandler):
    """``/hub/api/share-codes/{user}/{server}``: JupyterHub's, with the expiry bounded."""

    async def post(self, user_name, server_name=None):
        if server_name is not None:
            self.check_policy(user_name)
            longest = self.settings["gpulab"].settings.sharing.max_expiry_seconds
            model = self.get_json_body() or {}
            if not isinstance(model, dict):
                raise web.HTTPError(400, "the request body must be a JSON object")
            expires = model.get("expires_in")
            if expires is None:
                model["expires_in"] = min(DEFAULT_EXPIRY, longest)
                self.request.body = json.dumps(model).encode()
            elif isinstance(expires, int) and expires > longest:
                raise web.HTTPError(
                    400,
                    f"expires_in: a share link lasts at most {longest} seconds on this hub "
                    "(sharing.max_expiry)",
                )
        return await super().post(user_name, server_name)


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

    _held: list | None = None
    """While JupyterHub's revocation runs: the answer it gave, sent once the server knows."""

    async def patch(self, user_name, server_name=None):
        """A revocation, answered once the running server has ended the guests' sessions
        (a guest's next request is then refused, whoever sends it first)."""
        self._held = []
        try:
            await super().patch(user_name, server_name)
        finally:
            held, self._held = self._held, None
        model = self.get_json_body() or {}
        who = model.get("user") or (f"group {model['group']}" if model.get("group") else "")
        await self.end_guests(user_name, server_name, f"{user_name} revoked {who}'s access")
        if held:
            self.finish(*held)

    def finish(self, *args, **kwargs):
        if self._held is not None:
            self._held.extend(args)
            return None
        return super().finish(*args, **kwargs)

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
]

default_handlers = [(r"/api/gpulab/sharing", SharingPolicyHandler)]
