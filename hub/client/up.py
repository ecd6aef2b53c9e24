"""``gpulab up``: run the hub in the foreground."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.markup import escape

from gpulab.spawner.backend import backend_for

from ..secretfiles import read_secret_files, refuse_exposed_secrets
from ..settings import Settings, SettingsError, config_path
from .output import console, err

# the hub's JupyterHub config, beside the hub's modules (gpulab.hub.jupyterhub_config)
JUPYTERHUB_CONFIG = Path(__file__).parent.parent / "jupyterhub_config.py"


def add_parsers(sub) -> None:
    up = sub.add_parser("up", help="run the hub in the foreground")
    up.add_argument(
        "jupyterhub_args", nargs=argparse.REMAINDER, help="extra arguments passed to jupyterhub"
    )


def cmd_up(args, settings: Settings) -> int:
    data = settings.data_path
    try:  # the hub refuses too; said here before anything starts
        read_secret_files(settings)
        if backend_for(settings).shares_machine:
            refuse_exposed_secrets(settings, config_path())
    except SettingsError as e:
        err.print(f"[red]gpulab up:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 1
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        err.print(f"[red]gpulab: cannot create the data root {data}:[/red] {e.strerror}")
        return 1
    host = settings.hub.ip or "localhost"
    console.print(
        f"gpulab: starting the hub at [bold]http://{host}:{settings.hub.port}[/bold] "
        f"(data in {data})"
    )
    os.chdir(data)
    extra = [a for a in args.jupyterhub_args if a != "--"]
    hub = Path(sys.prefix) / "bin" / "gpulab-hub"
    os.execv(hub, [str(hub), "-f", str(JUPYTERHUB_CONFIG), *extra])
    return 0  # not reached


COMMANDS = {"up": cmd_up}
