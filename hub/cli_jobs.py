"""``gpulab job`` and ``gpulab sweep``: training jobs and sweeps from a shell (docs/jobs.md)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

import yaml
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .cli_output import ago as _ago
from .cli_output import console, err
from .client import JOB_FINISHED, GpulabClient
from .settings import Settings


def _hub_flags() -> argparse.ArgumentParser:
    """The flags every job and sweep command takes: whose, which hub, which token."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--user", help="act for this user (admins)")
    flags.add_argument("--url", help="hub URL (default: $GPULAB_URL or this machine's hub)")
    flags.add_argument("--token", help="API token (default: $GPULAB_TOKEN)")
    return flags


def job_parsers(sub) -> None:
    flags = _hub_flags()
    job = sub.add_parser(
        "job",
        help="training jobs: submit, list, status, logs, cancel, delete",
        description="Training jobs on the hub's GPUs (docs/jobs.md).",
    )
    actions = job.add_subparsers(dest="action", required=True, metavar="ACTION")
    submit = actions.add_parser(
        "submit",
        parents=[flags],
        help="submit a job spec (YAML or JSON)",
        description="Submit a job spec; print the job's name and state. With --wait or "
        "--follow, exit 0 if the job succeeded and 1 otherwise.",
    )
    submit.add_argument("file", metavar="FILE", help="the spec, a .yaml or .json file; - for stdin")
    submit.add_argument("--name", help="the job's name (default: the spec's name)")
    submit.add_argument("--wait", action="store_true", help="wait until the job ends")
    submit.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="print the log of the replica that decides the job (chief-0, else worker-0) "
        "until the job ends",
    )
    listing = actions.add_parser("list", parents=[flags], help="your jobs (admins: everyone's)")
    listing.add_argument("--sweep", help="only this sweep's trials")
    listing.add_argument("--json", action="store_true", help="the jobs as JSON")
    status = actions.add_parser(
        "status", parents=[flags], help="a job: state, replicas, last events"
    )
    status.add_argument("name", metavar="NAME")
    status.add_argument(
        "--events", type=int, default=10, metavar="N", help="last events to show (default 10)"
    )
    status.add_argument("--json", action="store_true", help="the job as JSON")
    logs = actions.add_parser("logs", parents=[flags], help="a replica's log")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument(
        "-r", "--replica", help="e.g. worker-1 (default: the first, chief-0 or worker-0)"
    )
    logs.add_argument(
        "-f", "--follow", action="store_true", help="go on printing until the job ends"
    )
    _named_actions(
        actions,
        flags,
        cancel="stop every replica and free the job's GPUs",
        delete="cancel the job if it runs, then forget it (its logs stay on your home)",
    )


def sweep_parsers(sub) -> None:
    flags = _hub_flags()
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
    _named_actions(
        actions,
        flags,
        cancel="cancel every trial still queued or running",
        delete="cancel the sweep if it runs, then forget it and its trials",
    )


def _named_actions(actions, flags, **helps: str) -> None:
    """Actions that take just the job's or sweep's NAME (cancel, delete)."""
    for action, text in helps.items():
        actions.add_parser(action, parents=[flags], help=text).add_argument("name", metavar="NAME")


class SpecFileError(Exception):
    """A spec file that cannot be read or is not a mapping: bad usage (exit 2)."""


_KINDS = {list: "list", str: "string", int: "number", float: "number", bool: "true/false"}


def load_spec(path: str, what: str = "job", name: str | None = None) -> dict:
    """A job or sweep spec from a YAML or JSON file (``-``: stdin), with ``name`` if given."""
    where = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as e:
        raise SpecFileError(f"cannot read {where}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SpecFileError(f"{where} is not a text file (a YAML or JSON {what} spec)") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise SpecFileError(f"{where} is not valid JSON: {e}") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpecFileError(f"{where} is not valid YAML or JSON: {_yaml_problem(e)}") from None
    if data is None:
        raise SpecFileError(f"{where} is empty: it should hold a {what} spec")
    if not isinstance(data, dict):
        kind = _KINDS.get(type(data), type(data).__name__)
        raise SpecFileError(
            f"{where}: a {what} spec is a mapping of fields (name: ..., "
            f"{'command' if what == 'job' else 'job'}: ...), not a {kind}"
        )

    def not_json(value):
        raise SpecFileError(
            f"{where}: {value} is read as a {type(value).__name__}: quote it to pass it as text"
        )

    data = json.loads(json.dumps(data, default=not_json))
    if name:
        data["name"] = name
    if not data.get("name"):
        raise SpecFileError(
            f"{where}: the {what} has no name: add name: to the spec or give --name"
        )
    if what == "job" and "job" in data and "parameters" in data:
        raise SpecFileError(f"{where} is a sweep spec: submit it with gpulab sweep submit")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(e).split())


_STATE_COLOURS = {
    "queued": "yellow",
    "starting": "cyan",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def _state(state: str, queue_position: int | None = None) -> Text:
    label = state + (f" #{queue_position}" if queue_position else "")
    return Text(label, style=_STATE_COLOURS.get(state, ""))


def _reason(model: dict) -> str:
    """The message without the state it repeats ("Failed: x" of a failed job: "x")."""
    message = model.get("message") or ""
    prefix = f"{model.get('state', '')}: ".lower()
    return message[len(prefix) :] if message.lower().startswith(prefix) else message


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def _pairs(values: dict | None) -> str:
    return " ".join(f"{k}={_number(v)}" for k, v in (values or {}).items())


def _when(iso: str | None) -> str:
    return f"{iso[:19].replace('T', ' ')} ({_ago(iso)})" if iso else "-"


def _took(start: str | None, end: str | None) -> str:
    if not start or not end:
        return ""
    seconds = int((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())
    minutes, seconds = divmod(max(seconds, 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m {seconds}s" if hours else f"{minutes}m {seconds}s"


def _fields(rows: list[tuple[str, object]]) -> Table:
    """A two-column grid of field: value (values as plain text, never markup)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        if value not in (None, ""):
            grid.add_row(key, value if isinstance(value, Text) else Text(str(value)))
    return grid


class _Progress:
    """What a wait is at, on stderr: a spinner on a terminal, a line per change elsewhere."""

    def __init__(self, text: str):
        self.text = text
        self.status = err.status(Text(text)) if err.is_terminal else None
        if self.status is None:
            err.print(text, markup=False, highlight=False, soft_wrap=True)

    def update(self, text: str) -> None:
        if text == self.text:
            return
        self.text = text
        if self.status is not None:
            self.status.update(Text(text))
        else:
            err.print(text, markup=False, highlight=False, soft_wrap=True)

    def __enter__(self):
        if self.status is not None:
            self.status.__enter__()
        return self

    def __exit__(self, *exc):
        if self.status is not None:
            self.status.__exit__(*exc)


def _job_line(job: dict) -> str:
    where = f" (#{job['queue_position']} in the queue)" if job.get("queue_position") else ""
    message = f": {job['message']}" if job.get("message") else ""
    return f"Job {job['name']}: {job['state']}{where}{message}"


def _write(text: str, ends: list[str]) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
    ends[0] = text[-1:] or ends[0]


def cmd_job(args, settings: Settings) -> int:
    actions = {
        "submit": _job_submit,
        "list": _job_list,
        "status": _job_status,
        "logs": _job_logs,
        "cancel": _job_cancel,
        "delete": _job_delete,
    }
    return _dispatch("job", actions, args, settings)


def _dispatch(kind: str, actions: dict, args, settings: Settings) -> int:
    """Run ``gpulab KIND ACTION``: read the spec file for submit, then call the hub."""
    spec = load_spec(args.file, kind, args.name) if args.action == "submit" else None
    client = GpulabClient.from_environment(args.url, args.token, settings)
    return actions[args.action](client, args, spec)


def _deciding_replica(job: dict) -> str | None:
    """The replica whose end is the job's: chief-0 if there is one, else worker-0."""
    names = [r["name"] for r in job.get("replicas") or []]
    return next((n for n in ("chief-0", "worker-0") if n in names), names[0] if names else None)


def _job_submit(client: GpulabClient, args, spec: dict) -> int:
    job = client.submit_job(spec, user=args.user)
    name = job["name"]
    message = f" ({job['message']})" if job.get("message") else ""
    console.print(
        Text.assemble(f"Submitted job {name}: ", _state(job["state"]), message), soft_wrap=True
    )
    if not (args.wait or args.follow):
        return 0
    ends = ["\n"]
    try:
        if args.follow:
            with _Progress(_job_line(job)) as progress:
                job = client.wait_job(
                    name,
                    args.user,
                    on_change=lambda j: progress.update(_job_line(j)),
                    interval=0.5,
                    states=("running", *JOB_FINISHED),
                )
            replica = _deciding_replica(job)
            if replica is not None:
                for text in client.job_logs(name, replica, args.user, follow=True):
                    _write(text, ends)
            job = client.job(name, args.user)
        if job["state"] not in JOB_FINISHED:
            with _Progress(_job_line(job)) as progress:
                job = client.wait_job(
                    name, args.user, on_change=lambda j: progress.update(_job_line(j))
                )
    except KeyboardInterrupt:
        if ends[0] != "\n":
            sys.stdout.write("\n")
        err.print(
            f"Stopped waiting; job {name} runs on (gpulab job cancel {name} stops it)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 130
    if ends[0] != "\n":
        _write("\n", ends)
    return _job_verdict(job)


def _job_verdict(job: dict) -> int:
    name, state = job["name"], job["state"]
    if state == "succeeded":
        metrics = _pairs(job.get("metrics"))
        line = f"Job {name} succeeded" + (f": {metrics}" if metrics else "")
        console.print(line, markup=False, highlight=False, soft_wrap=True)
        return 0
    reason = _reason(job)
    err.print(
        f"[red]gpulab:[/red] job {escape(name)} {state}"
        + (f": {escape(reason)}" if reason else ""),
        highlight=False,
        soft_wrap=True,
    )
    return 1


def _replicas_summary(job: dict) -> str:
    replicas = job.get("replicas") or []
    if job["state"] not in JOB_FINISHED:
        running = sum(r["state"] == "running" for r in replicas)
        return f"{running}/{len(replicas)} running"
    counts: dict[str, int] = {}
    for r in replicas:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return ", ".join(f"{n} {state}" for state, n in counts.items())


def _job_list(client: GpulabClient, args, _spec) -> int:
    jobs = client.jobs(user=args.user, sweep=args.sweep)
    if args.json:
        console.print_json(data=jobs)
        return 0
    if not jobs:
        console.print("No jobs" + (f" in sweep {args.sweep}" if args.sweep else ""), markup=False)
        return 0
    many = len({j["user"] for j in jobs}) > 1
    table = Table(title=f"Jobs ({len(jobs)})", title_justify="left")
    table.add_column("name", no_wrap=True)
    if many:
        table.add_column("user", no_wrap=True)
    for col in ("framework", "state", "replicas", "GPUs", "age", "message"):
        table.add_column(col, no_wrap=col != "message")
    for j in jobs:
        row = [Text(j["name"])] + ([Text(j["user"])] if many else [])
        row += [
            j.get("framework") or "",
            _state(j["state"], j.get("queue_position")),
            _replicas_summary(j),
            str(j.get("gpus", 0)),
            _ago(j.get("created")),
            Text(j.get("message") or ""),
        ]
        table.add_row(*row)
    console.print(table)
    return 0


def _job_status(client: GpulabClient, args, _spec) -> int:
    job = client.job(args.name, args.user)
    if args.json:
        console.print_json(data=job)
        return 0
    where = f" (#{job['queue_position']} in the queue)" if job.get("queue_position") else ""
    console.print(
        _fields(
            [
                ("job", job["name"]),
                ("user", job["user"]),
                ("framework", job.get("framework")),
                ("state", Text.assemble(_state(job["state"]), where)),
                ("message", job.get("message")),
                ("GPUs", job.get("gpus")),
                ("sweep", job.get("sweep")),
                ("params", _pairs(job.get("params"))),
                ("metrics", _pairs(job.get("metrics"))),
                ("created", _when(job.get("created"))),
                ("started", _when(job.get("started")) if job.get("started") else ""),
                ("finished", _when(job.get("finished")) if job.get("finished") else ""),
                ("ran for", _took(job.get("started"), job.get("finished"))),
                ("logs", job.get("logs")),
            ]
        )
    )
    replicas = Table(title="Replicas", title_justify="left")
    for col in ("replica", "state", "restarts", "exit code", "GPUs", "address", "message"):
        replicas.add_column(col, no_wrap=col != "message")
    for r in job.get("replicas") or []:
        replicas.add_row(
            Text(r["name"]),
            _state(r["state"]),
            str(r.get("restarts", 0)),
            _number(r.get("exit_code")),
            ",".join(r.get("gpus") or []) or "-",
            r.get("address") or "",
            Text(r.get("message") or ""),
        )
    console.print(replicas)
    events = (job.get("events") or [])[-args.events :] if args.events > 0 else []
    if events:
        table = Table(title="Last events", title_justify="left")
        for col in ("at", "replica", "event"):
            table.add_column(col, no_wrap=col != "event")
        for e in events:
            table.add_row(
                e["at"][:19].replace("T", " "), Text(e.get("replica") or ""), Text(e["message"])
            )
        console.print(table)
    return 0


def _job_logs(client: GpulabClient, args, _spec) -> int:
    ends = ["\n"]
    for text in client.job_logs(args.name, args.replica, args.user, follow=args.follow):
        _write(text, ends)
    return 0


def _job_cancel(client: GpulabClient, args, _spec) -> int:
    return _said_cancelled("job", client.cancel_job(args.name, args.user))


def _said_cancelled(kind: str, model: dict) -> int:
    """Tell what a cancel did to a job or sweep: stopped it, or found it ended."""
    if model["state"] == "cancelled":
        text = f"Cancelled {kind} {model['name']}"
    else:
        text = (
            f"{kind.capitalize()} {model['name']} had already {model['state']}: nothing to cancel"
        )
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    return 0


def _job_delete(client: GpulabClient, args, _spec) -> int:
    client.delete_job(args.name, args.user)
    console.print(f"Deleted job {args.name}", markup=False, highlight=False)
    return 0


# sweeps


def cmd_sweep(args, settings: Settings) -> int:
    actions = {
        "submit": _sweep_submit,
        "list": _sweep_list,
        "status": _sweep_status,
        "cancel": _sweep_cancel,
        "delete": _sweep_delete,
    }
    return _dispatch("sweep", actions, args, settings)


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
    return f"{best['name']}: {metric}={_number(best['metric'])}"


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
        with _Progress(_sweep_line(sweep)) as progress:
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
            _state(s["state"]),
            s.get("algorithm") or "",
            _trials_done(s),
            Text(_objective(s)),
            Text(_best(s)),
            _ago(s.get("created")),
            Text(s.get("message") or ""),
        ]
        table.add_row(*row)
    console.print(table)
    return 0


def _print_sweep(sweep: dict) -> None:
    objective = sweep.get("objective") or {}
    metric = objective.get("metric") or "metric"
    console.print(
        _fields(
            [
                ("sweep", sweep["name"]),
                ("user", sweep.get("user")),
                ("state", _state(sweep["state"])),
                ("message", sweep.get("message")),
                ("algorithm", sweep.get("algorithm")),
                ("objective", _objective(sweep)),
                ("parallel", sweep.get("max_parallel")),
                ("trials", _trials_done(sweep)),
                ("best", _best(sweep)),
                ("created", _when(sweep.get("created"))),
                ("finished", _when(sweep.get("finished")) if sweep.get("finished") else ""),
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
            _state(t.get("state") or ""),
            *(Text(_number(params.get(n))) for n in names),
            _number(t.get("metric")) if _is_number(t.get("metric")) else "-",
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
    return _said_cancelled("sweep", client.cancel_sweep(args.name, args.user))


def _sweep_delete(client: GpulabClient, args, _spec) -> int:
    client.delete_sweep(args.name, args.user)
    console.print(f"Deleted sweep {args.name}", markup=False, highlight=False)
    return 0
