"""Predict latency and throughput through gpulab's model server vs the in-process call.

One run, on this machine: the small model (y = 0.5x + 2, a SavedModel in a temp dir) is
served by ``python -m gpulab.serving`` (REST and gRPC on loopback, with a model token,
as the product starts it) and loaded into this process too. Measured, after a warm-up:

- latency: sequential single requests of three values, p50/p99 of
  - in-process: ``fn(x=tf.constant(X))["y"].numpy()`` (building the input and getting the
    numpy result, the work a client does too);
  - REST: ``POST /v1/models/line:predict`` over one keep-alive ``http.client`` connection,
    JSON built and parsed by the client (``requests.Session`` as a secondary line);
  - gRPC: ``Predict`` over one channel and stub, ``tf.make_tensor_proto`` in,
    ``tf.make_ndarray`` out;
  the three are run in alternating blocks so drift hits all alike; the overheads are the
  REST/gRPC figures minus the in-process ones. For context, also the in-process call made
  1 ms apart (as a server makes it: TensorFlow's threads have gone idle in between);
- latency over the unix sockets, as a model's owner calls it from their notebook (no
  token): REST with ``http.client`` on an ``AF_UNIX`` socket, gRPC on a ``unix:`` channel;
  and, for context, a gRPC call that runs no model (``GetModelStatus``): what Python's
  gRPC costs by itself;
- throughput: calls per second with ``--threads`` client threads (default 4) for
  ``--seconds`` each (REST: a connection per thread; gRPC: the one shared channel);
- batching: ``--clients`` (default 32) client threads against a second server started
  with ``--enable_batching`` (a ``--batching_parameters_file`` of ``max_batch_size``
  ``--clients``, ``batch_timeout_micros`` 1000, one batch thread), REST and gRPC, beside
  the unbatched server and the in-process call from as many threads; each as a ratio of
  the in-process throughput.

The answers are checked against the in-process one first (exit 1 if they differ).

    .venv/bin/python benchmarks/predict.py [--requests 2000] [--warmup 200] [--seconds 3]

Goals: REST overhead <= 0.5 ms p50 on this machine; gRPC over the unix socket no more
than REST's. Last line: ``rest_overhead_p50_ms: <p50 REST - p50 in-process>``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hubfixture import export_line  # noqa: E402

MODEL = "line"
X = [1.0, 2.0, 5.0]
TOKEN = "bench-" + os.urandom(8).hex()
PATH = f"/v1/models/{MODEL}:predict"
BLOCK = 100  # requests per block; the three paths take turns block by block


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base: Path, grpc_port: int, rest_port: int, log_path: Path, *extra: str):
    env = dict(os.environ, GPULAB_SERVING_TOKEN=TOKEN, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [
        sys.executable, "-m", "gpulab.serving",
        "--port", str(grpc_port), "--rest_api_port", str(rest_port),
        "--model_name", MODEL, "--model_base_path", str(base),
        "--bind_address", "127.0.0.1", "--file_system_poll_wait_seconds", "1", *extra,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_available(proc, rest_port: int, log_path: Path, limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    url = f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the model server exited ({proc.returncode}):\n{log_path.read_text()}")
        try:
            r = requests.get(url, headers=headers, timeout=2)
            states = [v["state"] for v in r.json().get("model_version_status", [])]
            if r.status_code == 200 and "AVAILABLE" in states:
                return
        except (requests.ConnectionError, ValueError):
            pass
        time.sleep(0.05)
    sys.exit(f"the model server was not AVAILABLE in {limit:.0f} s:\n{log_path.read_text()}")


def stop_server(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the three clients: each call builds the input and returns the answer as numbers -------


def in_process(fn):
    def call():
        return fn(x=tf.constant(X, dtype=tf.float32))["y"].numpy()

    return call


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def rest_http_client(rest_port: int, unix: str = ""):
    """A call over one keep-alive connection (one per thread); on the unix socket
    ``unix``, without the token, when given."""
    local = threading.local()
    headers = {"Content-Type": "application/json"}
    if not unix:
        headers["Authorization"] = f"Bearer {TOKEN}"

    def call():
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = (
                UnixHTTPConnection(unix)
                if unix
                else http.client.HTTPConnection("127.0.0.1", rest_port, timeout=30)
            )
        conn.request("POST", PATH, body=json.dumps({"instances": X}).encode(), headers=headers)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"REST predict answered {r.status}: {body[:200]!r}")
        return json.loads(body)["predictions"]

    return call


def rest_requests(rest_port: int):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    url = f"http://127.0.0.1:{rest_port}{PATH}"

    def call():
        r = session.post(url, json={"instances": X}, timeout=30)
        r.raise_for_status()
        return r.json()["predictions"]

    return call


def grpc_client(stub, token: bool = True):
    metadata = (("authorization", f"Bearer {TOKEN}"),) if token else None

    def call():
        req = predict_pb2.PredictRequest()
        req.model_spec.name = MODEL
        req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(X, np.float32)))
        resp = stub.Predict(req, timeout=30, metadata=metadata)
        return tf.make_ndarray(resp.outputs["y"])

    return call


def grpc_status(stub):
    """A gRPC call that runs no model: Python gRPC's own cost, for context."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    metadata = (("authorization", f"Bearer {TOKEN}"),)

    def call():
        return stub.GetModelStatus(request, timeout=30, metadata=metadata)

    return call


# -- measuring -----------------------------------------------------------------------------


def latencies(calls: dict, n: int, warmup: int, gap: float = 0) -> dict[str, np.ndarray]:
    """Per-call seconds for each of ``calls``, run in alternating blocks; ``gap``: seconds
    of sleep before each timed call (outside the clock)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    took: dict[str, list[float]] = {name: [] for name in calls}
    clock = time.perf_counter
    done = 0
    while done < n:
        size = min(BLOCK, n - done)
        for name, call in calls.items():
            out = took[name]
            for _ in range(size):
                if gap:
                    time.sleep(gap)
                t0 = clock()
                call()
                out.append(clock() - t0)
        done += size
    return {name: np.asarray(v) for name, v in took.items()}


def throughput(call, threads: int, seconds: float) -> float:
    """Calls per second from ``threads`` threads calling in a loop for ``seconds``."""
    counts = [0] * threads
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def loop(i: int) -> None:
        try:
            call()  # connect outside the clock
            start.wait()
            while not stop.is_set():
                call()
                counts[i] += 1
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)
            stop.set()

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait(timeout=60)
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def ms(seconds: float) -> float:
    return seconds * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per path")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests per path first")
    parser.add_argument("--threads", type=int, default=4, help="client threads for throughput")
    parser.add_argument("--clients", type=int, default=32, help="client threads for batching")
    parser.add_argument("--seconds", type=float, default=3, help="throughput run per path")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gpulab-bench-predict-"))
    procs = []
    channels = []
    try:
        base = tmp / "model"
        export_line(base / "1", 0.5, 2.0)
        grpc_port, rest_port = free_port(), free_port()
        log_path = tmp / "server.log"
        t0 = time.perf_counter()
        sockets = {"rest": str(tmp / "rest.sock"), "grpc": str(tmp / "grpc.sock")}
        procs.append(
            start_server(
                base,
                grpc_port,
                rest_port,
                log_path,
                "--rest_api_socket_path",
                sockets["rest"],
                "--grpc_socket_path",
                sockets["grpc"],
            )  # fmt: skip
        )
        # the same model, batched: requests that arrive together run as one call
        (tmp / "batching.txt").write_text(
            f"max_batch_size {{ value: {args.clients} }}\n"
            "batch_timeout_micros { value: 1000 }\nnum_batch_threads { value: 1 }\n"
        )
        batched_grpc, batched_rest = free_port(), free_port()
        procs.append(
            start_server(
                base,
                batched_grpc,
                batched_rest,
                tmp / "batched.log",
                "--enable_batching",
                "--batching_parameters_file",
                str(tmp / "batching.txt"),
            )  # fmt: skip
        )
        fn = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
        wait_available(procs[0], rest_port, log_path)
        wait_available(procs[1], batched_rest, tmp / "batched.log")
        print(f"model servers AVAILABLE {time.perf_counter() - t0:.1f} s after their start")

        def stub(address: str, kind=prediction_service_pb2_grpc.PredictionServiceStub):
            channel = grpc.insecure_channel(address)
            channels.append(channel)
            return kind(channel)

        calls = {
            "in-process": in_process(fn),
            "REST": rest_http_client(rest_port),
            "gRPC": grpc_client(stub(f"127.0.0.1:{grpc_port}")),
        }
        over_sockets = {
            "REST, unix socket": rest_http_client(0, sockets["rest"]),
            "gRPC, unix socket": grpc_client(stub(f"unix:{sockets['grpc']}"), token=False),
        }
        batched = {
            "REST, batching": rest_http_client(batched_rest),
            "gRPC, batching": grpc_client(stub(f"127.0.0.1:{batched_grpc}")),
        }

        # correctness, once
        want = calls["in-process"]()
        for name, call in {**calls, **over_sockets, **batched}.items():
            got = np.asarray(call(), dtype=np.float32)
            if got.shape != want.shape or not np.array_equal(got, want):
                print(f"{name} answered {got.tolist()}, in-process {want.tolist()}")
                return 1
        print(f"answers agree: {want.tolist()} for x = {X}")

        ref = "in-process"
        took = latencies({**calls, **over_sockets}, args.requests, args.warmup)
        p50 = {k: ms(float(np.percentile(v, 50))) for k, v in took.items()}
        p99 = {k: ms(float(np.percentile(v, 99))) for k, v in took.items()}
        few, few_warmup = max(1, args.requests // 4), max(1, args.warmup // 4)
        secondary = latencies(
            {
                "REST (requests.Session)": rest_requests(rest_port),
                "gRPC, no model (GetModelStatus)": grpc_status(
                    stub(f"127.0.0.1:{grpc_port}", model_service_pb2_grpc.ModelServiceStub)
                ),
            },
            few,
            few_warmup,
        )
        # for context, the in-process call as a server makes it: after an idle gap, when
        # TensorFlow's threads have gone to sleep (the overheads use the back-to-back figure)
        idle = latencies({"in-process, 1 ms apart": calls[ref]}, few, few_warmup, gap=0.001)
        secondary.update(idle)
        for k, v in secondary.items():
            p50[k] = ms(float(np.percentile(v, 50)))
            p99[k] = ms(float(np.percentile(v, 99)))

        print(f"\nlatency, {args.requests} sequential requests each (after {args.warmup} warm-up;")
        print(f"  the last three lines: {few} requests):")
        for k in p50:
            print(f"  {k:33s} p50 {p50[k]:7.3f} ms   p99 {p99[k]:7.3f} ms")
        for k in ("REST", "gRPC", *over_sockets, "REST (requests.Session)"):
            print(
                f"  overhead {k:24s} p50 {p50[k] - p50[ref]:7.3f} ms   "
                f"p99 {p99[k] - p99[ref]:7.3f} ms"
            )

        print(f"\nthroughput, {args.threads} client threads, {args.seconds:g} s each:")
        rates = {k: throughput(c, args.threads, args.seconds) for k, c in calls.items()}
        for k, rate in rates.items():
            print(f"  {k:33s} {rate:9.0f} calls/s   ({rate / rates[ref]:.2f} x in-process)")

        print(f"\nthroughput, {args.clients} client threads, {args.seconds:g} s each:")
        many = {
            k: throughput(c, args.clients, args.seconds) for k, c in {**calls, **batched}.items()
        }
        for k, rate in many.items():
            print(f"  {k:33s} {rate:9.0f} calls/s   ({rate / many[ref]:.2f} x in-process)")
        for api in ("REST", "gRPC"):
            gain = many[f"{api}, batching"] / many[api]
            print(f"  {api} with batching / without:      {gain:.2f}")

        rest_overhead = p50["REST"] - p50[ref]
        unix_grpc = p50["gRPC, unix socket"] - p50[ref]
        print()
        print(f"goal REST p50 overhead <= 0.5 ms: {'met' if rest_overhead <= 0.5 else 'NOT met'}")
        print(
            "goal gRPC over the unix socket no more than REST: "
            f"{'met' if unix_grpc <= rest_overhead else 'NOT met'}"
        )
        print(f"batching_rest_throughput_ratio: {many['REST, batching'] / many['REST']:.2f}")
        print(f"grpc_unix_overhead_p50_ms: {unix_grpc:.3f}")
        print(f"rest_overhead_p50_ms: {rest_overhead:.3f}")
        return 0
    finally:
        for channel in channels:
            channel.close()
        for proc in procs:
            stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
