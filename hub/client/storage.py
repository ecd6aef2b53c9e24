"""``gpulab storage``: your home volume, its snapshots, and your S3 bucket."""

from __future__ import annotations

from rich.table import Table

from ..settings import Settings, format_size
from .api import GpulabClient
from .output import console, err


def add_parsers(sub) -> None:
    storage = sub.add_parser(
        "storage",
        help="your home volume and S3 bucket",
        description="show | rotate-keys | resize SIZE | snapshots | snapshot NAME | "
        "rollback NAME | delete-snapshot NAME",
    )
    storage.add_argument(
        "action",
        nargs="?",
        default="show",
        choices=[
            "show",
            "rotate-keys",
            "resize",
            "snapshots",
            "snapshot",
            "rollback",
            "delete-snapshot",
        ],
    )
    storage.add_argument("value", nargs="?", help="the size (resize) or snapshot name")
    storage.add_argument("--user", help="act for this user (admins)")
    storage.add_argument("--url", help="hub URL (default: $GPULAB_URL or this machine's hub)")
    storage.add_argument("--token", help="API token (default: $GPULAB_TOKEN)")


def _snapshot_table(snaps: list[dict], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("snapshot", "created", "size"):
        table.add_column(col)
    for snap in snaps:
        table.add_row(
            snap["name"], snap["created"][:19].replace("T", " "), format_size(snap["size_bytes"])
        )
    return table


def cmd_storage(args, settings: Settings) -> int:
    client = GpulabClient.from_environment(args.url, args.token, settings)
    needs_value = {
        "resize": "a size, e.g. 20GiB",
        "snapshot": "a snapshot name",
        "rollback": "a snapshot name",
        "delete-snapshot": "a snapshot name",
    }
    if args.action in needs_value and not args.value:
        err.print(f"[red]gpulab storage {args.action}:[/red] give {needs_value[args.action]}")
        return 2
    if args.action == "resize":
        volume = client.resize_volume(args.value, args.user)
        console.print(
            f"Home is now {format_size(volume['size_bytes'])} ({format_size(volume['used_bytes'])} used)"
            + (f"; {volume['note']}" if volume.get("note") else "")
        )
        return 0
    if args.action == "snapshots":
        console.print(_snapshot_table(client.snapshots(args.user), "Snapshots of your home"))
        return 0
    if args.action == "snapshot":
        with console.status(f"Snapshotting your home as {args.value}..."):
            snap = client.create_snapshot(args.value, args.user)
        console.print(f"Snapshot {snap['name']} made ({format_size(snap['size_bytes'])})")
        return 0
    if args.action == "rollback":
        with console.status(f"Rolling your home back to {args.value}..."):
            volume = client.rollback(args.value, args.user)
        console.print(
            f"Home rolled back to {args.value}; what it held before is kept as a snapshot:"
        )
        console.print(_snapshot_table(volume["snapshots"], "Snapshots"))
        return 0
    if args.action == "delete-snapshot":
        client.delete_snapshot(args.value, args.user)
        console.print(f"Snapshot {args.value} deleted")
        return 0
    if args.action == "rotate-keys":
        keys = client.rotate_s3_keys(args.user)
        console.print(
            f"New S3 keys for bucket [bold]{keys['bucket']}[/bold] at {keys['endpoint']}:"
        )
        console.print(f"  AWS_ACCESS_KEY_ID={keys['access_key']}")
        console.print(f"  AWS_SECRET_ACCESS_KEY={keys['secret_key']}")
        console.print(keys["message"])
        return 0
    info = client.storage(args.user)
    table = Table(title=f"Storage of {info['user']}", title_justify="left")
    for col in ("what", "where", "used", "size / quota"):
        table.add_column(col)
    volume = info.get("volume")
    if volume:
        table.add_row(
            f"home ({volume['backend']})",
            volume["name"],
            format_size(volume["used_bytes"]),
            format_size(volume["size_bytes"]),
        )
    else:
        table.add_row("home", "(made on the first spawn)", "-", "-")
    s3 = info.get("s3")
    if s3:
        table.add_row(
            "S3 bucket",
            f"{s3['endpoint']}/{s3['bucket']}",
            f"{format_size(s3['used_bytes'])} in {s3['objects']} objects",
            format_size(s3["quota_bytes"]),
        )
    elif info.get("s3_enabled"):
        table.add_row("S3 bucket", "(made on the first spawn)", "-", "-")
    console.print(table)
    if s3:
        console.print(
            f"S3 access key: {s3['access_key']} (the secret is in your server's "
            "environment; `gpulab storage rotate-keys` makes new ones)"
        )
    return 0


COMMANDS = {"storage": cmd_storage}
