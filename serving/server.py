"""gpulab's model server: TF Serving's REST and gRPC APIs over SavedModels.

It takes ``tensorflow_model_server``'s own flags (``--port``, ``--rest_api_port``,
``--model_name``/``--model_base_path`` or ``--model_config_file``, the poll intervals),
so whatever starts TF Serving can start this, and answers the same requests the same
way: REST ``/v1/models/...`` status, metadata and ``:predict``, gRPC
``PredictionService`` (Predict, GetModelMetadata) and ``ModelService``
(GetModelStatus, HandleReloadConfigRequest).

gpulab's additions: with ``GPULAB_SERVING_TOKEN`` in its environment, every request
must carry ``Authorization: Bearer <token>`` (gRPC: ``authorization`` metadata), since
on a shared machine any local process can reach a loopback port; and besides TF
Serving's ``--grpc_socket_path``, ``--rest_api_socket_path`` serves REST on a unix
socket (with ``--port 0``: no TCP port at all), which is how gpulab runs it, in a folder
only the owner can enter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import re
import signal
import sys
import threading
import time
from concurrent import futures
from urllib.parse import unquote

import grpc
import numpy as np
from google.protobuf import json_format, text_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tornado import httpserver, httputil, netutil

from . import tensors
from .config import ConfigError, ModelConfig, parse_text
from .errors import INVALID_ARGUMENT, UNAUTHENTICATED, UNIMPLEMENTED, ServingError
from .servables import ModelRegistry, Servable

log = logging.getLogger("gpulab.serving")

TOKEN_ENV = "GPULAB_SERVING_TOKEN"

_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)


class Predictor:
    """Predict, metadata and status over a registry: the part REST and gRPC share."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def predict(self, servable: Servable, signature: str, inputs: dict[str, np.ndarray],
                output_filter: list[str] = ()) -> dict[str, np.ndarray]:  # fmt: skip
        fn, sig = servable.signature(signature)
        wanted, given = set(sig.inputs), set(inputs)
        if wanted != given:
            raise ServingError(
                INVALID_ARGUMENT,
                f"input size does not match signature: {len(given)}!={len(wanted)} "
                f"len({{{','.join(sorted(given))}}}) != len({{{','.join(sorted(wanted))}}}). "
                f"Sent extra: {{{','.join(sorted(given - wanted))}}}. Missing but required: "
                f"{{{','.join(sorted(wanted - given))}}}.",
            )
        for name, arr in inputs.items():
            expected = sig.inputs[name].dtype
            found = tensors._BY_NUMPY.get(arr.dtype)
            if found != expected:
                raise ServingError(
                    INVALID_ARGUMENT,
                    f"Expects arg[{sorted(sig.inputs).index(name)}] to be "
                    f"{tensors.dtype_name(expected)} but "
                    f"{tensors.dtype_name(found) if found is not None else arr.dtype} is provided",
                )
        for alias in output_filter:
            if alias not in sig.outputs:
                raise ServingError(
                    INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(sig.outputs))}}}.",
                )
        try:
            result = fn(**inputs)
        except (TypeError, ValueError) as e:
            raise ServingError(INVALID_ARGUMENT, _first_line(e)) from None
        except Exception as e:  # noqa: BLE001 -- TensorFlow's own errors carry their code
            raise _tf_error(e) from None
        names = output_filter or list(sig.outputs)
        return {n: result[n].numpy() for n in names}

    def metadata(self, servable: Servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        defs = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in servable.signature_defs.items():
            defs.signature_def[name].CopyFrom(sig)
        response.metadata["signature_def"].Pack(defs)
        return response

    def status(self, name: str, version: int | None) -> get_model_status_pb2.GetModelStatusResponse:
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state in self.registry.status(name, version):
            item = response.model_version_status.add()
            item.version = number
            item.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
            item.status.error_code = _error_code(state.error_code)
            item.status.error_message = state.error_message
        return response


def _error_code(name: str) -> int:
    from tensorflow.core.protobuf import error_codes_pb2

    return error_codes_pb2.Code.Value(name) if name in error_codes_pb2.Code.keys() else 2


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _tf_error(e: Exception) -> ServingError:
    """A TensorFlow error raised by a model call, with its canonical code."""
    import tensorflow as tf

    if isinstance(e, tf.errors.OpError):
        from tensorflow.core.protobuf import error_codes_pb2

        name = error_codes_pb2.Code.Name(e.error_code)
        return ServingError(name, e.message.strip().splitlines()[0])
    return ServingError("INTERNAL", _first_line(e))


# -- REST ------------------------------------------------------------------------------------


class RestApi:
    """Every ``/v1/...`` request, dispatched as TF Serving's HttpRestApiHandler does."""

    def __init__(self, predictor: Predictor, token: str):
        self.predictor = predictor
        self.token = token

    def answer(self, method: str, path: str, authorization: str | None, body: bytes):
        """(HTTP status, JSON body) for one request."""
        try:
            if self.token and not _token_ok(authorization, self.token):
                raise ServingError(UNAUTHENTICATED, "a valid model token is needed")
            return 200, self._dispatch(method, path, body)
        except ServingError as e:
            return e.http_status, tensors.dumps({"error": e.message})

    def _dispatch(self, method: str, path: str, body: bytes) -> bytes:
        malformed = ServingError(INVALID_ARGUMENT, f"Malformed request: {method} {path}")
        pattern = _PREDICT if method == "POST" else _STATUS
        match = pattern.fullmatch(path)
        if match is None:
            raise malformed
        name, version, label, verb = match.groups()
        name = unquote(name or "")
        label = unquote(label) if label else None
        number = int(version) if version else None
        if number is not None and label is not None:
            raise ServingError(
                INVALID_ARGUMENT,
                f"Both model version ({number}) and model version label ({label}) cannot be "
                "supplied.",
            )
        registry = self.predictor.registry
        if method == "POST":
            verb = verb.lower()
            if verb != "predict":
                raise ServingError(
                    UNIMPLEMENTED,
                    f":{verb} (tf.Example input) is not served here; use :predict",
                )
            servable = registry.servable(name, number, label)
            doc = tensors.parse_request(body)
            _, sig = servable.signature(doc.get("signature_name", ""))
            inputs, fmt = tensors.request_tensors(doc, {k: v.dtype for k, v in sig.inputs.items()})
            outputs = self.predictor.predict(servable, doc.get("signature_name", ""), inputs)
            return tensors.dumps(tensors.response_json(outputs, fmt))
        if not name:
            raise ServingError(INVALID_ARGUMENT, "Missing model name in request.")
        if verb:  # metadata
            servable = registry.servable(name, number, label)
            return _metadata_json(self.predictor.metadata(servable)).encode()
        if label is not None:
            number = registry.servable(name, None, label).version
        return json_format.MessageToJson(
            self.predictor.status(name, number), always_print_fields_with_no_presence=True
        ).encode()


def _metadata_json(response) -> str:
    """GetModelMetadataResponse as TF Serving's REST API writes it (proto field names,
    the signature map unpacked from its Any)."""
    spec = json_format.MessageToJson(
        response.model_spec,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    sigs = json_format.MessageToJson(
        defs, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return f'{{\n"model_spec":{spec},\n"metadata": {{"signature_def": {sigs}}}\n}}\n'


def _token_ok(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() in ("bearer", "token") and hmac.compare_digest(value.strip(), token)


# -- gRPC ------------------------------------------------------------------------------------


def _spec_choice(spec) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


class _Guard:
    """Turns ServingErrors into gRPC statuses and checks the token."""

    def __init__(self, token: str):
        self.token = token

    def check(self, context) -> None:
        if not self.token:
            return
        meta = dict(context.invocation_metadata())
        if not _token_ok(meta.get("authorization"), self.token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid model token is needed")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, predictor: Predictor, guard: _Guard):
        self.predictor, self.guard = predictor, guard

    def Predict(self, request, context):
        self.guard.check(context)
        try:
            if not request.HasField("model_spec"):
                raise ServingError(INVALID_ARGUMENT, "Missing ModelSpec")
            version, label = _spec_choice(request.model_spec)
            servable = self.predictor.registry.servable(request.model_spec.name, version, label)
            inputs = {k: tensors.from_proto(v) for k, v in request.inputs.items()}
            signature = request.model_spec.signature_name
            outputs = self.predictor.predict(
                servable, signature, inputs, list(request.output_filter)
            )
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature or "serving_default"
            for name, arr in outputs.items():
                response.outputs[name].CopyFrom(tensors.to_proto(arr))
            return response
        except ServingError as e:
            context.abort(e.grpc_code, e.message)

    def GetModelMetadata(self, request, context):
        self.guard.check(context)
        try:
            if not request.HasField("model_spec"):
                raise ServingError(INVALID_ARGUMENT, "Missing ModelSpec")
            if not request.metadata_field:
                raise ServingError(
                    INVALID_ARGUMENT,
                    "GetModelMetadataRequest must specify at least one metadata_field",
                )
            for field in request.metadata_field:
                if field != "signature_def":
                    raise ServingError(INVALID_ARGUMENT, f"Metadata field {field} is not supported")
            version, label = _spec_choice(request.model_spec)
            servable = self.predictor.registry.servable(request.model_spec.name, version, label)
            return self.predictor.metadata(servable)
        except ServingError as e:
            context.abort(e.grpc_code, e.message)

    def _unimplemented(self, request, context):
        self.guard.check(context)
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "tf.Example input is not served; use Predict")

    Classify = Regress = MultiInference = _unimplemented


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, predictor: Predictor, guard: _Guard, reload):
        self.predictor, self.guard, self.reload = predictor, guard, reload

    def GetModelStatus(self, request, context):
        self.guard.check(context)
        try:
            if not request.HasField("model_spec"):
                raise ServingError(INVALID_ARGUMENT, "Missing ModelSpec")
            version, label = _spec_choice(request.model_spec)
            return self.predictor.status(request.model_spec.name, version)
        except ServingError as e:
            context.abort(e.grpc_code, e.message)

    def HandleReloadConfigRequest(self, request, context):
        self.guard.check(context)
        response = model_management_pb2.ReloadConfigResponse()
        try:
            configs = parse_text(text_format.MessageToString(request.config))
        except ConfigError as e:
            response.status.error_code = 3  # INVALID_ARGUMENT
            response.status.error_message = str(e)
            return response
        self.reload(configs)
        return response


# -- the process -------------------------------------------------------------------------------


class ModelServer:
    def __init__(self, args):
        self.args = args
        self.token = os.environ.get(TOKEN_ENV, "")
        self.config_stamp = None
        self.registry = ModelRegistry(self._read_config(), args.cache_dir)
        self.predictor = Predictor(self.registry)
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
        guard = _Guard(self.token)
        grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=a.grpc_threads))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.predictor, guard), grpc_server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(self.predictor, guard, self.reload), grpc_server
        )
        if a.port:
            grpc_server.add_insecure_port(f"{a.bind_address}:{a.port}")
            log.info("Running gRPC ModelServer at %s:%d ...", a.bind_address, a.port)
        if a.grpc_socket_path:
            grpc_server.add_insecure_port(f"unix:{a.grpc_socket_path}")
            os.chmod(a.grpc_socket_path, 0o600)  # as the REST socket: this account's alone
            log.info("Running gRPC ModelServer at unix:%s ...", a.grpc_socket_path)
        grpc_server.start()
        poller = threading.Thread(target=self._poll_loop, name="poll", daemon=True)
        poller.start()
        asyncio.run(self._serve_rest(grpc_server))

    async def _serve_rest(self, grpc_server) -> None:
        a = self.args
        server = None
        if a.rest_api_port or a.rest_api_socket_path:
            server = httpserver.HTTPServer(_RestServer(RestApi(self.predictor, self.token)))
        if a.rest_api_port:
            server.listen(a.rest_api_port, address=a.bind_address)
            log.info("Exporting HTTP/REST API at:%s:%d ...", a.bind_address, a.rest_api_port)
        if a.rest_api_socket_path:
            # 0600: only this account (and root) may connect, whatever the folder allows
            server.add_socket(netutil.bind_unix_socket(a.rest_api_socket_path, mode=0o600))
            log.info("Exporting HTTP/REST API at: unix:%s ...", a.rest_api_socket_path)
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        log.info("Stopping the model server")
        self.stop.set()
        if server is not None:
            server.stop()
        grpc_server.stop(grace=1.0).wait()
        for path in (a.rest_api_socket_path, a.grpc_socket_path):
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)


class _RestServer(httputil.HTTPServerConnectionDelegate):
    """HTTP/1.1 straight to the REST API: no web framework between the connection and
    the model (a request costs a few tens of microseconds here, not hundreds); keep-alive
    and chunked bodies are tornado's HTTP/1 connection's."""

    def __init__(self, api: RestApi):
        self.api = api

    def start_request(self, server_conn, request_conn) -> httputil.HTTPMessageDelegate:
        return _RestRequest(self.api, request_conn)


class _RestRequest(httputil.HTTPMessageDelegate):
    def __init__(self, api: RestApi, connection):
        self.api, self.connection = api, connection
        self.chunks: list[bytes] = []
        self.start = None
        self.headers = None

    def headers_received(self, start_line, headers):
        self.start, self.headers = start_line, headers

    def data_received(self, chunk):
        self.chunks.append(chunk)

    def finish(self):
        method = self.start.method
        path = self.start.path.partition("?")[0]
        if path.lower().startswith("/v1/") or path.lower() == "/v1":
            status, body = self.api.answer(
                method, path, self.headers.get("Authorization"), b"".join(self.chunks)
            )
        else:  # TF Serving answers only its API's paths
            status, body = 404, b""
        headers = httputil.HTTPHeaders(
            {"Content-Type": "application/json", "Content-Length": str(len(body))}
        )
        start = httputil.ResponseStartLine("HTTP/1.1", status, httputil.responses.get(status, ""))
        self.connection.write_headers(start, headers, body)
        self.connection.finish()

    def on_connection_close(self):
        self.chunks.clear()


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
    p.add_argument("--grpc_threads", type=int, default=4)
    p.add_argument("--cache_dir", default="", help="where S3 versions are copied to load")
    p.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                   help="threads one op may use (0: TensorFlow's choice)")  # fmt: skip
    p.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                   help="ops run at once (0: TensorFlow's choice)")  # fmt: skip
    # accepted for compatibility with tensorflow_model_server command lines
    p.add_argument("--rest_api_num_threads", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--enable_batching", default="false", help=argparse.SUPPRESS)
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
    except (OSError, ConfigError) as e:
        print(f"gpulab-model-server: {e}", file=sys.stderr)
        return 2
    server.run()
    return 0
