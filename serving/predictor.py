"""What the model server's REST and gRPC APIs share: the ``Predictor`` and the token check.

``Predictor`` runs predictions and answers metadata and status over a
:class:`~.servables.ModelRegistry`, with TF Serving's error messages for inputs that do
not match a signature, and TensorFlow's own errors turned into their canonical codes.
``token_ok`` checks the ``Authorization`` header (gRPC: metadata) both APIs require when
the server has a token.
"""

from __future__ import annotations

import hmac
import time
from concurrent.futures import Future

import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from . import tensors
from .batching import Batcher
from .errors import INVALID_ARGUMENT, ServingError
from .monitoring import Metrics
from .servables import ModelRegistry, Servable


class Predictor:
    """Predict, metadata and status over a registry: the part REST and gRPC share; with
    a ``batcher``, predictions run in batches; ``metrics`` records the model calls."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics, batcher: Batcher | None = None):
        self.registry = registry
        self.metrics = metrics
        self.batcher = batcher

    def predict(self, servable: Servable, signature: str, inputs: dict[str, np.ndarray],
                output_filter: list[str] = ()) -> dict[str, np.ndarray]:  # fmt: skip
        """The outputs for ``inputs`` (waiting for its batch, with batching)."""
        return self.submit(servable, signature, inputs, output_filter).result()

    def submit(self, servable: Servable, signature: str, inputs: dict[str, np.ndarray],
               output_filter: list[str] = ()) -> Future:  # fmt: skip
        """The future of ``predict``'s answer: done at once without batching; a
        ServingError at once for inputs the signature does not take."""
        fn, sig = servable.signature(signature)
        self._check(sig, inputs, output_filter)
        names = list(output_filter or sig.outputs)
        model = servable.name

        def call(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            t0 = time.perf_counter()
            try:
                result = fn(**batch)
                outputs = {n: t.numpy() for n, t in result.items()}
            except (TypeError, ValueError) as e:
                raise ServingError(INVALID_ARGUMENT, _first_line(e)) from None
            except Exception as e:  # noqa: BLE001 -- TensorFlow's own errors carry their code
                raise _tf_error(e) from None
            self.metrics.model_call(model, "Predict", time.perf_counter() - t0)
            return outputs

        if self.batcher is not None:
            batched = self.batcher.submit(servable, signature or "serving_default", call, inputs)
            answer = Future()
            batched.add_done_callback(lambda done: _pick(done, names, answer))
            return answer
        answer = Future()
        try:
            outputs = call(inputs)
        except ServingError as e:
            answer.set_exception(e)
        else:
            answer.set_result({n: outputs[n] for n in names})
        return answer

    def _check(self, sig, inputs: dict[str, np.ndarray], output_filter) -> None:
        """TF Serving's errors for inputs (and output aliases) the signature does not take."""
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


def _pick(batched: Future, names: list[str], answer: Future) -> None:
    """``answer`` gets the outputs ``names`` of a batched call's result (or its error)."""
    error = batched.exception()
    if error is not None:
        answer.set_exception(error)
    else:
        outputs = batched.result()
        answer.set_result({n: outputs[n] for n in names})


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


def token_ok(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() in ("bearer", "token") and hmac.compare_digest(value.strip(), token)
