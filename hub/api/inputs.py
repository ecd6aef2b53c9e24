"""The one reader of what a client sends the gpulab API: JSON bodies and numeric query
arguments, each bounded where it is parsed, so bad input is a 4xx and never reaches code
that would fail on it (deep recursion, numbers that overflow, NaN and Infinity)."""

from __future__ import annotations

import json
import math
import re

from tornado import web

MAX_BODY_BYTES = 1 << 20
"""The largest JSON body of a gpulab API call (specs are a few KiB)."""

MAX_DEPTH = 32
"""How deeply arrays and objects of a body may nest (specs nest 4 deep)."""

MAX_INT = 2**63 - 1
"""Whole numbers in a body and in query arguments: what a 64-bit signed integer holds."""

_INT_DIGITS = len(str(MAX_INT)) + 1  # a sign and 19 digits: longer text is out of range


class BodyError(ValueError):
    """What is wrong with a request body, said to the client with a 400."""


def _bounded_int(text: str) -> int:
    value = int(text) if len(text) <= _INT_DIGITS else None
    if value is None or not -MAX_INT <= value <= MAX_INT:
        raise BodyError(f"a number in the body is too large: {text[:24]}... (at most {MAX_INT})")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"a number in the body is too large: {text[:24]}")
    return value


def _refuse_constant(name: str):
    raise BodyError(f"{name} is not a number JSON allows")


def _check_depth(data: object) -> None:
    """Refuse nesting deeper than MAX_DEPTH, without recursing."""
    todo = [(data, 1)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise BodyError(f"the body is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            todo.extend((v, depth + 1) for v in value)


def parse_json_body(raw: bytes | bytearray) -> dict:
    """The JSON object in ``raw`` (``{}`` when empty), or web.HTTPError(400) saying what
    is wrong with it."""
    if len(raw) > MAX_BODY_BYTES:
        raise web.HTTPError(413, f"The request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(
            bytes(raw) or b"{}",
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_refuse_constant,
        )
    except BodyError as e:
        raise web.HTTPError(400, f"The request body is not valid: {e}") from None
    except RecursionError:  # the C parser recurses once per level of nesting
        raise web.HTTPError(
            400, f"The request body is nested more than {MAX_DEPTH} levels deep"
        ) from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise web.HTTPError(400, "The request body must be JSON") from None
    if not isinstance(data, dict):
        raise web.HTTPError(400, "The request body must be a JSON object")
    try:
        _check_depth(data)
    except BodyError as e:
        raise web.HTTPError(400, f"The request body is not valid: {e}") from None
    return data


def parse_query_int(value: str, name: str, low: int, high: int) -> int:
    """A whole-number query argument from ``low`` to ``high``, or a 400 saying so."""
    text = value.strip()
    number = int(text) if re.fullmatch(r"[+-]?[0-9]{1,19}", text) else None
    if number is None or not low <= number <= high:
        raise web.HTTPError(400, f"{name} must be a whole number from {low} to {high}")
    return number
