"""What every gpulab spawner does, whatever runs the server: profiles, GPU grants,
the spawn form and progress events. Backends mix this into their Spawner class.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from jupyterhub.utils import url_path_join
from sqlalchemy.orm import object_session
from tornado import web
from traitlets import List, Unicode, default
from traitlets.config import LoggingConfigurable

from gpulab.extensions.server import INTERNAL_SECRET_ENV
from gpulab.hub.inventory import visible_devices_env
from gpulab.hub.ledger import LedgerError
from gpulab.hub.storage import StorageError
from gpulab.hub.workloads.runner import WorkloadError

from . import profiles

if TYPE_CHECKING:
    from gpulab.hub.app import Context


class GpuSpawnerMixin(LoggingConfigurable):
    """Reserve GPUs from the ledger before a server starts; release them when it ends.

    Put it first in a backend's bases: ``class LocalGpuSpawner(GpuSpawnerMixin, LocalProcessSpawner)``.
    """

    gpu_ids = List(Unicode(), help="GPU ids granted to the running server.")
    profile_slug = Unicode("", help="Profile the running server was started with.")
    internal_secret = Unicode(
        "",
        help="""The secret the hub proves itself with to this server's gpulab extension
        (``gpulab/internal/*``), made for this server alone when it starts. It grants
        nothing at the hub, so the server's owner, who controls the server process, may
        know it.""",
    )

    @property
    def gpulab(self) -> Context:
        """The hub's services (``gpulab.hub.app``), from the hub's tornado settings."""
        return self.user.settings["gpulab"]

    @default("default_url")
    def _default_url_default(self):
        return self.gpulab.settings.servers.default_url

    @default("start_timeout")
    def _start_timeout_default(self):
        return self.gpulab.settings.servers.start_timeout

    # -- the spawn form ------------------------------------------------------------

    @default("options_form")
    def _options_form_default(self):
        return self._render_options_form

    def _render_options_form(self, spawner) -> str:
        snap = self.gpulab.ledger.snapshot()
        pool = profiles.Pool(
            free=snap.free,
            total=len(snap.pool),
            waiting=len(snap.queue),
            gpus=[gpu for gpu, _ in snap.pool],
        )
        # a link may name the profile (/hub/spawn?profile=gpu-1): the form offers it
        handler = getattr(self, "handler", None)
        chosen = ""
        live = None
        if handler is not None:
            chosen = handler.get_query_argument(
                "opt-profile", handler.get_query_argument("profile", "")
            )
            live = profiles.LiveStatus(url=self._gpu_status_url(), xsrf=handler.xsrf_token.decode())
        chosen_environment = handler.get_query_argument("environment", "") if handler else ""
        return profiles.render_form(
            self.gpulab.settings,
            pool,
            chosen,
            live,
            self._environment_choices(),
            chosen_environment,
        )

    def _environment_choices(self) -> list[profiles.EnvironmentChoice]:
        """The user's saved environments and those shared with them (none where the
        backend has no snapshots)."""
        try:
            manager = self.gpulab.environments
        except WorkloadError:
            return []
        groups = [g.name for g in self.user.groups]
        return [
            profiles.EnvironmentChoice(
                e.name if e.user == self.user.name else e.ref, e.description, len(e.packages)
            )
            for e in manager.store.list(self.user.name, groups)
            if e.state == "ready"
        ]

    def _gpu_status_url(self) -> str:
        """This server's GPU status in gpulab's API (free, total, queue; a long poll),
        which its owner, and admins, may read: what the spawn form follows."""
        query = urlencode({"user": self.user.name, "server": self.name})
        return url_path_join(self.hub.base_url, "api/gpulab/gpu") + "?" + query

    def options_from_form(self, formdata):
        return profiles.options_from_form(formdata)

    def options_from_query(self, query_data):
        # JupyterHub starts a server on a GET with options in the query; a link on
        # another site, opened by a logged-in user (or an admin, for anyone), would
        # take GPUs. Only the form's POST, with its xsrf token, starts one.
        raise web.HTTPError(
            400,
            "A link does not start a server: check the profile below and press Start.",
        )

    @default("apply_user_options")
    def _apply_user_options_default(self):
        return self._check_user_options

    def _check_user_options(self, spawner, user_options) -> None:
        """Refuse bad options before the spawn starts; ``reserve_gpus`` applies them."""
        try:
            request = profiles.resolve(self.gpulab.settings, user_options)
        except profiles.BadOptions as e:
            raise web.HTTPError(400, str(e)) from None
        if request.environment:  # one the user may start from, saved and ready
            groups = [g.name for g in self.user.groups]
            try:
                self.gpulab.environments.visible(self.user.name, groups, request.environment)
            except WorkloadError as e:
                raise web.HTTPError(e.status, str(e)) from None

    # -- progress --------------------------------------------------------------------

    def _progress_events(self) -> list[dict]:
        if not hasattr(self, "_gpulab_events"):
            self._gpulab_events = []
        return self._gpulab_events

    def report(self, progress: int, message: str) -> None:
        """Record a spawn progress event (shown on the spawn-pending page)."""
        self.log.info("%s: %s", self._log_name, message)
        self._progress_events().append({"progress": progress, "message": message})

    async def progress(self):
        sent = 0
        while True:
            events = self._progress_events()
            while sent < len(events):
                yield events[sent]
                sent += 1
            if not self._spawn_pending:
                break
            await asyncio.sleep(0.2)

    # -- grants ----------------------------------------------------------------------

    def reserve_gpus(self) -> profiles.ServerRequest:
        """Validate the spawn options and take GPUs from the ledger, or fail with a 4xx."""
        self._gpulab_events = []
        try:
            request = profiles.resolve(self.gpulab.settings, self.user_options)
        except profiles.BadOptions as e:
            raise web.HTTPError(400, str(e)) from None
        self.report(5, f"Profile {request.profile.display_name}: asking for {request.gpus} GPU(s)")
        groups = [g.name for g in self.user.groups]
        try:
            gpus = self.gpulab.ledger.reserve(
                self.user.name, self.name, request.gpus, groups, profile=request.profile.slug
            )
        except LedgerError as e:
            message = e.message_for(admin=self.user.admin)
            self.report(100, f"Spawn failed: {message}")
            raise web.HTTPError(e.status, message) from None
        self.gpu_ids = [g.id for g in gpus]
        self.profile_slug = request.profile.slug
        if gpus:
            self.report(15, f"Granted GPU(s) {', '.join(self.gpu_ids)}")
        return request

    async def storage_env(self) -> dict[str, str]:
        """Make sure the user's S3 bucket and keys exist; their variables for the server."""
        s3 = self.gpulab.s3
        if s3 is None:
            return {}
        self.report(20, "Preparing your S3 bucket")
        try:
            account = await asyncio.to_thread(s3.ensure, self.user.name)
        except StorageError as e:
            self.report(100, f"Spawn failed: {e}")
            raise web.HTTPError(
                e.status, f"Cannot prepare {self.user.name}'s storage: {e}"
            ) from None
        self.report(25, f"S3 bucket {account.bucket} at {account.endpoint}")
        return account.env()

    def gpus_changed(self, ids: list[str]) -> None:
        """The server's GPUs changed while it runs (Return GPU / Get GPU): remember them."""
        self.gpu_ids = list(ids)
        self.save_state()

    def save_state(self) -> None:
        """Write this spawner's state (and its server's address) to the hub's database now,
        not only when JupyterHub does, around start and stop (through the session its
        record belongs to: JupyterHub deprecates the shared ``Spawner.db``)."""
        session = object_session(self.orm_spawner) if self.orm_spawner is not None else None
        if session is not None:
            self.orm_spawner.state = self.get_state()
            session.commit()

    def impostor(self) -> str:
        """Why whatever answers at the server's address may not be this server (the hub
        then sends it nothing), or "" when nothing says so."""
        return ""

    def release_gpus(self, reason: str) -> None:
        self.gpulab.ledger.release(self.user.name, self.name, reason)
        self.gpu_ids = []

    def gpu_env(self) -> dict[str, str]:
        if not self.internal_secret:  # once per server: a pod that replaces it keeps it
            self.internal_secret = secrets.token_urlsafe(32)
        return {
            **visible_devices_env(self.gpu_ids),
            "GPULAB_PROFILE": self.profile_slug,
            "GPULAB_KERNEL_CHECKPOINT": self.gpulab.settings.gpus.kernel_checkpoint,
            "GPULAB_CHECKPOINT_GENERATIONS": str(self.gpulab.settings.gpus.checkpoint_generations),
            INTERNAL_SECRET_ENV: self.internal_secret,
        }

    def tensorboard_env(self) -> dict[str, str]:
        """Point ``%tensorboard`` in notebooks at jupyter-server-proxy's path for its port.

        TensorBoard's notebook frame opens ``$TENSORBOARD_PROXY_URL`` (``%PORT%`` replaced
        by its port) relative to the page, so the browser reaches it through the hub and
        the server's jupyter-server-proxy at ``<server prefix>proxy/<port>/`` instead of
        ``localhost:<port>``.
        """
        server = getattr(self, "server", None)
        if server is None:  # no URL to serve under yet (JupyterHub's mocks only)
            return {}
        prefix = server.base_url if server.base_url.endswith("/") else server.base_url + "/"
        return {"TENSORBOARD_PROXY_URL": f"{prefix}proxy/%PORT%/"}

    def get_state(self):
        state = super().get_state()
        if self.internal_secret:
            state["internal_secret"] = self.internal_secret
        if self.profile_slug:
            state["gpu_ids"] = list(self.gpu_ids)
            state["profile"] = self.profile_slug
        return state

    def load_state(self, state):
        super().load_state(state)
        self.gpu_ids = state.get("gpu_ids", [])
        self.profile_slug = state.get("profile", "")
        self.internal_secret = state.get("internal_secret", "")

    def clear_state(self):
        super().clear_state()
        self.gpu_ids = []
        self.profile_slug = ""
        self.internal_secret = ""
