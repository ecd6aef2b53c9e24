"""Label and field selectors, parsed and matched as ``k8s.io/apimachinery`` does.

Label selector strings (``labelSelector=``) follow ``labels.Parse``: comma-separated
requirements ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``,
``!k``, ``k>1``, ``k<1``; ``!=`` and ``notin`` also match objects without the label.
Structured ``LabelSelector`` objects (``matchLabels`` / ``matchExpressions``, used by
Deployments and ReplicaSets) follow ``metav1.LabelSelectorAsSelector``.

Field selectors (``fieldSelector=``) follow ``fields.ParseSelector``: ``f=v``,
``f==v``, ``f!=v`` joined by commas, with ``\\,`` ``\\=`` ``\\\\`` escapes; each
resource only accepts its own field labels (the apiserver answers 400 "field label
not supported" otherwise).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, bad_request

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid qualified label key, or None."""
    prefix, _, name = key.rpartition("/")
    if "/" in prefix:
        return "a qualified name must consist of an optional DNS subdomain prefix and a name"
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not _NAME_PART.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        return (
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character"
        )
    return None


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        try:
            number = int(value) if present else None
        except ValueError:
            return False
        if number is None:
            return False
        return number > int(self.values[0]) if self.op == "gt" else number < int(self.values[0])


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


_SET_REQ = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\((.*)\)\s*$")
_CMP_REQ = re.compile(r"^\s*([^!=<>\s]+)\s*(==|!=|=|>|<)\s*(\S*)\s*$")


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse a ``labelSelector`` query value; 400 BadRequest when malformed."""
    if not text or not text.strip():
        return LabelSelector()
    reqs = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise bad_request(
                f"unable to parse requirement: found '', expected: identifier in {text!r}"
            )
        if m := _SET_REQ.match(part):
            key, op = m.group(1), m.group(2)
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            req = Requirement(key, op, values)
        elif part.startswith("!"):
            req = Requirement(part[1:].strip(), "!exists")
        elif m := _CMP_REQ.match(part):
            key, op, value = m.group(1), m.group(2), m.group(3)
            op = {"==": "=", ">": "gt", "<": "lt"}.get(op, op)
            if op in ("gt", "lt") and not re.fullmatch(r"-?[0-9]+", value):
                raise bad_request(
                    f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: {value!r}"
                )
            req = Requirement(key, op, (value,))
        elif re.fullmatch(r"[^\s=!<>(),]+", part):
            req = Requirement(part, "exists")
        else:
            raise bad_request(f"unable to parse requirement: invalid label selector {part!r}")
        if problem := label_key_problem(req.key):
            raise bad_request(
                f"unable to parse requirement: key: Invalid value: {req.key!r}: {problem}"
            )
        if req.op not in ("gt", "lt"):
            for v in req.values:
                if problem := label_value_problem(v):
                    raise bad_request(
                        f"unable to parse requirement: values[0][{req.key}]: Invalid value: {v!r}: {problem}"
                    )
        reqs.append(req)
    return LabelSelector(tuple(reqs))


def selector_from_object(selector: Mapping[str, Any] | None) -> LabelSelector | None:
    """A structured ``LabelSelector`` as a matcher. None selects nothing (as for a
    nil selector); ``{}`` selects everything (as ``LabelSelectorAsSelector`` does)."""
    if selector is None:
        return None
    reqs = [
        Requirement(k, "=", (v,)) for k, v in sorted((selector.get("matchLabels") or {}).items())
    ]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in selector.get("matchExpressions") or []:
        reqs.append(
            Requirement(expr["key"], ops[expr["operator"]], tuple(expr.get("values") or ()))
        )
    return LabelSelector(tuple(reqs))


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    negate: bool


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, fields: Mapping[str, str]) -> bool:
        for req in self.requirements:
            equal = fields.get(req.field, "") == req.value
            if equal == req.negate:
                return False
        return True


def _unescape_split(text: str, sep: str) -> list[str]:
    out, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    out.append("".join(current))
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_field_selector(text: str | None, allowed: Callable[[str], bool]) -> FieldSelector:
    """Parse a ``fieldSelector`` query value; 400 for syntax errors or field labels the
    resource does not support."""
    if not text or not text.strip():
        return FieldSelector()
    reqs = []
    for part in _unescape_split(text, ","):
        part = part.strip()
        m = re.match(r"^((?:[^\\=!]|\\.)+)(==|!=|=)(.*)$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = m.group(1).strip(), m.group(2), _unescape(m.group(3))
        if not allowed(field):
            raise ApiError(400, "BadRequest", f"field label not supported: {field}")
        reqs.append(FieldRequirement(field, value, op == "!="))
    return FieldSelector(tuple(reqs))


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string a dotted field path selects on ``obj`` ("" when absent), booleans as
    "true"/"false" the way the apiserver's field sets print them."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return ""
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)
