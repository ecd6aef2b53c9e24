"""The ``gpulab`` command: run the hub, see who holds which GPU, check the machine."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .client import ClientError, GpulabClient
from .settings import Settings, SettingsError, load_settings
from .settings import format_size as human

console = Console()
err = Console(stderr=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpulab", description=__doc__)
    parser.add_argument("--config", help="settings file (default: $GPULAB_CONFIG, ./gpulab.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the hub in the foreground")
    up.add_argument(
        "jupyterhub_args", nargs=argparse.REMAINDER, help="extra arguments passed to jupyterhub"
    )

    status = sub.add_parser("status", help="GPUs (who holds which, since when) and servers")
    status.add_argument("--url", help="hub URL (default: $GPULAB_URL or this machine's hub)")
    status.add_argument("--token", help="API token (default: $GPULAB_TOKEN)")

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

    sub.add_parser("doctor", help="check this machine: proxy, GPUs, data root, Ceph, hub")

    args = parser.parse_args(argv)
    if args.config:
        os.environ["GPULAB_CONFIG"] = str(Path(args.config).resolve())
    try:
        settings = load_settings()
    except SettingsError as e:
        err.print(f"[red]gpulab: invalid settings:[/red] {e}")
        return 2
    try:
        commands = {
            "up": cmd_up,
            "status": cmd_status,
            "storage": cmd_storage,
            "doctor": cmd_doctor,
        }
        return commands[args.command](args, settings)
    except ClientError as e:
        err.print(f"[red]gpulab:[/red] {e}")
        return 1
    except KeyboardInterrupt:
        return 130


# -- up ------------------------------------------------------------------------------


def cmd_up(args, settings: Settings) -> int:
    config = Path(__file__).with_name("jupyterhub_config.py")
    data = settings.data_path
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        err.print(f"[red]gpulab: cannot create the data root {data}:[/red] {e.strerror}")
        return 1
    jupyterhub = Path(sys.prefix) / "bin" / "jupyterhub"
    host = settings.hub.ip or "localhost"
    console.print(
        f"gpulab: starting the hub at [bold]http://{host}:{settings.hub.port}[/bold] "
        f"(data in {data})"
    )
    os.chdir(data)
    extra = [a for a in args.jupyterhub_args if a != "--"]
    os.execv(str(jupyterhub), [str(jupyterhub), "-f", str(config), *extra])
    return 0  # not reached


# -- status --------------------------------------------------------------------------


def _ago(iso: str | None) -> str:
    if not iso:
        return ""
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    seconds = int((datetime.now(UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(seconds, 0)}s ago"


def cmd_status(args, settings: Settings) -> int:
    client = GpulabClient.from_environment(args.url, args.token, settings)
    pool = client.gpus()
    gpus = Table(title=f"GPUs: {pool['free']} of {pool['total']} free", title_justify="left")
    for col in ("#", "id", "model", "state", "user", "server", "since"):
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
            g.get("server", ""),
            f"{since[:19].replace('T', ' ')} ({_ago(since)})" if since else "",
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
                _ago(server.get("started")),
                _ago(server.get("last_activity")),
            )
    if servers.row_count:
        console.print(servers)
    else:
        console.print("Servers: none running")
    return 0


# -- storage -------------------------------------------------------------------------


def _snapshot_table(snaps: list[dict], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("snapshot", "created", "size"):
        table.add_column(col)
    for snap in snaps:
        table.add_row(
            snap["name"], snap["created"][:19].replace("T", " "), human(snap["size_bytes"])
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
            f"Home is now {human(volume['size_bytes'])} ({human(volume['used_bytes'])} used)"
        )
        return 0
    if args.action == "snapshots":
        console.print(_snapshot_table(client.snapshots(args.user), "Snapshots of your home"))
        return 0
    if args.action == "snapshot":
        with console.status(f"Snapshotting your home as {args.value}..."):
            snap = client.create_snapshot(args.value, args.user)
        console.print(f"Snapshot {snap['name']} made ({human(snap['size_bytes'])})")
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
            human(volume["used_bytes"]),
            human(volume["size_bytes"]),
        )
    else:
        table.add_row("home", "(made on the first spawn)", "-", "-")
    s3 = info.get("s3")
    if s3:
        table.add_row(
            "S3 bucket",
            f"{s3['endpoint']}/{s3['bucket']}",
            f"{human(s3['used_bytes'])} in {s3['objects']} objects",
            human(s3["quota_bytes"]),
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


# -- doctor --------------------------------------------------------------------------


def _check_proxy() -> tuple[str, str]:
    from .hubconfig import proxy_command

    cmd = proxy_command()
    if not shutil.which(cmd[0]):
        return "FAIL", "configurable-http-proxy not found (npm install configurable-http-proxy)"
    try:
        out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "FAIL", f"{cmd[0]} does not run: {e}"
    if out.returncode != 0:
        return "FAIL", f"{cmd[0]} --version failed: {out.stderr.strip()[:200]}"
    return "OK", f"configurable-http-proxy {out.stdout.strip()} ({cmd[0]})"


def _check_gpus(settings: Settings) -> tuple[str, str]:
    from .inventory import NvmlUnavailable, nvml_gpus

    try:
        seen = nvml_gpus()
        nvml = f"NVML sees {len(seen)} GPU(s)" + (
            ": " + ", ".join(f"{g.index} {g.model}" for g in seen) if seen else ""
        )
        nvml_ok = True
    except NvmlUnavailable as e:
        nvml, nvml_ok = f"NVML unavailable ({e})", False
    if settings.gpus.ids:
        return (
            "OK",
            f"{len(settings.gpus.ids)} configured GPU id(s) {','.join(settings.gpus.ids)}; {nvml}",
        )
    if nvml_ok and seen:
        return "OK", nvml
    return "WARN", f"{nvml}; no gpus.ids configured: only CPU profiles can start"


def _check_data_root(settings: Settings) -> tuple[str, str]:
    data = settings.data_path
    try:
        data.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data):
            pass
    except OSError as e:
        return "FAIL", f"{data} is not writable: {e.strerror}"
    free = shutil.disk_usage(data).free / 2**30
    return ("OK" if free > 1 else "WARN"), f"{data} writable, {free:.1f} GiB free"


def _check_privilege() -> tuple[str, str]:
    if os.geteuid() == 0:
        return "OK", "root: each user's server runs as their own unix account"
    return "WARN", "not root: single-user/dev mode, no isolation between hub users"


def _check_server_command() -> tuple[str, str]:
    """User servers run as other accounts: they must be able to run this environment."""
    singleuser = Path(sys.prefix) / "bin" / "jupyterhub-singleuser"
    if not singleuser.exists():
        return "FAIL", f"{singleuser} is missing (reinstall gpulab)"
    if os.geteuid() != 0:
        return "OK", f"{singleuser}"
    r = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(singleuser), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        return "FAIL", (
            f"other accounts cannot run {singleuser}; install gpulab where every "
            "user can read it (not under /root)"
        )
    return "OK", f"{singleuser} runs for other accounts"


def _check_ceph(settings: Settings) -> tuple[str, str]:
    st = settings.storage
    if not st.ceph_conf and not st.s3_endpoint:
        return "OK", "not configured (no RBD volumes, no per-user S3)"
    details, result = [], "OK"
    if st.ceph_conf:
        from .storage import StorageError
        from .storage.rbd import RbdVolumes

        try:
            volumes = RbdVolumes(st.ceph_conf, st.rbd_pool, connect_timeout=5)
            volumes.exists("gpulab-doctor")
            volumes.close()
            details.append(f"RBD pool {st.rbd_pool} reachable")
        except StorageError as e:
            result = "FAIL"
            details.append(str(e))
    if st.s3_endpoint:
        import requests

        try:
            requests.get(st.s3_endpoint, timeout=5)
            details.append(f"S3 answering at {st.s3_endpoint}")
        except requests.RequestException as e:
            result = "FAIL"
            details.append(f"S3 at {st.s3_endpoint} unreachable ({type(e).__name__})")
    return result, "; ".join(details)


def _check_hub(settings: Settings) -> tuple[str, str]:
    client = GpulabClient.from_environment(settings=settings)
    try:
        version = client.request("GET", "/")["version"]
    except ClientError as e:
        return "WARN", f"hub not answering at {client.api_url} ({e})"
    return "OK", f"JupyterHub {version} answering at {client.api_url}"


def cmd_doctor(args, settings: Settings) -> int:
    checks = [
        ("privileges", _check_privilege()),
        ("data root", _check_data_root(settings)),
        ("proxy", _check_proxy()),
        ("user servers", _check_server_command()),
        ("GPUs", _check_gpus(settings)),
        ("Ceph", _check_ceph(settings)),
        ("hub", _check_hub(settings)),
    ]
    table = Table(title="gpulab doctor", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    colour = {"OK": "green", "WARN": "yellow", "FAIL": "red"}
    for name, (result, detail) in checks:
        table.add_row(name, f"[{colour[result]}]{result}[/{colour[result]}]", detail)
    console.print(table)
    return 1 if any(result == "FAIL" for _, (result, _) in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
