"""The notebook magics: ``%%gpulab_job`` runs a cell as a training job, ``%gpulab_jobs``
lists one's jobs.

Every kernel of gpulab's environment loads them (``etc/ipython/ipython_config.py``
there); elsewhere ``%load_ext gpulab.magics``.

``%%gpulab_job --workers 2 --gpus 1 --framework pytorch`` writes the cell to
``~/.gpulab/cells/<hash of the code>.py``, submits it as a job that runs in the kernel's
folder, and prints the job's first replica's log under the cell until the job ends; an
interrupt (the stop button) cancels the job. Refusals and failures are one line, not a
traceback.
"""

from __future__ import annotations

import hashlib
import html
import os
from datetime import UTC, datetime
from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from . import client, follow_job, state_line

CELLS = ".gpulab/cells"
"""Where cells run as jobs are written, in the home."""
FINISHED = ("succeeded", "failed", "cancelled")
"""``gpulab.hub.client.JOB_FINISHED``, without loading the client when the kernel starts."""


class JobCellError(Exception):
    """A job cell that did not succeed: shown as its one line (the hub's refusal, the
    job's failure), marking the cell as failed so that a run of all cells stops there."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"\x1b[31mgpulab:\x1b[0m {self}"]


def load_ipython_extension(ipython) -> None:
    """``%load_ext gpulab.magics``."""
    ipython.register_magics(GpulabMagics)


@magics_class
class GpulabMagics(Magics):
    @magic_arguments()
    @argument("--workers", type=int, default=1, help="replicas to run (default 1)")
    @argument("--gpus", type=int, default=0, help="GPUs per replica (default 0)")
    @argument(
        "--framework",
        default="plain",
        choices=("plain", "pytorch", "tensorflow"),
        help="what the replicas are told of each other: RANK and MASTER_ADDR (pytorch), "
        "TF_CONFIG (tensorflow), GPULAB_REPLICA_INDEX (plain, the default)",
    )
    @argument("--name", help="the job's name (default: cell-<hash of the code>)")
    @argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="an environment variable of every replica (repeat for more)",
    )
    @cell_magic
    def gpulab_job(self, line: str, cell: str) -> None:
        """Run this cell as a training job on the hub (docs/jobs.md) and print its first
        replica's log until it ends; interrupting the kernel cancels the job."""
        args = parse_argstring(self.gpulab_job, line)
        env = _env(args.env)
        workdir = _workdir(Path(os.getcwd()), Path.home())
        digest = hashlib.sha256(cell.encode()).hexdigest()
        try:
            script = write_cell(cell, digest)
        except OSError as e:
            raise JobCellError(f"cannot write the cell into {Path.home() / CELLS}: {e}") from None
        from gpulab.hub.client import ClientError

        hub = client()
        try:
            job = hub.submit_job(
                {
                    "name": args.name or _free_name(f"cell-{digest[:8]}", hub.jobs()),
                    "framework": args.framework,
                    # by its full path: the job runs in the kernel's folder, and a script
                    # path would be taken from there
                    "command": ["python", str(script)],
                    "workdir": workdir,
                    "replicas": {"worker": {"count": args.workers, "gpus": args.gpus}},
                    "env": env,
                }
            )
        except ClientError as e:
            raise JobCellError(f"job not submitted: {e}") from None
        name = job["name"]
        try:
            job = follow_job(name)
        except KeyboardInterrupt:
            try:
                job = hub.cancel_job(name)
            except ClientError as e:
                raise JobCellError(f"interrupted, and could not cancel job {name}: {e}") from None
            print(state_line(job))
            raise JobCellError(f"interrupted: job {name} {job['state']}") from None
        except ClientError as e:
            raise JobCellError(f"{e}; job {name} runs on (gpulab.cancel({name!r}))") from None
        _verdict(job)

    @line_magic
    def gpulab_jobs(self, line: str) -> None:
        """Your jobs as a table: state, replicas, GPUs, age, metrics."""
        if line.strip():
            raise UsageError("%gpulab_jobs takes no arguments")
        from gpulab.hub.client import ClientError

        try:
            jobs = client().jobs()
        except ClientError as e:
            raise JobCellError(str(e)) from None
        display(JobsTable(jobs))


def write_cell(code: str, digest: str) -> Path:
    """``~/.gpulab/cells/<digest>.py`` holding ``code`` (written once per code)."""
    folder = Path.home() / CELLS
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{digest[:16]}.py"
    if not path.is_file() or path.read_text() != code:
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(code)
        partial.replace(path)
    return path


def _free_name(base: str, jobs: list[dict]) -> str:
    """``base``, or ``base-2``, ``base-3``... if a job of that name exists."""
    taken = {j["name"] for j in jobs}
    n, name = 1, base
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def _workdir(cwd: Path, home: Path) -> str:
    """The kernel's folder relative to the home, where the job runs."""
    try:
        inside = cwd.resolve().relative_to(home.resolve()).as_posix()
    except ValueError:
        raise UsageError(
            f"the kernel runs in {cwd}, outside your home {home}: a job runs in your home "
            "(os.chdir into it first)"
        ) from None
    return "" if inside == "." else inside


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env takes KEY=VALUE, not {pair!r}")
        env[key] = value
    return env


def _verdict(job: dict) -> None:
    """Print how the job ended; one that did not succeed fails the cell."""
    metrics = " ".join(f"{k}={_number(v)}" for k, v in (job.get("metrics") or {}).items())
    if job["state"] == "succeeded":
        print(f"Job {job['name']} succeeded" + (f": {metrics}" if metrics else ""))
        return
    message = job.get("message") or ""
    prefix = f"{job['state']}: "
    reason = message[len(prefix) :] if message.lower().startswith(prefix) else message
    raise JobCellError(f"job {job['name']} {job['state']}" + (f": {reason}" if reason else ""))


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _replicas(job: dict) -> str:
    replicas = job.get("replicas") or []
    if job["state"] not in FINISHED:
        running = sum(r.get("state") == "running" for r in replicas)
        return f"{running}/{len(replicas)} running"
    counts: dict[str, int] = {}
    for r in replicas:
        counts[r.get("state", "")] = counts.get(r.get("state", ""), 0) + 1
    return ", ".join(f"{n} {state}" for state, n in counts.items())


def _age(iso: str | None) -> str:
    if not iso:
        return ""
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    seconds = max(int((datetime.now(UTC) - then).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


class JobsTable:
    """One's jobs as a table: HTML in a notebook, aligned text elsewhere."""

    COLUMNS = ("name", "framework", "state", "replicas", "GPUs", "created", "metrics", "message")

    def __init__(self, jobs: list[dict]):
        self.rows = [
            (
                j["name"],
                j.get("framework") or "",
                j["state"] + (f" #{j['queue_position']}" if j.get("queue_position") else ""),
                _replicas(j),
                str(j.get("gpus", 0)),
                _age(j.get("created")),
                " ".join(f"{k}={_number(v)}" for k, v in (j.get("metrics") or {}).items()),
                j.get("message") or "",
            )
            for j in jobs
        ]

    def __repr__(self) -> str:
        if not self.rows:
            return "No jobs"
        widths = [max(len(row[i]) for row in [self.COLUMNS, *self.rows]) for i in range(8)]
        lines = [self.COLUMNS, *self.rows]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in lines
        )

    def _repr_html_(self) -> str:
        if not self.rows:
            return "<p>No jobs</p>"
        head = "".join(f"<th>{c}</th>" for c in self.COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
