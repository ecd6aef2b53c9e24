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


# -- HTTP/1.1 as clients speak it ---------------------------------------------------------


def raw(server, data: bytes, until: bytes = b"", timeout: float = 30) -> bytes:
    """What the REST unix socket answers ``data`` with, read until ``until`` appears or the
    server closes the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(server["rest_socket"])
        sock.sendall(data)
        out = b""
        while not (until and until in out):
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


def test_curl_with_a_large_body_waits_for_100_continue_and_is_answered(server, tmp_path) -> None:
    xs = [float(i) for i in range(400)]  # over 1 KiB: curl asks Expect: 100-continue
    (tmp_path / "body.json").write_text(json.dumps({"instances": xs}))
    done = subprocess.run(
        ["curl", "-sS", "--unix-socket", server["rest_socket"], "-w", "\n%{http_code}",
         "-H", "Content-Type: application/json", "--data-binary", f"@{tmp_path / 'body.json'}",
         "http://localhost/v1/models/line:predict"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    body, _, code = done.stdout.rpartition("\n")
    assert code == "200", done.stdout + done.stderr
    assert json.loads(body) == {"predictions": [2 * x + 1 for x in xs]}


def test_chunked_and_pipelined_requests_are_answered_in_order(server) -> None:
    chunked = (
        b"POST /v1/models/line:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6\r\n{\"inst\r\n" b"11\r\nances\": [1.0, 2.0\r\n" b"2\r\n]}\r\n" b"0\r\n\r\n"
    )  # fmt: skip
    status = b"GET /v1/models/line HTTP/1.1\r\nHost: x\r\n\r\n"
    nothing = b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw(server, chunked + status + nothing)  # all at once; the last closes
    answers = out.split(b"HTTP/1.1 ")[1:]
    assert [a.split(b" ", 1)[0] for a in answers] == [b"200", b"200", b"404"], out
    assert answers[0].endswith(b'{"predictions":[3.0,5.0]}'), answers[0]
    assert b'"state": "AVAILABLE"' in answers[1], answers[1]
    assert b"Connection: close" in answers[2]


def test_what_is_not_http_or_too_large_is_refused_with_a_json_error(server) -> None:
    out = raw(server, b"GARBAGE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out
    assert b'"error": "not an HTTP/1.1 request' in out
    too_big = (
        b"POST /v1/models/line:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"
    )
    out = raw(server, too_big)  # said before the body is sent, and the connection closed
    assert out.startswith(b"HTTP/1.1 413 "), out
    assert b"the body is over 100 MiB" in out
