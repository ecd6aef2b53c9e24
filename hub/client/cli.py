"""The ``gpulab`` command: run the hub, see who holds which GPU, check the machine, run
training jobs and sweeps, deploy and call models, save environments."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.markup import escape

from ..settings import SettingsError, load_settings
from . import (
    doctor,
    environments,
    gpu,
    jobs,
    models,
    status,
    storage,
    sweeps,
    tensorboard,
    up,
    usage,
)
from .api import ClientError
from .output import err
from .specfile import SpecFileError

# the command groups, in the order ``gpulab --help`` lists them
GROUPS = (up, status, storage, gpu, usage, doctor, jobs, sweeps, models, environments)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpulab", description=__doc__)
    parser.add_argument("--config", help="settings file (default: $GPULAB_CONFIG, ./gpulab.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    tensorboard.add_parsers(sub)

    args = parser.parse_args(argv)
    if args.command == "tensorboard":  # runs in a user's terminal: needs no hub settings
        return tensorboard.cmd_tensorboard(args.tensorboard_args)
    if args.config:
        os.environ["GPULAB_CONFIG"] = str(Path(args.config).resolve())
    try:
        settings = load_settings()
    except SettingsError as e:
        err.print(f"[red]gpulab: invalid settings:[/red] {e}")
        return 2
    try:
        commands = {name: run for group in GROUPS for name, run in group.COMMANDS.items()}
        return commands[args.command](args, settings)
    except SpecFileError as e:
        err.print(
            f"[red]gpulab {args.command}:[/red] {escape(str(e))}", highlight=False, soft_wrap=True
        )
        return 2
    except ClientError as e:
        err.print(f"[red]gpulab:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 1
    except BrokenPipeError:  # the reader went away (gpulab job logs NAME | head)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
