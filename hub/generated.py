"""The command line of gpulab's generated files (the settings' JSON Schema and tables,
the OpenAPI document's body schemas): print what is generated, write it into the files,
or check that what is committed is current."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def generator_cli(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    write_help: str,
    check_help: str,
    show: Callable[[], str],
    stale: Callable[[bool], list[str]],
    command: str,
    fixable: Callable[[str], bool] = lambda problem: True,
) -> int:
    """``show()``: what is generated, printed without an option; ``stale(write)``: what in
    the files is not what is generated (rewritten first with ``write``); ``fixable``: which
    of those a write mends (the rest still fail it). The exit status is 1 while anything
    is stale; ``--check`` then says the ``command`` that mends it."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=write_help)
    mode.add_argument("--check", action="store_true", help=check_help)
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        print(show())
        return 0
    problems = stale(args.write)
    for problem in problems:
        print(("updated: " if args.write and fixable(problem) else "stale: ") + problem)
    if any(not (args.write and fixable(p)) for p in problems):
        if args.check:
            print(f"run: {command}", file=sys.stderr)
        return 1
    return 0
