"""TF Serving's ``--enable_batching`` (with its ``--batching_parameters_file``) and its
Prometheus endpoint (``--monitoring_config_file``), on gpulab's model server: a real
process serving a real SavedModel, called by REST and by the official gRPC stubs at once."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from hubfixture import export_line, free_port, wait_for

TOKEN = "batching-token"
BATCHING = """
max_batch_size { value: 8 }
batch_timeout_micros { value: 1000000 }
num_batch_threads { value: 1 }
allowed_batch_sizes: 4
allowed_batch_sizes: 8
"""
MONITORING = 'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }'
SERVER = str(Path(sys.prefix) / "bin" / "gpulab-model-server")
ENV = {**os.environ, "GPULAB_SERVING_TOKEN": TOKEN, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("line")
    export_line(base / "1", a=2.0, b=1.0)
    (base.parent / "batching.txt").write_text(BATCHING)
    (base.parent / "monitoring.txt").write_text(MONITORING)
    grpc_port, rest_port = free_port(), free_port()
    args = [
        SERVER, "--model_name", "line", "--model_base_path", str(base),
        "--port", str(grpc_port), "--rest_api_port", str(rest_port),
        "--bind_address", "127.0.0.1",
        "--enable_batching", "--batching_parameters_file", str(base.parent / "batching.txt"),
        "--monitoring_config_file", str(base.parent / "monitoring.txt"),
    ]  # fmt: skip
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: status(rest_port)[0] == 200, 90, "the model server")
        yield {"grpc": f"127.0.0.1:{grpc_port}", "rest_port": rest_port}
    finally:
        proc.terminate()
        proc.wait(30)


def request(port: int, method: str, path: str, body=None, token: str | None = TOKEN):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def status(port: int) -> tuple[int, bytes]:
    try:
        code, _, body = request(port, "GET", "/v1/models/line")
    except OSError:
        return 0, b""
    return code, body


def rest_predict(port: int, xs: list[float]) -> tuple[int, dict]:
    code, _, body = request(port, "POST", "/v1/models/line:predict", {"instances": xs})
    return code, json.loads(body)


def grpc_predict(address: str, xs: list[float]) -> list[float]:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "line"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(xs, np.float32)))
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = stub.Predict(req, timeout=60, metadata=[("authorization", f"Bearer {TOKEN}")])
    return tf.make_ndarray(answer.outputs["y"]).tolist()


def metrics(port: int) -> dict[str, dict[tuple, float]]:
    """The Prometheus endpoint read by Prometheus' own parser: samples by name and labels."""
    code, kind, body = request(port, "GET", "/monitoring/prometheus/metrics")
    assert code == 200 and kind.startswith("text/plain"), (code, kind, body[:200])
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            # the parser names a counter's samples <name>_total; TF Serving writes <name>
            name = family.name if family.type == "counter" else sample.name
            out.setdefault(name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_requests_that_arrive_together_run_as_one_model_call(server) -> None:
    port = server["rest_port"]
    before = metrics(port).get(":tensorflow:core:graph_runs", {}).get((), 0)
    answers: dict[int, list[float]] = {}
    start = threading.Barrier(8)

    def client(i: int) -> None:
        xs = [float(i), i + 0.5]  # two rows each: four requests fill a batch of eight
        start.wait()
        if i % 2:
            answers[i] = grpc_predict(server["grpc"], xs)
        else:
            code, body = rest_predict(port, xs)
            answers[i] = body["predictions"] if code == 200 else body

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # each client got its own rows back, whatever batch they went in
    assert answers == {i: [2 * i + 1.0, 2 * i + 2.0] for i in range(8)}
    seen = metrics(port)
    runs = seen[":tensorflow:core:graph_runs"][()] - before
    assert 1 <= runs < 8, f"{runs} model calls for 8 requests: they were not batched"
    waited = seen[":tensorflow:serving:batching_session:queuing_latency_count"]
    assert waited[(("thread_pool_name", "batch_threads"),)] >= 8


def test_a_lone_request_is_padded_to_an_allowed_size_and_answered_its_own_rows(server) -> None:
    # three rows wait out the batch timeout, then run padded to four
    assert rest_predict(server["rest_port"], [1.0, 2.0, 3.0]) == (
        200,
        {"predictions": [3.0, 5.0, 7.0]},
    )


def test_a_request_larger_than_a_batch_is_refused_as_tf_serving_does(server) -> None:
    code, body = rest_predict(server["rest_port"], [1.0] * 9)
    assert code == 400
    assert body == {"error": "Task size 9 is larger than maximum input batch size 8"}


def test_the_prometheus_endpoint_has_tf_servings_metrics_and_needs_the_token(server) -> None:
    port = server["rest_port"]
    code, _, body = request(port, "GET", "/monitoring/prometheus/metrics", token=None)
    assert code == 401 and b"a valid model token is needed" in body
    assert rest_predict(port, [1.0]) == (200, {"predictions": [3.0]})
    assert rest_predict(port, [1.0] * 9)[0] == 400
    seen = metrics(port)
    counts = seen[":tensorflow:serving:request_count"]
    assert counts[(("model_name", "line"), ("status", "OK"))] >= 1
    assert counts[(("model_name", "line"), ("status", "INVALID_ARGUMENT"))] >= 1
    rest_latency = (("API", "Predict"), ("entrypoint", "REST"), ("model_name", "line"))
    assert seen[":tensorflow:serving:request_latency_count"][rest_latency] >= 2
    inf = (*rest_latency[:2], ("le", "+Inf"), rest_latency[2])
    assert seen[":tensorflow:serving:request_latency_bucket"][inf] >= 2
    loads = seen[":tensorflow:cc:saved_model:load_attempt_count"]
    assert [v for k, v in loads.items() if ("status", "success") in k] == [1.0]


def test_a_batching_file_tf_serving_would_refuse_stops_the_server_with_a_message(tmp_path) -> None:
    export_line(tmp_path / "m" / "1")
    (tmp_path / "b.txt").write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4")
    done = subprocess.run(
        [SERVER, "--model_name", "m", "--model_base_path", str(tmp_path / "m"), "--port", "0",
         "--enable_batching", "--batching_parameters_file", str(tmp_path / "b.txt")],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "the last allowed_batch_sizes entry must equal max_batch_size (4 != 8)" in done.stderr
    (tmp_path / "mon.txt").write_text("prometheus_config { enabled: true }")
    done = subprocess.run(
        [SERVER, "--model_name", "m", "--model_base_path", str(tmp_path / "m"), "--port", "0",
         "--monitoring_config_file", str(tmp_path / "mon.txt")],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "the monitoring config is not a MonitoringConfig" in done.stderr
    assert "Traceback" not in done.stderr
