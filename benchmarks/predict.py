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
- throughput: calls per second with ``--threads`` client threads (default 4) for
  ``--seconds`` each (REST: a connection per thread; gRPC: the one shared channel).

The answers are checked against the in-process one first (exit 1 if they differ).

    .venv/bin/python benchmarks/predict.py [--requests 2000] [--warmup 200] [--seconds 3]

Goals: REST overhead <= 1 ms p50 on this machine, gRPC lower. Last line:
``rest_overhead_p50_ms: <p50 REST - p50 in-process>``.
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
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

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


def start_server(base: Path, grpc_port: int, rest_port: int, log_path: Path):
    env = dict(os.environ, GPULAB_SERVING_TOKEN=TOKEN, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [
        sys.executable, "-m", "gpulab.serving",
        "--port", str(grpc_port), "--rest_api_port", str(rest_port),
        "--model_name", MODEL, "--model_base_path", str(base),
        "--bind_address", "127.0.0.1", "--file_system_poll_wait_seconds", "1",
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


def rest_http_client(rest_port: int):
    """A call over one keep-alive connection (one per thread)."""
    local = threading.local()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def call():
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=30)
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


def grpc_client(stub):
    metadata = (("authorization", f"Bearer {TOKEN}"),)

    def call():
        req = predict_pb2.PredictRequest()
        req.model_spec.name = MODEL
        req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(X, np.float32)))
        resp = stub.Predict(req, timeout=30, metadata=metadata)
        return tf.make_ndarray(resp.outputs["y"])

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
    parser.add_argument("--seconds", type=float, default=3, help="throughput run per path")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gpulab-bench-predict-"))
    proc = None
    channel = None
    try:
        base = tmp / "model"
        export_line(base / "1", 0.5, 2.0)
        grpc_port, rest_port = free_port(), free_port()
        log_path = tmp / "server.log"
        t0 = time.perf_counter()
        proc = start_server(base, grpc_port, rest_port, log_path)
        fn = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
        wait_available(proc, rest_port, log_path)
        print(f"model server AVAILABLE {time.perf_counter() - t0:.1f} s after its start")

        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        calls = {
            "in-process": in_process(fn),
            "REST": rest_http_client(rest_port),
            "gRPC": grpc_client(stub),
        }

        # correctness, once
        want = calls["in-process"]()
        for name in ("REST", "gRPC"):
            got = np.asarray(calls[name](), dtype=np.float32)
            if got.shape != want.shape or not np.array_equal(got, want):
                print(f"{name} answered {got.tolist()}, in-process {want.tolist()}")
                return 1
        print(f"answers agree: {want.tolist()} for x = {X}")

        ref = "in-process"
        took = latencies(calls, args.requests, args.warmup)
        p50 = {k: ms(float(np.percentile(v, 50))) for k, v in took.items()}
        p99 = {k: ms(float(np.percentile(v, 99))) for k, v in took.items()}
        few, few_warmup = max(1, args.requests // 4), max(1, args.warmup // 4)
        secondary = latencies(
            {"REST (requests.Session)": rest_requests(rest_port)}, few, few_warmup
        )
        # for context, the in-process call as a server makes it: after an idle gap, when
        # TensorFlow's threads have gone to sleep (the overheads use the back-to-back figure)
        idle = latencies({"in-process, 1 ms apart": calls[ref]}, few, few_warmup, gap=0.001)
        secondary.update(idle)
        for k, v in secondary.items():
            p50[k] = ms(float(np.percentile(v, 50)))
            p99[k] = ms(float(np.percentile(v, 99)))

        print(f"\nlatency, {args.requests} sequential requests each (after {args.warmup} warm-up;")
        print(f"  the last two lines: {few} requests):")
        for k in p50:
            print(f"  {k:33s} p50 {p50[k]:7.3f} ms   p99 {p99[k]:7.3f} ms")
        for k in ("REST", "gRPC", "REST (requests.Session)"):
            print(
                f"  overhead {k:24s} p50 {p50[k] - p50[ref]:7.3f} ms   "
                f"p99 {p99[k] - p99[ref]:7.3f} ms"
            )

        print(f"\nthroughput, {args.threads} client threads, {args.seconds:g} s each:")
        rates = {k: throughput(c, args.threads, args.seconds) for k, c in calls.items()}
        for k, rate in rates.items():
            share = rate / rates[ref]
            print(f"  {k:33s} {rate:9.0f} calls/s   ({share:.2f} x in-process)")

        rest_overhead = p50["REST"] - p50[ref]
        grpc_overhead = p50["gRPC"] - p50[ref]
        print()
        print(f"goal REST p50 overhead <= 1 ms: {'met' if rest_overhead <= 1 else 'NOT met'}")
        print(f"goal gRPC lower than REST: {'met' if grpc_overhead < rest_overhead else 'NOT met'}")
        print(f"grpc_overhead_p50_ms: {grpc_overhead:.3f}")
        print(f"rest_overhead_p50_ms: {rest_overhead:.3f}")
        return 0
    finally:
        if channel is not None:
            channel.close()
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
