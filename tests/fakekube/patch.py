"""The three PATCH flavours the apiserver accepts for built-in types.

- ``application/merge-patch+json``: RFC 7386 JSON merge patch (``null`` deletes a key,
  lists are replaced whole).
- ``application/strategic-merge-patch+json``: Kubernetes' strategic merge patch
  (``k8s.io/apimachinery/pkg/util/strategicpatch``). Lists with a ``patchMergeKey`` in
  the Go types are merged element by element (``containers``/``env``/``volumes`` by
  ``name``, container ``ports`` by ``containerPort``, Service ``ports`` by ``port``,
  ``volumeMounts`` by ``mountPath``, ``conditions`` by ``type``, ``ownerReferences``
  by ``uid``); ``finalizers`` merge as a set; other lists are replaced. The
  ``$patch: replace|delete|merge``, ``$retainKeys``, ``$setElementOrder/<list>`` and
  ``$deleteFromPrimitiveList/<list>`` directives are honoured.
- ``application/json-patch+json``: RFC 6902 operations (add, remove, replace, move,
  copy, test) on RFC 6901 pointers.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# (path suffix, merge key); list items are "*" in a path. Longer suffixes first.
_MERGE_KEYS: list[tuple[tuple[str, ...], str]] = [
    (("containers", "*", "ports"), "containerPort"),
    (("initContainers", "*", "ports"), "containerPort"),
    (("ephemeralContainers", "*", "ports"), "containerPort"),
    (("containers", "*", "env"), "name"),
    (("initContainers", "*", "env"), "name"),
    (("ephemeralContainers", "*", "env"), "name"),
    (("containers", "*", "volumeMounts"), "mountPath"),
    (("initContainers", "*", "volumeMounts"), "mountPath"),
    (("containers", "*", "volumeDevices"), "devicePath"),
    (("containers", "*", "resizePolicy"), "resourceName"),
    (("metadata", "ownerReferences"), "uid"),
    (("status", "conditions"), "type"),
    (("status", "addresses"), "type"),
    (("spec", "ports"), "port"),
    (("containers",), "name"),
    (("initContainers",), "name"),
    (("ephemeralContainers",), "name"),
    (("volumes",), "name"),
    (("imagePullSecrets",), "name"),
    (("hostAliases",), "ip"),
    (("resourceClaims",), "name"),
    (("schedulingGates",), "name"),
    (("topologySpreadConstraints",), "topologyKey"),
]
_PRIMITIVE_MERGE: list[tuple[str, ...]] = [("metadata", "finalizers")]


def _patch_error(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


def _suffix_match(path: tuple[str, ...], suffix: tuple[str, ...]) -> bool:
    return len(path) >= len(suffix) and path[-len(suffix) :] == suffix


def merge_key_for(path: tuple[str, ...]) -> str | None:
    for suffix, key in _MERGE_KEYS:
        if _suffix_match(path, suffix):
            return key
    return None


def json_merge_patch(original: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


_DELETE = object()


def strategic_merge_patch(original: dict, patch: dict) -> dict:
    if not isinstance(patch, dict):
        raise _patch_error("strategic merge patch must be a JSON object")
    merged = _merge_map(copy.deepcopy(original), patch, ())
    return {} if merged is _DELETE else merged


def _merge_map(original: dict | None, patch: dict, path: tuple[str, ...]) -> Any:
    original = original if isinstance(original, dict) else {}
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive not in (None, "merge"):
        raise _patch_error(f"Unknown patch type: {directive}")
    orders: dict[str, list] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(original.get(name), list):
                original[name] = [v for v in original[name] if v not in value]
            continue
        if value is None:
            original.pop(key, None)
            continue
        sub = path + (key,)
        current = original.get(key)
        if isinstance(value, dict):
            merged = _merge_map(current, value, sub)
            if merged is _DELETE:
                original.pop(key, None)
            else:
                original[key] = merged
        elif isinstance(value, list):
            original[key] = _merge_list(current if isinstance(current, list) else [], value, sub)
        else:
            original[key] = copy.deepcopy(value)
    for name, order in orders.items():
        if isinstance(original.get(name), list):
            original[name] = _apply_order(original[name], order, merge_key_for(path + (name,)))
    if "$retainKeys" in patch:
        keep = set(patch["$retainKeys"] or [])
        original = {k: v for k, v in original.items() if k in keep}
    return original


def _merge_list(original: list, patch: list, path: tuple[str, ...]) -> list:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [copy.deepcopy(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    if any(_suffix_match(path, s) for s in _PRIMITIVE_MERGE):
        result = list(original)
        for item in patch:
            if item not in result:
                result.append(item)
        return result
    key = merge_key_for(path)
    if key is None or not all(isinstance(p, dict) for p in patch):
        return copy.deepcopy(patch)
    result = [copy.deepcopy(o) for o in original]
    item_path = path + ("*",)
    for item in patch:
        if key not in item:
            raise _patch_error(f"map: {item} does not contain declared merge key: {key}")
        index = next(
            (i for i, o in enumerate(result) if isinstance(o, dict) and o.get(key) == item[key]),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
            continue
        if index is None:
            merged = _merge_map({}, item, item_path)
            if merged is not _DELETE:
                result.append(merged)
        else:
            merged = _merge_map(result[index], item, item_path)
            if merged is _DELETE:
                result.pop(index)
            else:
                result[index] = merged
    return result


def _apply_order(items: list, order: list, key: str | None) -> list:
    def ident(item: Any) -> Any:
        return item.get(key) if key and isinstance(item, dict) else item

    wanted = [ident(o) if isinstance(o, dict) else o for o in order]
    ordered = [i for w in wanted for i in items if ident(i) == w]
    return ordered + [i for i in items if ident(i) not in wanted]


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _patch_error(f'invalid JSON pointer "{path}": must start with "/"')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    """The container holding the last segment of ``parts`` and that segment."""
    current = doc
    for part in parts[:-1]:
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise _patch_error(
                f'the server rejected our request due to an error in our request: missing path "{path}"'
            )
    return current, parts[-1]


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, last = _resolve(doc, parts, path)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _patch_error(
        f'the server rejected our request due to an error in our request: missing path "{path}"'
    )


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _resolve(doc, parts, path)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise _patch_error(f'add operation does not apply: index out of range in "{path}"')
    else:
        raise _patch_error(f'add operation does not apply: doc is missing path: "{path}"')
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent, last = _resolve(doc, parts, path)
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        parent.pop(int(last))
    else:
        raise _patch_error(f'remove operation does not apply: doc is missing path: "{path}"')
    return doc


def json_patch(original: Any, operations: Any) -> Any:
    """RFC 6902."""
    if not isinstance(operations, list):
        raise ApiError(
            400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
        )
    doc = copy.deepcopy(original)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise _patch_error("json patch operations need 'op' and 'path'")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            doc = (
                _add(_remove(doc, path), path, copy.deepcopy(op.get("value")))
                if _pointer(path)
                else copy.deepcopy(op.get("value"))
            )
        elif kind == "move":
            value = _get(doc, op["from"])
            doc = _add(_remove(doc, op["from"]), path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op["from"])))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise _patch_error(f"testing value {path} failed: test failed")
        else:
            raise _patch_error(f"Unexpected kind: {kind}")
    return doc
