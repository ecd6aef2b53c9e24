"""REST endpoints of the gpulab server extension, under the server's base URL.

For the browser (the JupyterLab frontend), authenticated as a hub user with access to
this server: its owner, or a guest it is shared with (``sharing.py``), who sees the GPUs
(``"owner": false``) and gets 403 from everything else here:

- ``GET  gpulab/gpu``: this server's GPUs (with NVML memory and utilisation when there
  is a driver), the pool, the operation in progress and the last restore report;
- ``POST gpulab/gpu/return`` ``{"interrupt": false, "force": false}``;
- ``POST gpulab/gpu/get`` ``{"gpus": 1, "timeout": 600}``; ``DELETE`` cancels it.

These forward to the hub's ``/hub/api/gpulab/gpu`` API with the server's own token: the
hub keeps the ledger and decides. The lab's workloads panel, forms and Try it panel reach
the owner's own jobs, sweeps and models the same way (``RELAYED`` below: exactly these):

- ``GET  gpulab/hub/jobs``, ``gpulab/hub/jobs/NAME``, ``gpulab/hub/jobs/NAME/logs``
  (``?replica=&offset=``, no follow), the same for ``sweeps`` and ``models`` (and a
  model's ``logs`` and ``metadata``);
- ``POST gpulab/hub/jobs``, ``sweeps``, ``models``: submit a job or sweep, deploy a model;
- ``POST gpulab/hub/jobs/NAME/cancel``, ``gpulab/hub/sweeps/NAME/cancel``;
- ``PATCH``, ``DELETE gpulab/hub/models/NAME``: update, undeploy;
- ``POST gpulab/hub/models/NAME:predict`` (``/versions/N:predict``, ``/labels/L:predict``);
- ``GET  gpulab/hub/usage``: the owner's GPU usage (``?by=&from=&to=``, docs/usage.md);
- ``GET  gpulab/hub/gpus``: the pool, and the owner's GPUs and limit;
- ``GET``, ``POST gpulab/hub/environments``, ``GET``, ``PATCH``, ``DELETE
  gpulab/hub/environments/NAME``: the owner's environment snapshots: list, save, show,
  share, delete (docs/environments.md);
- ``gpulab/tensorboard``: TensorBoards this server runs (``tensorboards.py``);
- ``POST gpulab/documents/save``: write the open co-edited documents to disk now, as the
  server has them (the lab, before it runs a notebook as a job; ``documents.py``);
- ``gpulab/share...``: the Share dialog's links and guests (``sharing.py``).

Nothing else of the hub's API is reachable through it. For the hub only (the secret the
spawner made for this server, in the ``X-Gpulab-Internal-Secret`` header; it grants
nothing at the hub, so it is no loss that the server's owner can read it):

- ``POST gpulab/internal/switch`` ``{"visible": "1", "interrupt": false, "force": false,
  "wait_restore": true}``: checkpoint, re-target and restore the kernels;
- ``POST gpulab/internal/checkpoint`` ``{"interrupt": false, "force": false}``: before the
  hub replaces this server (kubernetes backend): checkpoint the kernels for the next
  server and shut them down;
- ``POST gpulab/internal/resume``: start those notebooks again here (a move called off);
- ``GET  gpulab/internal/activity``: busy kernels, last activity, GPU utilisation;
- ``POST gpulab/internal/guests/end`` ``{"reason": "..."}``: a guest's access was revoked:
  their connections end (``sharing.end_guests``);
- ``GET  gpulab/internal/notebook?path=&content=1``: a notebook for a read-only link
  (``gpulab.hub.sharing``): when it was last saved, and its content;
- ``GET  gpulab/internal/checkpoints``, ``POST gpulab/internal/checkpoints/ID/restore``
  ``{"notebook": "path"}``, ``DELETE gpulab/internal/checkpoints/ID``: the kernels'
  checkpoints on the home (``checkpoints.py``), for ``gpulab gpu checkpoints``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from .base import Base, owner
from .documents import save_open_documents
from .gpuinfo import stats as gpu_stats
from .hubstatus import HubStatus, hub_request, server_gpu
from .kernels import KernelSwitch
from .origin import browser_origin, remember
from .processes import visible_devices
from .records import SwitchError
from .secret import INTERNAL_SECRET_HEADER, INTERNAL_SECRET_SETTING
from .sharing import ShareHandler, end_guests
from .tensorboards import TensorBoardError, TensorBoards


class _Base(Base):
    @property
    def switch(self) -> KernelSwitch:
        return self.settings["gpulab_switch"]


SWITCH_RELAY_TIMEOUT = 360
"""Seconds a Return or Get GPU waits for the hub, which waits up to 330 s for this
server to checkpoint its kernels (``gpulab.hub.gpuswitch``): a large kernel's save must
not end in "the hub did not answer" while the return goes on."""


class GpuHandler(_Base):
    """The browser's view; every change goes through the hub."""

    @property
    def hub_status(self) -> HubStatus:
        return self.settings["gpulab_hub_status"]

    def relay(self, status: int, model: dict) -> None:
        self.set_status(status)
        self.finish(json.dumps(model))

    @web.authenticated
    async def get(self, action: str = ""):
        if action:
            raise web.HTTPError(405)
        status, model = await self.hub_status.get()
        if status == 200:
            stats = gpu_stats([g["id"] for g in model.get("gpus", [])])
            for gpu in model.get("gpus", []):
                gpu.update(stats.get(gpu["id"], {}))
            model["visible"] = visible_devices()
            model["switching"] = self.switch.switching
            model["saved_bytes"] = self.switch.saved_bytes()
            model["restore"] = self.switch.restore
            model["parked"] = self.switch.parked()
            model["owner"] = self.by_owner  # a guest sees the GPUs, without the buttons
            if self.by_owner:  # for links printed in the owner's terminals
                remember(browser_origin(self.request.headers, self.request.protocol))
        self.relay(status, model)

    @web.authenticated
    async def post(self, action: str = ""):
        if action not in ("/return", "/get"):
            raise web.HTTPError(404, "POST gpulab/gpu/return or gpulab/gpu/get")
        self.require_owner("return or get this server's GPU")
        try:
            answer = await server_gpu("POST", action, self.body(), SWITCH_RELAY_TIMEOUT)
        finally:
            self.hub_status.changed()
        self.relay(*answer)

    @web.authenticated
    async def delete(self, action: str = ""):
        if action != "/get":
            raise web.HTTPError(404, "DELETE gpulab/gpu/get cancels a waiting Get GPU")
        self.require_owner("cancel a Get GPU of this server")
        try:
            answer = await server_gpu("DELETE", action)
        finally:
            self.hub_status.changed()
        self.relay(*answer)


NAME = r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}"
"""A job's, sweep's or model's name as it may appear in a relayed path: the hub checks
its own rules; this only keeps the path to the parts below."""

ENVIRONMENT = r"[a-z0-9][a-z0-9._-]{0,62}"
"""An environment snapshot's name (the hub's own rule)."""

RELAYED = {
    "GET": (
        r"(jobs|sweeps|models|usage|gpus|environments)",
        rf"(jobs|sweeps|models)/{NAME}",
        rf"environments/{ENVIRONMENT}",
        rf"jobs/{NAME}/logs",
        rf"models/{NAME}/(logs|metadata)",
    ),
    "POST": (
        r"(jobs|sweeps|models|environments)",
        rf"(jobs|sweeps)/{NAME}/cancel",
        rf"models/{NAME}(/versions/[0-9]{{1,18}}|/labels/{NAME})?:predict",
    ),
    "PATCH": (rf"models/{NAME}", rf"environments/{ENVIRONMENT}"),
    "DELETE": (rf"models/{NAME}", rf"environments/{ENVIRONMENT}"),
}
"""What of the hub's gpulab API the lab reaches through this server (``gpulab/hub/`` +
one of these), by method: the owner's own workloads, usage and the GPU pool."""

RELAYED_QUERY = ("replica", "offset", "by", "from", "to")

RELAY_TIMEOUT = 120
"""Seconds a relayed call waits for the hub (a prediction from a model still loading)."""


class WorkloadsHandler(_Base):
    """The owner's jobs, sweeps, models, GPU usage and the pool, at the hub: read, submit,
    cancel, deploy, update, undeploy, predict (``RELAYED``), with this server's token,
    which acts for the owner alone; a guest of this server gets 403."""

    async def relay_call(self, rest: str) -> None:
        method = self.request.method
        if not any(re.fullmatch(p, rest) for p in RELAYED.get(method, ())):
            raise web.HTTPError(404, f"{method} gpulab/hub/{rest} is not relayed to the hub")
        self.require_owner("use this server's owner's jobs, models and GPUs")
        query = {"user": owner()} if method == "GET" and "/" not in rest else {}
        for name in RELAYED_QUERY:
            value = self.get_argument(name, None)
            if value is not None:
                query[name] = value
        body = self.body() if method in ("POST", "PATCH") else None
        self.relay(*await hub_request(method, f"/{rest}", query, body, RELAY_TIMEOUT))

    @web.authenticated
    async def get(self, rest: str):
        await self.relay_call(rest)

    @web.authenticated
    async def post(self, rest: str):
        await self.relay_call(rest)

    @web.authenticated
    async def patch(self, rest: str):
        await self.relay_call(rest)

    @web.authenticated
    async def delete(self, rest: str):
        await self.relay_call(rest)

    def relay(self, status: int, body: bytes, content_type: str) -> None:
        self.set_status(status)
        if content_type:
            self.set_header("Content-Type", content_type)
        self.finish(body if status not in (204, 304) else None)


class TensorBoardHandler(_Base):
    """The owner's TensorBoards in this server (``tensorboards.py``): ``GET`` lists them,
    ``POST {"logdir": "runs"}`` opens one on a folder of the home (the running one when
    there is), ``DELETE gpulab/tensorboard/PORT`` stops one."""

    @property
    def boards(self) -> TensorBoards:
        return self.settings["gpulab_tensorboards"]

    @web.authenticated
    async def get(self, port: str = ""):
        if port:
            raise web.HTTPError(405)
        self.require_owner("see the TensorBoards of this server")
        self.answer(200, {"tensorboards": self.boards.list()})

    @web.authenticated
    async def post(self, port: str = ""):
        if port:
            raise web.HTTPError(405)
        self.require_owner("start TensorBoard in this server")
        try:
            board, started = self.boards.open(self.body().get("logdir", ""))
        except TensorBoardError as e:
            return self.fail(e.status, e.message)
        self.answer(201 if started else 200, {**board, "started": started})

    @web.authenticated
    async def delete(self, port: str = ""):
        if not port:
            raise web.HTTPError(405)
        self.require_owner("stop a TensorBoard of this server")
        if not await asyncio.to_thread(self.boards.stop, int(port)):
            return self.fail(404, f"no TensorBoard of this server listens on port {port}")
        self.set_status(204)
        self.finish()


class _HubOnly(_Base):
    """Only for the hub, which sends the secret the spawner made for this server
    (``INTERNAL_SECRET_HEADER``); no hub token is ever asked for or accepted here."""

    async def prepare(self):
        secret = self.settings.get(INTERNAL_SECRET_SETTING, "")
        offered = self.request.headers.get(INTERNAL_SECRET_HEADER, "")
        if not secret or not hmac.compare_digest(offered.encode(), secret.encode()):
            raise web.HTTPError(403, "only the hub may call this")
        await super().prepare()

    def check_xsrf_cookie(self) -> None:
        # a browser never sends the secret's header, so no cookie can carry a forged call
        return None


class SwitchHandler(_HubOnly):
    @allow_unauthenticated  # the secret was checked in prepare
    async def post(self):
        body = self.body()
        visible = body.get("visible")
        if not isinstance(visible, str):
            raise web.HTTPError(400, '"visible" must be a string of device ids ("" for none)')
        try:
            result = await self.switch.switch(
                visible,
                interrupt=bool(body.get("interrupt")),
                force=bool(body.get("force")),
                wait_restore=bool(body.get("wait_restore", True)),
            )
        except SwitchError as e:
            return self.fail(e.status, e.message, **e.detail)
        self.finish(json.dumps(result))


class CheckpointHandler(_HubOnly):
    @allow_unauthenticated  # the secret was checked in prepare
    async def post(self):
        body = self.body()
        try:
            result = await self.switch.checkpoint_for_move(
                interrupt=bool(body.get("interrupt")), force=bool(body.get("force"))
            )
        except SwitchError as e:
            return self.fail(e.status, e.message, **e.detail)
        self.finish(json.dumps(result))


class ResumeHandler(_HubOnly):
    @allow_unauthenticated  # the secret was checked in prepare
    async def post(self):
        started = self.switch.start_resume()
        self.finish(json.dumps({"resuming": started}))


class CheckpointsHandler(_HubOnly):
    """The kernels' checkpoints on the home: list, restore one into a notebook, delete."""

    @allow_unauthenticated  # the secret was checked in prepare
    async def get(self, ident: str = "", action: str = ""):
        if ident or action:
            raise web.HTTPError(405)
        self.finish(json.dumps({"checkpoints": self.switch.checkpoints.list()}))

    @allow_unauthenticated  # the secret was checked in prepare
    async def post(self, ident: str = "", action: str = ""):
        if not ident or action != "/restore":
            raise web.HTTPError(404, "POST gpulab/internal/checkpoints/ID/restore")
        notebook = self.body().get("notebook") or ""
        if not isinstance(notebook, str):
            raise web.HTTPError(400, '"notebook" must be a path in the home')
        try:
            result = await self.switch.restore_checkpoint(ident, notebook)
        except SwitchError as e:
            return self.fail(e.status, e.message, **e.detail)
        self.finish(json.dumps(result))

    @allow_unauthenticated  # the secret was checked in prepare
    async def delete(self, ident: str = "", action: str = ""):
        if not ident or action:
            raise web.HTTPError(404, "DELETE gpulab/internal/checkpoints/ID")
        try:
            self.switch.delete_checkpoint(ident)
        except SwitchError as e:
            return self.fail(e.status, e.message, **e.detail)
        self.set_status(204)
        self.finish()


MAX_NOTEBOOK_BYTES = 20 * 2**20
"""The largest notebook sent to the hub for a read-only link."""


class NotebookHandler(_HubOnly):
    """A notebook of this server, for a read-only link the owner made (the hub renders
    it): its version (when last saved) and, with ``content=1``, its content."""

    @allow_unauthenticated  # the secret was checked in prepare
    async def get(self):
        path = self.get_argument("path", "")
        cm = self.contents_manager
        try:
            model = await ensure_async(cm.get(path, content=False))
        except web.HTTPError as e:
            return self.fail(e.status_code, f"{path}: {e.log_message or 'not readable'}")
        if model.get("type") != "notebook":
            return self.fail(400, f"{path} is not a notebook")
        if (model.get("size") or 0) > MAX_NOTEBOOK_BYTES:
            return self.fail(413, f"{path} is larger than {MAX_NOTEBOOK_BYTES >> 20} MiB")
        answer = {"path": model["path"], "last_modified": str(model.get("last_modified"))}
        if self.get_argument("content", "0") == "1":
            full = await ensure_async(cm.get(path, content=True, type="notebook"))
            answer["content"] = full["content"]
        self.finish(json.dumps(answer, default=str))


class GuestsEndHandler(_HubOnly):
    """The hub revoked a guest's access to this server: their connections end now."""

    @allow_unauthenticated  # the secret was checked in prepare
    async def post(self):
        reason = self.body().get("reason") or "a guest's access was revoked"
        if not isinstance(reason, str):
            raise web.HTTPError(400, '"reason" must be a string')
        closed = end_guests(self.serverapp, self.settings["gpulab_sessions"], reason[:200])
        self.finish(json.dumps({"closed": closed}))


class ActivityHandler(_HubOnly):
    @allow_unauthenticated  # the secret was checked in prepare
    async def get(self):
        visible = visible_devices()
        ids = [v for v in visible.split(",") if v]
        stats = gpu_stats(ids)
        utilisation = [s["utilization"] for s in stats.values() if s.get("utilization") is not None]
        self.finish(
            json.dumps(
                {
                    "visible": visible,
                    "busy_kernels": len(self.switch.kernels_busy()),
                    "last_activity": self.switch.last_activity(),
                    "started": self.switch.started,
                    "gpu_utilization": max(utilisation) if utilisation else None,
                    "restoring": self.switch.restore.get("state") == "restoring",
                    "switching": self.switch.switching,
                }
            )
        )


class DocumentsSaveHandler(_Base):
    """The open co-edited documents written to disk now, with what the server holds of
    them. A page must not save such a document itself: its save checks the file on disk,
    finds the server's own write of a moment before, and asks in a dialog, which waits
    behind the page's own open dialog (the job form) forever."""

    @web.authenticated
    async def post(self):
        self.require_owner("save this server's open documents")
        self.finish(await save_open_documents(self.serverapp))


def handlers(base_url: str) -> list:
    def url(path: str) -> str:
        return base_url.rstrip("/") + "/gpulab/" + path

    return [
        (url(r"gpu(/return|/get)?"), GpuHandler),
        (url(r"hub/([^?]+)"), WorkloadsHandler),
        (url(r"tensorboard(?:/([0-9]{1,5}))?"), TensorBoardHandler),
        (url("documents/save"), DocumentsSaveHandler),
        (
            url(
                r"share(?:/(codes|guests|views)(?:/(sc_[0-9]+|v_[0-9]+|user|group)(?:/([^/]+))?)?)?"
            ),
            ShareHandler,
        ),
        (url("internal/switch"), SwitchHandler),
        (url("internal/guests/end"), GuestsEndHandler),
        (url("internal/notebook"), NotebookHandler),
        (url("internal/checkpoint"), CheckpointHandler),
        (url("internal/resume"), ResumeHandler),
        (url("internal/activity"), ActivityHandler),
        (url(r"internal/checkpoints(?:/([^/]+))?(/restore)?"), CheckpointsHandler),
    ]
