"""The API's request bodies, checked by their pydantic models (hub/workloads/bodies.py and
the models beside each parser): good bodies become the specs the hub runs, bad ones one
line that names the field, says what is wanted and what was given. Pure: no hub."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulab.hub.workloads.bodies import SpecError
from gpulab.hub.workloads.model_spec import MODEL_NAME_HELP, ModelSpec, parse_changes, parse_model
from gpulab.hub.workloads.spec import JobSpec, ReplicaGroup, home_path, parse_job
from gpulab.hub.workloads.sweeps import parse_sweep, trial_job

NAME_HELP = "1-40 lower-case letters, digits and '-', starting with a letter"
DEADLINE_HELP = "seconds, or a duration like 90s, 30m, 2h or 1d: more than 0, at most 366 days"
COMMAND_HELP = "a non-empty list of strings, or a shell-style string"
JOB_FIELDS = (
    "active_deadline, args, command, env, environment, framework, image, metrics, metrics_events, "
    "metrics_format, module, name, notebook, package, replicas, script, success_policy, "
    "torchrun, workdir"
)
REPLICAS_HELP = "a count, or an object of role: {count, gpus, ...}"


def refusal(parse, *args) -> str:
    with pytest.raises(SpecError) as e:
        parse(*args)
    message = str(e.value)
    # one line, in words: nothing of pydantic's own
    assert "\n" not in message, message
    for internal in ("Input should", "type=", "pydantic", "Value error"):
        assert internal not in message, message
    assert "~" not in message.split(": ")[0], message  # the tags of a value's JSON shapes
    return message


def job(**fields) -> dict:
    return {"name": "train", "command": "true", **fields}


def worker(**fields) -> ReplicaGroup:
    return ReplicaGroup(role="worker", **fields)


# -- jobs ---------------------------------------------------------------------------------

GOOD_JOBS = [
    (
        {"name": "a", "command": "true"},
        JobSpec(name="a", framework="plain", command=("true",), groups=(worker(),)),
    ),
    (
        {
            "name": "mnist",
            "framework": "tensorflow",
            "script": "~/projects/./train.py",
            "args": ["--epochs", 3, 0.5],
            "workdir": "$HOME/projects/mnist/",
            "env": {"BATCH": 64, "LR": 0.1, "MODE": "fast"},
            "package": "dist/trainer-1.0-py3-none-any.whl",
            "image": "registry.example/train:1",
            "replicas": {
                "evaluator": 1,
                "ps": {"count": 2, "command": "python ps.py --port 1"},
                "worker": 2,
                "chief": {"gpus": 1, "restart_policy": "ExitCode", "backoff_limit": 5},
            },
            "success_policy": "all_workers",
            "active_deadline": "2h",
        },
        JobSpec(
            name="mnist",
            framework="tensorflow",
            command=("PY", "projects/train.py", "--epochs", "3", "0.5"),
            groups=(  # chief first, whatever the order given
                ReplicaGroup("chief", 1, 1, "ExitCode", 5),
                ReplicaGroup("worker", 2),
                ReplicaGroup("ps", 2, command=("PY", "ps.py", "--port", "1")),
                ReplicaGroup("evaluator", 1),
            ),
            workdir="projects/mnist",
            env={"BATCH": "64", "LR": "0.1", "MODE": "fast"},
            package="dist/trainer-1.0-py3-none-any.whl",
            image="registry.example/train:1",
            success_policy="all_workers",
            active_deadline=7200.0,
        ),
    ),
    (
        {
            "name": "ddp",
            "framework": "pytorch",
            "module": "trainer.task",
            "replicas": {"worker": {"count": 4, "gpus": 2}},
            "torchrun": {"nproc_per_node": 2},
            "active_deadline": 90,
        },
        JobSpec(
            name="ddp",
            framework="pytorch",
            command=("PY", "-m", "trainer.task"),
            groups=(worker(count=4, gpus=2),),
            active_deadline=90.0,
            torchrun_nproc=2,
        ),
    ),
]


@pytest.mark.parametrize("body, spec", GOOD_JOBS, ids=lambda x: getattr(x, "name", None))
def test_a_good_job_becomes_its_spec(body, spec) -> None:
    assert parse_job(body, "PY") == spec


@pytest.mark.parametrize(
    "fields, command",
    [
        ({"command": "python train.py --lr 0.1"}, ("PY", "train.py", "--lr", "0.1")),
        ({"command": ["python3", "-c", "print(1)"]}, ("PY", "-c", "print(1)")),
        ({"command": "echo 'a b'", "args": ["c"]}, ("echo", "a b", "c")),
        ({"command": "", "script": "t.py"}, ("PY", "t.py")),  # empty: none given
        ({"command": [], "module": "m"}, ("PY", "-m", "m")),
        ({"command": None, "script": "t.py", "args": [1]}, ("PY", "t.py", "1")),
        (
            {"notebook": "~/exp/train.ipynb", "args": ["lr=0.1"]},
            ("PY", "-m", "gpulab.hub.workloads.notebook_job", "exp/train.ipynb", "lr=0.1"),
        ),
    ],
)
def test_the_command_of_a_job(fields, command) -> None:
    assert parse_job({"name": "a", **fields}, "PY").command == command


def test_a_notebook_job_says_which_notebook_it_runs() -> None:
    spec = parse_job({"name": "a", "notebook": "exp/train.ipynb"}, "PY")
    assert spec.notebook == "exp/train.ipynb"
    assert spec.as_json()["notebook"] == "exp/train.ipynb"
    assert parse_job({"name": "a", "script": "t.py"}).notebook == ""


def test_groups_may_each_run_their_own_command_instead_of_the_jobs() -> None:
    spec = parse_job(
        {
            "name": "a",
            "framework": "tensorflow",
            "replicas": {"chief": {"command": "python c.py"}, "worker": {"command": ["w"]}},
        },
        "PY",
    )
    assert spec.command == ()
    assert [g.command for g in spec.groups] == [("PY", "c.py"), ("w",)]


@pytest.mark.parametrize(
    "replicas, groups",
    [
        (3, (worker(count=3),)),
        ({"worker": 64}, (worker(count=64),)),
        ({"worker": {"gpus": 64, "backoff_limit": 0}}, (worker(gpus=64, backoff_limit=0),)),
        ({"worker": {"restart_policy": "OnFailure"}}, (worker(restart_policy="OnFailure"),)),
    ],
)
def test_replicas_of_a_job(replicas, groups) -> None:
    assert parse_job(job(replicas=replicas)).groups == groups


@pytest.mark.parametrize(
    "deadline, seconds",
    [(1, 1.0), (0.5, 0.5), ("90s", 90.0), (" 1.5m ", 90.0), ("2H", 7200.0), ("366d", 31622400.0)],
)
def test_active_deadline(deadline, seconds) -> None:
    assert parse_job(job(active_deadline=deadline)).active_deadline == seconds


@pytest.mark.parametrize(
    "torchrun, nproc",
    [(True, 1), (False, 0), (0, 0), (4, 4), ({}, 1), ({"nproc_per_node": 8}, 8)],
)
def test_torchrun(torchrun, nproc) -> None:
    spec = parse_job(job(framework="pytorch", torchrun=torchrun))
    assert spec.torchrun_nproc == nproc


@pytest.mark.parametrize(
    "path, normal",
    [
        ("", ""),
        (".", ""),
        ("~/", ""),
        ("a/./b/", "a/b"),
        ("a/../b", "b"),
        ("~/x/../y", "y"),
        ("$HOME/data", "data"),
    ],
)
def test_paths_are_relative_to_the_home(path, normal) -> None:
    assert parse_job(job(workdir=path)).workdir == normal
    assert home_path(path, "workdir") == normal


BAD_JOBS = [
    ([1, 2], "a job is a JSON object"),
    ({"command": "true"}, f"name: required (unique per user: {NAME_HELP})"),
    (job(name="Bad_Name"), f"name: {NAME_HELP} (got 'Bad_Name')"),
    (job(name="a" * 41), f"name: {NAME_HELP} (got '{'a' * 41}')"),
    (job(name="a-"), f"name: {NAME_HELP} (got 'a-')"),
    (job(name="abc\n"), f"name: {NAME_HELP} (got 'abc\\n')"),
    (job(name=5), f"name: {NAME_HELP} (got 5)"),
    (job(name=None), f"name: {NAME_HELP} (got None)"),
    (job(colour="red", flavour=1), f"unknown field(s): colour, flavour; known: {JOB_FIELDS}"),
    (
        job(framework="mxnet"),
        "framework: one of tensorflow, pytorch, plain (got 'mxnet')",
    ),
    # the command
    (job(command=5), f"command: {COMMAND_HELP} (got 5)"),
    (job(command=[1]), f"command: {COMMAND_HELP} (got [1])"),
    (job(command="   "), f"command: {COMMAND_HELP} (got '   ')"),
    (job(command="echo 'unclosed"), "command: No closing quotation"),
    (
        job(script="t.py"),
        "script: give one of command, script, module or notebook, not command and script",
    ),
    ({"name": "a", "args": ["x"]}, "args: give them with a command, script, module or notebook"),
    ({"name": "a"}, "command: give the job a command (or script / module / notebook)"),
    (
        {"name": "a", "replicas": {"worker": {"command": "x"}, "ps": 1}, "framework": "tensorflow"},
        "command: give the job a command (or script / module / notebook)",
    ),
    ({"name": "a", "module": "bad mod"}, "module: a Python module name (got 'bad mod')"),
    ({"name": "a", "notebook": "t.py"}, "notebook: a notebook (.ipynb) (got 't.py')"),
    (
        {"name": "a", "notebook": "/etc/x.ipynb"},
        "notebook: '/etc/x.ipynb' is outside your home; give a path relative to it",
    ),
    (
        {"name": "a", "notebook": "t.ipynb", "args": ["lr=1", "--epochs"]},
        "args.1: a notebook's parameter, NAME=VALUE (got '--epochs')",
    ),
    (job(args="x"), "args: a list of strings (got 'x')"),
    (job(args=[True]), "args: a list of strings (got [True])"),
    (job(args=[None]), "args: a list of strings (got [None])"),
    # replicas
    (job(replicas=0), "replicas: a whole number from 1 to 64 (got 0)"),
    (job(replicas=65), "replicas: a whole number from 1 to 64 (got 65)"),
    (job(replicas=True), f"replicas: {REPLICAS_HELP} (got True)"),
    (job(replicas="2"), f"replicas: {REPLICAS_HELP} (got '2')"),
    (job(replicas={}), f"replicas: {REPLICAS_HELP}"),
    (job(replicas={"worker": None}), f"replicas: {REPLICAS_HELP}"),
    (job(replicas={"worker": "x"}), "replicas.worker: a count or an object (got 'x')"),
    (job(replicas={"worker": -1}), "replicas.worker.count: a whole number from 1 to 64 (got -1)"),
    (
        job(replicas={"worker": {"count": 1.0}}),
        "replicas.worker.count: a whole number from 1 to 64 (got 1.0)",
    ),
    (
        job(replicas={"worker": {"gpus": "1"}}),
        "replicas.worker.gpus: a whole number from 0 to 64 (got '1')",
    ),
    (
        job(replicas={"worker": {"gpus": True}}),
        "replicas.worker.gpus: a whole number from 0 to 64 (got True)",
    ),
    (
        job(replicas={"worker": {"gpus": 65}}),
        "replicas.worker.gpus: a whole number from 0 to 64 (got 65)",
    ),
    (
        job(replicas={"worker": {"restart_policy": "Always"}}),
        "replicas.worker.restart_policy: one of Never, OnFailure, ExitCode (got 'Always')",
    ),
    (
        job(replicas={"worker": {"backoff_limit": 101}}),
        "replicas.worker.backoff_limit: a whole number from 0 to 100 (got 101)",
    ),
    (
        job(replicas={"worker": {"count": 2, "colour": 1}}),
        "replicas.worker: unknown field(s): colour; "
        "known: backoff_limit, command, count, gpus, restart_policy",
    ),
    (
        job(replicas={"worker": {"command": 5}}),
        f"replicas.worker.command: {COMMAND_HELP} (got 5)",
    ),
    (
        job(replicas={"worker": 1, "ps": 1}),
        "replicas: ps is not a role of a plain job (roles: worker)",
    ),
    (
        job(framework="tensorflow", replicas={"master": 1}),
        "replicas: master is not a role of a tensorflow job (roles: chief, worker, ps, evaluator)",
    ),
    (
        job(framework="pytorch", replicas={"worker": 2, "chief": 1}),
        "replicas: chief is not a role of a pytorch job (roles: worker)",
    ),
    (
        job(framework="tensorflow", replicas={"worker": 40, "ps": 30}),
        "replicas: at most 64 in one job (asked for 70)",
    ),
    (
        job(framework="tensorflow", replicas={"ps": 2}),
        "replicas: a TensorFlow job needs a chief or at least one worker",
    ),
    (
        job(framework="tensorflow", replicas={"chief": 2}),
        "replicas.chief.count: a TensorFlow job has at most one chief",
    ),
    (
        job(framework="tensorflow", replicas={"chief": 1, "evaluator": 2}),
        "replicas.evaluator.count: a TensorFlow job has at most one evaluator",
    ),
    # paths on the home
    (job(workdir="a/../../b"), "workdir: 'a/../../b' is outside your home"),
    (job(workdir=".."), "workdir: '..' is outside your home"),
    (job(workdir="/etc"), "workdir: '/etc' is outside your home; give a path relative to it"),
    (job(workdir="~//etc"), "workdir: '~//etc' is outside your home; give a path relative to it"),
    (job(workdir="a\0b"), "workdir: not a valid path"),
    (job(workdir=5), "workdir: a string (got 5)"),
    (job(script="../../etc/passwd"), "script: '../../etc/passwd' is outside your home"),
    (
        job(command=None, script="/etc/passwd"),
        "script: '/etc/passwd' is outside your home; give a path relative to it",
    ),
    (job(package="$HOME/../x.whl"), "package: '$HOME/../x.whl' is outside your home"),
    (job(image=5), "image: a string (got 5)"),
    # the environment
    (job(env={"TF_CONFIG": "{}"}), "env: TF_CONFIG is set by gpulab for each replica"),
    (
        job(env={"CUDA_VISIBLE_DEVICES": "0"}),
        "env: CUDA_VISIBLE_DEVICES is set by gpulab for each replica",
    ),
    (
        job(env={"x y": "1"}),
        "env: a variable name: letters, digits and _, not starting with a digit (got 'x y')",
    ),
    (job(env={"A": True}), "env.A: a string or number (got True)"),
    (job(env={"A": None}), "env.A: a string or number (got None)"),
    (job(env={"A": ["1"]}), "env.A: a string or number (got ['1'])"),
    (job(env=[]), "env: an object (got [])"),
    # the rest
    (
        job(success_policy="some"),
        "success_policy: one of default, all_workers (got 'some')",
    ),
    (job(active_deadline=0), f"active_deadline: {DEADLINE_HELP} (got 0)"),
    (job(active_deadline=-5), f"active_deadline: {DEADLINE_HELP} (got -5)"),
    (job(active_deadline=31622401), f"active_deadline: {DEADLINE_HELP} (got 31622401)"),
    (job(active_deadline="0s"), f"active_deadline: {DEADLINE_HELP} (got '0s')"),
    (job(active_deadline="367d"), f"active_deadline: {DEADLINE_HELP} (got '367d')"),
    (job(active_deadline="soon"), f"active_deadline: {DEADLINE_HELP} (got 'soon')"),
    (job(active_deadline=True), f"active_deadline: {DEADLINE_HELP} (got True)"),
    (
        job(active_deadline="9" * 400 + "d"),
        f"active_deadline: {DEADLINE_HELP} (got '{'9' * 56}...)",
    ),
    (job(torchrun=2), "torchrun: only for PyTorch jobs"),
    (job(torchrun={"nproc_per_node": 2}), "torchrun: only for PyTorch jobs"),
    (job(framework="pytorch", torchrun=-1), "torchrun: a whole number of 0 or more (got -1)"),
    (
        job(framework="pytorch", torchrun="2"),
        "torchrun: true, processes per replica, or {nproc_per_node: N} (got '2')",
    ),
    (
        job(framework="pytorch", torchrun={"nproc_per_node": 0}),
        "torchrun.nproc_per_node: a whole number of 1 or more (got 0)",
    ),
    (
        job(framework="pytorch", torchrun={"procs": 2}),
        "torchrun: unknown field(s): procs; known: nproc_per_node",
    ),
]


@pytest.mark.parametrize("body, message", BAD_JOBS)
def test_a_bad_job_gets_one_line_naming_the_field(body, message) -> None:
    assert refusal(parse_job, body) == message


def test_the_first_thing_wrong_is_said_and_unknown_fields_come_before_the_rest() -> None:
    body = {"name": "Bad", "framework": "mxnet", "replicas": 0}
    assert refusal(parse_job, body).startswith("name:")
    assert refusal(parse_job, {**body, "colour": 1}).startswith("unknown field(s): colour;")


# -- sweeps -------------------------------------------------------------------------------

SWEEP = {
    "name": "lr",
    "job": {"script": "train.py"},
    "parameters": {"lr": [0.1, 0.01]},
    "objective": {"metric": "loss"},
}


def sweep(**fields) -> dict:
    return {**SWEEP, **fields}


def test_a_grid_sweep_runs_every_combination_in_order() -> None:
    body = sweep(
        parameters={"lr": [0.1, 0.01], "units": {"values": [64, 128]}, "flag": [True]},
        max_parallel=2,
        objective={"metric": "acc", "goal": "maximize"},
    )
    spec = parse_sweep(body, "PY")
    assert spec.trials == [
        {"lr": 0.1, "units": 64, "flag": True},
        {"lr": 0.1, "units": 128, "flag": True},
        {"lr": 0.01, "units": 64, "flag": True},
        {"lr": 0.01, "units": 128, "flag": True},
    ]
    assert (spec.algorithm, spec.max_parallel) == ("grid", 2)
    assert (spec.metric, spec.goal) == ("acc", "maximize")
    # what the client sent is what the sweep keeps and runs
    assert spec.job == body["job"] and spec.parameters == body["parameters"]
    trial = parse_job(trial_job(spec.job, "lr-2", spec.trials[1], spec.metric), "PY")
    assert trial.command == ("PY", "train.py", "--lr=0.1", "--units=128", "--flag=true")
    assert trial.metrics == ("acc",)  # read from its plain output lines too


def test_metrics_are_read_from_gpulab_lines_and_plain_lines_for_the_names_asked() -> None:
    from gpulab.hub.workloads.job_metrics import parse_metrics

    output = (
        b"Epoch 1/3 - loss: 0.5 - val_loss: 0.7\n"
        b"step=3 final_loss=0.0384 acc=0.9\n"
        b"gpulab-metric: accuracy=0.8 loss=0.4\n"
        b"  loss:.25e-1 and no_loss=1.0, myloss: 9, loss_total: 3, loss=nan\n"
    )
    assert parse_metrics(output, ["loss", "final_loss", "val_loss"]) == {
        "loss": 0.025,  # the last value wins; no_loss, myloss, loss_total and nan are not it
        "val_loss": 0.7,
        "final_loss": 0.0384,
        "accuracy": 0.8,
    }
    assert parse_metrics(output) == {"accuracy": 0.8, "loss": 0.4}  # gpulab's lines alone


def test_a_random_sweep_draws_within_the_bounds_and_its_seed_repeats_it() -> None:
    body = sweep(
        algorithm="random",
        trials=20,
        seed=7,
        parameters={
            "lr": {"min": 1e-5, "max": 1e-2, "scale": "log"},
            "layers": {"min": 1, "max": 4},
            "dropout": {"min": 0, "max": 1, "type": "float"},
            "units": [64, 128],
            "act": {"values": ["relu", "gelu"]},
        },
    )
    spec = parse_sweep(body)
    assert len(spec.trials) == 20 and spec.algorithm == "random"
    for t in spec.trials:
        assert 1e-5 <= t["lr"] <= 1e-2 and isinstance(t["lr"], float)
        assert t["layers"] in (1, 2, 3, 4)
        assert 0 <= t["dropout"] <= 1 and isinstance(t["dropout"], float)
        assert t["units"] in (64, 128) and t["act"] in ("relu", "gelu")
    assert parse_sweep(body).trials == spec.trials
    assert parse_sweep({**body, "seed": 8}).trials != spec.trials


SWEEP_NAME_HELP = "1-34 lower-case letters, digits and '-', starting with a letter"
PARAMETERS_HELP = "an object of name: [values] or name: {min, max}"
RANDOM = {"algorithm": "random", "trials": 2}

BAD_SWEEPS = [
    ("x", "a sweep is a JSON object"),
    (sweep(name="a" * 35), f"name: {SWEEP_NAME_HELP} (got '{'a' * 35}')"),
    (
        sweep(colour=1),
        "unknown field(s): colour; known: algorithm, job, max_parallel, metrics_events, "
        "metrics_format, name, objective, parameters, seed, trials",
    ),
    (sweep(algorithm="bayes"), "algorithm: grid or random (got 'bayes')"),
    (sweep(parameters={}), f"parameters: {PARAMETERS_HELP} (got {{}})"),
    (sweep(parameters=[]), f"parameters: {PARAMETERS_HELP} (got [])"),
    (
        sweep(parameters={"x-y": [1]}),
        "parameters: a parameter name: letters, digits and _, not starting with a digit "
        "(got 'x-y')",
    ),
    (sweep(parameters={"lr": []}), "parameters.lr: a list of at least one value (got [])"),
    (
        sweep(parameters={"lr": {"values": []}}),
        "parameters.lr.values: a list of at least one value (got [])",
    ),
    (
        sweep(parameters={"lr": 3}),
        "parameters.lr: a list of values, or {min, max[, scale, type]} (got 3)",
    ),
    (
        sweep(parameters={"lr": {"values": [1], "min": 0}}),
        "parameters.lr: unknown field(s): min; known: values",
    ),
    (
        sweep(parameters={"lr": {"min": 0, "max": 1}}),
        "parameters.lr: a grid needs a list of values",
    ),
    (
        sweep(parameters={"lr": list(range(300))}),
        "parameters: the grid has 300 combinations; at most 256",
    ),
    (
        sweep(parameters={"a": list(range(20)), "b": list(range(20))}),
        "parameters: the grid has 400 combinations; at most 256",
    ),
    (sweep(trials=3), "trials: a grid runs every combination; trials is for random"),
    (sweep(**RANDOM, parameters={"lr": {"min": 1, "max": 0}}), "parameters.lr: min is above max"),
    (
        sweep(**RANDOM, parameters={"lr": {"min": "a", "max": 0}}),
        "parameters.lr.min: a number (got 'a')",
    ),
    (
        sweep(**RANDOM, parameters={"lr": {"min": True, "max": 1}}),
        "parameters.lr.min: a number (got True)",
    ),
    (sweep(**RANDOM, parameters={"lr": {"min": 0}}), "parameters.lr.max: required"),
    (
        sweep(**RANDOM, parameters={"lr": {"min": 0, "max": 1, "scale": "exp"}}),
        "parameters.lr.scale: linear or log (got 'exp')",
    ),
    (
        sweep(**RANDOM, parameters={"lr": {"min": 0, "max": 1, "scale": "log"}}),
        "parameters.lr: a log scale needs min above 0",
    ),
    (
        sweep(**RANDOM, parameters={"lr": {"min": 0, "max": 1, "type": "str"}}),
        "parameters.lr.type: int or float (got 'str')",
    ),
    (
        sweep(**RANDOM, parameters={"lr": {"min": -1e308, "max": 1e308}}),
        "parameters.lr: min and max are too far apart",
    ),
    (sweep(algorithm="random"), "trials: required for random: a whole number from 1 to 256"),
    (sweep(algorithm="random", trials=0), "trials: a whole number from 1 to 256 (got 0)"),
    (sweep(algorithm="random", trials=257), "trials: a whole number from 1 to 256 (got 257)"),
    (sweep(seed="1"), "seed: a whole number (got '1')"),
    (sweep(seed=True), "seed: a whole number (got True)"),
    (sweep(max_parallel=0), "max_parallel: a whole number from 1 to 64 (got 0)"),
    (sweep(max_parallel=65), "max_parallel: a whole number from 1 to 64 (got 65)"),
    (
        sweep(objective={"metric": "loss", "goal": "lowest"}),
        "objective.goal: minimize or maximize (got 'lowest')",
    ),
    (
        sweep(objective={"metric": "loss", "by": 1}),
        "objective: unknown field(s): by; known: goal, metric",
    ),
    (
        sweep(objective={}),
        "objective.metric: required (a metric the trials report: a NAME=VALUE or NAME: VALUE "
        "line (or one metrics_format finds), a gpulab-metric: line, $GPULAB_METRICS_FILE, or "
        "a TensorBoard scalar under metrics_events)",
    ),
    (sweep(objective=None), "objective: an object (got None)"),
    # the job every trial runs
    (
        sweep(job={"name": "x", "command": "true"}),
        "job.name: trials are named after the sweep; leave the name out",
    ),
    (sweep(job="x"), "job: the job every trial runs, as a job spec without a name (got 'x')"),
    (
        sweep(job={"command": "true", "framework": "caffe"}),
        "job.framework: one of tensorflow, pytorch, plain (got 'caffe')",
    ),
    (
        sweep(job={"script": "t.py", "colour": 1}),
        f"job: unknown field(s): colour; known: {JOB_FIELDS.replace(' name,', '')}",
    ),
    (
        sweep(job={"script": "t.py", "replicas": {"worker": {"gpus": "1"}}}),
        "job.replicas.worker.gpus: a whole number from 0 to 64 (got '1')",
    ),
    (sweep(job={}), "job.command: give the job a command (or script / module / notebook)"),
    (  # every trial gets its parameters as arguments: they need the job's command
        sweep(job={"replicas": {"worker": {"command": "x"}}}),
        "job.args: give them with a command, script, module or notebook",
    ),
]


@pytest.mark.parametrize("body, message", BAD_SWEEPS)
def test_a_bad_sweep_gets_one_line_naming_the_field(body, message) -> None:
    assert refusal(parse_sweep, body) == message


# -- models -------------------------------------------------------------------------------

MODEL = {"name": "m", "base_path": "models/m"}


def model(**fields) -> dict:
    return {**MODEL, **fields}


@pytest.mark.parametrize(
    "body, spec",
    [
        (MODEL, ModelSpec("m", "models/m")),
        (
            model(
                base_path="~/models/m/",
                versions=[3, 1, 1],
                labels={"stable": 1, "canary": 3},
                replicas=4,
                gpus=16,
                access="group:team",
            ),
            ModelSpec(
                name="m",
                base_path="models/m",
                policy="specific",
                versions=(1, 3),
                labels={"stable": 1, "canary": 3},
                replicas=4,
                gpus=16,
                access="group:team",
            ),
        ),
        (model(versions=7), ModelSpec("m", "models/m", "specific", versions=(7,))),
        (
            model(versions="all", access="public"),
            ModelSpec("m", "models/m", "all", access="public"),
        ),
        (
            model(latest=100, labels={"a": 2**62}),
            ModelSpec("m", "models/m", latest=100, labels={"a": 2**62}),
        ),
        (model(base_path="s3://bucket/prefix/"), ModelSpec("m", "s3://bucket/prefix")),
        (model(base_path="s3://bucket"), ModelSpec("m", "s3://bucket")),
        # TF Serving's own names
        (model(name="half_plus_two"), ModelSpec("half_plus_two", "models/m")),
        (model(name="ResNet-50.v2"), ModelSpec("ResNet-50.v2", "models/m")),
    ],
)
def test_a_good_deployment_becomes_its_spec(body, spec) -> None:
    assert parse_model(body, 4) == spec


VERSIONS_HELP = "'latest', 'all', or a list of version numbers"
ACCESS_HELP = "private, public (anyone with the model's token) or group:NAME"
BASE_PATH_HELP = "the folder holding the model's numbered version folders"

BAD_MODELS = [
    ("x", "a model deployment is a JSON object"),
    (
        model(colour="red"),
        "unknown field(s): colour; known: access, base_path, batching, gpus, labels, "
        "latest, name, replicas, versions",
    ),
    (model(name="Bad Name"), f"name: {MODEL_NAME_HELP} (got 'Bad Name')"),
    (model(name="_x"), f"name: {MODEL_NAME_HELP} (got '_x')"),
    (model(name="a" * 41), f"name: {MODEL_NAME_HELP} (got '{'a' * 41}')"),
    ({"base_path": "m"}, f"name: required (unique per user: {MODEL_NAME_HELP})"),
    (
        {"name": "m"},
        f"base_path: required (relative to the home, or s3://BUCKET/PREFIX: {BASE_PATH_HELP})",
    ),
    (model(base_path="  "), f"base_path: {BASE_PATH_HELP} (got '  ')"),
    (model(base_path=5), f"base_path: {BASE_PATH_HELP} (got 5)"),
    (model(base_path="s3://"), "base_path: 's3://' names no bucket (s3://BUCKET/PREFIX)"),
    (model(base_path="../../etc"), "base_path: '../../etc' is outside your home"),
    (model(base_path="/etc"), "base_path: '/etc' is outside your home; give a path relative to it"),
    (model(base_path="."), "base_path: give the model's folder, not the whole home"),
    (model(versions=[]), f"versions: {VERSIONS_HELP} (got [])"),
    (model(versions=[True]), f"versions: {VERSIONS_HELP} (got [True])"),
    (model(versions=[-1]), f"versions: {VERSIONS_HELP} (got [-1])"),
    (model(versions="some"), f"versions: {VERSIONS_HELP} (got 'some')"),
    (model(versions=[2**62 + 1]), f"versions: {VERSIONS_HELP} (got [4611686018427387905])"),
    (
        model(versions=[1], labels={"stable": 2}),
        "labels.stable: version 2 is not among the versions served (1)",
    ),
    (
        model(labels={"9x": 1}),
        "labels: a label: a letter, then letters, digits, _ or - (got '9x')",
    ),
    (model(labels={"x": "1"}), "labels.x: a whole number from 0 to 4611686018427387904 (got '1')"),
    (model(labels=[]), "labels: an object (got [])"),
    (model(latest=0), "latest: a whole number from 1 to 100 (got 0)"),
    (model(latest=101), "latest: a whole number from 1 to 100 (got 101)"),
    (model(replicas=0), "replicas: a whole number from 1 to 4 (got 0)"),
    (model(replicas=5), "replicas: a whole number from 1 to 4 (got 5)"),
    (model(replicas="2"), "replicas: a whole number from 1 to 4 (got '2')"),
    (model(gpus=-1), "gpus: a whole number from 0 to 16 (got -1)"),
    (model(gpus=17), "gpus: a whole number from 0 to 16 (got 17)"),
    (model(gpus="1"), "gpus: a whole number from 0 to 16 (got '1')"),
    (model(gpus=True), "gpus: a whole number from 0 to 16 (got True)"),
    (model(gpus=1.0), "gpus: a whole number from 0 to 16 (got 1.0)"),
    (model(access="world"), f"access: {ACCESS_HELP} (got 'world')"),
    (model(access="group:"), f"access: {ACCESS_HELP} (got 'group:')"),
    (model(access=1), f"access: {ACCESS_HELP} (got 1)"),
]


@pytest.mark.parametrize("body, message", BAD_MODELS)
def test_a_bad_deployment_gets_one_line_naming_the_field(body, message) -> None:
    assert refusal(parse_model, body, 4) == message


def test_the_hubs_max_replicas_bounds_a_deployment() -> None:
    assert parse_model(model(replicas=64), 64).replicas == 64
    assert refusal(parse_model, model(replicas=2), 1) == (
        "replicas: a whole number from 1 to 1 (got 2)"
    )


DEPLOYED = ModelSpec("m", "models/m", "specific", 1, (1, 2), {"stable": 1}, 2, 1, "private")


@pytest.mark.parametrize(
    "changes, fields",
    [
        ({}, {}),
        ({"versions": "latest", "latest": 2}, {"policy": "latest", "versions": (), "latest": 2}),
        (
            {"versions": [3, 2], "labels": {"stable": 3}},
            {"versions": (2, 3), "labels": {"stable": 3}},
        ),
        ({"versions": [5]}, {"versions": (5,)}),  # the labels are not checked again
        ({"replicas": 4, "access": "public"}, {"replicas": 4, "access": "public"}),
    ],
)
def test_changes_apply_to_a_deployed_model(changes, fields) -> None:
    expected = ModelSpec(**{**DEPLOYED.__dict__, **fields})
    assert parse_changes(DEPLOYED, changes, 4) == expected


@pytest.mark.parametrize(
    "changes, message",
    [
        ([], "changes to a model are a JSON object"),
        ({"name": "n"}, "name: cannot change on a deployed model; undeploy it and deploy again"),
        (
            {"gpus": 1, "base_path": "x"},
            "base_path, gpus: cannot change on a deployed model; undeploy it and deploy again",
        ),
        (
            {"colour": 1},
            "unknown field(s): colour; known: access, labels, latest, replicas, versions",
        ),
        (
            {"labels": {"stable": 5}},
            "labels.stable: version 5 is not among the versions served (1, 2)",
        ),
        ({"replicas": 9}, "replicas: a whole number from 1 to 4 (got 9)"),
        ({"latest": "2"}, "latest: a whole number from 1 to 100 (got '2')"),
        ({"latest": None}, "latest: a whole number from 1 to 100 (got None)"),
        ({"access": None}, f"access: {ACCESS_HELP} (got None)"),
    ],
)
def test_bad_changes_get_one_line_naming_the_field(changes, message) -> None:
    assert refusal(parse_changes, DEPLOYED, changes, 4) == message


# -- anything at all ----------------------------------------------------------------------

KEYS = [
    *("name", "framework", "command", "script", "args", "env", "replicas", "torchrun"),
    *("active_deadline", "worker", "chief", "count", "gpus", "job", "parameters", "lr"),
    *("min", "max", "values", "scale", "algorithm", "trials", "objective", "metric"),
    *("base_path", "versions", "labels", "access", "latest"),
]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63) + 1, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | st.sampled_from(["true", "python t.py", "2h", "random", "latest", "group:x", "pytorch"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6))
def test_any_json_object_is_a_spec_or_one_line_about_it(body) -> None:
    for parse, args in [
        (parse_job, ({"name": "a", **body},)),
        (parse_sweep, ({"name": "s", **body},)),
        (parse_model, ({"name": "m", "base_path": "p", **body}, 4)),
        (parse_changes, (DEPLOYED, {k: v for k, v in body.items() if k not in MODEL}, 4)),
    ]:
        try:
            parse(*args)
        except SpecError:
            refusal(parse, *args)  # one line, in words
