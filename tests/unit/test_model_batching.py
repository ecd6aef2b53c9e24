"""A deployment's ``batching`` (TF Serving's batching parameters, checked as TF Serving
checks them), the files the hub writes for its replicas, and the metrics of its
replicas answered as one Prometheus exposition."""

from __future__ import annotations

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gpulab.hub.api import openapi
from gpulab.hub.workloads.bodies import SpecError
from gpulab.hub.workloads.model_spec import (
    ModelSpec,
    batching_config,
    monitoring_config,
    parse_changes,
    parse_model,
)
from gpulab.hub.workloads.replica_metrics import labelled, merged
from gpulab.serving.batching import BatchingParameters
from gpulab.serving.monitoring import Metrics, read_config

MODEL = {"name": "m", "base_path": "models/m"}
DOC = yaml.safe_load(openapi.DOCUMENT.read_text())


def deployed(batching) -> ModelSpec:
    return parse_model({**MODEL, "batching": batching}, 4)


def refusal(batching) -> str:
    with pytest.raises(SpecError) as e:
        deployed(batching)
    return str(e.value)


def schema_errors(body: dict) -> list[str]:
    schema = {"$ref": "#/components/schemas/ModelBody", "components": DOC["components"]}
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(body)]


@pytest.mark.parametrize(
    "batching, params, shown",
    [
        (False, None, False),
        (True, {}, True),
        ({}, {}, True),
        (
            {"max_batch_size": 8, "batch_timeout_micros": 500000, "num_batch_threads": 1},
            {"max_batch_size": 8, "batch_timeout_micros": 500000, "num_batch_threads": 1},
            {"max_batch_size": 8, "batch_timeout_micros": 500000, "num_batch_threads": 1},
        ),
        (
            {"max_batch_size": 8, "allowed_batch_sizes": [2, 4, 8], "max_enqueued_batches": 100},
            {"max_batch_size": 8, "allowed_batch_sizes": [2, 4, 8], "max_enqueued_batches": 100},
            {"max_batch_size": 8, "allowed_batch_sizes": [2, 4, 8], "max_enqueued_batches": 100},
        ),
    ],
)
def test_batching_is_kept_with_the_deployment_and_shown_as_it_was_asked(batching, params, shown):
    spec = deployed(batching)
    assert spec.batching == params
    record = spec.as_json()
    assert record["batching"] == shown
    assert ModelSpec.from_json(record) == spec  # as the store keeps it
    assert schema_errors({**MODEL, "batching": batching}) == []
    # what the hub shows is a body it takes, for the same deployment
    assert deployed(record["batching"]) == spec


def test_a_deployment_made_before_batching_has_none():
    record = ModelSpec("m", "models/m").as_json()
    del record["batching"]
    assert ModelSpec.from_json(record).batching is None


HELP = (
    "true (TF Serving's defaults), false, or an object of batching parameters: "
    "max_batch_size, batch_timeout_micros, num_batch_threads, max_enqueued_batches, "
    "allowed_batch_sizes"
)


@pytest.mark.parametrize(
    "batching, message, in_schema",
    [
        ("yes", f"batching: {HELP} (got 'yes')", False),
        (None, f"batching: {HELP} (got None)", False),
        (1, f"batching: {HELP} (got 1)", False),
        (
            {"max_batch_size": 0},
            "batching.max_batch_size: a whole number from 1 to 4096 (got 0)",
            False,
        ),
        (
            {"max_batch_size": 4097},
            "batching.max_batch_size: a whole number from 1 to 4096 (got 4097)",
            False,
        ),
        (
            {"num_batch_threads": 65},
            "batching.num_batch_threads: a whole number from 1 to 64 (got 65)",
            False,
        ),
        (
            {"num_batch_threads": True},
            "batching.num_batch_threads: a whole number from 1 to 64 (got True)",
            False,
        ),
        (
            {"batch_timeout_micros": -1},
            "batching.batch_timeout_micros: a whole number from 0 to 10000000 (got -1)",
            False,
        ),
        (
            {"max_enqueued_batches": "10"},
            "batching.max_enqueued_batches: a whole number from 1 to 10000 (got '10')",
            False,
        ),
        (
            {"allowed_batch_sizes": []},
            "batching.allowed_batch_sizes: a list of batch sizes (got [])",
            False,
        ),
        (
            {"thread_pool_name": "x"},
            "batching: unknown field(s): thread_pool_name; known: allowed_batch_sizes, "
            "batch_timeout_micros, max_batch_size, max_enqueued_batches, num_batch_threads",
            False,
        ),
        # what only TF Serving's own checks (BatchingParameters.check) say
        (
            {"max_batch_size": 8, "allowed_batch_sizes": [4, 2, 8]},
            "batching.allowed_batch_sizes: allowed_batch_sizes must be positive and increasing",
            True,
        ),
        (
            {"allowed_batch_sizes": [4, 8]},
            "batching.allowed_batch_sizes: the last allowed_batch_sizes entry must equal "
            "max_batch_size (8 != 1000)",
            True,
        ),
    ],
)
def test_bad_batching_gets_one_line_naming_the_field(batching, message, in_schema):
    assert refusal(batching) == message
    assert (schema_errors({**MODEL, "batching": batching}) == []) == in_schema


def test_batching_cannot_change_on_a_deployed_model():
    spec = deployed({"max_batch_size": 8})
    for change in ({"batching": False}, {"batching": {"max_batch_size": 16}}):
        with pytest.raises(SpecError) as e:
            parse_changes(spec, change, 4)
        assert str(e.value) == (
            "batching: cannot change on a deployed model; undeploy it and deploy again"
        )
    assert parse_changes(spec, {"replicas": 2}, 4).batching == {"max_batch_size": 8}


def test_the_files_the_replicas_read_are_tf_servings_own():
    spec = deployed(
        {"max_batch_size": 8, "batch_timeout_micros": 500, "allowed_batch_sizes": [4, 8]}
    )
    params = BatchingParameters.from_text(batching_config(spec))
    assert params.max_batch_size == 8 and params.batch_timeout_micros == 500
    assert params.allowed_batch_sizes == (4, 8)
    assert params.max_enqueued_batches == BatchingParameters().max_enqueued_batches
    assert BatchingParameters.from_text(batching_config(deployed(True))) == BatchingParameters()
    assert batching_config(deployed(False)) is None
    prometheus = read_config(monitoring_config())
    assert prometheus.enable and prometheus.path == "/monitoring/prometheus/metrics"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus' own parser's reading: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = family.name if family.type == "counter" else sample.name
            out[(name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def replica_text(calls: int) -> str:
    metrics = Metrics()
    for _ in range(calls):
        metrics.model_call("line", "predict", 0.001)
        metrics.request("line", "predict", "REST", "OK", 0.002)
    return metrics.exposition().decode()


def test_replicas_metrics_are_one_exposition_labelled_by_replica():
    text = merged({0: replica_text(3), 2: replica_text(5)}, {1: "connection\nrefused"})
    assert text.splitlines()[0] == "# replica 1 did not answer: connection refused"
    got = samples(text)
    assert got[(":tensorflow:core:graph_runs", (("replica", "0"),))] == 3
    assert got[(":tensorflow:core:graph_runs", (("replica", "2"),))] == 5
    count = ":tensorflow:serving:request_count"
    assert got[(count, (("model_name", "line"), ("replica", "2"), ("status", "OK")))] == 5
    assert not [k for k in got if ("replica", "1") in k[1]]
    # each family's HELP and TYPE once, its samples of every replica under them
    assert text.count(f"# TYPE {count} counter") == 1
    latency = ":tensorflow:serving:request_latency"
    lines = text.splitlines()
    first = lines.index(f"# TYPE {latency} histogram")
    block = lines[first + 1 : first + 1 + 2 * 36]
    assert all(line.startswith(latency) for line in block)
    assert got[(latency + "_count", (("API", "predict"), ("entrypoint", "REST"),
                                     ("model_name", "line"), ("replica", "0")))] == 3  # fmt: skip


def test_what_a_replica_sends_is_passed_on_only_as_samples_of_its_own():
    hostile = (
        replica_text(1)
        + 'forged{replica="7",a="b"} 9\n'
        + "not a sample line at all\n"
        + "# TYPE bad name\n"
        + "# some comment\n"
    )
    text = merged({0: hostile}, {})
    got = samples(text)
    assert ("forged", (("a", "b"), ("replica", "7"))) not in got
    assert not [k for k in got if k[0] == "forged"]
    assert "not a sample" not in text and "some comment" not in text
    assert labelled("x 1", 3) == 'x{replica="3"} 1'
    assert labelled('x{a="b"} 1 1700000000', 0) == 'x{replica="0",a="b"} 1 1700000000'
    assert labelled("# HELP x y", 0) is None
