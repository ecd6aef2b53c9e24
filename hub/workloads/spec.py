"""What a user asks to run: a job's spec, checked, and the environment of each replica.

A job is a group of replica groups (``chief``, ``worker``, ``ps``, ``evaluator`` for
TensorFlow; ``worker`` for PyTorch and plain jobs), each with a count, GPUs per replica
and a restart policy. ``JobBody`` is what a client may send (a pydantic model, which
the API's OpenAPI document is generated from); ``parse_job`` checks the JSON a client
sent with it and builds a ``JobSpec``, or raises ``SpecError`` naming the field (one
line, see ``bodies``); ``cluster_env`` gives every replica the variables
its framework reads (``TF_CONFIG``; ``MASTER_ADDR``/``RANK``/... and torchrun's
``PET_*``). Pure functions: no processes, no database.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Annotated

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from gpulab.hub.settings import SettingsError, parse_duration

from .bodies import Body, FieldError, Wanted, one_of, shapes, shown, validated, whole
from .bodies import SpecError as SpecError  # where callers have always found it
from .job_metrics import MAX_METRICS_FORMAT, metrics_pattern

FRAMEWORKS = ("tensorflow", "pytorch", "plain")
ROLES = {
    "tensorflow": ("chief", "worker", "ps", "evaluator"),
    "pytorch": ("worker",),
    "plain": ("worker",),
}
RESTART_POLICIES = ("Never", "OnFailure", "ExitCode")
RUNS = ("command", "script", "module", "notebook")
"""What a job runs: one of these."""
NOTEBOOK_RUNNER = "gpulab.hub.workloads.notebook_job"
SUCCESS_POLICIES = ("default", "all_workers")

# Kubeflow's exit-code policy: these mean "try again" (the process was interrupted or
# killed from outside); every other non-zero code is the program's own failure
RETRYABLE_EXIT_CODES = frozenset({130, 137, 143})
NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
METRIC_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_REPLICAS = 64
MAX_DEADLINE_SECONDS = 366 * 86400  # a job that should run longer has no deadline
# the job's own variables may not replace what gpulab sets for the cluster and GPUs
RESERVED_ENV = frozenset(
    {
        "TF_CONFIG",
        "MASTER_ADDR",
        "MASTER_PORT",
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "HOME",
        "USER",
    }
)


@dataclass(frozen=True)
class ReplicaGroup:
    role: str
    count: int = 1
    gpus: int = 0
    restart_policy: str = "Never"
    backoff_limit: int = 3
    command: tuple[str, ...] = ()
    """This group's own command; empty: the job's."""


@dataclass(frozen=True)
class JobSpec:
    name: str
    framework: str
    command: tuple[str, ...]
    groups: tuple[ReplicaGroup, ...]
    workdir: str = ""
    """Relative to the user's home; empty: the home itself."""
    env: dict[str, str] = field(default_factory=dict)
    package: str = ""
    """A wheel or sdist on the home, installed for the job before it starts."""
    image: str = ""
    success_policy: str = "default"
    active_deadline: float | None = None
    torchrun_nproc: int = 0
    """PyTorch: processes torchrun starts per replica (``PET_NPROC_PER_NODE``); 0: not set."""
    notebook: str = ""
    """The notebook the replicas run top to bottom (``notebook_job``), relative to
    ``workdir``; empty: the job runs a command."""
    metrics: tuple[str, ...] = ()
    """Metrics also read from plain output lines, ``name=value`` or ``name: value``
    (Katib's StdOut collector), besides ``gpulab-metric:`` lines."""
    metrics_format: str = ""
    """A regular expression of two groups, (name) and (value), that finds ``metrics`` in
    output lines instead of ``name=value`` / ``name: value`` (Katib's ``metricsFormat``)."""
    metrics_events: str = ""
    """A folder of TensorBoard event files, relative to ``workdir``, whose scalars named
    in ``metrics`` are read after the command ends (Katib's TensorFlowEvent collector);
    empty: none."""
    environment: str = ""
    """The environment snapshot the replicas run in (``name``, or ``owner/name``); empty:
    the user's own environment."""

    @property
    def gpus(self) -> int:
        return sum(g.count * g.gpus for g in self.groups)

    def group(self, role: str) -> ReplicaGroup | None:
        return next((g for g in self.groups if g.role == role), None)

    def replicas(self) -> list[tuple[ReplicaGroup, int]]:
        """Every replica as (group, index), in the order they start."""
        return [(g, i) for g in self.groups for i in range(g.count)]

    def command_for(self, group: ReplicaGroup) -> list[str]:
        return list(group.command or self.command)

    def as_json(self) -> dict:
        model = asdict(self)
        model["command"] = list(self.command)
        model["metrics"] = list(self.metrics)
        model["replicas"] = {g.role: {**asdict(g), "command": list(g.command)} for g in self.groups}
        for g in model["replicas"].values():
            del g["role"]
        del model["groups"]
        return model


def spec_from_json(model: dict) -> JobSpec:
    """The JobSpec that ``JobSpec.as_json`` wrote (as the job store keeps it)."""
    groups = tuple(
        ReplicaGroup(role=role, **{**g, "command": tuple(g.get("command", ()))})
        for role, g in model["replicas"].items()
    )
    fields = {k: v for k, v in model.items() if k != "replicas"}
    fields["command"] = tuple(fields["command"])
    fields["metrics"] = tuple(fields.get("metrics", ()))
    return JobSpec(groups=groups, **fields)


def replica_name(role: str, index: int) -> str:
    return f"{role}-{index}"


# -- parsing -----------------------------------------------------------------------------

NAME_HELP = "1-40 lower-case letters, digits and '-', starting with a letter"
COMMAND_HELP = "a non-empty list of strings, or a shell-style string"
DEADLINE_HELP = "seconds, or a duration like 90s, 30m, 2h or 1d: more than 0, at most 366 days"
DURATION_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*[smhdSMHD]?\s*$"
"""What ``parse_duration`` reads (it also takes a number of seconds)."""


def home_path(value: object, where: str = "") -> str:
    """A path inside the user's home, normalised and relative ("" for the home); else a
    FieldError (a SpecError) about the field ``where``."""
    if not isinstance(value, str):
        raise FieldError(f"a string (got {shown(value)})", at=where)
    if "\0" in value:
        raise FieldError("not a valid path", at=where)
    path = value
    for prefix in ("~/", "$HOME/"):
        path = path.removeprefix(prefix)
    if path.startswith("/"):
        raise FieldError(
            f"{shown(value)} is outside your home; give a path relative to it", at=where
        )
    normal = posixpath.normpath(path) if path else "."
    if normal == ".." or normal.startswith("../"):
        raise FieldError(f"{shown(value)} is outside your home", at=where)
    return "" if normal == "." else normal


def _words(command: str) -> list[str]:
    """A shell-style command, split into its words."""
    try:
        words = shlex.split(command)
    except ValueError as e:  # No closing quotation
        raise FieldError(str(e)) from None
    if not words:
        raise FieldError(COMMAND_HELP, got=True)
    return words


def _unset_if_empty(value: object) -> object:
    """An empty command, script, module or notebook is none given."""
    return None if value in ("", []) else value


def _settable(name: str) -> str:
    if name in RESERVED_ENV:
        raise FieldError(f"{name} is set by gpulab for each replica")
    return name


def _metrics_format(text: str) -> str:
    if text:
        metrics_pattern(text)
    return text


def _events_folder(value: str) -> str:
    """A folder inside the working folder, normalised ("." for the working folder
    itself; "" for none)."""
    if not value:
        return ""
    if "\0" in value or value.startswith(("/", "~")):
        raise FieldError(f"a folder relative to workdir (got {shown(value)})")
    normal = posixpath.normpath(value)
    if normal == ".." or normal.startswith("../"):
        raise FieldError(f"{shown(value)} is outside workdir")
    return normal


def _seconds(value: float | str) -> float:
    try:
        seconds = parse_duration(value, "active_deadline")
    except SettingsError:  # more days than any deadline
        raise FieldError(DEADLINE_HELP, got=True) from None
    if not 0 < seconds <= MAX_DEADLINE_SECONDS:
        raise FieldError(DEADLINE_HELP, got=True)
    return seconds


Name = Annotated[str, Field(pattern=NAME_RE.pattern), Wanted(NAME_HELP)]
MetricName = Annotated[
    str,
    Field(pattern=METRIC_NAME_RE.pattern),
    Wanted("a metric name: letters, digits, _ . / -, starting with a letter or _"),
]
HomePath = Annotated[str, AfterValidator(home_path)]
EnvironmentRef = Annotated[
    str,
    Field(pattern=r"^(?:(?:[^/\s]{1,255}/)?[a-z0-9][a-z0-9._-]{0,62})?$"),
    Wanted("an environment snapshot: NAME, or OWNER/NAME"),
]
Module = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*$"), Wanted("a Python module name")]
Scalar = Annotated[str | int | float, WithJsonSchema({"type": ["string", "number"]})]
Command = Annotated[
    shapes(
        COMMAND_HELP,
        string=Annotated[str, AfterValidator(_words)],
        array=Annotated[list[str], Field(min_length=1), Wanted(COMMAND_HELP)],
    )
    | None,
    BeforeValidator(_unset_if_empty),
]
EnvName = Annotated[
    str,
    Field(pattern=ENV_NAME_RE.pattern, json_schema_extra={"not": {"enum": sorted(RESERVED_ENV)}}),
    Wanted("a variable name: letters, digits and _, not starting with a digit"),
    AfterValidator(_settable),
]
MetricsFormat = Annotated[
    str,
    Field(max_length=MAX_METRICS_FORMAT),
    Wanted(f"a regular expression of at most {MAX_METRICS_FORMAT} characters"),
    AfterValidator(_metrics_format),
]
EventsFolder = Annotated[
    str,
    Field(max_length=1024),
    Wanted("a folder relative to workdir, at most 1024 characters"),
    AfterValidator(_events_folder),
]
METRICS_FORMAT_HELP = (
    "A regular expression of two groups, (name) and (value), that finds the metrics in "
    "output lines instead of name=value or name: value (Katib's metricsFormat)."
)
METRICS_EVENTS_HELP = (
    "A folder of TensorBoard event files, relative to workdir: the scalars of the metrics "
    "are read from it after the command ends."
)
Deadline = Annotated[
    shapes(
        DEADLINE_HELP,
        number=Annotated[float, Field(gt=0, le=MAX_DEADLINE_SECONDS), Wanted(DEADLINE_HELP)],
        string=Annotated[str, Field(pattern=DURATION_PATTERN), Wanted(DEADLINE_HELP)],
    ),
    AfterValidator(_seconds),
]


def _python(command: list[str] | None, python: str) -> list[str]:
    """``command`` with a leading ``python`` or ``python3`` run by ``python``."""
    if command and command[0] in ("python", "python3"):
        return [python, *command[1:]]
    return list(command or ())


class ReplicaGroupBody(Body):
    """A group of identical replicas (a whole number is that many, with the defaults)."""

    count: whole(1, MAX_REPLICAS) = 1
    gpus: whole(0, 64) = Field(0, description="GPUs per replica, on one node.")
    restart_policy: one_of(RESTART_POLICIES) = "Never"
    backoff_limit: whole(0, 100) = Field(3, description="Restarts before the job fails.")
    command: Command = Field(None, description="This group's own command; none: the job's.")


Group = shapes(
    "a count or an object", integer=whole(1, MAX_REPLICAS, at="count"), object=ReplicaGroupBody
)


class ReplicasBody(Body):
    """The replica groups by role: TensorFlow's chief, worker, ps and evaluator; a
    PyTorch or plain job's worker."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})
    chief: Group | None = None
    worker: Group | None = None
    ps: Group | None = None
    evaluator: Group | None = None

    def groups(self) -> list[tuple[str, ReplicaGroupBody]]:
        """(role, group) of each role given, chief first: it starts (and is scheduled)
        first."""
        given = [(role, getattr(self, role)) for role in ROLES["tensorflow"]]
        return [
            (role, ReplicaGroupBody(count=g) if isinstance(g, int) else g)
            for role, g in given
            if g is not None
        ]

    @model_validator(mode="after")
    def _some_role(self) -> ReplicasBody:
        if not self.groups():
            raise FieldError("a count, or an object of role: {count, gpus, ...}")
        return self


class TorchrunBody(Body):
    nproc_per_node: Annotated[int, Field(ge=1), Wanted("a whole number of 1 or more")] = 1


class JobBody(Body):
    """A job (docs/jobs.md): what it runs, as how many replicas of which roles."""

    name: Name = Field(description=f"Unique per user: {NAME_HELP}.")
    framework: one_of(FRAMEWORKS) = "plain"
    command: Command = Field(None, description="Run as it is; a leading python is gpulab's.")
    script: Annotated[HomePath | None, BeforeValidator(_unset_if_empty)] = Field(
        None, description="Run as python SCRIPT ARGS; relative to workdir."
    )
    module: Annotated[Module | None, BeforeValidator(_unset_if_empty)] = Field(
        None, description="Run as python -m MODULE ARGS."
    )
    notebook: Annotated[HomePath | None, BeforeValidator(_unset_if_empty)] = Field(
        None,
        description="Run this notebook top to bottom (relative to workdir); ARGS are its "
        "parameters, NAME=VALUE.",
    )
    args: Annotated[list[Scalar], Wanted("a list of strings")] = []
    replicas: shapes(
        "a count, or an object of role: {count, gpus, ...}",
        integer=whole(1, MAX_REPLICAS),
        object=ReplicasBody,
    ) = Field(1, description="A number of workers, or the replica groups by role.")
    workdir: HomePath = Field("", description="Relative to the home; empty: the home.")
    env: dict[EnvName, Annotated[Scalar, Wanted("a string or number")]] = {}
    package: HomePath = Field("", description="A wheel or sdist on the home, installed first.")
    image: str = Field("", description="The replicas' image (kubernetes backend).")
    environment: EnvironmentRef = Field(
        "",
        description="An environment snapshot to run in: NAME, or OWNER/NAME for one shared "
        "with you (docs/environments.md).",
    )
    success_policy: one_of(SUCCESS_POLICIES) = "default"
    active_deadline: Deadline | None = Field(None, description="The longest the job may run.")
    metrics: Annotated[list[MetricName], Field(max_length=16)] = Field(
        [],
        description="Metrics also read from plain output lines, name=value or name: value.",
    )
    metrics_format: MetricsFormat = Field("", description=METRICS_FORMAT_HELP)
    metrics_events: EventsFolder = Field("", description=METRICS_EVENTS_HELP)
    torchrun: shapes(
        "true, processes per replica, or {nproc_per_node: N}",
        boolean=bool,
        integer=Annotated[int, Field(ge=0), Wanted("a whole number of 0 or more")],
        object=TorchrunBody,
    ) = Field(0, description="PyTorch: processes torchrun starts per replica.")

    @field_validator("replicas", mode="before")
    @classmethod
    def _roles_of_framework(cls, value: object, info: ValidationInfo) -> object:
        framework = info.data.get("framework")
        if isinstance(value, dict) and framework in ROLES:
            roles = ROLES[framework]
            unknown = sorted(str(k) for k in value if k not in roles)
            if unknown:
                raise FieldError(
                    f"{', '.join(unknown)} is not a role of a {framework} job "
                    f"(roles: {', '.join(roles)})"
                )
        return value

    @model_validator(mode="after")
    def _one_command(self) -> JobBody:
        given = [k for k in RUNS if getattr(self, k) is not None]
        if len(given) > 1:
            raise FieldError(
                f"give one of command, script, module or notebook, not {' and '.join(given)}",
                at=given[-1],
            )
        if self.args and not given:
            raise FieldError("give them with a command, script, module or notebook", at="args")
        if not given and any(not g.command for _, g in self.groups()):
            raise FieldError("give the job a command (or script / module / notebook)", "command")
        if self.notebook is not None:
            _notebook_rules(self)
        return self

    @model_validator(mode="after")
    def _metrics_named(self) -> JobBody:
        """metrics_format and metrics_events read the metrics named, and only those."""
        for key in ("metrics_format", "metrics_events"):
            if getattr(self, key) and not self.metrics:
                raise FieldError(f"name the metrics that {key} reads", at="metrics")
        return self

    @model_validator(mode="after")
    def _replica_rules(self) -> JobBody:
        groups = dict(self.groups())
        total = sum(g.count for g in groups.values())
        if total > MAX_REPLICAS:
            raise FieldError(f"at most {MAX_REPLICAS} in one job (asked for {total})", "replicas")
        if self.framework == "tensorflow":
            _tensorflow_rules(groups)
        if self.nproc() and self.framework != "pytorch":
            raise FieldError("only for PyTorch jobs", at="torchrun")
        return self

    def groups(self) -> list[tuple[str, ReplicaGroupBody]]:
        if isinstance(self.replicas, int):
            return [("worker", ReplicaGroupBody(count=self.replicas))]
        return self.replicas.groups()

    def nproc(self) -> int:
        if isinstance(self.torchrun, TorchrunBody):
            return self.torchrun.nproc_per_node
        return int(self.torchrun)

    def run(self, python: str) -> list[str]:
        """The job's command, with its args ([] where each group has its own)."""
        args = [str(a) for a in self.args]
        if self.script is not None:
            return [python, self.script, *args]
        if self.module is not None:
            return [python, "-m", self.module, *args]
        if self.notebook is not None:
            return [python, "-m", NOTEBOOK_RUNNER, self.notebook, *args]
        return [*_python(self.command, python), *args] if self.command else []


def _notebook_rules(job: JobBody) -> None:
    if not job.notebook.endswith(".ipynb"):
        raise FieldError(f"a notebook (.ipynb) (got {shown(job.notebook)})", at="notebook")
    for i, arg in enumerate(job.args):
        name, eq, _ = str(arg).partition("=")
        if not eq or not name.removeprefix("--").isidentifier():
            raise FieldError(
                f"a notebook's parameter, NAME=VALUE (got {shown(arg)})", at=f"args.{i}"
            )


def _tensorflow_rules(groups: dict[str, ReplicaGroupBody]) -> None:
    if "chief" not in groups and "worker" not in groups:
        raise FieldError("a TensorFlow job needs a chief or at least one worker", at="replicas")
    for role in ("chief", "evaluator"):
        if role in groups and groups[role].count != 1:
            raise FieldError(f"a TensorFlow job has at most one {role}", f"replicas.{role}.count")


def parse_job(body: object, python: str = "python") -> JobSpec:
    """A checked JobSpec from a client's JSON object, or SpecError naming the field.

    ``python`` replaces a leading ``python`` of the command (the environment's own
    interpreter); ``script`` and ``module`` are shorthands for ``python SCRIPT ARGS`` and
    ``python -m MODULE ARGS``.
    """
    job = validated(JobBody, body, "a job is")
    groups = tuple(
        ReplicaGroup(role, **{**g.model_dump(), "command": tuple(_python(g.command, python))})
        for role, g in job.groups()
    )
    return JobSpec(
        name=job.name,
        framework=job.framework,
        command=tuple(job.run(python)),
        groups=groups,
        workdir=job.workdir,
        env={k: str(v) for k, v in job.env.items()},
        package=job.package,
        image=job.image,
        environment=job.environment,
        success_policy=job.success_policy,
        active_deadline=job.active_deadline,
        torchrun_nproc=job.nproc(),
        notebook=job.notebook or "",
        metrics=tuple(dict.fromkeys(job.metrics)),
        metrics_format=job.metrics_format,
        metrics_events=job.metrics_events,
    )


# -- restart policy ------------------------------------------------------------------------


def exit_code(returncode: int) -> int:
    """A shell-style exit code: a process killed by signal N exits 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def should_restart(group: ReplicaGroup, code: int, restarts: int) -> bool:
    """After a replica exited with ``code`` (not 0) and was restarted ``restarts`` times."""
    if group.restart_policy == "Never" or restarts >= group.backoff_limit:
        return False
    if group.restart_policy == "ExitCode":
        return code in RETRYABLE_EXIT_CODES
    return True


# -- the cluster each replica sees --------------------------------------------------------


def cluster_env(
    spec: JobSpec, addresses: dict[tuple[str, int], str], role: str, index: int
) -> dict[str, str]:
    """The variables that tell replica (role, index) about the rest of its job.

    ``addresses`` maps every replica to its ``host:port``.
    """
    if spec.framework == "tensorflow":
        cluster: dict[str, list[str]] = {}
        for group in spec.groups:
            if group.role == "evaluator":  # TensorFlow keeps the evaluator out of the cluster
                continue
            cluster[group.role] = [addresses[(group.role, i)] for i in range(group.count)]
        config = {
            "cluster": cluster,
            "task": {"type": role, "index": index},
            "environment": "cloud",
        }
        return {"TF_CONFIG": json.dumps(config)}
    if spec.framework == "pytorch":
        world = spec.group("worker").count
        host, _, port = addresses[("worker", 0)].rpartition(":")
        env = {
            "MASTER_ADDR": host,
            "MASTER_PORT": port,
            "WORLD_SIZE": str(world),
            "RANK": str(index),
            # each replica is a node of its own, with its own CUDA_VISIBLE_DEVICES
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "GROUP_RANK": str(index),
            # torchrun reads these as the defaults of its options
            "PET_NNODES": str(world),
            "PET_NODE_RANK": str(index),
            "PET_MASTER_ADDR": host,
            "PET_MASTER_PORT": port,
        }
        if spec.torchrun_nproc:
            env["PET_NPROC_PER_NODE"] = str(spec.torchrun_nproc)
        return env
    count = spec.group("worker").count
    return {"GPULAB_REPLICA_INDEX": str(index), "GPULAB_REPLICAS": str(count)}


def success_roles(spec: JobSpec) -> tuple[str, list[int]] | None:
    """Which replicas' success is the job's success: (role, indexes); None: all of them.

    As Kubeflow's training operator decides it: TensorFlow: the chief, else worker 0
    (or every worker with ``all_workers``); PyTorch (which has no master role here):
    every worker, so no rank is stopped while it still runs; plain jobs: every replica.
    """
    if spec.framework == "plain":
        return None
    if spec.framework == "pytorch" or spec.success_policy == "all_workers":
        worker = spec.group("worker")
        if worker is not None:
            return "worker", list(range(worker.count))
    if spec.group("chief") is not None:
        return "chief", [0]
    return "worker", [0]
