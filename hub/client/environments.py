"""``gpulab env``: environment snapshots from a shell: save the packages you installed as
an image, list, show, share and delete them (docs/environments.md#snapshots)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..settings import Settings, format_size
from .actions import dispatch, hub_flags, named_actions
from .api import GpulabClient
from .output import Progress, ago, console, err, fields, when
from .specfile import SpecFileError

_STATE_COLOURS = {"saving": "cyan", "ready": "green", "failed": "red"}


def add_parsers(sub) -> None:
    flags = hub_flags()
    env = sub.add_parser(
        "env",
        help="environment snapshots: save, list, show, share, delete",
        description="Save the packages you installed (pip install --user) as an image, and "
        "start servers from it later (docs/environments.md).",
    )
    actions = env.add_subparsers(dest="action", required=True, metavar="ACTION")
    save = actions.add_parser(
        "save",
        parents=[flags],
        help="save your packages as a snapshot",
        description="Save what you installed over the base (or over the snapshot your server "
        "started from) as snapshot NAME; wait until it is saved (exit 0) or failed (exit 1).",
    )
    save.add_argument(
        "name",
        metavar="NAME",
        help="lower-case letters, digits, '.', '_' or '-', starting with a letter or digit",
    )
    save.add_argument("-d", "--description", default="", help="what it holds (500 characters)")
    save.add_argument(
        "--share",
        action="append",
        default=[],
        metavar="GROUP",
        help="share it with a group of yours (repeatable)",
    )
    save.add_argument("--no-wait", action="store_true", help="return once it is saving")
    listing = actions.add_parser(
        "list",
        parents=[flags],
        help="your snapshots and those shared with your groups (admins: everyone's)",
    )
    listing.add_argument("--json", action="store_true", help="the snapshots as JSON")
    show = actions.add_parser(
        "show", parents=[flags], help="a snapshot: its image and the packages it adds"
    )
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="the snapshot as JSON")
    share = actions.add_parser(
        "share",
        parents=[flags],
        help="share a snapshot with groups of yours, in place of those it had",
        description="Share snapshot NAME with GROUPs you are in (their members start servers "
        "from it as YOU/NAME), in place of those it was shared with; --none: with nobody.",
    )
    share.add_argument("name", metavar="NAME")
    share.add_argument("groups", nargs="*", metavar="GROUP")
    share.add_argument("--none", action="store_true", help="share it with no group")
    named_actions(actions, flags, delete="delete a snapshot and its image")


def cmd_env(args, settings: Settings) -> int:
    actions = {
        "save": _save,
        "list": _list,
        "show": _show,
        "share": _share,
        "delete": _delete,
    }
    return dispatch("env", actions, args, settings)


def _state(state: str) -> Text:
    return Text(state, style=_STATE_COLOURS.get(state, ""))


def _line(env: dict) -> str:
    return f"Environment {env['name']}: {env.get('message') or env['state']}"


def _reason(env: dict) -> str:
    """The message without the word that repeats the state ("Failed: x": "x")."""
    message = env.get("message") or ""
    for said in ("Saved: ", "Failed: "):
        message = message.removeprefix(said)
    return message


def _save(client: GpulabClient, args, _spec) -> int:
    env = client.save_environment(args.name, args.description, args.share, user=args.user)
    if args.no_wait:
        console.print(f"Saving environment {env['name']}", markup=False, highlight=False)
        return 0

    def saving(now: dict) -> None:
        if now["state"] == "saving":  # the verdict tells the end
            progress.update(_line(now))

    try:
        with Progress(_line(env)) as progress:
            env = client.wait_environment(args.name, args.user, on_change=saving)
    except KeyboardInterrupt:
        err.print(
            f"Stopped waiting; environment {args.name} goes on saving "
            f"(gpulab env show {args.name} tells how far it is)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 130
    if env["state"] != "ready":
        err.print(
            f"[red]gpulab:[/red] environment {escape(env['name'])} {escape(env['state'])}: "
            f"{escape(_reason(env))}",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    console.print(
        f"Saved environment {env['name']}: {env['image']}\n  {_reason(env)}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _list(client: GpulabClient, args, _spec) -> int:
    envs = client.environments(user=args.user)
    if args.json:
        console.print_json(data=envs)
        return 0
    if not envs:
        console.print(
            "No environments yet: gpulab env save NAME saves the packages you installed",
            markup=False,
            highlight=False,
        )
        return 0
    me = args.user or client.whoami()["name"]
    table = Table(title=f"Environments ({len(envs)})", title_justify="left")
    for col in ("name", "state", "size", "packages", "python", "shared with", "created"):
        table.add_column(col, no_wrap=True)
    for e in envs:
        table.add_row(
            Text(e["name"] if e["user"] == me else e["ref"]),
            _state(e["state"]),
            format_size(e["size"]) if e["state"] == "ready" else "",
            str(len(e["packages"])) if e["state"] == "ready" else "",
            e.get("python") or "",
            Text(", ".join(e["groups"]) or "-"),
            ago(e.get("created")),
        )
    console.print(table)
    return 0


def _show(client: GpulabClient, args, _spec) -> int:
    env = client.environment(args.name, args.user)
    if args.json:
        console.print_json(data=env)
        return 0
    ready = env["state"] == "ready"
    console.print(
        fields(
            [
                ("environment", env["ref"]),
                ("description", env.get("description")),
                ("state", _state(env["state"])),
                ("message", env.get("message")),
                ("image", env.get("image")),
                ("digest", env.get("digest")),
                ("python", env.get("python")),
                ("base", env.get("base")),
                ("parent", env.get("parent")),
                ("size", format_size(env["size"]) if ready else None),
                ("layers", env["layers"] if ready else None),
                ("shared with", ", ".join(env["groups"]) or "no group"),
                ("created", when(env.get("created"))),
            ]
        )
    )
    if not ready:
        return 0
    over = f"environment {env['parent']}" if env.get("parent") else "the base"
    packages = env.get("packages") or []
    if not packages:
        console.print(f"No packages of its own over {over}", markup=False, highlight=False)
        return 0
    lines = [f"Packages it adds over {over} ({len(packages)}):"]
    for p in packages:
        editable = p.get("editable_project_location")
        lines.append(
            f"  {p['name']}=={p['version']}" + (f" (editable: {editable})" if editable else "")
        )
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
    return 0


def _share(client: GpulabClient, args, _spec) -> int:
    if args.none == bool(args.groups):
        raise SpecFileError(
            "share: give the groups to share the environment with, or --none for no group"
        )
    env = client.share_environment(args.name, args.groups, args.user)
    if env["groups"]:
        text = (
            f"Shared environment {env['name']} with {', '.join(env['groups'])}: their members "
            f"start servers from it as {env['ref']}"
        )
    else:
        text = f"Environment {env['name']} is shared with no group"
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    return 0


def _delete(client: GpulabClient, args, _spec) -> int:
    client.delete_environment(args.name, args.user)
    console.print(f"Deleted environment {args.name}", markup=False, highlight=False)
    return 0


COMMANDS = {"env": cmd_env}
