"""Hyperparameter sweeps: one job template over a grid or a random sample of parameters.

Each trial is an ordinary job named ``<sweep>-<n>`` that gets its parameters as
``--name=value`` arguments and as ``GPULAB_PARAM_<NAME>`` variables, and reports its
metrics by printing ``gpulab-metric: loss=0.25`` or writing ``$GPULAB_METRICS_FILE``.
At most ``max_parallel`` trials are active at once; the sweep's results are its trials
sorted by the objective, failed trials included. ``SweepBody`` is what a client may send
(a pydantic model, see ``bodies``); ``parse_sweep`` checks it and draws the trials.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator
from pydantic.json_schema import SkipJsonSchema
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

from .bodies import Body, FieldError, SpecError, Wanted, one_of, shapes, validated, whole
from .runner import JobError
from .spec import (
    METRIC_NAME_RE,
    NAME_RE,
    EventsFolder,
    JobBody,
    MetricsFormat,
    parse_job,
)
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


SWEEP_NAME_HELP = f"1-{MAX_SWEEP_NAME} lower-case letters, digits and '-', starting with a letter"
PARAMETERS_HELP = "an object of name: [values] or name: {min, max}"
Values = Annotated[list[Any], Field(min_length=1), Wanted("a list of at least one value")]
Number = Annotated[int | float, WithJsonSchema({"type": "number"}), Wanted("a number")]


class ValuesParameter(Body):
    values: Values


class RangeParameter(Body):
    """Random sweeps only: a number drawn from min to max."""

    min: Number
    max: Number
    scale: one_of(("linear", "log"), "linear or log") = "linear"
    type: one_of(("int", "float"), "int or float") | None = Field(
        None, description="Default: int where min and max are whole numbers, else float."
    )

    @model_validator(mode="after")
    def _bounds(self) -> RangeParameter:
        if self.min > self.max:
            raise FieldError("min is above max")
        if not math.isfinite(self.max - self.min):
            raise FieldError("min and max are too far apart")
        if self.scale == "log" and self.min <= 0:
            raise FieldError("a log scale needs min above 0")
        return self

    def draw(self, rng: random.Random) -> Callable[[], float | int]:
        """A function that draws the parameter's next value from ``rng``."""
        ints = isinstance(self.min, int) and isinstance(self.max, int)
        whole = (self.type or ("int" if ints else "float")) == "int"
        log = self.scale == "log"
        low, high = (math.log(self.min), math.log(self.max)) if log else (self.min, self.max)

        def draw() -> float | int:
            value = rng.uniform(low, high)
            value = math.exp(value) if log else value
            return round(value) if whole else float(f"{value:.6g}")

        return draw


def _parameter_kind(value: object) -> str | None:
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "values" if "values" in value else "range"
    return None


Parameter = shapes(
    "a list of values, or {min, max[, scale, type]}",
    kind=_parameter_kind,
    array=Values,
    values=ValuesParameter,
    range=RangeParameter,
)
ParameterName = Annotated[
    str,
    Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
    Wanted("a parameter name: letters, digits and _, not starting with a digit"),
]


def _some(value: object) -> object:
    if not isinstance(value, dict) or not value:
        raise FieldError(PARAMETERS_HELP, got=True)
    return value


def _a_job(value: object) -> object:
    if not isinstance(value, dict):
        raise FieldError("the job every trial runs, as a job spec without a name", got=True)
    return value


class JobTemplate(JobBody):
    """The job every trial runs: a job spec without a name (trials are ``<sweep>-<n>``)."""

    name: SkipJsonSchema[None] = None

    @classmethod
    def check_fields(cls, data: dict) -> None:
        if "name" in data:
            raise FieldError("trials are named after the sweep; leave the name out", at="name")
        super().check_fields(data)

    @classmethod
    def known(cls) -> set[str]:
        return super().known() - {"name"}

    def _metrics_named(self) -> JobTemplate:
        """Every trial reads the objective's metric: no other need be named."""
        return self


METRIC_HELP = "a metric name: letters, digits, _ . / -, starting with a letter or _"


class ObjectiveBody(Body):
    metric: Annotated[str, Field(pattern=METRIC_NAME_RE.pattern), Wanted(METRIC_HELP)] = Field(
        description="A metric the trials report: a NAME=VALUE or NAME: VALUE line (or "
        "one metrics_format finds), a gpulab-metric: line, $GPULAB_METRICS_FILE, or a "
        "TensorBoard scalar under metrics_events."
    )
    goal: one_of(("minimize", "maximize"), "minimize or maximize") = "minimize"


class SweepBody(Body):
    """A sweep (docs/jobs.md#sweeps): one job over a grid or a random sample of parameters."""

    name: Annotated[
        str, Field(pattern=NAME_RE.pattern, max_length=MAX_SWEEP_NAME), Wanted(SWEEP_NAME_HELP)
    ] = Field(description=f"Unique per user: {SWEEP_NAME_HELP}.")
    job: Annotated[JobTemplate, BeforeValidator(_a_job)] = Field(
        description="The job every trial runs, its parameters appended as --name=value."
    )
    parameters: Annotated[
        dict[ParameterName, Parameter], Field(min_length=1), BeforeValidator(_some)
    ] = Field(description=f"Their values: {PARAMETERS_HELP}.")
    algorithm: one_of(("grid", "random"), "grid or random") = "grid"
    trials: whole(1, MAX_TRIALS) | None = Field(None, description="Random: how many to draw.")
    seed: int = Field(0, description="Random: the same seed draws the same trials.")
    max_parallel: whole(1, 64) = 1
    objective: ObjectiveBody = Field(description="What ranks the trials.")
    metrics_format: MetricsFormat = Field(
        "", description="The trials' metrics_format (see a job's): how lines report metrics."
    )
    metrics_events: EventsFolder = Field(
        "", description="The trials' metrics_events (see a job's): TensorBoard event files."
    )

    @model_validator(mode="after")
    def _rules(self) -> SweepBody:
        if self.algorithm == "random":
            if self.trials is None:
                raise FieldError(
                    f"required for random: a whole number from 1 to {MAX_TRIALS}", "trials"
                )
            return self
        if self.trials is not None:
            raise FieldError("a grid runs every combination; trials is for random", at="trials")
        _grid_rules(self.parameters)
        return self


def _grid_rules(parameters: dict) -> None:
    ranges = [k for k, p in parameters.items() if isinstance(p, RangeParameter)]
    if ranges:
        raise FieldError("a grid needs a list of values", at=f"parameters.{ranges[0]}")
    size = math.prod(len(_values(p)) for p in parameters.values())
    if size > MAX_TRIALS:
        raise FieldError(f"the grid has {size} combinations; at most {MAX_TRIALS}", "parameters")


def parse_sweep(body: object, python: str = "python") -> SweepSpec:
    """A checked SweepSpec from a client's JSON, or SpecError naming the field."""
    sweep = validated(SweepBody, body, "a sweep is")
    if sweep.algorithm == "grid":
        keys, lists = list(sweep.parameters), [_values(p) for p in sweep.parameters.values()]
        trials = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]
    else:
        trials = _sample(sweep.parameters, sweep.trials, random.Random(sweep.seed))
    job = _with_collectors(body["job"], sweep)
    try:  # every trial's job must be a valid job: check the first one now
        parse_job(trial_job(job, f"{sweep.name}-1", trials[0], sweep.objective.metric), python)
    except SpecError as e:
        raise SpecError(f"job.{e}") from None
    return SweepSpec(
        name=sweep.name,
        job=job,
        parameters=body["parameters"],
        algorithm=sweep.algorithm,
        trials=trials,
        max_parallel=sweep.max_parallel,
        metric=sweep.objective.metric,
        goal=sweep.objective.goal,
    )


def _with_collectors(job: dict, sweep: SweepBody) -> dict:
    """The job template with the sweep's metrics_format and metrics_events, which every
    trial reads its metrics with; SpecError if the template gives one too."""
    for key in ("metrics_format", "metrics_events"):
        value = getattr(sweep, key)
        if not value:
            continue
        if job.get(key):
            raise SpecError(f"job.{key}: given for the sweep too; give it once")
        job = {**job, key: value}
    return job


def trial_job(template: dict, name: str, params: dict, metric: str = "") -> dict:
    """The job spec of one trial: the template, named, with its parameters as arguments,
    reading the objective's ``metric`` from its output as Katib's StdOut collector does
    (``metric=value`` or ``metric: value`` lines) as well as from gpulab's own lines."""
    args = list(template.get("args", [])) + [f"--{k}={_text(v)}" for k, v in params.items()]
    job = {**template, "name": name, "args": args}
    if metric:
        metrics = template.get("metrics", [])
        job["metrics"] = [*metrics, metric] if isinstance(metrics, list) else metrics
    return job


def _text(value) -> str:
    return json.dumps(value) if isinstance(value, bool | list | dict) else str(value)


def _values(parameter: list | ValuesParameter) -> list:
    return parameter.values if isinstance(parameter, ValuesParameter) else parameter


def _sample(parameters: dict, count: int, rng: random.Random) -> list[dict]:
    draws = {}
    for key, parameter in parameters.items():
        if isinstance(parameter, RangeParameter):
            draws[key] = parameter.draw(rng)
        else:
            draws[key] = functools.partial(rng.choice, _values(parameter))
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
        first = self.jobs.parse(trial_job(spec.job, f"{spec.name}-1", spec.trials[0], spec.metric))
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
                    job = self.jobs.parse(trial_job(spec["job"], name, params, spec["metric"]))
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
