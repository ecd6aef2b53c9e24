"""HTTP/1.1 for the model server's REST API: asyncio's transports with llhttp (Node.js'
parser, through ``httptools``) and nothing between a connection and the model.

A request costs a few tens of microseconds here: a web framework's routing, request
objects and coroutines per request would cost more than the small model calls most
deployments make. What HTTP/1.1 asks of a server is here: keep-alive (and
``Connection: close``, HTTP/1.0), chunked request bodies, ``Expect: 100-continue`` (curl
sends it for bodies over 1 KiB), pipelined requests answered in order, limits on the
head (431) and body (413), and 400 for what is not HTTP.

``handle(method, path, headers, body, owners)`` answers each request with a
``Response`` or an awaitable of one (a prediction waiting for its batch); ``owners``
says it came over a unix socket (which only the model's owner, and root, can open).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import httptools

log = logging.getLogger("gpulab.serving")

MAX_HEAD = 64 << 10
"""The longest request line and headers taken (431 beyond)."""
MAX_BODY = 100 << 20
"""The largest request body taken (413 beyond), as tornado's default."""
IDLE_SECONDS = 3600.0
"""A connection that sends nothing for this long is closed, as tornado's default."""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[str, str, dict[str, str], bytes, bool], "Response | Awaitable[Response]"]


class _Connection(asyncio.Protocol):
    """One client connection: requests parsed as they arrive, answered in order."""

    def __init__(self, handle: Handler):
        self.handle = handle
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.owners = False
        self.answers: deque[list] = deque()
        """[response or None while pending, keep-alive] per request, in arrival order."""
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.head_size = 0
        self.body_size = 0
        self.refused: Response | None = None

    # -- asyncio -----------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._active = self._loop.time()
        self._idle = self._loop.call_later(IDLE_SECONDS, self._close_idle)
        sock = transport.get_extra_info("socket")
        self.owners = sock is not None and sock.family == socket.AF_UNIX
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._active = self._loop.time()  # the idle timer looks at it when it fires
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Response(400, b'{"error": "protocol upgrades are not served"}'))
        except httptools.HttpParserError as e:
            self._fail(Response(400, _error(f"not an HTTP/1.1 request: {e}")))

    def connection_lost(self, exc) -> None:
        self.transport = None
        self._idle.cancel()

    def _close_idle(self) -> None:
        quiet = self._loop.time() - self._active
        if self.answers or quiet < IDLE_SECONDS:  # busy, or active since: look again later
            wait = IDLE_SECONDS if self.answers else IDLE_SECONDS - quiet
            self._idle = self._loop.call_later(wait, self._close_idle)
        elif self.transport is not None:
            self.transport.close()
            self.transport = None

    # -- httptools' callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head(len(name) + len(value))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:  # said at once, not after the body
            self.refused = Response(413, _error(f"the body is over {MAX_BODY >> 20} MiB"))
            self._fail(self.refused)
        elif self.headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > MAX_BODY:
            self.refused = Response(413, _error(f"the body is over {MAX_BODY >> 20} MiB"))
        elif self.refused is None:
            self.body.append(body)

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive() and self.refused is None
        entry = [self.refused, keep]
        self.answers.append(entry)
        if self.refused is None:
            method = self.parser.get_method().decode("latin-1")
            path = httptools.parse_url(self.url).path.decode("latin-1")
            try:
                answer = self.handle(method, path, self.headers, b"".join(self.body), self.owners)
            except Exception as e:  # noqa: BLE001 -- an answer, never a dropped connection
                log.exception("Answering %s %s", method, path)
                answer = Response(500, _error(f"{type(e).__name__}: {e}"))
            if isinstance(answer, Response):
                entry[0] = answer
            else:
                asyncio.ensure_future(self._later(entry, answer))
        self._flush()

    # -- answering ---------------------------------------------------------------------

    def _head(self, size: int) -> None:
        self.head_size += size
        if self.head_size > MAX_HEAD and self.refused is None:
            self.refused = Response(431, _error("the request's head is too large"))
            self._fail(self.refused)

    async def _later(self, entry: list, answer) -> None:
        try:
            entry[0] = await answer
        except Exception as e:  # noqa: BLE001 -- as above
            log.exception("Answering a request")
            entry[0] = Response(500, _error(f"{type(e).__name__}: {e}"))
        self._flush()

    def _flush(self) -> None:
        """Write the answers that are ready, in the order their requests came."""
        while self.answers and self.answers[0][0] is not None:
            response, keep = self.answers.popleft()
            if self.transport is None:
                continue
            self.transport.write(_encode(response, keep))
            if not keep:
                self.transport.close()
                self.transport = None

    def _fail(self, response: Response) -> None:
        """Answer a request that cannot be read on, and close."""
        if self.transport is not None:
            self.transport.write(_encode(response, False))
            self.transport.close()
            self.transport = None


def _encode(response: Response, keep: bool) -> bytes:
    reason = (
        HTTPStatus(response.status).phrase
        if response.status in HTTPStatus._value2member_map_
        else ""
    )
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        f"{'' if keep else 'Connection: close' + chr(13) + chr(10)}\r\n"
    )
    return head.encode("latin-1") + response.body


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def serve_tcp(handle: Handler, host: str, port: int) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Connection(handle), host, port, reuse_address=True)


async def serve_unix(handle: Handler, path: str) -> asyncio.AbstractServer:
    """Serve on a unix socket at ``path`` that only this account (and root) may open: mode
    0600 from its creation (a stale socket there is replaced; anything else is refused)."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(f"{path} exists and is not a socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(lambda: _Connection(handle), sock=sock)
