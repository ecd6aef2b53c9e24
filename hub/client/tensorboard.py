"""``gpulab tensorboard``: run TensorBoard in your server, reachable through its proxy."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from .output import console, err

TENSORBOARD_PORT = 6006


def add_parsers(sub) -> None:
    # TensorBoard's own flags pass through untouched, so cmd_tensorboard parses its
    # arguments itself: this parser takes every word after the command as it is
    tensorboard = sub.add_parser(
        "tensorboard",
        help="run TensorBoard in your server, reachable through its proxy",
        add_help=False,
        prefix_chars="\0",
    )
    tensorboard.add_argument("tensorboard_args", nargs=argparse.REMAINDER)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def _loopback_port_free(port: int) -> bool:
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


def tensorboard_url(port: int, environ: Mapping[str, str] | None = None) -> str:
    """Where a browser opens TensorBoard on ``port``.

    In a hub server, jupyter-server-proxy serves it at ``<server prefix>proxy/<port>/``;
    JupyterHub sets the server's public URL when the hub knows its own (public_url,
    subdomains), else only the path is known: it is relative to the hub's address.
    """
    environ = os.environ if environ is None else environ
    prefix = environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if not prefix:
        return f"http://localhost:{port}/"
    public = environ.get("JUPYTERHUB_PUBLIC_URL") or ""
    if public:
        return f"{public.rstrip('/')}/proxy/{port}/"
    host = (environ.get("JUPYTERHUB_HOST") or "").rstrip("/")
    return f"{host}{prefix.rstrip('/')}/proxy/{port}/"


def cmd_tensorboard(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gpulab tensorboard",
        usage="%(prog)s [-h] [--logdir DIR] [--port N] [TENSORBOARD_ARGS ...]",
        description="Run TensorBoard in the foreground on this server's loopback and print "
        "the address to open it at: through your server's proxy when run in a hub server "
        "(a JupyterLab terminal), else on localhost. Ctrl-C stops it.",
        epilog="Other arguments are passed to tensorboard as they are, e.g. "
        "--reload_interval 5 (see tensorboard --help).",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--logdir",
        metavar="DIR",
        help="directory with the event files (default: runs); it may not exist yet",
    )
    parser.add_argument(
        "--port",
        metavar="N",
        type=_port,
        help=f"port to listen on (default: {TENSORBOARD_PORT}, or the next free one)",
    )
    args, extra = parser.parse_known_args(argv)
    if "--" in extra:  # what follows it goes to tensorboard as it is anyway
        extra.remove("--")
    logdir = args.logdir
    if logdir is None and not any(a.split("=")[0] == "--logdir_spec" for a in extra):
        logdir = "runs"

    if args.port is not None:
        port = args.port
        if not _loopback_port_free(port):
            err.print(
                f"[red]gpulab tensorboard:[/red] port {port} is already in use; "
                "give another --port, or none to take the next free one"
            )
            return 1
    else:
        port = next(
            (p for p in range(TENSORBOARD_PORT, TENSORBOARD_PORT + 100) if _loopback_port_free(p)),
            None,
        )
        if port is None:
            err.print(
                f"[red]gpulab tensorboard:[/red] ports {TENSORBOARD_PORT}-"
                f"{TENSORBOARD_PORT + 99} are all in use; give a free one with --port"
            )
            return 1
        if port != TENSORBOARD_PORT:
            console.print(
                f"Port {TENSORBOARD_PORT} is in use; using port {port}",
                highlight=False,
                soft_wrap=True,
            )

    binary = Path(sys.prefix) / "bin" / "tensorboard"
    if not binary.exists():
        found = shutil.which("tensorboard")
        if not found:
            err.print("[red]gpulab tensorboard:[/red] tensorboard is not installed here")
            return 1
        binary = Path(found)
    command = [str(binary), "--port", str(port)]
    if logdir is not None:
        command += ["--logdir", logdir]
        where = Path(logdir).expanduser().absolute()
        if not where.is_dir():
            console.print(
                f"{where} does not exist yet: TensorBoard shows runs as they appear there",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
    url = tensorboard_url(port)
    note = " (on this hub's address)" if url.startswith("/") else ""
    console.print(f"TensorBoard: {url}{note}", highlight=False, soft_wrap=True, markup=False)
    console.print("Ctrl-C stops it.", highlight=False)
    sys.stdout.flush()
    os.execv(str(binary), [*command, *extra])
    return 0  # not reached
