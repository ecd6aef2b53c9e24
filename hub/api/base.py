"""The base of gpulab's REST handlers: authenticated, JSON in and out, bounded bodies,
clear 4xx errors, and the hub's services (``self.gpulab``)."""

from __future__ import annotations

import asyncio
import json
import math
from asyncio import Future
from typing import TYPE_CHECKING

from jupyterhub.apihandlers.base import APIHandler
from tornado import web
from tornado.iostream import StreamClosedError

from gpulab.hub.workloads.runner import WorkloadError

from .inputs import MAX_BODY_BYTES, parse_json_body, parse_query_int

if TYPE_CHECKING:
    from gpulab.hub.app import Context

DRAIN_BYTES = 1 << 30
"""A body over the limit but at most this large is read and dropped after the 413;
a larger one closes the connection."""

MAX_LOG_OFFSET = 2**62
"""The largest log offset asked for: beyond any file, and within what lseek takes."""


NO_USER = (
    "This token is a service's, not a user's: name the user with ?user=NAME "
    "(in the gpulab CLI, --user NAME)"
)


@web.stream_request_body
class GpulabAPIHandler(APIHandler):
    """Base for gpulab endpoints: authenticated, JSON in and out, clear 4xx errors.

    The body streams in after ``prepare`` (``stream_request_body``): one that is too large
    is refused with a 413 without keeping it, and every answer waits until the body has
    been read, since closing a connection on unread data resets it (a proxy in front then
    answers 503 instead of passing the 4xx on)."""

    max_body_bytes = MAX_BODY_BYTES
    dropping = False  # the body is refused: read the rest of it, keep none
    deferred: Future[None] | None = None  # the answer, sent once the body is read

    @property
    def gpulab(self) -> Context:
        """The hub's services (``gpulab.hub.app``), put in the tornado settings at start."""
        return self.settings["gpulab"]

    async def prepare(self) -> None:
        await super().prepare()
        self.request.body = bytearray()
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            if int(length) > DRAIN_BYTES:  # not worth reading: answer, and tornado closes
                error = self.too_large_error()
                error.headers = {"Connection": "close"}
                raise error
            self.request.connection.set_max_body_size(int(length))
            raise self.too_large_error()

    def data_received(self, chunk: bytes) -> None:
        if self.dropping or self._finished:
            return
        if len(self.request.body) + len(chunk) > self.max_body_bytes:  # chunked, no length
            error = self.too_large_error()
            self.send_error(413, exc_info=(type(error), error, None))
            return
        self.request.body.extend(chunk)

    def finish(self, chunk=None) -> Future[None] | None:
        if self.deferred is not None:  # already answering once the body is read
            return self.deferred
        body = getattr(self.request, "_body_future", None)  # set by tornado while streaming
        closing = self._headers.get("Connection") == "close"
        if body is None or body.done() or self._finished or closing:
            return super().finish(chunk)
        # an answer before the body was read (an error in prepare, a 405, a 413)
        self.dropping = True
        self.deferred = asyncio.ensure_future(self._finish_after_body(body, super().finish, chunk))
        return self.deferred

    @staticmethod
    async def _finish_after_body(body: Future, finish, chunk) -> None:
        try:
            await body
        except StreamClosedError:
            return
        finish(chunk)

    def too_large_error(self) -> web.HTTPError:
        return web.HTTPError(413, f"The request body is larger than {self.max_body_bytes} bytes")

    def prepare_gpulab(self) -> tuple[str | None, bool]:
        """(name of the requesting user or None for a service, whether it acts as admin)."""
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        name = getattr(self.current_user, "name", None)
        is_user = self.current_user.kind == "user" if hasattr(self.current_user, "kind") else True
        return (name if is_user else None), self.has_scope("admin:users")

    def subject(self) -> str:
        """The one user a request is about: oneself, or ?user=NAME for admins."""
        me, admin = self.prepare_gpulab()
        self.acting_as_admin = admin
        user = self.target_user(me, admin) or me
        if user is None:
            raise web.HTTPError(400, NO_USER)
        return user

    def target_user(self, me: str | None, admin: bool) -> str | None:
        """The ``?user=`` a request is about: anyone for admins, oneself for users."""
        wanted = self.get_argument("user", None)
        if wanted is None:
            return None if admin else me
        if not admin and wanted != me:
            raise web.HTTPError(403, f"Only admins act for other users; you are not {wanted}")
        if self.find_user(wanted) is None:
            raise web.HTTPError(404, f"No such user: {wanted}")
        return wanted

    def groups_of(self, user: str) -> list[str]:
        """The hub groups ``user`` is in (for group quotas and sharing)."""
        found = self.find_user(user)
        return [g.name for g in found.groups] if found is not None else []

    def body(self) -> dict:
        """The request's JSON object, or a 400 saying what is wrong with it."""
        return parse_json_body(self.request.body)

    def query_int(self, name: str, default: int, low: int, high: int) -> int:
        """A whole-number query argument, bounded: a 400 outside ``low``..``high``."""
        return parse_query_int(self.get_argument(name, str(default)), name, low, high)

    def write_json(self, model) -> None:
        self.set_header("Content-Type", "application/json")
        try:
            text = json.dumps(model, allow_nan=False)
        except ValueError:  # a NaN or Infinity stored before inputs were bounded
            text = json.dumps(finite(model), allow_nan=False)
        self.write(text)


def finite(value):
    """``value`` with every NaN and infinity replaced by null, which JSON can hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def mapped(fn, *args):
    """Call ``fn``; a WorkloadError becomes the HTTP error it names."""
    try:
        return fn(*args)
    except WorkloadError as e:
        raise web.HTTPError(e.status, str(e)) from None


async def amapped(fn, *args):
    try:
        return await fn(*args)
    except WorkloadError as e:
        raise web.HTTPError(e.status, str(e)) from None
