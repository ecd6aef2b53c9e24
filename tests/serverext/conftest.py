"""The server-extension tier: gpulab's Jupyter server extension in a real Jupyter server
in the test process (pytest-jupyter's ``jp_serverapp``, ``jp_fetch``), with real kernels
and no hub: what the hub asks of a user's server, answered in seconds."""

import json

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403 (its fixtures, for this folder only)
from tornado.httpclient import HTTPClientError

SECRET = "serverext-tier-secret"
"""The server's internal secret (the hub's spawner makes one per server)."""


@pytest.fixture
def jp_server_config(monkeypatch):
    monkeypatch.setenv("GPULAB_INTERNAL_SECRET", SECRET)
    return {
        "ServerApp": {
            "jpserver_extensions": {"gpulab.extensions.server": True},
            "allow_root": True,  # the suite runs as root
        }
    }


@pytest.fixture
def on_the_server(jp_asyncio_loop):
    """Run a coroutine on the loop the server runs on (the tests are plain functions:
    the suite's asyncio plugin would run a coroutine test on a loop of its own)."""
    return jp_asyncio_loop.run_until_complete


@pytest.fixture
def hub_call(jp_fetch):
    """A call to the extension's internal endpoints as the hub makes it, with the secret;
    the answer's status and JSON."""

    async def call(method: str, path: str, body: dict | None = None, secret: str = SECRET):
        kwargs = {"method": method, "headers": {"X-Gpulab-Internal-Secret": secret}}
        if body is not None:
            kwargs["body"] = json.dumps(body)
        try:
            r = await jp_fetch("gpulab", "internal", path, **kwargs)
        except HTTPClientError as e:
            return e.code, json.loads(e.response.body or b"null") if e.response else None
        return r.code, json.loads(r.body)

    return call
