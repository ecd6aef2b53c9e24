"""The request bodies of the OpenAPI document (hub/api/openapi.yaml) are their models':
the committed schemas are what ``python -m gpulab.hub.api.openapi`` makes now, each
operation's body names its model's schema, and the schemas accept and refuse what the
hub does, but for the rules a schema cannot say (which the hub still checks)."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from gpulab.hub.api import openapi
from gpulab.hub.workloads.bodies import SpecError
from gpulab.hub.workloads.model_spec import ModelSpec, parse_changes, parse_model
from gpulab.hub.workloads.spec import parse_job
from gpulab.hub.workloads.sweeps import parse_sweep

DOC = yaml.safe_load(openapi.DOCUMENT.read_text())
DEPLOYED = ModelSpec("m", "models/m")
PARSERS = {
    "JobBody": lambda body: parse_job(body),
    "SweepBody": lambda body: parse_sweep(body),
    "ModelBody": lambda body: parse_model(body, 4),
    "ModelChanges": lambda body: parse_changes(DEPLOYED, body, 4),
}


def test_the_request_bodies_in_the_document_are_current() -> None:
    stale = openapi.stale_document()
    assert stale == [], f"{openapi.DOCUMENT.name}: {', '.join(stale)}; run: {openapi.COMMAND}"
    assert openapi.main(["--check"]) == 0


def test_every_body_route_names_its_models_schema() -> None:
    for (method, path), model in openapi.BODIES.items():
        body = DOC["paths"][path][method]["requestBody"]
        assert body["required"] is True, (method, path)
        schema = body["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model.__name__}"}, (method, path)


def test_check_names_what_is_stale_and_write_makes_it_current(tmp_path) -> None:
    text = openapi.DOCUMENT.read_text()
    doc = tmp_path / "openapi.yaml"
    # a schema edited by hand inside the generated block (or a model changed without it)
    doc.write_text(text.replace(openapi.END, "    Extra: {type: object}\n" + openapi.END))
    assert openapi.stale_document(doc) == ["the generated schemas"]
    assert openapi.stale_document(doc, write=True) == ["the generated schemas"]
    assert doc.read_text() == text and openapi.stale_document(doc) == []
    # what the generator does not write is left for a hand to fix
    sweeps = 'schema: {$ref: "#/components/schemas/SweepBody"}'
    assert text.count(sweeps) == 1
    doc.write_text(
        text.replace(sweeps, "schema: {type: object}").replace(
            "  schemas:\n", "  schemas:\n    JobBody: {type: object}\n"
        )
    )
    assert openapi.stale_document(doc, write=True) == [
        "JobBody: a schema by hand and a generated one",
        "POST /gpulab/sweeps: its request body is not SweepBody",
    ]


def schema_errors(name: str, body: object) -> list[str]:
    schema = {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)
    ]


def hub_error(name: str, body: object) -> str | None:
    try:
        PARSERS[name](body)
    except SpecError as e:
        return str(e)
    return None


JOB = {"name": "a", "command": "true"}
SWEEP = {"name": "s", "job": {"script": "t.py"}, "parameters": {"lr": [1]}, "objective": {"metric": "l"}}  # fmt: skip
MODEL = {"name": "m", "base_path": "models/m"}

# (schema, body, whether the hub takes it): the schema must agree
AGREEMENT = [
    ("JobBody", JOB, True),
    ("JobBody", {**JOB, "command": ["python", "t.py"], "args": ["--x", 1, 0.5]}, True),
    ("JobBody", {"name": "a", "script": "t.py", "workdir": "w", "env": {"A": 1}}, True),
    ("JobBody", {"name": "a", "module": "m.n", "active_deadline": "2h"}, True),
    ("JobBody", {**JOB, "replicas": 3, "success_policy": "all_workers"}, True),
    ("JobBody", {**JOB, "framework": "pytorch", "torchrun": {"nproc_per_node": 2}}, True),
    ("JobBody", {**JOB, "framework": "pytorch", "torchrun": True}, True),
    (
        "JobBody",
        {
            **JOB,
            "framework": "tensorflow",
            "replicas": {"chief": 1, "worker": {"count": 2, "gpus": 1}, "ps": {"command": "x"}},
        },
        True,
    ),
    ("JobBody", {"command": "true"}, False),
    ("JobBody", {**JOB, "name": "Bad_Name"}, False),
    ("JobBody", {**JOB, "colour": "red"}, False),
    ("JobBody", {**JOB, "framework": "mxnet"}, False),
    ("JobBody", {**JOB, "command": 5}, False),
    ("JobBody", {**JOB, "command": [1]}, False),
    ("JobBody", {**JOB, "args": [True]}, False),
    ("JobBody", {**JOB, "module": "bad mod"}, False),
    ("JobBody", {**JOB, "replicas": 0}, False),
    ("JobBody", {**JOB, "replicas": True}, False),
    ("JobBody", {**JOB, "replicas": {}}, False),
    ("JobBody", {**JOB, "replicas": {"worker": {"gpus": "1"}}}, False),
    ("JobBody", {**JOB, "replicas": {"worker": {"gpus": True}}}, False),
    ("JobBody", {**JOB, "replicas": {"worker": {"gpus": 65}}}, False),
    ("JobBody", {**JOB, "replicas": {"worker": {"colour": 1}}}, False),
    ("JobBody", {**JOB, "replicas": {"worker": {"restart_policy": "Always"}}}, False),
    ("JobBody", {**JOB, "replicas": {"master": 1}}, False),
    ("JobBody", {**JOB, "env": {"TF_CONFIG": "{}"}}, False),
    ("JobBody", {**JOB, "env": {"x y": "1"}}, False),
    ("JobBody", {**JOB, "env": {"A": True}}, False),
    ("JobBody", {**JOB, "active_deadline": 0}, False),
    ("JobBody", {**JOB, "active_deadline": "soon"}, False),
    ("JobBody", {**JOB, "torchrun": -1}, False),
    ("JobBody", {**JOB, "torchrun": {"procs": 1}}, False),
    ("JobBody", {**JOB, "image": 5}, False),
    ("SweepBody", SWEEP, True),
    (
        "SweepBody",
        {
            **SWEEP,
            "algorithm": "random",
            "trials": 3,
            "seed": 1,
            "max_parallel": 2,
            "parameters": {"a": {"min": 0, "max": 1, "scale": "linear"}, "b": {"values": [1]}},
            "objective": {"metric": "acc", "goal": "maximize"},
        },
        True,
    ),
    ("SweepBody", {**SWEEP, "name": "a" * 35}, False),
    ("SweepBody", {**SWEEP, "job": {"name": "x", "command": "true"}}, False),
    ("SweepBody", {**SWEEP, "job": {"script": "t.py", "replicas": 0}}, False),
    ("SweepBody", {**SWEEP, "parameters": {}}, False),
    ("SweepBody", {**SWEEP, "parameters": {"x-y": [1]}}, False),
    ("SweepBody", {**SWEEP, "parameters": {"lr": []}}, False),
    ("SweepBody", {**SWEEP, "parameters": {"lr": 3}}, False),
    ("SweepBody", {**SWEEP, "algorithm": "bayes"}, False),
    ("SweepBody", {**SWEEP, "seed": "1"}, False),
    ("SweepBody", {**SWEEP, "max_parallel": 65}, False),
    ("SweepBody", {**SWEEP, "objective": {}}, False),
    ("SweepBody", {**SWEEP, "objective": {"metric": "l", "goal": "lowest"}}, False),
    ("SweepBody", {k: v for k, v in SWEEP.items() if k != "objective"}, False),
    ("ModelBody", MODEL, True),
    (
        "ModelBody",
        {
            **MODEL,
            "versions": [1, 2],
            "latest": 3,
            "labels": {"stable": 1},
            "replicas": 4,
            "gpus": 16,
            "access": "group:team",
        },
        True,
    ),
    ("ModelBody", {**MODEL, "versions": 7, "base_path": "s3://b/p"}, True),
    ("ModelBody", {"name": "m"}, False),
    ("ModelBody", {**MODEL, "base_path": " "}, False),
    ("ModelBody", {**MODEL, "colour": 1}, False),
    ("ModelBody", {**MODEL, "versions": []}, False),
    ("ModelBody", {**MODEL, "versions": "some"}, False),
    ("ModelBody", {**MODEL, "labels": {"9x": 1}}, False),
    ("ModelBody", {**MODEL, "labels": {"x": -1}}, False),
    ("ModelBody", {**MODEL, "latest": 0}, False),
    ("ModelBody", {**MODEL, "gpus": 17}, False),
    ("ModelBody", {**MODEL, "gpus": "1"}, False),
    ("ModelBody", {**MODEL, "replicas": 65}, False),
    ("ModelBody", {**MODEL, "access": "world"}, False),
    ("ModelChanges", {}, True),
    ("ModelChanges", {"versions": "all", "latest": 2, "replicas": 2, "access": "public"}, True),
    ("ModelChanges", {"name": "n"}, False),
    ("ModelChanges", {"gpus": 1}, False),
    ("ModelChanges", {"latest": None}, False),
    ("ModelChanges", {"labels": {"x": "1"}}, False),
]


@pytest.mark.parametrize("name, body, valid", AGREEMENT)
def test_the_schema_agrees_with_the_hub(name, body, valid) -> None:
    refused = hub_error(name, body)
    assert (refused is None) == valid, refused
    errors = schema_errors(name, body)
    assert (errors == []) == valid, errors


# What only the hub checks: rules across fields, paths on the home, the hub's settings.
BEYOND_THE_SCHEMA = [
    ("JobBody", {**JOB, "workdir": "../x"}, "outside your home"),
    ("JobBody", {**JOB, "script": "t.py"}, "give one of command, script, module or notebook"),
    ("JobBody", {"name": "a", "args": ["x"]}, "args: give them with a command"),
    ("JobBody", {"name": "a"}, "command: give the job a command"),
    (
        "JobBody",
        {**JOB, "replicas": {"worker": 40, "ps": 30}, "framework": "tensorflow"},
        "at most 64",
    ),  # fmt: skip
    ("JobBody", {**JOB, "replicas": {"ps": 1}}, "not a role of a plain job"),
    ("JobBody", {**JOB, "framework": "tensorflow", "replicas": {"chief": 2}}, "one chief"),
    ("JobBody", {**JOB, "torchrun": 2}, "only for PyTorch jobs"),
    ("JobBody", {**JOB, "active_deadline": "367d"}, "at most 366 days"),
    ("SweepBody", {**SWEEP, "parameters": {"lr": {"min": 0, "max": 1}}}, "a grid needs a list"),
    ("SweepBody", {**SWEEP, "parameters": {"lr": list(range(300))}}, "at most 256"),
    ("SweepBody", {**SWEEP, "algorithm": "random"}, "trials: required for random"),
    ("SweepBody", {**SWEEP, "trials": 2}, "trials is for random"),
    ("SweepBody", {**SWEEP, "job": {}}, "job.command: give the job a command"),
    ("ModelBody", {**MODEL, "base_path": "/etc"}, "outside your home"),
    ("ModelBody", {**MODEL, "versions": [1], "labels": {"a": 2}}, "not among the versions"),
    ("ModelBody", {**MODEL, "replicas": 5}, "replicas: a whole number from 1 to 4"),
    ("ModelChanges", {"replicas": 5}, "replicas: a whole number from 1 to 4"),
]


@pytest.mark.parametrize("name, body, words", BEYOND_THE_SCHEMA)
def test_the_hub_checks_what_the_schema_cannot_say(name, body, words) -> None:
    assert schema_errors(name, body) == []
    assert words in (hub_error(name, body) or "")
