"""``gpulab status``: the GPUs (who holds which, since when) and the servers."""

from __future__ import annotations

from rich.table import Table

from ..settings import Settings
from .api import GpulabClient
from .output import ago, console


def add_parsers(sub) -> None:
    status = sub.add_parser("status", help="GPUs (who holds which, since when) and servers")
    status.add_argument("--url", help="hub URL (default: $GPULAB_URL or this machine's hub)")
    status.add_argument("--token", help="API token (default: $GPULAB_TOKEN)")


def cmd_status(args, settings: Settings) -> int:
    client = GpulabClient.from_environment(args.url, args.token, settings)
    pool = client.gpus()
    gpus = Table(title=f"GPUs: {pool['free']} of {pool['total']} free", title_justify="left")
    for col in ("#", "id", "model", "state", "user", "held by", "since"):
        gpus.add_column(col)
    for g in pool["gpus"]:
        state = "[green]free[/green]" if g["state"] == "free" else "[yellow]held[/yellow]"
        since = g.get("since")
        gpus.add_row(
            str(g["index"]),
            g["id"],
            g["model"] or "-",
            state,
            g.get("user", ""),
            g.get("holder", g.get("server", "")) or ("(default server)" if g.get("user") else ""),
            f"{since[:19].replace('T', ' ')} ({ago(since)})" if since else "",
        )
    console.print(gpus)

    servers = Table(title="Servers", title_justify="left")
    for col in ("user", "server", "profile", "GPUs", "ready", "started", "last activity"):
        servers.add_column(col)
    held = {}
    for g in pool["gpus"]:
        if g.get("user"):
            held.setdefault((g["user"], g.get("server", "")), []).append(g["id"])
    for user in client.users():
        for name, server in (user.get("servers") or {}).items():
            options = server.get("user_options") or {}
            servers.add_row(
                user["name"],
                name or "(default)",
                str(options.get("profile", "")),
                ",".join(held.get((user["name"], name), [])) or "-",
                "yes" if server.get("ready") else "starting" if server.get("pending") else "no",
                ago(server.get("started")),
                ago(server.get("last_activity")),
            )
    if servers.row_count:
        console.print(servers)
    else:
        console.print("Servers: none running")
    return 0


COMMANDS = {"status": cmd_status}
