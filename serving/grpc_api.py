"""The model server's gRPC API, as TF Serving's: ``PredictionService`` (Predict,
GetModelMetadata) and ``ModelService`` (GetModelStatus, HandleReloadConfigRequest).

Each servicer checks the token in the ``authorization`` metadata first and turns a
``ServingError`` into the gRPC status TF Serving answers with; ``add_services`` puts
both on a ``grpc.Server``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from google.protobuf import text_format
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from . import tensors
from .config import ConfigError, ModelConfig, parse_text
from .errors import INVALID_ARGUMENT, OK, ServingError
from .predictor import Predictor, token_ok


def add_services(
    server: grpc.Server,
    predictor: Predictor,
    token: str,
    reload: Callable[[list[ModelConfig]], None],
) -> None:
    """Serve ``PredictionService`` and ``ModelService`` on ``server``; ``reload`` takes the
    models of a HandleReloadConfigRequest."""
    guard = _Guard(token)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(predictor, guard), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelService(predictor, guard, reload), server
    )


def _spec_choice(spec) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


class _Guard:
    """Turns ServingErrors into gRPC statuses and checks the token: on a TCP port; a
    call over the unix socket needs none (only the model's owner, and root, can connect
    to it: its mode is 0600), so TF Serving's own clients work unchanged there."""

    def __init__(self, token: str):
        self.token = token

    def check(self, context) -> None:
        if not self.token or context.peer().startswith("unix:"):
            return
        meta = dict(context.invocation_metadata())
        if not token_ok(meta.get("authorization"), self.token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid model token is needed")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, predictor: Predictor, guard: _Guard):
        self.predictor, self.guard = predictor, guard

    def Predict(self, request, context):
        self.guard.check(context)
        t0 = time.perf_counter()
        name = request.model_spec.name
        try:
            response = self._predict(request)
        except ServingError as e:
            self.predictor.metrics.request(
                name, "Predict", "GRPC", e.code, time.perf_counter() - t0
            )
            context.abort(e.grpc_code, e.message)
        self.predictor.metrics.request(name, "Predict", "GRPC", OK, time.perf_counter() - t0)
        return response

    def _predict(self, request) -> predict_pb2.PredictResponse:
        if not request.HasField("model_spec"):
            raise ServingError(INVALID_ARGUMENT, "Missing ModelSpec")
        version, label = _spec_choice(request.model_spec)
        servable = self.predictor.registry.servable(request.model_spec.name, version, label)
        inputs = {k: tensors.from_proto(v) for k, v in request.inputs.items()}
        signature = request.model_spec.signature_name
        outputs = self.predictor.predict(servable, signature, inputs, list(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature or "serving_default"
        for name, arr in outputs.items():
            response.outputs[name].CopyFrom(tensors.to_proto(arr))
        return response

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
