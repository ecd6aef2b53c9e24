"""gpulab's model server: TF Serving's REST and gRPC APIs over SavedModels.

It takes ``tensorflow_model_server``'s own flags (``--port``, ``--rest_api_port``,
``--model_name``/``--model_base_path`` or ``--model_config_file``, the poll intervals),
so whatever starts TF Serving can start this, and answers the same requests the same
way: REST ``/v1/models/...`` status, metadata and ``:predict``, gRPC
``PredictionService`` (Predict, GetModelMetadata) and ``ModelService``
(GetModelStatus, HandleReloadConfigRequest); ``--enable_batching`` with
``--batching_parameters_file`` (:mod:`.batching`), and the Prometheus endpoint of
``--monitoring_config_file`` (:mod:`.monitoring`).

gpulab's additions: with ``GPULAB_SERVING_TOKEN`` in its environment, every request on a
TCP port must carry ``Authorization: Bearer <token>`` (gRPC: ``authorization``
metadata), since on a shared machine any local process can reach a loopback port (on
its unix sockets, mode 0600, only its own account and root can connect: none is
asked there, so TF Serving's own clients work unchanged); and besides TF
Serving's ``--grpc_socket_path``, ``--rest_api_socket_path`` serves REST on a unix
socket (with ``--port 0``: no TCP port at all), which is how gpulab runs it, in a folder
only the owner can enter.

This module is the process (``ModelServer``: the flags, polling the model paths and
config, the ports and sockets, shutdown on SIGTERM); the APIs are :mod:`.rest_api` and
:mod:`.grpc_api`, over the :class:`~.predictor.Predictor` they share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

from .batching import Batcher, BatchingConfigError, BatchingParameters
from .config import ConfigError, ModelConfig, parse_text
from .grpc_api import add_services
from .http_server import serve_tcp, serve_unix
from .monitoring import Metrics, MonitoringConfigError, Prometheus, read_config
from .predictor import Predictor
from .rest_api import RestApi
from .servables import ModelRegistry

log = logging.getLogger("gpulab.serving")

TOKEN_ENV = "GPULAB_SERVING_TOKEN"


class ModelServer:
    def __init__(self, args):
        self.args = args
        self.token = os.environ.get(TOKEN_ENV, "")
        self.config_stamp = None
        self.metrics = Metrics()
        self.prometheus = _monitoring(args.monitoring_config_file)
        self.batching = _batching(args.enable_batching, args.batching_parameters_file)
        self.registry = ModelRegistry(self._read_config(), args.cache_dir, self.metrics)
        batcher = Batcher(self.batching, self.metrics) if self.batching else None
        self.predictor = Predictor(self.registry, self.metrics, batcher)
        self.stop = threading.Event()

    def _read_config(self) -> list[ModelConfig]:
        a = self.args
        if a.model_config_file:
            with open(a.model_config_file) as f:
                text = f.read()
            self.config_stamp = os.stat(a.model_config_file).st_mtime_ns
            return parse_text(text)
        return [ModelConfig(a.model_name, a.model_base_path)]

    def reload(self, configs: list[ModelConfig]) -> None:
        self.registry.configure(configs)
        self.registry.poll()

    def _poll_loop(self) -> None:
        a = self.args
        next_config = time.monotonic() + a.model_config_file_poll_wait_seconds
        while not self.stop.wait(a.file_system_poll_wait_seconds):
            if (
                a.model_config_file
                and a.model_config_file_poll_wait_seconds > 0
                and time.monotonic() >= next_config
            ):
                next_config = time.monotonic() + a.model_config_file_poll_wait_seconds
                try:
                    stamp = os.stat(a.model_config_file).st_mtime_ns
                    if stamp != self.config_stamp:
                        self.registry.configure(self._read_config())
                        log.info("Reloaded the model config %s", a.model_config_file)
                except (OSError, ConfigError) as e:
                    log.error("Keeping the current models: %s", e)
            try:
                self.registry.poll()
            except Exception:  # noqa: BLE001 -- keep serving
                log.exception("Polling the model base paths failed")

    def run(self) -> None:
        a = self.args
        if a.tensorflow_intra_op_parallelism or a.tensorflow_inter_op_parallelism:
            import tensorflow as tf

            if a.tensorflow_intra_op_parallelism:
                tf.config.threading.set_intra_op_parallelism_threads(
                    a.tensorflow_intra_op_parallelism
                )
            if a.tensorflow_inter_op_parallelism:
                tf.config.threading.set_inter_op_parallelism_threads(
                    a.tensorflow_inter_op_parallelism
                )
        self.registry.poll()  # TF Serving opens its ports once the first versions loaded
        threads = a.grpc_threads
        if self.batching:  # calls wait for their batch in these threads: enough to fill one
            threads = max(threads, 2 * self.batching.max_batch_size, 64)
        grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=min(threads, 1024)))
        add_services(grpc_server, self.predictor, self.token, self.reload)
        if a.port:
            grpc_server.add_insecure_port(f"{a.bind_address}:{a.port}")
            log.info("Running gRPC ModelServer at %s:%d ...", a.bind_address, a.port)
        if a.grpc_socket_path:
            old = os.umask(0o177)  # as the REST socket: this account's alone, from the start
            try:
                grpc_server.add_insecure_port(f"unix:{a.grpc_socket_path}")
            finally:
                os.umask(old)
            os.chmod(a.grpc_socket_path, 0o600)
            log.info("Running gRPC ModelServer at unix:%s ...", a.grpc_socket_path)
        grpc_server.start()
        poller = threading.Thread(target=self._poll_loop, name="poll", daemon=True)
        poller.start()
        asyncio.run(self._serve_rest(grpc_server))

    async def _serve_rest(self, grpc_server) -> None:
        """REST on an event loop of its own (gRPC answers in its threads), until SIGTERM."""
        a = self.args
        servers = []
        if a.rest_api_port or a.rest_api_socket_path:
            monitoring = self.prometheus.path if self.prometheus.enable else ""
            api = RestApi(self.predictor, self.token, monitoring)
            if a.rest_api_port:
                servers.append(await serve_tcp(api.handle, a.bind_address, a.rest_api_port))
                log.info("Exporting HTTP/REST API at:%s:%d ...", a.bind_address, a.rest_api_port)
            if a.rest_api_socket_path:
                # 0600: only this account (and root) may connect, whatever the folder allows
                servers.append(await serve_unix(api.handle, a.rest_api_socket_path))
                log.info("Exporting HTTP/REST API at: unix:%s ...", a.rest_api_socket_path)
            if self.prometheus.enable:
                log.info("Prometheus metrics at %s on the REST API", self.prometheus.path)
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        log.info("Stopping the model server")
        self.stop.set()
        for server in servers:
            server.close()
        grpc_server.stop(grace=1.0).wait()
        for path in (a.rest_api_socket_path, a.grpc_socket_path):
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _monitoring(path: str) -> Prometheus:
    """The Prometheus endpoint a ``--monitoring_config_file`` asks for (none without)."""
    if not path:
        return Prometheus()
    with open(path) as f:
        return read_config(f.read())


def _batching(enable: str, path: str) -> BatchingParameters | None:
    """The batching parameters, with ``--enable_batching`` (else None): TF Serving's
    defaults, or a ``--batching_parameters_file``'s."""
    if str(enable).lower() not in ("true", "1", "yes"):
        if path:
            log.warning("--batching_parameters_file is used only with --enable_batching")
        return None
    if not path:
        return BatchingParameters()
    with open(path) as f:
        return BatchingParameters.from_text(f.read())


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(
        prog="gpulab-model-server",
        description="TF-Serving-compatible model server (REST + gRPC) over SavedModels",
    )
    p.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0: none)")
    p.add_argument("--grpc_socket_path", default="", help="also serve gRPC on this unix socket")
    p.add_argument("--rest_api_port", type=int, default=0, help="REST port (0: no REST)")
    p.add_argument("--rest_api_socket_path", default="",
                   help="also serve REST on this unix socket")  # fmt: skip
    p.add_argument("--model_name", default="default")
    p.add_argument("--model_base_path", default="")
    p.add_argument("--model_config_file", default="")
    p.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0)
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1)
    p.add_argument("--bind_address", default="0.0.0.0")
    p.add_argument("--grpc_threads", type=int, default=4, help="threads answering gRPC calls")
    p.add_argument("--cache_dir", default="", help="where S3 versions are copied to load")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                   help="threads one op may use (0: TensorFlow's choice)")  # fmt: skip
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                   help="ops run at once (0: TensorFlow's choice)")  # fmt: skip
    # accepted for compatibility with tensorflow_model_server command lines
    p.add_argument("--rest_api_num_threads", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--enable_batching", nargs="?", const="true", default="false",
                   help="run requests that arrive together as one model call")  # fmt: skip
    p.add_argument("--batching_parameters_file", default="",
                   help="TF Serving's BatchingParameters (text) for --enable_batching")  # fmt: skip
    p.add_argument("--monitoring_config_file", default="",
                   help="TF Serving's MonitoringConfig (text): the Prometheus endpoint")  # fmt: skip
    p.add_argument("--allow_version_labels_for_unavailable_models", default="false",
                   help=argparse.SUPPRESS)  # fmt: skip
    args, unknown = p.parse_known_args(argv)
    if unknown:
        log.warning("Ignoring tensorflow_model_server flags this server does not take: %s",
                    " ".join(unknown))  # fmt: skip
    if not args.model_config_file and not args.model_base_path:
        p.error("give --model_base_path (with --model_name) or --model_config_file")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    args = parse_args(argv)
    try:
        server = ModelServer(args)
    except (OSError, ConfigError, BatchingConfigError, MonitoringConfigError) as e:
        print(f"gpulab-model-server: {e}", file=sys.stderr)
        return 2
    server.run()
    return 0
