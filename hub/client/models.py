"""``gpulab model`` and ``gpulab predict``: deploy models and call them from a shell
(docs/serving.md)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..settings import Settings
from .actions import hub_flags
from .api import GpulabClient
from .output import Progress, ago, console, err, fields, when
from .specfile import SpecFileError

_STATE_COLOURS = {
    "deploying": "cyan",
    "loading": "cyan",
    "starting": "cyan",
    "available": "green",
    "restarting": "yellow",
    "unavailable": "yellow",
    "failed": "red",
}


def add_parsers(sub) -> None:
    flags = hub_flags()
    model = sub.add_parser(
        "model",
        help="model serving: deploy, list, status, update, logs, undeploy",
        description="Serve SavedModels behind TF-Serving-compatible REST and gRPC "
        "(docs/serving.md).",
    )
    actions = model.add_subparsers(dest="action", required=True, metavar="ACTION")
    deploy = actions.add_parser(
        "deploy",
        parents=[flags],
        help="deploy a model from its base path",
        description="Deploy NAME from BASE_PATH, a folder of numbered SavedModel version "
        "folders on your home (models/line holding 1/, 2/, ...) or s3://BUCKET/PREFIX; wait "
        "until it serves (exit 0) or failed (exit 1).",
    )
    deploy.add_argument("name", metavar="NAME")
    deploy.add_argument("base_path", metavar="BASE_PATH")
    _policy_flags(deploy)
    deploy.add_argument("--gpus", type=int, help="GPUs per replica (default 0: CPU)")
    deploy.add_argument(
        "--batching",
        metavar="FILE",
        help="run requests that arrive together as one call of the model, with TF Serving's "
        "batching parameters file (BatchingParameters text: max_batch_size { value: 32 } ...; "
        "an empty file: TF Serving's defaults)",
    )
    deploy.add_argument("--no-wait", action="store_true", help="return once it is deploying")
    update = actions.add_parser(
        "update",
        parents=[flags],
        help="change versions, labels, replicas or access, without downtime",
    )
    update.add_argument("name", metavar="NAME")
    _policy_flags(update)
    update.add_argument("--no-labels", action="store_true", help="remove every label")
    update.add_argument(
        "--no-wait",
        action="store_true",
        help="return at once, not when every replica serves the versions asked for",
    )
    listing = actions.add_parser("list", parents=[flags], help="your models (admins: everyone's)")
    listing.add_argument("--json", action="store_true", help="the models as JSON")
    status = actions.add_parser(
        "status", parents=[flags], help="a model: versions, replicas, endpoints"
    )
    status.add_argument("name", metavar="NAME")
    status.add_argument("--json", action="store_true", help="the model as JSON")
    status.add_argument("--show-token", action="store_true", help="also print the model's token")
    logs = actions.add_parser("logs", parents=[flags], help="a replica's model server log")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("-r", "--replica", type=int, default=0, help="replica number (default 0)")
    undeploy = actions.add_parser(
        "undeploy", parents=[flags], help="stop the model's servers and free its GPUs"
    )
    undeploy.add_argument("name", metavar="NAME")

    predict = sub.add_parser(
        "predict",
        parents=[flags],
        help="call a model with a TF Serving JSON request",
        description='Send FILE (TF Serving\'s predict request: {"instances": [...]} or '
        '{"inputs": ...}) to model NAME and print its JSON answer.',
    )
    predict.add_argument("name", metavar="NAME")
    predict.add_argument(
        "--json", dest="file", required=True, metavar="FILE", help="the request; - for stdin"
    )
    which = predict.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="a version (default: the newest served)")
    which.add_argument("--label", help="a version label, e.g. stable")
    predict.add_argument("--owner", help="call another user's model shared with you")


def _policy_flags(parser) -> None:
    parser.add_argument(
        "--versions",
        metavar="POLICY",
        help="latest (default), all, or version numbers like 1,2",
    )
    parser.add_argument("--latest", type=int, metavar="N", help="serve the N newest versions")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="LABEL=VERSION",
        help="a version label (repeatable), e.g. stable=1",
    )
    parser.add_argument("--replicas", type=int, help="model servers to run (default 1)")
    parser.add_argument(
        "--access", help="private (default), group:NAME, or public (anyone with its token)"
    )


def _changes(args) -> dict:
    """The fields the policy flags set."""
    out: dict = {}
    if args.versions:
        if args.versions in ("latest", "all"):
            out["versions"] = args.versions
        else:
            try:
                out["versions"] = [int(v) for v in args.versions.split(",") if v.strip()]
            except ValueError:
                raise SpecFileError(
                    f"--versions: latest, all, or numbers like 1,2 (got {args.versions!r})"
                ) from None
    if args.latest is not None:
        out["latest"] = args.latest
    if args.label:
        labels = {}
        for item in args.label:
            label, sep, version = item.partition("=")
            if not sep or not version.strip().isdigit():
                raise SpecFileError(f"--label: LABEL=VERSION, like stable=1 (got {item!r})")
            labels[label.strip()] = int(version)
        out["labels"] = labels
    if getattr(args, "no_labels", False):
        out["labels"] = {}
    for key in ("replicas", "access", "gpus"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    return out


def cmd_model(args, settings: Settings) -> int:
    actions = {
        "deploy": _deploy,
        "update": _update,
        "list": _list,
        "status": _status,
        "logs": _logs,
        "undeploy": _undeploy,
    }
    client = GpulabClient.from_environment(args.url, args.token, settings)
    return actions[args.action](client, args)


def _state(state: str) -> Text:
    return Text(state, style=_STATE_COLOURS.get(state, ""))


def _line(model: dict) -> str:
    message = f": {model['message']}" if model.get("message") else ""
    return f"Model {model['name']}: {model['state']}{message}"


def _batching(path: str) -> bool | dict:
    """A deployment's ``batching`` from TF Serving's batching parameters file: the
    parameters it sets, or true (TF Serving's defaults) for one that sets none."""
    from google.protobuf import text_format

    from gpulab.serving.batching import SETTABLE as BATCHING_FIELDS
    from gpulab.serving.protos import parse

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpecFileError(f"--batching: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SpecFileError(
            f"--batching: {path} is not a text file (TF Serving's batching parameters)"
        ) from None
    try:
        message = parse("BatchingParameters", text)
    except text_format.ParseError as e:
        raise SpecFileError(
            f"--batching: {path} is not TF Serving's BatchingParameters: {e}"
        ) from None
    given = {field.name: value for field, value in message.ListFields()}
    other = sorted(set(given) - set(BATCHING_FIELDS))
    if other:
        raise SpecFileError(
            f"--batching: {path} sets {', '.join(other)}; a deployment takes "
            f"{', '.join(BATCHING_FIELDS)}"
        )
    params = {
        name: list(value) if name == "allowed_batch_sizes" else value.value
        for name, value in given.items()
    }
    return params or True


def _deploy(client: GpulabClient, args) -> int:
    spec = {"name": args.name, "base_path": args.base_path, **_changes(args)}
    if args.batching is not None:
        spec["batching"] = _batching(args.batching)
    model = client.deploy_model(spec, user=args.user)
    console.print(
        Text.assemble(f"Deploying model {model['name']}: ", _state(model["state"])), soft_wrap=True
    )
    if args.no_wait:
        return 0
    try:
        with Progress(_line(model)) as progress:
            model = client.wait_model(
                args.name, args.user, on_change=lambda m: progress.update(_line(m))
            )
    except KeyboardInterrupt:
        err.print(
            f"Stopped waiting; model {args.name} goes on deploying", markup=False, soft_wrap=True
        )
        return 130
    return _verdict(client, model)


def _verdict(client: GpulabClient, model: dict) -> int:
    if model["state"] == "failed":
        err.print(
            f"[red]gpulab:[/red] model {escape(model['name'])} failed: "
            f"{escape(model.get('message') or '')}",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    hub = client.api_url.removesuffix("/hub/api")
    console.print(
        f"Model {model['name']} serves: {model.get('message', '')}\n"
        f"  REST (TF Serving API): {hub}{model['endpoints']['tf_serving']}/v1/models/"
        f"{model['name']}\n"
        f"  predict:               {hub}{model['endpoints']['predict']}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


ROLL_TIMEOUT = 120
"""Seconds ``model update`` follows the replicas to the versions asked for."""


def _update(client: GpulabClient, args) -> int:
    changes = _changes(args)
    if not changes:
        raise SpecFileError(
            "nothing to change: give --versions, --latest, --label, --no-labels, --replicas "
            "or --access"
        )
    model = client.update_model(args.name, changes, user=args.user)
    wanted = _served_after(model)
    if args.no_wait or wanted is None:
        # the latest N or all versions: what that is, the replicas find at their next look
        console.print(
            f"Model {model['name']} updated; its replicas take the change at their next look "
            f"at {model['base_path']} (now {model.get('message') or model['state']})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 0
    deadline = time.monotonic() + ROLL_TIMEOUT
    try:
        with Progress(_rolling(model, wanted)) as progress:
            while not _serves(model, wanted) and time.monotonic() < deadline:
                time.sleep(0.5)
                model = client.model(args.name, args.user)
                progress.update(_rolling(model, wanted))
    except KeyboardInterrupt:
        err.print(f"Stopped waiting; model {args.name} goes on rolling", markup=False)
        return 130
    if not _serves(model, wanted):
        err.print(
            f"Model {model['name']} is still rolling after {ROLL_TIMEOUT}s: "
            f"{_rolling(model, wanted)}",
            markup=False,
            soft_wrap=True,
        )
        return 1
    console.print(_line(model), markup=False, highlight=False, soft_wrap=True)
    return 0


def _served_after(model: dict) -> set[int] | None:
    """The versions every replica serves once it took the change: the ones asked for and
    those a label names; None where the replicas decide (the latest N, all)."""
    if not isinstance(model.get("versions"), list):
        return None
    return set(model["versions"]) | set((model.get("labels") or {}).values())


def _serves(model: dict, wanted: set[int]) -> bool:
    replicas = model.get("replica_status") or []
    return bool(replicas) and all(
        r["state"] == "available" and set(r.get("serving") or []) == wanted for r in replicas
    )


def _rolling(model: dict, wanted: set[int]) -> str:
    done = sum(set(r.get("serving") or []) == wanted for r in model.get("replica_status") or [])
    total = len(model.get("replica_status") or [])
    versions = ", ".join(str(v) for v in sorted(wanted, reverse=True))
    return (
        f"Model {model['name']}: rolling to version {versions}: {done} of {total} replicas "
        f"there ({model.get('message') or model['state']})"
    )


def _versions(model: dict) -> str:
    return ", ".join(
        f"{v['version']}" + ("" if v["state"] == "AVAILABLE" else f" ({v['state'].lower()})")
        for v in model.get("model_versions") or []
    )


def _list(client: GpulabClient, args) -> int:
    models = client.models(user=args.user)
    if args.json:
        console.print_json(data=models)
        return 0
    if not models:
        console.print("No models", markup=False)
        return 0
    many = len({m["user"] for m in models}) > 1
    table = Table(title=f"Models ({len(models)})", title_justify="left")
    table.add_column("name", no_wrap=True)
    if many:
        table.add_column("user", no_wrap=True)
    for col in ("state", "versions", "replicas", "GPUs", "access", "age", "message"):
        table.add_column(col, no_wrap=col != "message")
    for m in models:
        up = sum(r["state"] == "available" for r in m["replica_status"])
        row = [Text(m["name"])] + ([Text(m["user"])] if many else [])
        row += [
            _state(m["state"]),
            Text(_versions(m)),
            f"{up}/{m['replicas']}",
            str(m["gpus"] * m["replicas"]),
            Text(m["access"]),
            ago(m.get("created")),
            Text(m.get("message") or ""),
        ]
        table.add_row(*row)
    console.print(table)
    return 0


def _status(client: GpulabClient, args) -> int:
    model = client.model(args.name, args.user)
    if args.json:
        if not args.show_token:
            model.pop("token", None)
        console.print_json(data=model)
        return 0
    hub = client.api_url.removesuffix("/hub/api")
    policy = model["versions"]
    if policy == "latest" and model.get("latest", 1) > 1:
        policy = f"latest {model['latest']}"
    labels = " ".join(f"{k}={v}" for k, v in (model.get("labels") or {}).items())
    console.print(
        fields(
            [
                ("model", model["name"]),
                ("user", model["user"]),
                ("state", _state(model["state"])),
                ("message", model.get("message")),
                ("base path", model["base_path"]),
                ("policy", ", ".join(map(str, policy)) if isinstance(policy, list) else policy),
                ("labels", labels),
                ("versions", _versions(model)),
                ("access", model["access"]),
                ("GPUs", f"{model['gpus']} per replica" if model["gpus"] else "none (CPU)"),
                ("batching", _batching_shown(model.get("batching"))),
                ("REST", f"{hub}{model['endpoints']['tf_serving']}/v1/models/{model['name']}"),
                ("predict", f"{hub}{model['endpoints']['predict']}"),
                ("metrics", f"{hub}{model['endpoints']['metrics']}"),
                ("logs", model.get("logs")),
                ("deployed", when(model.get("created"))),
                ("token", model.get("token") if args.show_token else None),
            ]
        )
    )
    table = Table(title="Replicas", title_justify="left")
    for col in ("#", "state", "restarts", "GPUs", "REST", "gRPC", "message"):
        table.add_column(col, no_wrap=col != "message")
    for r in model["replica_status"]:
        table.add_row(
            str(r["index"]),
            _state(r["state"]),
            str(r["restarts"]),
            ",".join(r.get("gpus") or []) or "-",
            r["rest"],
            r["grpc"],
            Text(r.get("message") or ""),
        )
    console.print(table)
    return 0


def _batching_shown(batching: bool | dict | None) -> str:
    if not batching:
        return "off"
    if batching is True:
        return "on (TF Serving's defaults)"
    return ", ".join(
        f"{k} {','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in batching.items()
    )


def _logs(client: GpulabClient, args) -> int:
    sys.stdout.write(client.model_logs(args.name, args.replica, args.user))
    sys.stdout.flush()
    return 0


def _undeploy(client: GpulabClient, args) -> int:
    client.undeploy_model(args.name, user=args.user)
    console.print(
        f"Undeployed model {args.name}; its servers stopped", markup=False, highlight=False
    )
    return 0


def cmd_predict(args, settings: Settings) -> int:
    where = "stdin" if args.file == "-" else args.file
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as e:
        raise SpecFileError(f"cannot read {where}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SpecFileError(f"{where} is not a text file (a JSON predict request)") from None
    try:
        request = json.loads(text)
    except ValueError as e:
        raise SpecFileError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(request, dict):
        raise SpecFileError(
            f'{where}: a predict request is a JSON object ({{"instances": [...]}} or '
            '{"inputs": ...})'
        )
    client = GpulabClient.from_environment(args.url, args.token, settings)
    owner = args.owner or (args.user if args.user else None)
    answer = client.predict(args.name, request, args.version, args.label, owner)
    sys.stdout.write(json.dumps(answer, indent=2) + "\n")
    return 0


COMMANDS = {"model": cmd_model, "predict": cmd_predict}
