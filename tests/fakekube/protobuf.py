"""Protobuf request bodies, as kube-apiserver decodes them (``application/vnd.kubernetes.protobuf``).

client-go sends built-in objects as protobuf when its config asks for it; helm's release
storage does (its release Secrets). The envelope is the 4-byte magic ``k8s\\0`` and a
``runtime.Unknown`` (``typeMeta``, ``raw``); ``raw`` is the object in the messages of
``k8s.io/api/core/v1/generated.proto`` (``meta/v1`` for DeleteOptions). Decoded here,
into the JSON form the registry takes, for what helm sends this way: Secrets,
ConfigMaps and the DeleteOptions of a delete. Another kind in
protobuf gets 415 as from an apiserver that cannot decode it; responses are always JSON
(clients accept it beside protobuf).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .errors import ApiError

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"
OPENAPI_V2 = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of one message: varints as ints, the rest as bytes."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            out.append((number, value))
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > len(buf):
                raise ValueError("truncated field")
            out.append((number, buf[i : i + size]))
            i += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            out.append((number, int.from_bytes(buf[i : i + size], "little")))
            i += size
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def _str(v: Any) -> str:
    return bytes(v).decode("utf-8")


def _int64(v: Any) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _map(value_of: Callable[[bytes], Any]) -> Callable[[Any, Any], None]:
    """A ``map<string, V>`` field: repeated entries of key = 1, value = 2."""

    def add(into: dict, raw: Any) -> None:
        entry = dict(fields(raw))
        into[_str(entry.get(1, b""))] = value_of(entry.get(2, b""))

    return add


def _time(raw: bytes) -> str | None:
    f = dict(fields(raw))
    seconds = _int64(f.get(1, 0))
    if not seconds and not f.get(2):
        return None  # the zero time: unset, as JSON's null
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner_reference(raw: bytes) -> dict:
    names = {1: "kind", 3: "name", 4: "uid", 5: "apiVersion"}
    flags = {6: "controller", 7: "blockOwnerDeletion"}
    ref: dict[str, Any] = {}
    for number, v in fields(raw):
        if number in names:
            ref[names[number]] = _str(v)
        elif number in flags:
            ref[flags[number]] = bool(v)
    return ref


def _object_meta(raw: bytes) -> dict:
    strings = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
    meta: dict[str, Any] = {}
    for number, v in fields(raw):
        if number in strings:
            meta[strings[number]] = _str(v)
        elif number == 7:
            meta["generation"] = _int64(v)
        elif number in (8, 9):
            stamp = _time(v)
            if stamp:
                meta["creationTimestamp" if number == 8 else "deletionTimestamp"] = stamp
        elif number == 10:
            meta["deletionGracePeriodSeconds"] = _int64(v)
        elif number in (11, 12):
            _map(_str)(meta.setdefault("labels" if number == 11 else "annotations", {}), v)
        elif number == 13:
            meta.setdefault("ownerReferences", []).append(_owner_reference(v))
        elif number == 14:
            meta.setdefault("finalizers", []).append(_str(v))
    return meta


def _b64(v: Any) -> str:
    return base64.b64encode(bytes(v)).decode()


def _preconditions(raw: bytes) -> dict:
    names = {1: "uid", 2: "resourceVersion"}
    return {names[n]: _str(v) for n, v in fields(raw) if n in names}


def _set(name: str, value_of: Callable[[Any], Any]) -> Callable[[dict, Any], None]:
    def add(obj: dict, raw: Any) -> None:
        obj[name] = value_of(raw)

    return add


def _into(name: str, add: Callable[[dict, Any], None]) -> Callable[[dict, Any], None]:
    return lambda obj, raw: add(obj.setdefault(name, {}), raw)


def _append(name: str) -> Callable[[dict, Any], None]:
    return lambda obj, raw: obj.setdefault(name, []).append(_str(raw))


# (apiVersion, kind): {field number: how it goes into the JSON object}
KINDS: dict[tuple[str, str], dict[int, Callable[[dict, Any], None]]] = {
    ("v1", "Secret"): {
        1: _set("metadata", _object_meta),
        2: _into("data", _map(_b64)),
        3: _set("type", _str),
        4: _into("stringData", _map(_str)),
        5: _set("immutable", bool),
    },
    ("v1", "ConfigMap"): {
        1: _set("metadata", _object_meta),
        2: _into("data", _map(_str)),
        3: _into("binaryData", _map(_b64)),
        4: _set("immutable", bool),
    },
    # the body of a DELETE (meta/v1, sent with the group's version)
    ("v1", "DeleteOptions"): {
        1: _set("gracePeriodSeconds", _int64),
        2: _set("preconditions", _preconditions),
        3: _set("orphanDependents", bool),
        4: _set("propagationPolicy", _str),
        5: _append("dryRun"),
    },
}


def decode(raw: bytes) -> dict:
    """A protobuf-encoded object as the JSON object it stands for; ApiError when the body
    cannot be decoded (400) or is of a kind decoded only as JSON here (415)."""
    if not raw.startswith(MAGIC):
        raise ApiError(
            400, "BadRequest", "the body of the request is not a Kubernetes protobuf object"
        )
    try:
        unknown = dict(fields(raw[len(MAGIC) :]))
        type_meta = dict(fields(unknown.get(1, b"")))
        api_version, kind = _str(type_meta.get(1, b"")), _str(type_meta.get(2, b""))
        if kind == "DeleteOptions":  # meta/v1's, sent under any group's version
            api_version = api_version.rsplit("/", 1)[-1]
        spec = KINDS.get((api_version, kind))
        if spec is None:
            known = ", ".join(f"{v} {k}" for v, k in KINDS)
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json (protobuf here: {known}; got "
                f"{api_version or '?'} {kind or '?'})",
            )
        obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
        for number, v in fields(unknown.get(2, b"")):
            if number in spec:
                spec[number](obj, v)
        return obj
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(
            400, "BadRequest", f"the body of the request could not be decoded as protobuf: {e}"
        ) from None


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value: int | bytes | str) -> bytes:
    """One encoded field: an int as a varint, bytes or a string length-delimited (a
    string, bytes or an encoded message)."""
    if isinstance(value, int):
        return _encode_varint(number << 3) + _encode_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _encode_varint(number << 3 | 2) + _encode_varint(len(data)) + data


def openapi_v2_document(title: str, version: str) -> bytes:
    """gnostic's ``openapi_v2.Document`` with ``swagger``, ``info`` and empty ``paths``."""
    return field(1, "2.0") + field(2, field(1, title) + field(2, version)) + field(8, b"")
