"""gpulab's model server (a real process, a real SavedModel): its token guards its TCP
ports, where any local process could call; its unix sockets, which only the model's
owner (and root) can connect to, answer TF Serving's own clients unchanged."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from hubfixture import export_line, free_port, wait_for

TOKEN = "s3cret-model-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("line")
    export_line(base / "1", a=2.0, b=1.0)
    grpc_port, rest_port = free_port(), free_port()
    sockets = tmp_path_factory.mktemp("sockets")
    args = [
        str(Path(sys.prefix) / "bin" / "gpulab-model-server"),
        "--model_name", "line", "--model_base_path", str(base),
        "--port", str(grpc_port), "--rest_api_port", str(rest_port),
        "--bind_address", "127.0.0.1",
        "--grpc_socket_path", str(sockets / "line.grpc"),
        "--rest_api_socket_path", str(sockets / "line.rest"),
    ]  # fmt: skip
    env = {**os.environ, "GPULAB_SERVING_TOKEN": TOKEN, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (sockets / "line.rest").exists(), 60, "the model server's sockets")
        yield {
            "tcp": f"127.0.0.1:{grpc_port}",
            "unix": f"unix:{sockets / 'line.grpc'}",
            "rest_port": rest_port,
            "rest_socket": str(sockets / "line.rest"),
        }
    finally:
        proc.terminate()
        proc.wait(30)


def predict(address: str, metadata=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "line"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray([1.0, 2.0], np.float32)))
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = stub.Predict(request, timeout=30, metadata=metadata)
    return tf.make_ndarray(answer.outputs["y"]).tolist()


def rest(connect, token: str | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("localhost", timeout=30)
    connect(conn)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request("POST", "/v1/models/line:predict", json.dumps({"instances": [1.0]}), headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_a_tcp_port_needs_the_token(server) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        predict(server["tcp"])
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert predict(server["tcp"], [("authorization", f"Bearer {TOKEN}")]) == [3.0, 5.0]

    def tcp(conn):
        conn.sock = socket.create_connection(("127.0.0.1", server["rest_port"]), timeout=30)

    assert rest(tcp)[0] == 401
    assert rest(tcp, TOKEN) == (200, {"predictions": [3.0]})


def test_the_unix_sockets_answer_stock_clients_without_a_token(server) -> None:
    assert predict(server["unix"]) == [3.0, 5.0]  # no metadata at all, as TF Serving's

    def unix(conn):
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.settimeout(30)
        conn.sock.connect(server["rest_socket"])

    assert rest(unix) == (200, {"predictions": [3.0]})
    assert oct(os.stat(server["rest_socket"]).st_mode & 0o777) == "0o600"
    assert oct(os.stat(server["unix"].removeprefix("unix:")).st_mode & 0o777) == "0o600"
