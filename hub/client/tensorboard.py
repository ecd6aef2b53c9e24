"""``gpulab tensorboard``: run TensorBoard in your server, reachable through its proxy."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from gpulab.extensions.server.origin import remembered
from gpulab.extensions.server.ports import TENSORBOARD_PORT, free_loopback_port, loopback_port_free
from gpulab.extensions.server.tensorboards import end_with_parent, tensorboard_binary

from .output import console, err


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


def tensorboard_url(port: int, environ: Mapping[str, str] | None = None) -> str:
    """Where a browser opens TensorBoard on ``port``.

    In a hub server, jupyter-server-proxy serves it at ``<server prefix>proxy/<port>/``,
    at the server's public URL when JupyterHub knows it (``public_url``, subdomains),
    else at the address the owner's browser last reached the server at (the lab keeps
    it, ``gpulab.extensions.server.origin``); only the path when neither is known.
    """
    environ = os.environ if environ is None else environ
    prefix = environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if not prefix:
        return f"http://localhost:{port}/"
    public = environ.get("JUPYTERHUB_PUBLIC_URL") or ""
    if public:
        return f"{public.rstrip('/')}/proxy/{port}/"
    host = (environ.get("JUPYTERHUB_HOST") or "").rstrip("/") or remembered()
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
        if not loopback_port_free(port):
            err.print(
                f"[red]gpulab tensorboard:[/red] port {port} is already in use; "
                "give another --port, or none to take the next free one"
            )
            return 1
    else:
        port = free_loopback_port()
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

    binary = tensorboard_binary()
    if binary is None:
        err.print("[red]gpulab tensorboard:[/red] tensorboard is not installed here")
        return 1
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
    return _run([*command, *extra], f"{url}{note}" if url.startswith("/") else url)


OWN_ADDRESS = re.compile(r"^(TensorBoard \S+ at )http://localhost:[0-9]+/(.*)$")
"""TensorBoard's own "TensorBoard 2.x at http://localhost:6006/ (Press CTRL+C to quit)":
its loopback address, which no browser of the user's reaches."""


def _run(command: list[str], url: str) -> int:
    """Run TensorBoard in the foreground, its own address line saying ``url`` instead;
    its exit status. It runs in a process group of its own and gets the Ctrl-C (or
    TERM, HUP) this process gets, once; it ends if this process dies."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        process_group=0,
        preexec_fn=end_with_parent,  # noqa: PLW1509 -- prctl only, before exec
    )
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _: process.send_signal(number))
    for raw in process.stderr:
        line = raw.decode(errors="replace").rstrip("\n")
        sys.stderr.write(OWN_ADDRESS.sub(lambda m: f"{m[1]}{url}{m[2]}", line) + "\n")
        sys.stderr.flush()
    return process.wait()
