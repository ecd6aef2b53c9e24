"""Job and sweep specs from YAML or JSON files, and the error a bad one (or bad usage) is."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


class SpecFileError(Exception):
    """A spec file that cannot be read or is not a mapping: bad usage (exit 2)."""


_KINDS = {list: "list", str: "string", int: "number", float: "number", bool: "true/false"}


def load_spec(path: str, what: str = "job", name: str | None = None) -> dict:
    """A job or sweep spec from a YAML or JSON file (``-``: stdin), with ``name`` if given."""
    where = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as e:
        raise SpecFileError(f"cannot read {where}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SpecFileError(f"{where} is not a text file (a YAML or JSON {what} spec)") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise SpecFileError(f"{where} is not valid JSON: {e}") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpecFileError(f"{where} is not valid YAML or JSON: {_yaml_problem(e)}") from None
    if data is None:
        raise SpecFileError(f"{where} is empty: it should hold a {what} spec")
    if not isinstance(data, dict):
        kind = _KINDS.get(type(data), type(data).__name__)
        raise SpecFileError(
            f"{where}: a {what} spec is a mapping of fields (name: ..., "
            f"{'command' if what == 'job' else 'job'}: ...), not a {kind}"
        )

    def not_json(value):
        raise SpecFileError(
            f"{where}: {value} is read as a {type(value).__name__}: quote it to pass it as text"
        )

    data = json.loads(json.dumps(data, default=not_json))
    if name:
        data["name"] = name
    if not data.get("name"):
        raise SpecFileError(
            f"{where}: the {what} has no name: add name: to the spec or give --name"
        )
    if what == "job" and "job" in data and "parameters" in data:
        raise SpecFileError(f"{where} is a sweep spec: submit it with gpulab sweep submit")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(e).split())
