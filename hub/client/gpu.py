"""``gpulab gpu``: Return GPU / Get GPU for a running server, keeping its kernels'
variables, and the kernels' checkpoints."""

from __future__ import annotations

import json
import time

from rich.table import Table

from ..settings import Settings, format_size
from .api import GpulabClient
from .output import console, err


def add_parsers(sub) -> None:
    gpu = sub.add_parser(
        "gpu",
        help="Return GPU / Get GPU for a running server, keeping its kernels' variables",
        description="status | return | get [N] | checkpoints [restore ID | delete ID]",
    )
    gpu.add_argument(
        "action",
        nargs="?",
        default="status",
        choices=["status", "return", "get", "checkpoints"],
        help="status (the default): what the server holds; return: checkpoint the kernels "
        "and free its GPUs; get: ask for GPUs and put the kernels back on them; "
        "checkpoints: list the kernels' checkpoints, restore or delete one",
    )
    gpu.add_argument(
        "more",
        nargs="*",
        help="get: the number of GPUs (default: the profile's); checkpoints: restore ID or "
        "delete ID",
    )
    gpu.add_argument(
        "--notebook", default="", help="checkpoints restore: into this notebook's kernel"
    )
    gpu.add_argument("--json", action="store_true", help="checkpoints: print them as JSON")
    gpu.add_argument("--user", help="act for this user (admins)")
    gpu.add_argument("--server", default="", help="a named server (default: the default one)")
    gpu.add_argument("--interrupt", action="store_true", help="return: interrupt busy kernels")
    gpu.add_argument(
        "--force", action="store_true", help="return: end other processes using the GPU"
    )
    gpu.add_argument("--timeout", type=float, help="get: seconds to wait in the queue")
    gpu.add_argument(
        "--no-wait",
        action="store_true",
        help="get: queue and return at once; return: do not follow a move to a new pod",
    )
    gpu.add_argument("--url", help="hub URL (default: $GPULAB_URL or this machine's hub)")
    gpu.add_argument("--token", help="API token (default: $GPULAB_TOKEN)")


def _kernel_lines(detail: dict) -> list[str]:
    lines = []
    for k in detail.get("kernels") or []:
        name = k.get("path") or k.get("kernel")
        if k.get("kept_by") == "driver":
            lines.append(f"  {name}: kept running, its GPU memory parked by the CUDA driver")
            continue
        line = f"  {name}: kept {len(k.get('saved') or [])} variable(s)"
        if k.get("failed"):
            line += "; not saved: " + ", ".join(f"{n} ({why})" for n, why in k["failed"].items())
        lines.append(line)
    return lines


ACTIVE_STATES = ("queued", "checkpointing", "restoring")


def _follow_operation(client, who: dict, first: str) -> dict:
    """Show the server's Return/Get GPU operation as it goes; the operation once ended."""
    with console.status(first) as spinner:
        while True:
            op = client.gpu_status(**who)["operation"]
            if op["state"] not in ACTIVE_STATES:
                return op
            spinner.update(op["message"])
            time.sleep(0.5)


def cmd_gpu(args, settings: Settings) -> int:
    client = GpulabClient.from_environment(args.url, args.token, settings)
    who = {"user": args.user, "server": args.server}
    if args.action == "checkpoints":
        return _checkpoints(client, who, args)
    args.count = None
    if args.more and args.action == "get" and len(args.more) == 1 and args.more[0].isdigit():
        args.count = int(args.more[0])
    elif args.more:
        what = "one number of GPUs" if args.action == "get" else "no count"
        err.print(f"[red]gpulab gpu {args.action}:[/red] takes {what}, not {' '.join(args.more)}")
        return 2
    if args.action == "return":
        with console.status("Checkpointing kernels and returning the GPU..."):
            answer = client.return_gpu(interrupt=args.interrupt, force=args.force, **who)
        console.print(answer["message"], highlight=False)
        op = answer.get("operation") or {}
        if answer["released"]:
            for line in _kernel_lines(op.get("detail") or {}):
                console.print(line, highlight=False, markup=False)
            if op.get("state") not in ACTIVE_STATES:
                console.print("Variables are being restored into the kernels, on the CPU.")
            elif not args.no_wait:  # the server moves to a new pod (kubernetes)
                op = _follow_operation(client, who, "Starting your server without a GPU...")
                console.print(op["message"], highlight=False)
                return 0 if op["state"] == "done" else 1
        return 0
    if args.action == "get":
        status = client.gpu_status(**who)
        count = args.count if args.count is not None else max(1, status["profile_gpus"] or 1)
        answer = client.get_gpu(count, timeout=args.timeout, **who)
        if answer.get("message"):
            console.print(answer["message"], highlight=False)
        if args.no_wait:
            op = answer["operation"]
            console.print(f"{op['state']}: {op['message']}", highlight=False)
            return 0
        try:
            op = _follow_operation(client, who, "Asking for a GPU...")
        except KeyboardInterrupt:
            client.cancel_get_gpu(**who)
            err.print("Get GPU cancelled")
            return 130
        console.print(op["message"], highlight=False)
        return 0 if op["state"] == "done" else 1
    status = client.gpu_status(**who)
    where = status["user"] + (f"/{status['server']}" if status["server"] else "")
    held = ", ".join(f"{g['id']} ({g['model']})" for g in status["gpus"]) or "no GPU"
    console.print(
        f"{where}: {held}; profile {status['profile']}; "
        f"{status['free']} of {status['total']} GPUs free, {status['queue']} waiting",
        highlight=False,
    )
    op = status.get("operation")
    if op:
        why = "" if op.get("by_owner", True) else f" ({op['reason']})"
        console.print(f"last {op['kind']}: {op['state']}: {op['message']}{why}", highlight=False)
    return 0


def _checkpoints(client, who: dict, args) -> int:
    """gpulab gpu checkpoints [restore ID [--notebook PATH] | delete ID]."""
    more = args.more
    if more and (more[0] not in ("restore", "delete") or len(more) != 2):
        err.print("[red]gpulab gpu checkpoints:[/red] takes restore ID or delete ID")
        return 2
    if more and more[0] == "restore":
        with console.status(f"Restoring checkpoint {more[1]}..."):
            answer = client.restore_checkpoint(more[1], args.notebook, **who)
        console.print(answer["message"], highlight=False, markup=False)
        return 0
    if more:
        client.delete_checkpoint(more[1], **who)
        console.print(f"Deleted checkpoint {more[1]}", highlight=False)
        return 0
    found = client.checkpoints(**who)
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    if not found:
        console.print("No checkpoints")
        return 0
    table = Table(box=None)
    for column in ("ID", "NOTEBOOK", "TAKEN (UTC)", "VARIABLES", "SIZE", "STATE"):
        table.add_column(column)
    for c in found:
        state = c["state"] + (f": {c['why']}" if c.get("why") else "")
        notebook = c["notebook"] or f"(kernel {c['kernel'][:8]})"
        taken = c["created"][:19].replace("T", " ")
        table.add_row(
            c["id"], notebook, taken, str(c.get("saved", "?")), format_size(c["bytes"]), state
        )
    console.print(table, highlight=False)
    return 0


COMMANDS = {"gpu": cmd_gpu}
