"""``gpulab job``: training jobs from a shell (docs/jobs.md)."""

from __future__ import annotations

import sys
from datetime import datetime

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..settings import Settings
from .actions import dispatch, hub_flags, named_actions
from .api import JOB_FINISHED, GpulabClient
from .output import (
    Progress,
    ago,
    console,
    err,
    fields,
    number,
    pairs,
    said_cancelled,
    state_text,
    when,
)


def add_parsers(sub) -> None:
    flags = hub_flags()
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
    named_actions(
        actions,
        flags,
        cancel="stop every replica and free the job's GPUs",
        delete="cancel the job if it runs, then forget it (its logs stay on your home)",
    )


def _reason(model: dict) -> str:
    """The message without the state it repeats ("Failed: x" of a failed job: "x")."""
    message = model.get("message") or ""
    prefix = f"{model.get('state', '')}: ".lower()
    return message[len(prefix) :] if message.lower().startswith(prefix) else message


def _took(start: str | None, end: str | None) -> str:
    if not start or not end:
        return ""
    seconds = int((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())
    minutes, seconds = divmod(max(seconds, 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m {seconds}s" if hours else f"{minutes}m {seconds}s"


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
    return dispatch("job", actions, args, settings)


def _deciding_replica(job: dict) -> str | None:
    """The replica whose end is the job's: chief-0 if there is one, else worker-0."""
    names = [r["name"] for r in job.get("replicas") or []]
    return next((n for n in ("chief-0", "worker-0") if n in names), names[0] if names else None)


def _job_submit(client: GpulabClient, args, spec: dict) -> int:
    job = client.submit_job(spec, user=args.user)
    name = job["name"]
    message = f" ({job['message']})" if job.get("message") else ""
    console.print(
        Text.assemble(f"Submitted job {name}: ", state_text(job["state"]), message), soft_wrap=True
    )
    if not (args.wait or args.follow):
        return 0
    ends = ["\n"]
    try:
        if args.follow:
            with Progress(_job_line(job)) as progress:
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
            with Progress(_job_line(job)) as progress:
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
        metrics = pairs(job.get("metrics"))
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
            state_text(j["state"], j.get("queue_position")),
            _replicas_summary(j),
            str(j.get("gpus", 0)),
            ago(j.get("created")),
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
        fields(
            [
                ("job", job["name"]),
                ("user", job["user"]),
                ("framework", job.get("framework")),
                ("state", Text.assemble(state_text(job["state"]), where)),
                ("message", job.get("message")),
                ("GPUs", job.get("gpus")),
                ("sweep", job.get("sweep")),
                ("params", pairs(job.get("params"))),
                ("metrics", pairs(job.get("metrics"))),
                ("created", when(job.get("created"))),
                ("started", when(job.get("started")) if job.get("started") else ""),
                ("finished", when(job.get("finished")) if job.get("finished") else ""),
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
            state_text(r["state"]),
            str(r.get("restarts", 0)),
            number(r.get("exit_code")),
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
    return said_cancelled("job", client.cancel_job(args.name, args.user))


def _job_delete(client: GpulabClient, args, _spec) -> int:
    client.delete_job(args.name, args.user)
    console.print(f"Deleted job {args.name}", markup=False, highlight=False)
    return 0


COMMANDS = {"job": cmd_job}
