"""What a user asks to run: a job's spec, checked, and the environment of each replica.

A job is a group of replica groups (``chief``, ``worker``, ``ps``, ``evaluator`` for
TensorFlow; ``worker`` for PyTorch and plain jobs), each with a count, GPUs per replica
and a restart policy. ``parse_job`` turns the JSON a client sent into a ``JobSpec`` or
raises ``SpecError`` naming the field; ``cluster_env`` gives every replica the variables
its framework reads (``TF_CONFIG``; ``MASTER_ADDR``/``RANK``/... and torchrun's
``PET_*``). Pure functions: no processes, no database.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import asdict, dataclass, field

from gpulab.hub.settings import SettingsError, parse_duration

FRAMEWORKS = ("tensorflow", "pytorch", "plain")
ROLES = {
    "tensorflow": ("chief", "worker", "ps", "evaluator"),
    "pytorch": ("worker",),
    "plain": ("worker",),
}
RESTART_POLICIES = ("Never", "OnFailure", "ExitCode")
SUCCESS_POLICIES = ("default", "all_workers")

# Kubeflow's exit-code policy: these mean "try again" (the process was interrupted or
# killed from outside); every other non-zero code is the program's own failure
RETRYABLE_EXIT_CODES = frozenset({130, 137, 143})
NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
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


class SpecError(ValueError):
    """A job spec that cannot run; the message names the field."""


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
    return JobSpec(groups=groups, **fields)


def replica_name(role: str, index: int) -> str:
    return f"{role}-{index}"


# -- parsing -----------------------------------------------------------------------------


def parse_job(body: object, python: str = "python") -> JobSpec:
    """A checked JobSpec from a client's JSON object, or SpecError.

    ``python`` replaces a leading ``python`` of the command (the environment's own
    interpreter); ``script`` and ``module`` are shorthands for ``python SCRIPT ARGS`` and
    ``python -m MODULE ARGS``.
    """
    if not isinstance(body, dict):
        raise SpecError("a job is a JSON object")
    known = {
        "name", "framework", "command", "script", "module", "args", "workdir", "env",
        "package", "image", "replicas", "success_policy", "active_deadline", "torchrun",
    }  # fmt: skip
    unknown = sorted(set(body) - known)
    if unknown:
        raise SpecError(
            f"unknown field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(
            f"name: 1-40 lower-case letters, digits and '-', starting with a letter (got {name!r})"
        )
    framework = body.get("framework", "plain")
    if framework not in FRAMEWORKS:
        raise SpecError(f"framework: one of {', '.join(FRAMEWORKS)} (got {framework!r})")
    command = _command(body, python)
    groups = _groups(body.get("replicas", 1), framework, python)
    if framework == "tensorflow":
        if not any(g.role in ("chief", "worker") for g in groups):
            raise SpecError("replicas: a TensorFlow job needs a chief or at least one worker")
        chief = next((g for g in groups if g.role == "chief"), None)
        if chief is not None and chief.count != 1:
            raise SpecError("replicas.chief.count: a TensorFlow job has at most one chief")
        evaluator = next((g for g in groups if g.role == "evaluator"), None)
        if evaluator is not None and evaluator.count != 1:
            raise SpecError("replicas.evaluator.count: a TensorFlow job has at most one evaluator")
    if not command and any(not g.command for g in groups):
        raise SpecError("command: give the job a command (or script / module)")
    success = body.get("success_policy", "default")
    if success not in SUCCESS_POLICIES:
        raise SpecError(f"success_policy: one of {', '.join(SUCCESS_POLICIES)} (got {success!r})")
    deadline = body.get("active_deadline")
    if deadline is not None:
        try:
            deadline = parse_duration(deadline, "active_deadline")
        except SettingsError as e:
            raise SpecError(str(e)) from None
        if deadline <= 0:
            raise SpecError("active_deadline: must be more than 0 seconds")
        if deadline > MAX_DEADLINE_SECONDS:
            raise SpecError("active_deadline: at most 366 days (366d)")
    torchrun = body.get("torchrun", 0)
    if torchrun and framework != "pytorch":
        raise SpecError("torchrun: only for PyTorch jobs")
    if isinstance(torchrun, dict):
        torchrun = torchrun.get("nproc_per_node", 1)
    if torchrun is True:
        torchrun = 1
    if isinstance(torchrun, bool) or not isinstance(torchrun, int) or torchrun < 0:
        raise SpecError(f"torchrun.nproc_per_node: a whole number of 1 or more (got {torchrun!r})")
    return JobSpec(
        name=name,
        framework=framework,
        command=tuple(command),
        groups=tuple(groups),
        workdir=home_path(body.get("workdir", ""), "workdir"),
        env=_env(body.get("env", {})),
        package=home_path(body.get("package", ""), "package"),
        image=_string(body.get("image", ""), "image"),
        success_policy=success,
        active_deadline=deadline,
        torchrun_nproc=torchrun,
    )


def home_path(value: object, where: str) -> str:
    """A path inside the user's home, normalised and relative ("" for the home)."""
    value = _string(value, where)
    if not value:
        return ""
    if "\0" in value:
        raise SpecError(f"{where}: not a valid path")
    path = value
    for prefix in ("~/", "$HOME/"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
    if path.startswith("/"):
        raise SpecError(f"{where}: {value!r} is outside your home; give a path relative to it")
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        raise SpecError(f"{where}: {value!r} is outside your home")
    return "" if normal == "." else normal


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{where}: a string (got {value!r})")
    return value


def _command(body: dict, python: str) -> list[str]:
    given = [k for k in ("command", "script", "module") if body.get(k)]
    if len(given) > 1:
        raise SpecError(f"give one of command, script or module, not {' and '.join(given)}")
    args = body.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str | int | float) for a in args):
        raise SpecError("args: a list of strings")
    args = [str(a) for a in args]
    if "script" in given:
        return [python, home_path(body["script"], "script"), *args]
    if "module" in given:
        module = _string(body["module"], "module")
        if not re.match(r"^[A-Za-z_][\w.]*$", module):
            raise SpecError(f"module: not a Python module name: {module!r}")
        return [python, "-m", module, *args]
    if "command" not in given:
        if args:
            raise SpecError("args: give them with a command, script or module")
        return []
    return [*_split(body["command"], "command", python), *args]


def _split(command: object, where: str, python: str) -> list[str]:
    if isinstance(command, str):
        try:
            command = shlex.split(command)
        except ValueError as e:
            raise SpecError(f"{where}: {e}") from None
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        raise SpecError(f"{where}: a non-empty list of strings, or a shell-style string")
    if command[0] in ("python", "python3"):
        command = [python, *command[1:]]
    return command


def _env(env: object) -> dict[str, str]:
    if not isinstance(env, dict):
        raise SpecError("env: an object of NAME: value")
    out = {}
    for k, v in env.items():
        if not ENV_NAME_RE.match(k):
            raise SpecError(f"env: {k!r} is not a variable name")
        if k in RESERVED_ENV:
            raise SpecError(f"env: {k} is set by gpulab for each replica")
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise SpecError(f"env.{k}: a string or number")
        out[k] = str(v)
    return out


def _groups(replicas: object, framework: str, python: str) -> list[ReplicaGroup]:
    roles = ROLES[framework]
    if isinstance(replicas, int) and not isinstance(replicas, bool):
        replicas = {"worker": {"count": replicas}}
    if not isinstance(replicas, dict) or not replicas:
        raise SpecError("replicas: a count, or an object of role: {count, gpus, ...}")
    groups = []
    for role in roles:  # a fixed order: chief first, so it starts (and is scheduled) first
        if role not in replicas:
            continue
        raw = replicas[role]
        where = f"replicas.{role}"
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = {"count": raw}
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: a count or an object")
        extra = sorted(set(raw) - {"count", "gpus", "restart_policy", "backoff_limit", "command"})
        if extra:
            raise SpecError(f"{where}: unknown field(s) {', '.join(extra)}")
        count = _whole(raw.get("count", 1), f"{where}.count", 1, MAX_REPLICAS)
        gpus = _whole(raw.get("gpus", 0), f"{where}.gpus", 0, 64)
        policy = raw.get("restart_policy", "Never")
        if policy not in RESTART_POLICIES:
            raise SpecError(
                f"{where}.restart_policy: one of {', '.join(RESTART_POLICIES)} (got {policy!r})"
            )
        backoff = _whole(raw.get("backoff_limit", 3), f"{where}.backoff_limit", 0, 100)
        command = raw.get("command")
        groups.append(
            ReplicaGroup(
                role=role,
                count=count,
                gpus=gpus,
                restart_policy=policy,
                backoff_limit=backoff,
                command=tuple(_split(command, f"{where}.command", python)) if command else (),
            )
        )
    unknown = sorted(set(replicas) - set(roles))
    if unknown:
        raise SpecError(
            f"replicas: {', '.join(unknown)} is not a role of a {framework} job "
            f"(roles: {', '.join(roles)})"
        )
    total = sum(g.count for g in groups)
    if total > MAX_REPLICAS:
        raise SpecError(f"replicas: at most {MAX_REPLICAS} in one job (asked for {total})")
    return groups


def _whole(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{where}: a whole number from {low} to {high} (got {value!r})")
    return value


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

    TensorFlow: the chief, else worker 0 (or every worker with ``all_workers``);
    PyTorch: worker 0 (rank 0), or every worker; plain jobs: every replica.
    """
    if spec.framework == "plain":
        return None
    if spec.success_policy == "all_workers":
        worker = spec.group("worker")
        if worker is not None:
            return "worker", list(range(worker.count))
    if spec.group("chief") is not None:
        return "chief", [0]
    return "worker", [0]
