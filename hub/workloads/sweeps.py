"""Hyperparameter sweeps: one job template over a grid or a random sample of parameters.

Each trial is an ordinary job named ``<sweep>-<n>`` that gets its parameters as
``--name=value`` arguments and as ``GPULAB_PARAM_<NAME>`` variables, and reports its
metrics by printing ``gpulab-metric: loss=0.25`` or writing ``$GPULAB_METRICS_FILE``.
At most ``max_parallel`` trials are active at once; the sweep's results are its trials
sorted by the objective, failed trials included.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
    update,
)

from gpulab.hub.ledger import as_utc, utcnow

from .runner import JobError
from .spec import NAME_RE, SpecError, parse_job
from .store import ACTIVE, metadata

if TYPE_CHECKING:
    from .jobs import JobManager

MAX_TRIALS = 256
MAX_SWEEP_NAME = 34  # so that "<sweep>-<n>" is still a valid job name

sweeps_table = Table(
    "sweeps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(255), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("groups", Text, nullable=False, default="[]"),
    Column("spec", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("submitted", Integer, nullable=False, default=0),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("finished", DateTime(timezone=True), nullable=True),
    UniqueConstraint("user", "name", name="one_sweep_name_per_user"),
)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    job: dict
    parameters: dict
    algorithm: str
    trials: list[dict]
    """Every trial's parameters, in the order they run."""
    max_parallel: int
    metric: str
    goal: str

    def as_json(self) -> dict:
        return asdict(self)


def parse_sweep(body: object, python: str = "python") -> SweepSpec:
    """A checked SweepSpec from a client's JSON, or SpecError naming the field."""
    if not isinstance(body, dict):
        raise SpecError("a sweep is a JSON object")
    known = {
        "name",
        "job",
        "parameters",
        "algorithm",
        "trials",
        "seed",
        "max_parallel",
        "objective",
    }
    unknown = sorted(set(body) - known)
    if unknown:
        raise SpecError(
            f"unknown field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > MAX_SWEEP_NAME:
        raise SpecError(
            f"name: 1-{MAX_SWEEP_NAME} lower-case letters, digits and '-', starting with a "
            f"letter (got {name!r})"
        )
    job = body.get("job")
    if not isinstance(job, dict):
        raise SpecError("job: the job every trial runs, as a job spec without a name")
    if "name" in job:
        raise SpecError("job.name: trials are named after the sweep; leave the name out")
    parameters = body.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SpecError("parameters: an object of name: [values] or name: {min, max}")
    for key in parameters:
        if not isinstance(key, str) or not key.isidentifier():
            raise SpecError(f"parameters: {key!r} is not a valid parameter name")
    algorithm = body.get("algorithm", "grid")
    if algorithm not in ("grid", "random"):
        raise SpecError(f"algorithm: grid or random (got {algorithm!r})")
    seed = body.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SpecError(f"seed: a whole number (got {seed!r})")
    if algorithm == "grid":
        if "trials" in body:
            raise SpecError("trials: a grid runs every combination; trials is for random")
        trials = _grid(parameters)
    else:
        count = body.get("trials")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_TRIALS:
            raise SpecError(f"trials: a whole number from 1 to {MAX_TRIALS} (got {count!r})")
        trials = _sample(parameters, count, random.Random(seed))
    max_parallel = body.get("max_parallel", 1)
    if (
        isinstance(max_parallel, bool)
        or not isinstance(max_parallel, int)
        or not 1 <= max_parallel <= 64
    ):
        raise SpecError(f"max_parallel: a whole number from 1 to 64 (got {max_parallel!r})")
    objective = body.get("objective", {})
    if not isinstance(objective, dict) or not isinstance(objective.get("metric"), str):
        raise SpecError('objective: {"metric": NAME, "goal": "minimize" | "maximize"}')
    goal = objective.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        raise SpecError(f"objective.goal: minimize or maximize (got {goal!r})")
    # every trial's job must be a valid job: check the first one now
    parse_job(trial_job(job, f"{name}-1", trials[0]), python)
    return SweepSpec(
        name=name,
        job=job,
        parameters=parameters,
        algorithm=algorithm,
        trials=trials,
        max_parallel=max_parallel,
        metric=objective["metric"],
        goal=goal,
    )


def trial_job(template: dict, name: str, params: dict) -> dict:
    """The job spec of one trial: the template, named, with its parameters as arguments."""
    args = list(template.get("args", [])) + [f"--{k}={_text(v)}" for k, v in params.items()]
    return {**template, "name": name, "args": args}


def _text(value) -> str:
    return json.dumps(value) if isinstance(value, bool | list | dict) else str(value)


def _values(key: str, spec) -> list:
    if isinstance(spec, dict) and "values" in spec:
        spec = spec["values"]
    if isinstance(spec, list):
        if not spec:
            raise SpecError(f"parameters.{key}: give at least one value")
        return spec
    raise SpecError(f"parameters.{key}: a grid needs a list of values")


def _grid(parameters: dict) -> list[dict]:
    keys = list(parameters)
    lists = [_values(k, parameters[k]) for k in keys]
    size = math.prod(len(v) for v in lists)
    if size > MAX_TRIALS:
        raise SpecError(f"parameters: the grid has {size} combinations; at most {MAX_TRIALS}")
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]


def _sample(parameters: dict, count: int, rng: random.Random) -> list[dict]:
    draws = {}
    for key, spec in parameters.items():
        where = f"parameters.{key}"
        if isinstance(spec, list) or (isinstance(spec, dict) and "values" in spec):
            values = _values(key, spec)
            draws[key] = lambda values=values: rng.choice(values)
            continue
        if not isinstance(spec, dict) or not {"min", "max"} <= set(spec):
            raise SpecError(f"{where}: a list of values, or {{min, max[, scale, type]}}")
        low, high = spec["min"], spec["max"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
            raise SpecError(f"{where}: min and max are numbers")
        if low > high:
            raise SpecError(f"{where}: min is above max")
        scale = spec.get("scale", "linear")
        if scale not in ("linear", "log"):
            raise SpecError(f"{where}.scale: linear or log (got {scale!r})")
        if scale == "log" and low <= 0:
            raise SpecError(f"{where}: a log scale needs min above 0")
        whole = spec.get(
            "type", "int" if isinstance(low, int) and isinstance(high, int) else "float"
        )
        if whole not in ("int", "float"):
            raise SpecError(f"{where}.type: int or float (got {whole!r})")

        def draw(low=low, high=high, scale=scale, whole=whole):
            if scale == "log":
                value = math.exp(rng.uniform(math.log(low), math.log(high)))
            else:
                value = rng.uniform(low, high)
            return round(value) if whole == "int" else float(f"{value:.6g}")

        draws[key] = draw
    return [{k: draw() for k, draw in draws.items()} for _ in range(count)]


class SweepManager:
    """Keeps each running sweep's trials going, at most ``max_parallel`` at a time."""

    def __init__(self, jobs: JobManager):
        self.jobs = jobs
        self.engine = jobs.store.engine
        metadata.create_all(self.engine)

    def parse(self, body: object) -> SweepSpec:
        try:
            return parse_sweep(body, self.jobs.python)
        except SpecError as e:
            raise JobError(400, str(e)) from None

    def submit(self, user: str, groups: list[str], spec: SweepSpec) -> dict:
        first = self.jobs.parse(trial_job(spec.job, f"{spec.name}-1", spec.trials[0]))
        self.jobs.check_fits(user, first, groups)
        names = {f"{spec.name}-{i + 1}" for i in range(len(spec.trials))}
        taken = sorted(names & {j.name for j in self.jobs.store.list(user=user)})
        if taken:
            raise JobError(409, f"the sweep's trials would replace your job(s) {', '.join(taken)}")
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(sweeps_table.c.id).where(
                    sweeps_table.c.user == user, sweeps_table.c.name == spec.name
                )
            ).first()
            if exists:
                raise JobError(
                    409, f"{user} already has a sweep named {spec.name}; delete it first"
                )
            conn.execute(
                insert(sweeps_table).values(
                    user=user,
                    name=spec.name,
                    groups=json.dumps(groups),
                    spec=json.dumps(spec.as_json()),
                    state="running",
                    message=f"0 of {len(spec.trials)} trials started",
                    created=utcnow(),
                )
            )
        self.advance()
        return self.model(user, spec.name)

    def advance(self) -> None:
        """Start the next trials of every running sweep; finish the sweeps that are done."""
        with self.engine.connect() as conn:
            rows = list(conn.execute(select(sweeps_table).where(sweeps_table.c.state == "running")))
        for row in rows:
            spec = json.loads(row.spec)
            total = len(spec["trials"])
            trials = self.jobs.store.list(user=row.user, sweep=row.name)
            active = sum(t.state in ACTIVE for t in trials)
            submitted, failed = row.submitted, ""
            while submitted < total and active < spec["max_parallel"]:
                params = spec["trials"][submitted]
                name = f"{row.name}-{submitted + 1}"
                submitted += 1
                try:
                    job = self.jobs.parse(trial_job(spec["job"], name, params))
                    self.jobs.submit(row.user, json.loads(row.groups), job, row.name, params)
                except JobError as e:
                    failed = f"Trial {name} could not start: {e}"
                    break
                active += 1
            if failed:
                self._set(
                    row.id, submitted=submitted, state="failed", message=failed, finished=utcnow()
                )
            elif submitted == total and active == 0:
                self._set(row.id, submitted=submitted)
                self._finish(row, self.jobs.store.list(user=row.user, sweep=row.name))
            else:
                message = f"{submitted} of {total} trials started, {active} active"
                self._set(row.id, submitted=submitted, message=message)

    def _finish(self, row, trials) -> None:
        spec = json.loads(row.spec)
        ok = [t for t in trials if t.state == "succeeded"]
        failed = len(trials) - len(ok)
        best = best_of(rank(trials, spec["metric"], spec["goal"]))
        summary = f"{len(trials)} trials: {len(ok)} succeeded, {failed} failed"
        if best is not None:
            summary += f"; best {best['name']} with {spec['metric']}={best['metric']:g}"
        self._set(
            row.id,
            state="succeeded" if best is not None else "failed",
            message=summary
            if best is not None
            else f"{summary}; no trial reported {spec['metric']}",
            finished=utcnow(),
        )

    def _set(self, sweep_id: int, **fields) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(sweeps_table).where(sweeps_table.c.id == sweep_id).values(**fields))

    def _row(self, user: str, name: str):
        with self.engine.connect() as conn:
            row = conn.execute(
                select(sweeps_table).where(sweeps_table.c.user == user, sweeps_table.c.name == name)
            ).first()
        if row is None:
            raise JobError(404, f"{user} has no sweep named {name}")
        return row

    def model(self, user: str, name: str) -> dict:
        return self._model(self._row(user, name))

    def list(self, user: str | None = None) -> list[dict]:
        q = select(sweeps_table).order_by(sweeps_table.c.id)
        if user is not None:
            q = q.where(sweeps_table.c.user == user)
        with self.engine.connect() as conn:
            rows = list(conn.execute(q))
        return [self._model(r) for r in rows]

    def _model(self, row) -> dict:
        spec = json.loads(row.spec)
        trials = self.jobs.store.list(user=row.user, sweep=row.name)
        ranked = rank(trials, spec["metric"], spec["goal"])
        best = best_of(ranked)
        return {
            "name": row.name,
            "user": row.user,
            "state": row.state,
            "message": row.message,
            "algorithm": spec["algorithm"],
            "max_parallel": spec["max_parallel"],
            "objective": {"metric": spec["metric"], "goal": spec["goal"]},
            "parameters": spec["parameters"],
            "total_trials": len(spec["trials"]),
            "trials": ranked,
            "best": best,
            "created": as_utc(row.created).isoformat(),
            "finished": as_utc(row.finished).isoformat() if row.finished else None,
        }

    async def cancel(self, user: str, name: str) -> dict:
        row = self._row(user, name)
        if row.state == "running":
            self._set(row.id, state="cancelled", message="Cancelled", finished=utcnow())
            for trial in self.jobs.store.list(user=user, sweep=name):
                await self.jobs.cancel(trial, f"sweep {name} cancelled")
        return self.model(user, name)

    async def delete(self, user: str, name: str) -> None:
        row = self._row(user, name)
        if row.state == "running":
            self._set(row.id, state="cancelled", message="Deleted", finished=utcnow())
        for trial in self.jobs.store.list(user=user, sweep=name):
            await self.jobs.delete(trial)
        with self.engine.begin() as conn:
            conn.execute(delete(sweeps_table).where(sweeps_table.c.id == row.id))


def rank(trials, metric: str, goal: str) -> list[dict]:
    """Trials as results rows, best first; those without the metric (failed ones) last."""
    rows = [
        {
            "name": t.name,
            "params": t.params,
            "state": t.state,
            "metric": t.metrics.get(metric),
            "metrics": t.metrics,
            "message": t.message,
        }
        for t in trials
    ]
    sign = 1 if goal == "minimize" else -1
    return sorted(rows, key=lambda r: (not _counts(r), sign * (r["metric"] or 0)))


def best_of(ranked: list[dict]) -> dict | None:
    return ranked[0] if ranked and _counts(ranked[0]) else None


def _counts(row: dict) -> bool:
    """Only a trial that succeeded and reported the metric competes for best."""
    return row["state"] == "succeeded" and row["metric"] is not None
