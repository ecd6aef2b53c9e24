"""What the job, sweep and model command groups share: the flags every ACTION takes, and
running ``gpulab KIND ACTION`` with a client."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .api import GpulabClient
from .specfile import load_spec


def hub_flags() -> argparse.ArgumentParser:
    """The flags every job, sweep and model command takes: whose, which hub, which token."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--user", help="act for this user (admins)")
    flags.add_argument("--url", help="hub URL (default: $GPULAB_URL or this machine's hub)")
    flags.add_argument("--token", help="API token (default: $GPULAB_TOKEN)")
    return flags


def named_actions(actions, flags: argparse.ArgumentParser, **helps: str) -> None:
    """Actions that take just the job's or sweep's NAME (cancel, delete)."""
    for action, text in helps.items():
        actions.add_parser(action, parents=[flags], help=text).add_argument("name", metavar="NAME")


def dispatch(kind: str, actions: dict, args, settings: Settings) -> int:
    """Run ``gpulab KIND ACTION``: read the spec file for submit, then call the hub."""
    spec = load_spec(args.file, kind, args.name) if args.action == "submit" else None
    client = GpulabClient.from_environment(args.url, args.token, settings)
    return actions[args.action](client, args, spec)
