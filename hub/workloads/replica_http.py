"""The hub's HTTP client for model replicas: it sends a model's token only to the process
it means to.

On the local backend a replica listens on unix sockets in a folder only its owner's
account can enter (``LocalRunner.listen_dir``), not on loopback ports any local account
could bind first. The hub reaches such a socket through an address made by
``unix_address``, and once connected asks the kernel which account listens there
(``SO_PEERCRED``): unless it is the owner's, the connection is closed before a byte, so
the token, is sent. Other addresses (a pod IP on Kubernetes) are plain TCP.
"""

from __future__ import annotations

import logging
import numbers
import socket
import struct

from tornado import gen
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from tornado.tcpclient import TCPClient

log = logging.getLogger(__name__)

_UNIX_HOST = "unix-socket-"
_UNIX_PORT = 80
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_SOCKET_PATH = 107
"""The longest path a unix socket address holds on Linux (sun_path, less its NUL)."""


class NotTheOwner(ConnectionRefusedError):
    """The process behind a replica's socket is not its owner's: nothing was sent to it."""


def unix_address(path: str, uid: int) -> tuple[str, int]:
    """A (host, port) the replica client connects as the unix socket ``path``, checking
    that an account with ``uid`` listens there; usable in ``http://HOST:PORT/...``."""
    return f"{_UNIX_HOST}{uid}-{path.encode().hex()}", _UNIX_PORT


def socket_of(host: str) -> tuple[str, int] | None:
    """(path, uid) of an address made by ``unix_address``; None for any other host."""
    if not host.startswith(_UNIX_HOST):
        return None
    uid, _, hexpath = host[len(_UNIX_HOST) :].partition("-")
    return bytes.fromhex(hexpath).decode(), int(uid)


def peer_uid(sock: socket.socket) -> int:
    """The account of the process that listens at the other end of a unix socket."""
    _, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return uid


class ReplicaConnector(TCPClient):
    """TCPClient that connects ``unix_address`` hosts to their socket and checks the
    listener's account before the request is written; other hosts as TCPClient does."""

    async def connect(self, host: str, port: int, af=socket.AF_UNSPEC, ssl_options=None,
                      max_buffer_size=None, source_ip=None, source_port=None,
                      timeout=None) -> IOStream:  # fmt: skip
        target = socket_of(host)
        if target is None:
            return await super().connect(host, port, af, ssl_options, max_buffer_size,
                                         source_ip, source_port, timeout)  # fmt: skip
        path, uid = target
        stream = IOStream(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), max_buffer_size)
        try:
            connecting = stream.connect(path)
            if timeout is None:
                await connecting
            else:
                if isinstance(timeout, numbers.Real):
                    timeout = IOLoop.current().time() + timeout
                await gen.with_timeout(timeout, connecting, message=f"Timeout connecting {path}")
            listener = peer_uid(stream.socket)
            if listener != uid:
                log.warning("Not calling %s: the process listening there runs as uid %d, not "
                            "as the model's owner (%d)", path, listener, uid)  # fmt: skip
                raise NotTheOwner(f"{path} is held by another account (uid {listener})")
        except BaseException:
            stream.close()
            raise
        return stream


class ReplicaHTTPClient(SimpleAsyncHTTPClient):
    """Tornado's HTTP client over ``ReplicaConnector``: ``ReplicaHTTPClient()`` is one
    instance per event loop, as ``AsyncHTTPClient()`` is."""

    def initialize(self, **kwargs) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.tcp_client = ReplicaConnector(resolver=self.resolver)
