"""The model server's REST API, as TF Serving's: ``/v1/models/...`` status, metadata and
``:predict``.

``RestApi`` answers one request, (HTTP status, JSON body), dispatched and worded as TF
Serving's HttpRestApiHandler does; ``RestServer`` is the tornado connection delegate that
carries HTTP/1.1 straight to it, on a TCP port or a unix socket.
"""

from __future__ import annotations

import re
import socket
from urllib.parse import unquote

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2
from tornado import httputil

from . import tensors
from .errors import INVALID_ARGUMENT, UNAUTHENTICATED, UNIMPLEMENTED, ServingError
from .predictor import Predictor, token_ok

_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)


class RestApi:
    """Every ``/v1/...`` request, dispatched as TF Serving's HttpRestApiHandler does."""

    def __init__(self, predictor: Predictor, token: str):
        self.predictor = predictor
        self.token = token

    def answer(
        self, method: str, path: str, authorization: str | None, body: bytes, owners: bool = False
    ):
        """(HTTP status, JSON body) for one request; ``owners``: it came over the unix
        socket, which only the model's owner (and root) can connect to: no token needed."""
        try:
            if self.token and not owners and not token_ok(authorization, self.token):
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


class RestServer(httputil.HTTPServerConnectionDelegate):
    """HTTP/1.1 straight to the REST API: no web framework between the connection and
    the model (a request costs a few tens of microseconds here, not hundreds); keep-alive
    and chunked bodies are tornado's HTTP/1 connection's."""

    def __init__(self, api: RestApi):
        self.api = api

    def start_request(self, server_conn, request_conn) -> httputil.HTTPMessageDelegate:
        family = server_conn.stream.socket.family if server_conn.stream.socket else None
        return _RestRequest(self.api, request_conn, owners=family == socket.AF_UNIX)


class _RestRequest(httputil.HTTPMessageDelegate):
    def __init__(self, api: RestApi, connection, owners: bool = False):
        self.api, self.connection, self.owners = api, connection, owners
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
                method,
                path,
                self.headers.get("Authorization"),
                b"".join(self.chunks),
                self.owners,
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
