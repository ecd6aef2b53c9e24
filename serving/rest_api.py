"""The model server's REST API, as TF Serving's: ``/v1/models/...`` status, metadata and
``:predict``.

``RestApi.handle`` answers one request (a ``Response`` of JSON), dispatched and worded as
TF Serving's HttpRestApiHandler does; :mod:`.http_server` calls it for each request, on a
TCP port or a unix socket.
"""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import unquote

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from . import tensors
from .errors import INVALID_ARGUMENT, OK, UNAUTHENTICATED, UNIMPLEMENTED, ServingError
from .http_server import Response
from .predictor import Predictor, token_ok

_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)


class RestApi:
    """Every ``/v1/...`` request, dispatched as TF Serving's HttpRestApiHandler does, and
    TF Serving's Prometheus endpoint at ``monitoring_path`` ("": none)."""

    def __init__(self, predictor: Predictor, token: str, monitoring_path: str = ""):
        self.predictor = predictor
        self.token = token
        self.monitoring_path = monitoring_path

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes, owners: bool):
        """The HTTP server's handler (``http_server.Handler``): the API's paths and the
        Prometheus endpoint; 404 for the rest, as TF Serving. ``owners``: the request came
        over the unix socket, which only the model's owner (and root) can connect to: no
        token needed. A Response, or an awaitable of one (a prediction waiting for its
        batch); what raises is the server's 500."""
        authorization = headers.get("authorization")
        lower = path.lower()
        if lower.startswith("/v1/") or lower == "/v1":
            try:
                self._authorize(authorization, owners)
                result = self._dispatch(method, path, body)
            except ServingError as e:
                return _failed(e)
            return Response(200, result) if isinstance(result, bytes) else self._later(result)
        if path == self.monitoring_path and method == "GET":
            try:
                self._authorize(authorization, owners)
            except ServingError as e:
                return _failed(e)
            return Response(200, self.predictor.metrics.exposition(), _PROMETHEUS)
        return Response(404, b"")

    def _authorize(self, authorization: str | None, owners: bool) -> None:
        if self.token and not owners and not token_ok(authorization, self.token):
            raise ServingError(UNAUTHENTICATED, "a valid model token is needed")

    async def _later(self, pending) -> Response:
        try:
            return Response(200, await pending)
        except ServingError as e:
            return _failed(e)

    def _dispatch(self, method: str, path: str, body: bytes):
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
            return self._predict(name, number, label, body)
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

    def _predict(self, name: str, number: int | None, label: str | None, body: bytes):
        """A prediction's JSON answer, or an awaitable of it; counted in the metrics."""
        t0 = time.perf_counter()
        metrics = self.predictor.metrics
        try:
            servable = self.predictor.registry.servable(name, number, label)
            doc = tensors.parse_request(body)
            signature = doc.get("signature_name", "")
            _, sig = servable.signature(signature)
            inputs, fmt = tensors.request_tensors(doc, {k: v.dtype for k, v in sig.inputs.items()})
            future = self.predictor.submit(servable, signature, inputs)
            if future.done():
                answer = tensors.dumps(tensors.response_json(future.result(), fmt))
                metrics.request(name, "Predict", "REST", OK, time.perf_counter() - t0)
                return answer
        except ServingError as e:
            metrics.request(name, "Predict", "REST", e.code, time.perf_counter() - t0)
            raise
        return self._batched(future, fmt, name, t0)

    async def _batched(self, future, fmt: str, name: str, t0: float) -> bytes:
        """The answer of a prediction that waits for its batch."""
        metrics = self.predictor.metrics
        try:
            outputs = await asyncio.wrap_future(future)
        except ServingError as e:
            metrics.request(name, "Predict", "REST", e.code, time.perf_counter() - t0)
            raise
        metrics.request(name, "Predict", "REST", OK, time.perf_counter() - t0)
        return tensors.dumps(tensors.response_json(outputs, fmt))


def _failed(e: ServingError) -> Response:
    """TF Serving's answer to a request that failed: its HTTP status, ``{"error": ...}``."""
    return Response(e.http_status, tensors.dumps({"error": e.message}))


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
