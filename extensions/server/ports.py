"""Ports on this server's loopback, for what the browser reaches through
jupyter-server-proxy (``<server prefix>proxy/<port>/``): TensorBoard, above all."""

from __future__ import annotations

import errno
import socket

TENSORBOARD_PORT = 6006
"""TensorBoard's own default port; the first one tried."""


def loopback_port_free(port: int) -> bool:
    """Can a server listen on ``port`` on loopback (and is nobody there already)?

    jupyter-server-proxy connects to ``localhost``, which may resolve to ::1 first: a
    port someone holds on either loopback address would not reach our TensorBoard.
    """
    addresses = [(socket.AF_INET, "127.0.0.1")]
    if socket.has_ipv6:
        addresses.append((socket.AF_INET6, "::1"))
    for family, host in addresses:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no such address family on this machine
        with sock:
            # what TensorBoard's server sets too: ports in TIME_WAIT are free to take
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL and family == socket.AF_INET6:
                    continue  # IPv6 without a ::1 address
                return False
    return True


def free_loopback_port(first: int = TENSORBOARD_PORT, count: int = 100) -> int | None:
    """The first free port of ``first`` .. ``first + count - 1``; None when all are taken."""
    return next((p for p in range(first, first + count) if loopback_port_free(p)), None)
