"""What the API's request bodies must be, as pydantic models: the parts they share.

The bodies themselves sit beside the parsers that turn them into specs: a job
(``spec.JobBody``), a sweep (``sweeps.SweepBody``), a model deployment and its changes
(``model_spec.ModelBody``, ``model_spec.ModelChanges``). Each is a ``Body``: unknown
fields are refused and named with the known ones, and types are strict (a string is not
a number, a bool is not an int). ``validated`` checks a client's JSON against one and
turns the first error into one line naming the field, ``<dotted.path>: <what is wanted>
(got <value>)``, raised as ``SpecError`` (a 400 at the API). The OpenAPI document's
request-body schemas are generated from the same models (``gpulab.hub.api.openapi``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import core_schema

TAG = "~"
"""Marks the tag of a JSON shape (``shapes``) in an error's location; no field or valid
key starts with it, and it is left out of the path a message names."""


class SpecError(ValueError):
    """A spec that cannot run; the message names the field."""


class FieldError(SpecError):
    """What a value should be, in words, raised by a check of a body's field.

    ``at``: the field (dotted) below the one checked that the words are about;
    ``got``: end the message with the value given."""

    def __init__(self, words: str, at: str = "", got: bool = False):
        super().__init__(f"{at}: {words}" if at else words)
        self.words, self.at, self.got = words, at, got


@dataclass(frozen=True)
class Wanted:
    """``Annotated`` metadata: whatever is wrong with the value (its type, a bound, a
    pattern) is said as ``<text> (got <value>)``, one message for all of them (about the
    field ``at`` below it: a shorthand's)."""

    text: str
    at: str = ""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_wrap_validator_function(self._check, handler(source))

    def _check(self, value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise FieldError(self.text, at=self.at, got=True) from None


def whole(low: int, high: int, at: str = "") -> Any:
    """A whole number from ``low`` to ``high`` (not a bool, not a string of digits)."""
    words = f"a whole number from {low} to {high}"
    return Annotated[int, Field(ge=low, le=high), Wanted(words, at=at)]


def one_of(values: tuple[str, ...], words: str = "") -> Any:
    """One of ``values``; ``words`` say so (default: ``one of a, b, c``)."""
    return Annotated[Literal[values], Wanted(words or f"one of {', '.join(values)}")]


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    kinds = {int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return next((k for t, k in kinds.items() if isinstance(value, t)), "null")


def shapes(words: str, kind: Callable[[object], str | None] | None = None, **branches: Any) -> Any:
    """A value of one of several JSON types (``string=``, ``integer=``, ``number=``,
    ``boolean=``, ``array=``, ``object=``), told apart by its type (or by ``kind``, which
    names the branch of a value), so that an error is the one of the shape given; a value
    of none of them is ``<words> (got <value>)``. A whole number counts as a ``number``
    where no ``integer`` is given."""

    def shape(value: object) -> str | None:
        name = kind(value) if kind is not None else _json_kind(value)
        if name == "integer" and "integer" not in branches:
            name = "number"
        return TAG + name if name in branches else None

    union = Union[tuple(Annotated[t, Tag(TAG + name)] for name, t in branches.items())]  # noqa: UP007
    return Annotated[
        union, Discriminator(shape, custom_error_type="wanted", custom_error_message=words)
    ]


class Body(BaseModel):
    """A request body: strict types, no field it does not name."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            cls.check_fields(data)
        return data

    @classmethod
    def check_fields(cls, data: dict) -> None:
        """Refuse unknown fields, all named at once with the known ones."""
        unknown = sorted(str(k) for k in data if k not in cls.known())
        if unknown:
            raise FieldError(
                f"unknown field(s): {', '.join(unknown)}; known: {', '.join(sorted(cls.known()))}"
            )

    @classmethod
    def known(cls) -> set[str]:
        return set(cls.model_fields)


B = TypeVar("B", bound=Body)


def validated(model: type[B], body: object, what: str, **context: Any) -> B:
    """``body`` checked as a ``model`` (``context``: settings its checks read), or
    SpecError with one line about the first thing wrong with it (``what``: "a job is",
    for a body that is no JSON object)."""
    if not isinstance(body, dict):
        raise SpecError(f"{what} a JSON object")
    try:
        return model.model_validate(body, context=context)
    except ValidationError as e:
        raise SpecError(one_line(e, model)) from None


# What pydantic's own errors want, in words (the ones not said by a Wanted or a check).
WANTS = {
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
    "list_type": "a list",
    "string_type": "a string",
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "literal_error": "one of {expected}",
    "too_short": "at least {min_length} item(s)",
    "too_long": "at most {max_length} item(s)",
    "greater_than_equal": "at least {ge}",
    "greater_than": "more than {gt}",
    "less_than_equal": "at most {le}",
    "less_than": "less than {lt}",
    "string_pattern_mismatch": "text matching {pattern}",
    "value_error": "{error}",  # a check's own ValueError, said as it is
}


def one_line(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """The first of ``error``'s errors, as ``<dotted.path>: <what is wanted> (got ...)``
    (``model``: the one validated, whose fields' descriptions say what a missing one is)."""
    first = error.errors(include_url=False)[0]
    loc = list(first["loc"])
    if loc[-1:] == ["[key]"]:  # a bad key of an object: the object's error, the key given
        loc = loc[:-2]
    path = [str(p) for p in loc if not str(p).startswith(TAG)]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):
        words, got = cause.words, cause.got
        path += [cause.at] if cause.at else []
    elif first["type"] == "missing":
        words, got = _required(model, path), False
    else:
        words, got = _wanted(first), True
    if got:
        words += f" (got {shown(first['input'])})"
    return f"{'.'.join(path)}: {words}" if path else words


def _wanted(error: dict) -> str:
    """What one of pydantic's own errors wants, in words."""
    if error["type"] == "wanted":  # a Discriminator's custom error (``shapes``)
        return error["msg"]
    template = WANTS.get(error["type"])
    return template.format(**error.get("ctx", {})) if template else error["msg"]


def _required(model: type[BaseModel] | None, path: list[str]) -> str:
    about = _description(model, path).rstrip(".")
    first = about.split(" ", 1)[0]
    if first[1:] == first[1:].lower():  # "The job's ..." and "A metric", not "GPUs ..."
        about = about[:1].lower() + about[1:]
    return f"required ({about})" if about else "required"


def shown(value: object, most: int = 60) -> str:
    """A value as a message shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def _description(model: type[BaseModel] | None, path: list[str]) -> str:
    """The description of the field at ``path``, through fields that are models."""
    for i, name in enumerate(path):
        field = model.model_fields.get(name) if isinstance(model, type) else None
        if field is None:
            return ""
        if i == len(path) - 1:
            return field.description or ""
        model = field.annotation if isinstance(field.annotation, type) else None
        if model is not None and not issubclass(model, BaseModel):
            return ""
    return ""
