"""Tensors in TF Serving's REST JSON and gRPC protos, to and from numpy.

The JSON rules are TF Serving's (its ``json_tensor``): a request names its tensors in
the row format (``instances``: one item per example, batched along a new first
dimension) or the columnar one (``inputs``); a string tensor's item may be
``{"b64": ...}``; an answer uses ``predictions`` or ``outputs`` to match, writes float32
values with the fewest digits that read back as the same float32, and writes a string
output whose name ends in ``_bytes`` as base64. Errors carry TF Serving's messages, so a
client's error handling does not have to know which server answered.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from .errors import INVALID_ARGUMENT, ServingError

# TF's dtype enum -> (numpy dtype, TF's name for messages); string tensors are objects
_NUMPY = {
    types_pb2.DT_FLOAT: (np.float32, "float"),
    types_pb2.DT_DOUBLE: (np.float64, "double"),
    types_pb2.DT_HALF: (np.float16, "half"),
    types_pb2.DT_INT8: (np.int8, "int8"),
    types_pb2.DT_INT16: (np.int16, "int16"),
    types_pb2.DT_INT32: (np.int32, "int32"),
    types_pb2.DT_INT64: (np.int64, "int64"),
    types_pb2.DT_UINT8: (np.uint8, "uint8"),
    types_pb2.DT_UINT16: (np.uint16, "uint16"),
    types_pb2.DT_UINT32: (np.uint32, "uint32"),
    types_pb2.DT_UINT64: (np.uint64, "uint64"),
    types_pb2.DT_BOOL: (np.bool_, "bool"),
    types_pb2.DT_STRING: (np.object_, "string"),
}
_BY_NUMPY = {np.dtype(np_type): enum for enum, (np_type, _) in _NUMPY.items()}
_BY_NUMPY[np.dtype(np.bytes_)] = types_pb2.DT_STRING


def dtype_name(enum: int) -> str:
    return _NUMPY.get(enum, (None, types_pb2.DataType.Name(enum)))[1]


def numpy_dtype(enum: int) -> np.dtype:
    if enum not in _NUMPY:
        raise ServingError(
            INVALID_ARGUMENT, f"tensors of type {types_pb2.DataType.Name(enum)} are not served"
        )
    return np.dtype(_NUMPY[enum][0])


# -- JSON requests -------------------------------------------------------------------------


def parse_request(body: bytes) -> dict:
    """The request's JSON object, or TF Serving's parse error."""
    if not body:
        raise ServingError(INVALID_ARGUMENT, "JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except UnicodeDecodeError:
        raise ServingError(
            INVALID_ARGUMENT, "JSON Parse error: Invalid encoding in string."
        ) from None
    except json.JSONDecodeError as e:
        raise ServingError(
            INVALID_ARGUMENT, f"JSON Parse error: {e.msg} at offset: {e.pos}"
        ) from None
    if not isinstance(doc, dict):
        raise ServingError(INVALID_ARGUMENT, f"JSON Value: {_debug(doc)} Is not object")
    signature = doc.get("signature_name", "")
    if not isinstance(signature, str):
        raise ServingError(
            INVALID_ARGUMENT,
            f"JSON Value: {_debug(doc)} not formatted correctly. 'signature_name' key must be "
            "a string value.",
        )
    return doc


def request_tensors(doc: dict, inputs: Mapping[str, int]) -> tuple[dict[str, np.ndarray], str]:
    """The input arrays of a predict request and its format ("row" or "columnar").

    ``inputs``: the signature's input names and their dtype enums.
    """
    if not inputs:
        name = doc.get("signature_name") or "DEFAULT"
        raise ServingError(INVALID_ARGUMENT, f"Failed to get input map for signature: {name}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise ServingError(
            INVALID_ARGUMENT,
            f"JSON Value: {_debug(doc)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist ",
        )
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise ServingError(
                INVALID_ARGUMENT,
                f"JSON Value: {_debug(doc)} Expecting 'instances' to be an list/array",
            )
        if not instances:
            raise ServingError(
                INVALID_ARGUMENT, f"JSON Value: {_debug(doc)} No values in 'instances' array"
            )
        return _from_instances(instances, inputs), "row"
    if has_inputs:
        return _from_inputs(doc["inputs"], inputs), "columnar"
    raise ServingError(INVALID_ARGUMENT, "Missing 'inputs' or 'instances' key")


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_object(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _from_instances(instances: list, inputs: Mapping[str, int]) -> dict[str, np.ndarray]:
    names = sorted(inputs)
    objects = _is_object(instances[0])
    if not isinstance(instances[0], dict) and len(inputs) > 1:
        raise ServingError(
            INVALID_ARGUMENT,
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map",
        )
    if not objects:
        name = names[0]
        for n, item in enumerate(instances):
            if _is_object(item):
                raise ServingError(
                    INVALID_ARGUMENT,
                    f"Expecting value/list but got object at item {n} of input list",
                )
        try:
            return {name: dense(instances, inputs[name], batched=True)}
        except ServingError as e:
            raise ServingError(
                INVALID_ARGUMENT,
                f"Failed to process element: {_failing_item(instances, inputs[name])} of "
                f"'instances' list. Error: INVALID_ARGUMENT: {e.message}",
            ) from None
    columns: dict[str, list] = {name: [] for name in names}
    for n, item in enumerate(instances):
        if not _is_object(item):
            raise ServingError(
                INVALID_ARGUMENT, f"Expecting object but got list at item {n} of input list"
            )
        for key, value in item.items():
            if key not in inputs:
                raise ServingError(
                    INVALID_ARGUMENT,
                    f"Failed to process element: {n} key: {key} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: JSON object: does not have named input: {key}",
                )
            columns[key].append(value)
        if set(item) != set(names):
            raise ServingError(
                INVALID_ARGUMENT,
                f"Failed to process element: {n} of 'instances' list. JSON object: "
                f"{_debug(item)} keys must be equal to: {','.join(names)}",
            )
    out = {}
    for name in names:
        try:
            out[name] = dense(columns[name], inputs[name], batched=True)
        except ServingError as e:
            n = _failing_item(columns[name], inputs[name])
            raise ServingError(
                INVALID_ARGUMENT,
                f"Failed to process element: {n} key: {name} of 'instances' list. Error: "
                f"INVALID_ARGUMENT: {e.message}",
            ) from None
    return out


def _failing_item(items: list, dtype: int) -> int:
    """Which instance makes a batch fail (TF Serving checks them one by one)."""
    first = None
    for n, item in enumerate(items):
        try:
            shape = dense(item, dtype).shape
        except ServingError:
            return n
        if first is None:
            first = shape
        elif shape != first:
            return n
    return 0


def _from_inputs(value, inputs: Mapping[str, int]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(inputs) > 1:
            raise ServingError(
                INVALID_ARGUMENT,
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map",
            )
        name = next(iter(inputs))
        return {name: dense(value, inputs[name])}
    out = {}
    for name in sorted(inputs):
        if name not in value:
            raise ServingError(INVALID_ARGUMENT, f"Missing named input: {name} in 'inputs' object.")
        out[name] = dense(value[name], inputs[name])
    return out


def dense(value, dtype: int, batched: bool = False) -> np.ndarray:
    """A JSON value as a dense array of ``dtype``, with TF Serving's checks: every list at
    a level has the same length, leaves sit at the same depth and have the right type.
    ``batched``: ``value`` is a list of instances (they must all have one shape)."""
    np_dtype = numpy_dtype(dtype)
    if dtype != types_pb2.DT_STRING:
        try:
            arr = np.asarray(value)
        except ValueError:
            arr = None  # ragged: the walk below says where
        if arr is not None and _numeric_fits(arr.dtype, dtype):
            try:
                return arr.astype(np_dtype, copy=False)
            except (OverflowError, ValueError):
                pass
    shape = _shape(value)
    leaves: list = []
    _walk(value, 0, shape, dtype, leaves, batched)
    if dtype == types_pb2.DT_STRING:
        out = np.empty(len(leaves), dtype=object)
        out[:] = leaves
        return out.reshape(shape)
    return np.asarray(leaves, dtype=np_dtype).reshape(shape)


def _numeric_fits(found: np.dtype, dtype: int) -> bool:
    """Whether numpy's reading of the JSON values holds only values of TF's ``dtype``."""
    if dtype == types_pb2.DT_BOOL:
        return found.kind == "b"
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF):
        return found.kind in "iuf"
    return found.kind in "iu"


def _shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _walk(value, level: int, shape: list[int], dtype: int, leaves: list, batched: bool) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise ServingError(
                INVALID_ARGUMENT,
                f"JSON Value: {_debug(value)} found at incorrect level: {level + 1} in the JSON "
                f"DOM. Expected at level: {rank}",
            )
        leaves.append(_leaf(value, dtype))
        return
    if level >= rank:
        raise ServingError(
            INVALID_ARGUMENT, f"Encountered list at unexpected level: {level} expected < {rank}"
        )
    if len(value) != shape[level]:
        if batched and level == 1:
            raise ServingError(
                INVALID_ARGUMENT,
                f"Expecting shape {_shape_text(shape[1:])} but got: {_shape_text(_shape(value))}",
            )
        raise ServingError(
            INVALID_ARGUMENT,
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected "
            f"size: {shape[level]}",
        )
    for item in value:
        _walk(item, level + 1, shape, dtype, leaves, batched)


def _leaf(value, dtype: int):
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict):
            if not _is_b64(value):
                raise ServingError(
                    INVALID_ARGUMENT,
                    f"JSON Value: {_debug(value)} not formatted correctly for base64 data",
                )
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise ServingError(INVALID_ARGUMENT, "Unable to base64 decode") from None
        raise _type_error(value, dtype)
    if isinstance(value, bool):
        if dtype == types_pb2.DT_BOOL:
            return value
        raise _type_error(value, dtype)
    if dtype == types_pb2.DT_BOOL:
        raise _type_error(value, dtype)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and dtype in (
        types_pb2.DT_FLOAT,
        types_pb2.DT_DOUBLE,
        types_pb2.DT_HALF,
    ):
        return value
    raise _type_error(value, dtype)


def _type_error(value, dtype: int) -> ServingError:
    return ServingError(
        INVALID_ARGUMENT,
        f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected type: "
        f"{dtype_name(dtype)}",
    )


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "Bool"
    if isinstance(value, int | float):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "Array"
    return "Object"


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _debug(value) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 200 else text[:200] + "..."


# -- JSON answers ----------------------------------------------------------------------------


def response_json(outputs: Mapping[str, np.ndarray], fmt: str) -> dict:
    """TF Serving's JSON answer for ``outputs`` of a ``fmt`` ("row"/"columnar") request."""
    if not outputs:
        raise ServingError(INVALID_ARGUMENT, "Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == "columnar":
        if len(names) == 1:
            return {"outputs": _values(names[0], outputs[names[0]])}
        return {"outputs": {n: _values(n, outputs[n]) for n in names}}
    batch = None
    for name in names:
        arr = outputs[name]
        if arr.ndim == 0:
            raise ServingError(INVALID_ARGUMENT, f"Tensor name: {name} has no shape information ")
        if batch is not None and arr.shape[0] != batch:
            raise ServingError(
                INVALID_ARGUMENT,
                f"Tensor name: {name} has inconsistent batch size: {arr.shape[0]} expecting: "
                f"{batch}",
            )
        batch = arr.shape[0]
    if len(names) == 1:
        return {"predictions": _values(names[0], outputs[names[0]])}
    columns = {n: _values(n, outputs[n]) for n in names}
    return {"predictions": [{n: columns[n][i] for n in names} for i in range(batch)]}


def _values(name: str, arr: np.ndarray):
    """``arr`` as nested lists of JSON values, TF Serving's way."""
    if arr.dtype == np.float32 or arr.dtype == np.float16:
        return _shortest_floats(arr)
    if arr.dtype.kind in "OSU":
        as_b64 = name.endswith("_bytes")
        flat = [_text(v, as_b64) for v in arr.ravel().tolist()]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(arr.shape).tolist()
    return arr.tolist()


def _text(value, as_b64: bool):
    if isinstance(value, str):
        value = value.encode()
    if as_b64:
        return {"b64": base64.b64encode(value).decode()}
    return value.decode("utf-8", errors="replace")


def _shortest_floats(arr: np.ndarray):
    """float32 values written as TF Serving writes them: six significant digits when
    they read back as the same float32, else nine (never the noise digits a float32
    turned into a double shows)."""
    flat = arr.ravel()
    wide = flat.tolist()
    short = [float(f"{v:.6g}") for v in wide]
    same = np.asarray(short, dtype=arr.dtype) == flat
    for i in np.flatnonzero(~same).tolist():
        short[i] = float(f"{wide[i]:.9g}")
    return np.asarray(short, dtype=np.float64).reshape(arr.shape).tolist()


def dumps(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# -- gRPC TensorProtos -----------------------------------------------------------------------

_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def from_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A request's TensorProto as an array (values in ``tensor_content`` or the typed
    fields, a single value broadcast to the shape, as TensorFlow reads them)."""
    np_dtype = numpy_dtype(proto.dtype)
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise ServingError(INVALID_ARGUMENT, "a request tensor's shape has a negative dimension")
    size = int(np.prod(shape)) if shape else 1
    if proto.tensor_content and proto.dtype != types_pb2.DT_STRING:
        data = np.frombuffer(proto.tensor_content, dtype=np_dtype)
    elif proto.dtype == types_pb2.DT_HALF:
        data = np.asarray(proto.half_val, dtype=np.uint16).view(np.float16)
    else:
        values = getattr(proto, _FIELD[proto.dtype])
        if proto.dtype == types_pb2.DT_STRING:
            data = np.empty(len(values), dtype=object)
            data[:] = list(values)
        else:
            data = np.asarray(values, dtype=np_dtype)
    if data.size == size:
        return data.reshape(shape)
    if data.size == 1 or (data.size < size and data.size > 0):
        out = np.empty(size, dtype=np_dtype)
        out[: data.size] = data
        out[data.size :] = data[-1]  # TensorFlow repeats the last value
        return out.reshape(shape)
    if data.size == 0 and size == 0:
        return data.reshape(shape)
    raise ServingError(
        INVALID_ARGUMENT,
        f"a request tensor holds {data.size} values but its shape {shape} needs {size}",
    )


def to_proto(arr: np.ndarray) -> tensor_pb2.TensorProto:
    """An answer's array as TF Serving writes it: the values in the typed field."""
    if arr.dtype.kind in "SU":
        arr = arr.astype(object)
    enum = _BY_NUMPY.get(arr.dtype)
    if enum is None:
        raise ServingError(INVALID_ARGUMENT, f"outputs of type {arr.dtype} are not served")
    proto = tensor_pb2.TensorProto(
        dtype=enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in arr.shape]
        ),
    )
    if enum == types_pb2.DT_HALF:
        proto.half_val.extend(arr.ravel().view(np.uint16).tolist())
    elif enum == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in arr.ravel())
    else:
        getattr(proto, _FIELD[enum]).extend(arr.ravel().tolist())
    return proto
