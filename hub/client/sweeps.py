"""``gpulab sweep``: hyperparameter sweeps from a shell, one job per trial (docs/jobs.md)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from ..settings import Settings
from .actions import dispatch, hub_flags, named_actions
from .api import JOB_FINISHED, GpulabClient
from .output import Progress, ago, console, err, fields, number, said_cancelled, state_text, when


def add_parsers(sub) -> None:
    flags = hub_flags()
    sweep = sub.add_parser(
        "sweep",
        help="hyperparameter sweeps: submit, list, status, cancel, delete",
        description="Hyperparameter sweeps: one job per trial (docs/jobs.md).",
    )
    actions = sweep.add_subparsers(dest="action", required=True, metavar="ACTION")
    submit = actions.add_parser("submit", parents=[flags], help="submit a sweep (YAML or JSON)")
    submit.add_argument("file", metavar="FILE", help="the spec, a .yaml or .json file; - for stdin")
    submit.add_argument("--name", help="the sweep's name (default: the spec's name)")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait until the sweep ends, print its results; exit 1 unless it succeeded",
    )
    listing = actions.add_parser("list", parents=[flags], help="your sweeps (admins: everyone's)")
    listing.add_argument("--json", action="store_true", help="the sweeps as JSON")
    status = actions.add_parser(
        "status", parents=[flags], help="a sweep's trials, best first by its objective"
    )
    status.add_argument("name", metavar="NAME")
    status.add_argument("--json", action="store_true", help="the sweep as JSON")
    named_actions(
        actions,
        flags,
        cancel="cancel every trial still queued or running",
        delete="cancel the sweep if it runs, then forget it and its trials",
    )


def cmd_sweep(args, settings: Settings) -> int:
    actions = {
        "submit": _sweep_submit,
        "list": _sweep_list,
        "status": _sweep_status,
        "cancel": _sweep_cancel,
        "delete": _sweep_delete,
    }
    return dispatch("sweep", actions, args, settings)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _competes(trial: dict) -> bool:
    """Only a trial that succeeded and reported the metric can be the best."""
    return trial.get("state") == "succeeded" and _is_number(trial.get("metric"))


def _ranked(sweep: dict) -> list[dict]:
    """The trials best first by the objective (as the hub ranks them); the rest last."""
    sign = -1 if (sweep.get("objective") or {}).get("goal") == "maximize" else 1
    trials = sweep.get("trials") or []
    return sorted(trials, key=lambda t: (0, sign * t["metric"]) if _competes(t) else (1, 0))


def _total(sweep: dict) -> int:
    """All the sweep's trials, those not started yet included."""
    return sweep.get("total_trials") or len(sweep.get("trials") or [])


def _objective(sweep: dict) -> str:
    objective = sweep.get("objective") or {}
    return f"{objective.get('goal', 'minimize')} {objective.get('metric', '')}".strip()


def _best(sweep: dict) -> str:
    best = sweep.get("best")
    if not best or not _is_number(best.get("metric")):
        return ""
    metric = (sweep.get("objective") or {}).get("metric", "metric")
    return f"{best['name']}: {metric}={number(best['metric'])}"


def _trials_done(sweep: dict) -> str:
    trials = sweep.get("trials") or []
    done = sum(t.get("state") in JOB_FINISHED for t in trials)
    running = sum(t.get("state") in ("starting", "running") for t in trials)
    queued = sum(t.get("state") == "queued" for t in trials)
    return (
        f"{done}/{_total(sweep)} done"
        + (f", {running} running" if running else "")
        + (f", {queued} queued" if queued else "")
    )


def _sweep_line(sweep: dict) -> str:
    best = _best(sweep)
    return f"Sweep {sweep['name']}: {sweep['state']}, {_trials_done(sweep)}" + (
        f"; best {best}" if best else ""
    )


def _sweep_submit(client: GpulabClient, args, spec: dict) -> int:
    sweep = client.submit_sweep(spec, user=args.user)
    console.print(
        f"Submitted sweep {sweep['name']}: {_total(sweep)} trial(s), {sweep.get('algorithm')}, "
        f"up to {sweep.get('max_parallel')} at once, {_objective(sweep)}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if not args.wait:
        return 0
    try:
        with Progress(_sweep_line(sweep)) as progress:
            sweep = client.wait_sweep(
                sweep["name"], args.user, on_change=lambda s: progress.update(_sweep_line(s))
            )
    except KeyboardInterrupt:
        name = sweep["name"]
        err.print(
            f"Stopped waiting; sweep {name} runs on (gpulab sweep cancel {name} stops it)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 130
    _print_sweep(sweep)
    return 0 if sweep["state"] == "succeeded" else 1


def _sweep_list(client: GpulabClient, args, _spec) -> int:
    sweeps = client.sweeps(user=args.user)
    if args.json:
        console.print_json(data=sweeps)
        return 0
    if not sweeps:
        console.print("No sweeps")
        return 0
    many = len({s.get("user") for s in sweeps}) > 1
    table = Table(title=f"Sweeps ({len(sweeps)})", title_justify="left")
    table.add_column("name", no_wrap=True)
    if many:
        table.add_column("user", no_wrap=True)
    for col in ("state", "algorithm", "trials", "objective", "best", "age", "message"):
        table.add_column(col, no_wrap=col != "message")
    for s in sweeps:
        row = [Text(s["name"])] + ([Text(s.get("user") or "")] if many else [])
        row += [
            state_text(s["state"]),
            s.get("algorithm") or "",
            _trials_done(s),
            Text(_objective(s)),
            Text(_best(s)),
            ago(s.get("created")),
            Text(s.get("message") or ""),
        ]
        table.add_row(*row)
    console.print(table)
    return 0


def _print_sweep(sweep: dict) -> None:
    objective = sweep.get("objective") or {}
    metric = objective.get("metric") or "metric"
    console.print(
        fields(
            [
                ("sweep", sweep["name"]),
                ("user", sweep.get("user")),
                ("state", state_text(sweep["state"])),
                ("message", sweep.get("message")),
                ("algorithm", sweep.get("algorithm")),
                ("objective", _objective(sweep)),
                ("parallel", sweep.get("max_parallel")),
                ("trials", _trials_done(sweep)),
                ("best", _best(sweep)),
                ("created", when(sweep.get("created"))),
                ("finished", when(sweep.get("finished")) if sweep.get("finished") else ""),
            ]
        )
    )
    trials = _ranked(sweep)
    names = list(sweep.get("parameters") or {})
    for t in trials:
        names += [k for k in t.get("params") or {} if k not in names]
    best = (sweep.get("best") or {}).get("name")
    table = Table(title=f"Trials, best {metric} first", title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("trial", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for n in names:
        table.add_column(n, no_wrap=True, justify="right")
    table.add_column(metric, no_wrap=True, justify="right")
    table.add_column("message")
    for t in trials:
        params = t.get("params") or {}
        marked = best is not None and t.get("name") == best
        table.add_row(
            "best" if marked else "",
            Text(t.get("name") or ""),
            state_text(t.get("state") or ""),
            *(Text(number(params.get(n))) for n in names),
            number(t.get("metric")) if _is_number(t.get("metric")) else "-",
            # a trial that succeeded says so in its state; the others say why not
            Text(t.get("message") or "" if t.get("state") != "succeeded" else ""),
            style="bold" if marked else None,
        )
    console.print(table)


def _sweep_status(client: GpulabClient, args, _spec) -> int:
    sweep = client.sweep(args.name, args.user)
    if args.json:
        console.print_json(data=sweep)
        return 0
    _print_sweep(sweep)
    return 0


def _sweep_cancel(client: GpulabClient, args, _spec) -> int:
    return said_cancelled("sweep", client.cancel_sweep(args.name, args.user))


def _sweep_delete(client: GpulabClient, args, _spec) -> int:
    client.delete_sweep(args.name, args.user)
    console.print(f"Deleted sweep {args.name}", markup=False, highlight=False)
    return 0


COMMANDS = {"sweep": cmd_sweep}
