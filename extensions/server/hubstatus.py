"""This server's talk with the hub's gpulab API, and its GPU status kept current.

Every open lab asks its server for the GPU status every few seconds (the top bar). The
server answers from ``HubStatus``: the hub's last answer, kept current by one request
that waits at the hub until the status changes (``GET /hub/api/gpulab/gpu?wait=&etag=``).
So an open lab costs the hub nothing while nothing changes, however many tabs are open,
and a change reaches the lab at its next poll.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger(__name__)


async def hub_request(
    method: str,
    path: str,
    query: dict[str, str] | None = None,
    body: dict | None = None,
    timeout: float = 60,
    under: str = "/gpulab",
) -> tuple[int, bytes, str]:
    """Call the hub's gpulab API (``/hub/api/gpulab`` + ``path``; ``under=""``: the hub's
    own API) with this server's own token: (status, body, content type); 502 when the hub
    does not answer."""
    api = os.environ.get("JUPYTERHUB_API_URL")
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if not api or not token:
        raise web.HTTPError(503, "this server was not started by a gpulab hub")
    url = f"{api.rstrip('/')}{under}{path}"
    if query:
        url += "?" + urlencode(query)
    request = HTTPRequest(
        url,
        method=method,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        body=None if body is None else json.dumps(body),
        request_timeout=timeout,
        allow_nonstandard_methods=True,
    )
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        if e.response is None:
            raise web.HTTPError(502, f"the hub did not answer: {e}") from None
        response = e.response
    except OSError as e:
        raise web.HTTPError(502, f"the hub did not answer: {e}") from None
    return response.code, response.body or b"", response.headers.get("Content-Type", "")


async def server_gpu(
    method: str, path: str = "", body: dict | None = None, timeout: float = 60, **query: str
) -> tuple[int, dict]:
    """``/hub/api/gpulab/gpu`` + ``path`` for this server: (status, JSON answer)."""
    query = {
        "user": os.environ.get("JUPYTERHUB_USER", ""),
        "server": os.environ.get("JUPYTERHUB_SERVER_NAME", ""),
        **query,
    }
    status, raw, _ = await hub_request(method, f"/gpu{path}", query, body, timeout)
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        raise web.HTTPError(502, "the hub's answer is not JSON") from None


Fetch = Callable[..., Awaitable[tuple[int, dict]]]


class HubStatus:
    """The hub's view of this server's GPUs, followed while labs ask for it.

    ``get()`` answers from the last status the hub sent while a wait at the hub is
    outstanding (the hub answers it as soon as the status changes); otherwise (nobody
    asked for a while, the hub is away, a change was just made through this server) it
    asks the hub directly, as every poll did before. Its answers say which
    (``"followed"``).
    """

    WAIT = 55
    """Seconds each wait at the hub lasts before it is renewed."""

    IDLE = 300
    """Seconds without a lab asking after which the server stops waiting at the hub."""

    RETRY = (0.5, 1, 2, 5)
    """Pauses before asking again after the hub did not answer, the last one repeated."""

    def __init__(self, fetch: Fetch = server_gpu):
        self.fetch = fetch
        self.model: dict | None = None
        self.live = False  # a wait at the hub is outstanding since ``model`` was current
        self.stale = False  # a change went through this server: ask the hub directly
        self.asked = 0.0
        self.task: asyncio.Task | None = None

    async def get(self) -> tuple[int, dict]:
        self.asked = time.monotonic()
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._follow())
        if self.live and not self.stale and self.model is not None:
            return 200, {**copy.deepcopy(self.model), "followed": True}
        status, model = await self.fetch("GET")
        if status == 200:
            self.model, self.stale = model, False
        return status, {**model, "followed": False}

    def changed(self) -> None:
        """A Return or Get GPU went through this server: the next ``get`` asks the hub."""
        self.stale = True

    async def _follow(self) -> None:
        failures = 0
        while time.monotonic() - self.asked < self.IDLE:
            etag = (self.model or {}).get("etag", "")
            # a wait is only as good as the model it compares with: after a failure,
            # ask once without waiting
            waiting = bool(etag) and failures == 0
            self.live = waiting
            try:
                if waiting:
                    status, model = await self.fetch(
                        "GET", timeout=self.WAIT + 15, wait=str(self.WAIT), etag=etag
                    )
                else:
                    status, model = await self.fetch("GET")
            except web.HTTPError as e:
                status, model = e.status_code, {}
            except Exception:  # noqa: BLE001 -- anything else ends this wait, not the server
                log.exception("gpulab: waiting for the hub's GPU status")
                status, model = 0, {}
            if status == 200 and model.get("etag"):
                self.model, failures = model, 0
                continue
            self.live = False
            await asyncio.sleep(self.RETRY[min(failures, len(self.RETRY) - 1)])
            failures += 1
        self.live = False
