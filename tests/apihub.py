"""The hub in the test process, for the API tier (``tests/api``).

JupyterHub with gpulab's whole configuration (``hubconfig.configure``), its services
built here (``InProcessHub.ctx``: the real ledger on a temporary database, a clock the
test may set), the real configurable-http-proxy in front, and users' servers
*recorded*: a spawn reserves GPUs from the ledger as every backend does, then starts a
small HTTP server in the hub's event loop that answers JupyterHub's checks and the
calls the hub makes to gpulab's server extension (``gpulab/internal/...``), recording
each. Jobs and models run as on the local backend (``RecordingBackend`` is the local
backend with recorded servers).

What a user would notice of a real server (kernels, variables, the lab) is tested in
``tests/e2e``; the extension's side of these calls in ``tests/serverext``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from jupyterhub.app import JupyterHub
from jupyterhub.spawner import Spawner
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets.config import Config

from gpulab.extensions.server.secret import INTERNAL_SECRET_HEADER
from gpulab.hub.app import Context
from gpulab.hub.hubconfig import configure
from gpulab.hub.inventory import Gpu
from gpulab.hub.ledger import GpuLedger
from gpulab.hub.settings import load_settings
from gpulab.spawner.base import GpuSpawnerMixin
from gpulab.spawner.local_backend import LocalBackend
from hubfixture import SHARED_SETTINGS, Hub, wait_for

API_SETTINGS = {
    # what the tier's modules need: GPUs and quotas, idle reclaim every second
    **SHARED_SETTINGS,
    "gpus": {**SHARED_SETTINGS["gpus"], "reclaim_interval": 1},
    "profiles": [
        {"slug": "cpu", "display_name": "CPU only", "default": True},
        {"slug": "gpu-1", "display_name": "1 GPU", "gpus": 1},
        {"slug": "gpu-2", "display_name": "2 GPUs", "gpus": 2},
        {"slug": "gpu-idle", "display_name": "1 GPU, returned after an idle hour", "gpus": 1,
         "idle_return": "1h"},
    ],
}  # fmt: skip


@dataclass
class Call:
    """A call the hub made to a user's server extension."""

    user: str
    method: str
    path: str
    body: dict | None


@dataclass
class Clock:
    """The hub's wall clock (``Context.clock``): real time, moved on by ``advance``."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)

    def of(self, user: str, path: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.user == user and (path is None or c.path == path)]


class _Answer(web.RequestHandler):
    """What a user's server answers: JupyterHub's ``api`` check, and gpulab's internal
    endpoints as the extension answers them for a server without kernels."""

    def initialize(self, server: RecordedServer) -> None:
        self.server = server

    def _answer(self, method: str) -> None:
        path = self.request.path
        if path.endswith("/api") or path.endswith("/api/"):
            self.finish({"version": "recorded"})
            return
        _, _, internal = path.partition("/gpulab/internal/")
        if not internal:
            raise web.HTTPError(404)
        spawner = self.server.spawner
        if self.request.headers.get(INTERNAL_SECRET_HEADER) != spawner.internal_secret:
            self.set_status(403)
            self.finish({"message": "not the hub"})
            return
        body = json.loads(self.request.body) if self.request.body else None
        self.server.recorder.calls.append(Call(spawner.user.name, method, internal, body))
        if (method, internal) == ("POST", "switch"):
            self.server.visible = body["visible"]
            self.finish({"visible": self.server.visible, "kernels": [], "path": "checkpoint"})
        elif (method, internal) == ("GET", "activity"):
            self.finish(
                {
                    "visible": self.server.visible,
                    "busy_kernels": 0,
                    "last_activity": None,
                    "started": self.server.started,
                    "gpu_utilization": self.server.utilization,
                    "restoring": False,
                    "switching": False,
                }
            )
        elif (method, internal) == ("POST", "guests/end"):
            self.finish({"closed": 0})
        elif (method, internal) == ("GET", "notebook"):  # what the server chose to send
            self.finish({"last_modified": "recorded", "content": self.server.notebook})
        else:
            self.set_status(404)
            self.finish({"message": f"a recorded server has no {internal}"})

    def get(self) -> None:
        self._answer("GET")

    def post(self) -> None:
        self._answer("POST")

    def delete(self) -> None:
        self._answer("DELETE")


class RecordedServer:
    def __init__(self, spawner: RecordingSpawner, recorder: Recorder):
        self.spawner, self.recorder = spawner, recorder
        self.visible = ",".join(spawner.gpu_ids)
        self.started = time.time()
        self.notebook: dict = {}
        """What it answers for any notebook a read-only link asks for."""
        self.utilization: float | None = None
        """Its GPUs' utilisation in percent, as NVML would say (None: no NVML)."""
        app = web.Application([(r"/.*", _Answer, {"server": self})])
        sockets = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        self.port = sockets[0].getsockname()[1]
        self.http = HTTPServer(app)
        self.http.add_sockets(sockets)

    def close(self) -> None:
        self.http.stop()


class RecordingSpawner(GpuSpawnerMixin, Spawner):
    """A spawner whose server is a ``RecordedServer``: GPUs from the ledger, the secret
    and environment made as for a real server, no process."""

    recorder: Recorder  # set on the class by RecordingBackend

    def recorded(self) -> RecordedServer | None:
        return getattr(self, "_recorded", None)

    async def start(self):
        self.reserve_gpus()
        self.get_env()  # as a real start: the secret, the GPUs' variables
        self.gpu_env()
        self._recorded = RecordedServer(self, self.recorder)
        self.report(90, "Recorded server started")
        return ("127.0.0.1", self._recorded.port)

    async def poll(self):
        return None if self.recorded() is not None else 0

    async def stop(self, now=False):
        server, self._recorded = self.recorded(), None
        if server is not None:
            server.close()
        self.release_gpus("stopped")


class RecordingBackend(LocalBackend):
    """The local backend, but users' servers are recorded."""

    name = "recording"
    shares_machine = False  # the test process is root's: nothing of it is exposed

    def __init__(self, settings, recorder: Recorder):
        super().__init__(settings)
        self.recorder = recorder

    def inventory(self):
        return [Gpu(id=gpu, index=i) for i, gpu in enumerate(self.settings.gpus.ids)]

    def configure_hub(self, c, ctx) -> None:
        spawner = type("RecordingSpawner", (RecordingSpawner,), {"recorder": self.recorder})
        c.JupyterHub.spawner_class = spawner
        c.JupyterHub.cleanup_proxy = True

    def settle(self, ledger):
        return []


class HubApp(JupyterHub):
    """JupyterHub as ``gpulab-hub`` runs it, in a thread of the test process:
    configured from ``ctx`` instead of a config file, no signal handlers."""

    ctx: Context

    def load_config_file(self, *args, **kwargs) -> None:
        c = Config()
        configure(c, self.ctx)
        self.update_config(c)

    def init_signal(self) -> None:
        pass


class InProcessHub(Hub):
    """``hubfixture.Hub``'s interface (URLs, users, tokens), with the hub in this process:
    ``ctx`` its services, ``recorder`` the calls to users' servers, ``clock`` its time."""

    def __init__(self, settings: dict | None = None):
        super().__init__(settings)
        self.recorder = Recorder()
        self.clock = Clock()
        self.ctx: Context | None = None
        self.app: HubApp | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failed: BaseException | None = None

    def launch(self) -> None:
        self.thread = threading.Thread(target=self._serve, name="in-process hub", daemon=True)
        self.thread.start()

    def start(self) -> InProcessHub:
        self.launch()
        if not self._started.wait(120) or self._failed is not None:
            raise RuntimeError(f"the hub did not start: {self._failed!r}\n{self.log_tail()}")
        wait_for(self.answers, 60, "the hub to answer through its proxy", interval=0.05)
        return self

    def answers(self) -> bool:
        import requests

        return requests.get(self.url + "/hub/api/", timeout=2).status_code == 200

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as e:  # noqa: BLE001 -- said by start()
            self._failed = e
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.close()

    async def _start(self) -> None:
        settings = load_settings(self.config_file, environ={})
        backend = RecordingBackend(settings, self.recorder)
        inventory = backend.inventory()
        ledger = GpuLedger(settings.ledger_url, inventory, settings.gpus)
        self.ctx = Context(settings, backend, inventory, ledger, None, clock=self.clock)
        self.app = HubApp.instance()
        self.app.ctx = self.ctx
        umask = os.umask(0o022)
        os.umask(umask)
        try:
            await self.app.initialize([])
        finally:
            os.umask(umask)  # configure() narrows it for the hub process: not for this one
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(
            logging.Formatter("[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
        )
        for name in (self.app.log.name, "gpulab"):
            logging.getLogger(name).addHandler(handler)
        self._log_handler = handler
        await self.app.start()

    def kill(self) -> None:
        raise NotImplementedError("the in-process hub stops only with its process; use Hub")

    def stop(self) -> None:
        if self.app is None or self.loop is None or not self.thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.app.stop)
        self.thread.join(60)
        for name in (self.app.log.name, "gpulab"):
            logging.getLogger(name).removeHandler(self._log_handler)
        self._log_handler.close()
        HubApp.clear_instance()
        self.app = None
