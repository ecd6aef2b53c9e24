"""The hub's calls to a server's gpulab extension (``gpulab/internal/*``) for Return GPU
and Get GPU, and the errors those answer with.

Each call carries the secret the spawner made for that one server (never a hub token:
the server process is the user's, so nothing sent to it may be good for anything else).
"""

from __future__ import annotations

import json

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from gpulab.extensions.server import INTERNAL_SECRET_HEADER

CALL_TIMEOUT = 330
"""A kernel's checkpoint may take 300 s in the server, and the server's relay of a Return
or Get GPU (SWITCH_RELAY_TIMEOUT there) waits longer than this."""


class SwitchError(Exception):
    """A Return/Get GPU that cannot be done; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str, **detail):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


def label(user: str, server: str) -> str:
    return f"{user}/{server}" if server else user


def reason(e: BaseException) -> str:
    """What went wrong, in words (a tornado HTTPError's message, not its repr)."""
    return getattr(e, "log_message", None) or str(e) or type(e).__name__


def unavailable(spawner) -> str:
    """Why this server's spawner cannot move it off and onto GPUs ("" if it can)."""
    return getattr(spawner, "gpu_switch_unavailable", "")


def switch_mode(spawner) -> str:
    """How this server's GPUs change while it runs: its kernels move ("kernels"), or the
    spawner replaces its pod ("pod")."""
    return getattr(spawner, "gpu_switch_mode", "kernels")


def require_switchable(spawner) -> None:
    why = unavailable(spawner)
    if why:
        raise SwitchError(409, why)


def require_running(spawner) -> None:
    if not spawner.ready or spawner.pending:
        state = spawner.pending or "not running"
        raise SwitchError(409, f"{label(spawner.user.name, spawner.name)}'s server is {state}")


async def call_server(
    spawner, method: str, path: str, body=None, timeout: float = CALL_TIMEOUT
) -> dict:
    """``method`` on the server's ``gpulab/internal/`` + ``path``: its JSON answer, or a
    SwitchError with the server's message and status."""
    if not spawner.internal_secret:
        raise SwitchError(
            409,
            f"{label(spawner.user.name, spawner.name)}'s server was started by an older "
            "gpulab; restart it to return or get a GPU",
        )
    why = spawner.impostor()
    if why:
        raise SwitchError(502, f"not calling the server: {why}")
    url = spawner.server.url.rstrip("/") + "/gpulab/internal/" + path
    request = HTTPRequest(
        url,
        method=method,
        headers={
            INTERNAL_SECRET_HEADER: spawner.internal_secret,
            "Content-Type": "application/json",
        },
        body=None if body is None else json.dumps(body),
        request_timeout=timeout,
    )
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        if e.response is None:
            raise SwitchError(504, f"the server did not answer in time ({e})") from None
        try:
            answer = json.loads(e.response.body)
            message = answer.pop("message")
        except (ValueError, KeyError, TypeError):
            message, answer = f"the server answered {e.code}", {}
        raise SwitchError(e.code, message, **answer) from None
    except OSError as e:
        raise SwitchError(502, f"cannot reach the server: {e}") from None
    return json.loads(response.body) if response.body else {}


async def switch_devices(spawner, visible: str, interrupt=False, force=False) -> dict:
    """The server checkpoints its kernels and restarts them on ``visible`` ("": none)."""
    body = {"visible": visible, "interrupt": interrupt, "force": force}
    body["wait_restore"] = bool(visible)  # Return answers once the GPU is free
    return await call_server(spawner, "POST", "switch", body)
