"""What the server extension's REST handlers share: JSON bodies and answers, and who
may call what (the server's owner, or also the guests it is shared with)."""

from __future__ import annotations

import json
import os

from jupyter_server.base.handlers import APIHandler
from tornado import web


def owner() -> str:
    """The hub user this server belongs to."""
    return os.environ.get("JUPYTERHUB_USER", "")


def server_name() -> str:
    """This server's name at the hub ("" for the user's default server)."""
    return os.environ.get("JUPYTERHUB_SERVER_NAME", "")


class Base(APIHandler):
    def body(self) -> dict:
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except ValueError:
            raise web.HTTPError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the request body must be a JSON object")
        return data

    def fail(self, status: int, message: str, **detail) -> None:
        self.set_status(status)
        self.finish(json.dumps({"message": message, **detail}))

    def answer(self, status: int, model: dict) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(model))

    @property
    def by_owner(self) -> bool:
        """The request is the server owner's, not a guest's (someone the owner shared
        the server with: they reach it with their own hub login)."""
        user = self.current_user
        return user is not None and getattr(user, "username", None) == owner()

    def require_owner(self, what: str) -> None:
        """Refuse a guest: ``what`` (the action, in words) is the owner's alone."""
        if not self.by_owner:
            raise web.HTTPError(403, f"Only {owner()} can {what}: this is their server")
