"""The ``gpulab`` command: run the hub, see who holds which GPU, check the machine, run
training jobs and sweeps, deploy and call models."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from gpulab.spawner.backend import backend_for

from .cli_jobs import SpecFileError, cmd_job, cmd_sweep, job_parsers, sweep_parsers
from .cli_models import cmd_model, cmd_predict, model_parsers
from .cli_output import ago as _ago
from .cli_output import console, err
from .client import ClientError, GpulabClient
from .secretfiles import exposed_secrets, read_secret_files, refuse_exposed_secrets
from .settings import Settings, SettingsError, config_path, load_settings
from .settings import format_size as human


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

    sub.add_parser("doctor", help="check this machine: proxy, GPUs, data root, Ceph, hub")

    job_parsers(sub)
    sweep_parsers(sub)
    model_parsers(sub)

    # TensorBoard's own flags pass through untouched, so cmd_tensorboard parses its
    # arguments itself: this parser takes every word after the command as it is
    tensorboard = sub.add_parser(
        "tensorboard",
        help="run TensorBoard in your server, reachable through its proxy",
        add_help=False,
        prefix_chars="\0",
    )
    tensorboard.add_argument("tensorboard_args", nargs=argparse.REMAINDER)

    args = parser.parse_args(argv)
    if args.command == "tensorboard":  # runs in a user's terminal: needs no hub settings
        return cmd_tensorboard(args.tensorboard_args)
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
            "gpu": cmd_gpu,
            "doctor": cmd_doctor,
            "job": cmd_job,
            "sweep": cmd_sweep,
            "model": cmd_model,
            "predict": cmd_predict,
        }
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


# -- up ------------------------------------------------------------------------------


def cmd_up(args, settings: Settings) -> int:
    config = Path(__file__).with_name("jupyterhub_config.py")
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
            + (f"; {volume['note']}" if volume.get("note") else "")
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
        from .storage.rbd import RbdVolumes, answers_without_a_key

        try:
            volumes = RbdVolumes(
                st.ceph_conf,
                st.rbd_pool,
                connect_timeout=5,
                client=st.ceph_client,
                keyring=st.ceph_keyring,
            )
            volumes.exists("gpulab-doctor")
            volumes.close()
            details.append(f"RBD pool {st.rbd_pool} reachable")
            if answers_without_a_key(st.ceph_conf):
                result = "FAIL"
                details.append(
                    "Ceph lets in clients without a key (auth none): every account can read "
                    "every object and S3 secret; turn cephx on (docs/storage.md)"
                )
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


def _check_secrets(settings: Settings) -> tuple[str, str]:
    found = exposed_secrets(settings, config_path())
    if not found:
        return "OK", "no other account can read or change the hub's secrets"
    # on Kubernetes the files are in the hub's pod, which no user shares
    return ("FAIL" if backend_for(settings).shares_machine else "WARN"), "; ".join(found)


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
        ("secrets", _check_secrets(settings)),
        ("data root", _check_data_root(settings)),
        ("proxy", _check_proxy()),
        ("user servers", _check_server_command()),
        *backend_for(settings).doctor(),
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


# -- gpu -----------------------------------------------------------------------------


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
        table.add_row(c["id"], notebook, taken, str(c.get("saved", "?")), human(c["bytes"]), state)
    console.print(table, highlight=False)
    return 0


# -- tensorboard ---------------------------------------------------------------------

TENSORBOARD_PORT = 6006


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


if __name__ == "__main__":
    sys.exit(main())
