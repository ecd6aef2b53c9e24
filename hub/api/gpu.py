"""Return GPU / Get GPU for a running server.

- ``GET    /hub/api/gpulab/gpu?user=&server=``: what the server holds, the pool, and
  its last operation (with the queue position while waiting);
- ``POST   /hub/api/gpulab/gpu/return`` ``{"interrupt": false, "force": false,
  "wait": true}``: answers once the GPUs are free (202 while a new pod still starts, on
  the kubernetes backend; ``"wait": false`` answers at once);
- ``POST   /hub/api/gpulab/gpu/get`` ``{"gpus": 1, "timeout": 600}`` (202: follow
  it with GET);
- ``DELETE /hub/api/gpulab/gpu/get``: cancel a waiting Get GPU;
- ``GET    /hub/api/gpulab/gpu/checkpoints``: the checkpoints of the server's kernels on
  its home (the server must run); ``POST .../checkpoints/ID/restore`` ``{"notebook":
  "path"}`` loads one into a notebook's kernel; ``DELETE .../checkpoints/ID`` removes it.

``GET`` with ``?wait=SECONDS&etag=ETAG`` (at most 120 s) answers once the status differs
from the one named ``etag`` (every answer carries its ``etag``), or after ``SECONDS``
with the same: a server's extension waits there instead of polling, so an open lab costs
the hub nothing while nothing changes.

``user`` defaults to the caller and ``server`` to the default server (``""``); users act
on their own servers, admins on anyone's.
"""

from __future__ import annotations

import asyncio
import re

from tornado import web

from gpulab.hub.gpuswitch import OWNER, SwitchError
from gpulab.hub.ledger import Operation

from .base import NO_USER, GpulabAPIHandler

MAX_WAIT = 120
"""The longest ``GET ?wait=`` holds a request open, in seconds."""


class GpuHandler(GpulabAPIHandler):
    def spawner(self):
        """The server the request is about; 403 for someone else's, 404 when unknown."""
        me, admin = self.prepare_gpulab()
        name = self.get_argument("user", None) or me
        if name is None:
            raise web.HTTPError(400, NO_USER)
        if name != me and not admin:
            raise web.HTTPError(403, f"You may only change your own servers' GPUs, not {name}'s")
        # one's own: the user the token named is at hand (finding it again costs a query)
        user = self.current_user if name == me else self.find_user(name)
        if user is None:
            raise web.HTTPError(404, f"No such user: {name}")
        server = self.get_argument("server", "")
        spawner = user.spawners.get(server)
        if spawner is None:
            what = f"server {server!r}" if server else "default server"
            raise web.HTTPError(404, f"{name} has no {what}")
        return spawner, me or "admin"

    def answer(self, model: dict, status: int = 200) -> None:
        self.set_status(status)
        self.write_json(model)

    async def get(self, action: str = ""):
        if action:
            raise web.HTTPError(405)
        spawner, _ = self.spawner()
        wait = self.query_int("wait", 0, 0, MAX_WAIT)
        etag = self.get_argument("etag", "")
        if not (wait and etag):
            return self.write_json(self.gpulab.switch.status(spawner))
        self.watch = asyncio.ensure_future(self.gpulab.switch.status_change(spawner, etag, wait))
        try:
            model = await self.watch
        except asyncio.CancelledError:
            return  # the caller went away
        self.write_json(model)

    watch: asyncio.Future | None = None  # a GET ?wait= waiting for a change

    def on_connection_close(self) -> None:
        if self.watch is not None:
            self.watch.cancel()

    async def post(self, action: str = ""):
        spawner, actor = self.spawner()
        body = self.body()
        by = OWNER if actor == spawner.user.name else f"admin {actor}"
        try:
            if action == "/return":
                result = await self.gpulab.switch.return_gpu(
                    spawner,
                    f"returned by {by}",
                    interrupt=bool(body.get("interrupt", False)),
                    force=bool(body.get("force", False)),
                    wait=bool(body.get("wait", True)),
                )
                op = result.get("operation") or {}
                return self.answer(result, 202 if op.get("state") in Operation.ACTIVE else 200)
            if action == "/get":
                result = await self.gpulab.switch.get_gpu(
                    spawner, body.get("gpus", 1), body.get("timeout"), f"Get GPU by {by}"
                )
                op = result.get("operation") or {}
                return self.answer(result, 202 if op.get("state") in Operation.ACTIVE else 200)
        except SwitchError as e:
            self.set_status(e.status)
            return self.write_json({"status": e.status, "message": e.message, **e.detail})
        raise web.HTTPError(404, "POST /hub/api/gpulab/gpu/return or /gpu/get")

    async def delete(self, action: str = ""):
        if action != "/get":
            raise web.HTTPError(404, "DELETE /hub/api/gpulab/gpu/get cancels a Get GPU")
        spawner, _ = self.spawner()
        self.write_json(self.gpulab.switch.cancel(spawner))


class CheckpointsHandler(GpuHandler):
    """The checkpoints of a running server's kernels, kept on its home by the server."""

    async def _relay(self, method: str, ident: str, action: str, body=None):
        spawner, _ = self.spawner()
        if ident and not CHECKPOINT_ID.fullmatch(ident):
            raise web.HTTPError(404, f"there is no checkpoint {ident!r}")
        path = f"/{ident}{action}" if ident else ""
        try:
            return await self.gpulab.switch.checkpoint_request(spawner, method, path, body)
        except SwitchError as e:
            self.set_status(e.status)
            self.write_json({"status": e.status, "message": e.message, **e.detail})
            return None

    async def get(self, ident: str = "", action: str = ""):
        if ident or action:
            raise web.HTTPError(405)
        answer = await self._relay("GET", "", "")
        if answer is not None:
            self.write_json(answer)

    async def post(self, ident: str = "", action: str = ""):
        if not ident or action != "/restore":
            raise web.HTTPError(404, "POST /hub/api/gpulab/gpu/checkpoints/ID/restore")
        notebook = self.body().get("notebook", "")
        if not isinstance(notebook, str):
            raise web.HTTPError(400, '"notebook" must be a path in the home')
        answer = await self._relay("POST", ident, action, {"notebook": notebook})
        if answer is not None:
            self.write_json(answer)

    async def delete(self, ident: str = "", action: str = ""):
        if not ident or action:
            raise web.HTTPError(404, "DELETE /hub/api/gpulab/gpu/checkpoints/ID")
        if await self._relay("DELETE", ident, "") is not None:
            self.set_status(204)
            self.finish()


CHECKPOINT_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")
"""A checkpoint's id (as the server names them): never a path."""

default_handlers = [
    (r"/api/gpulab/gpu(/return|/get)?", GpuHandler),
    (r"/api/gpulab/gpu/checkpoints(?:/([^/]+))?(/restore)?", CheckpointsHandler),
]
