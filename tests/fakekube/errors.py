"""API errors as the real kube-apiserver reports them: ``metav1.Status`` bodies.

Every failure leaves the fake as a ``Status`` object with the same ``reason``,
``code``, ``message`` wording and ``details`` the apiserver's ``k8s.io/apimachinery``
``errors`` package builds (``NewNotFound``, ``NewAlreadyExists``, ``NewConflict``,
``NewInvalid``, ``NewForbidden``, ``NewUnauthorized``, ``NewBadRequest``,
``NewResourceExpired``, ...), so clients (kubernetes_asyncio's ``ApiException``,
kubectl) see what they would see against a real cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FieldError:
    """One ``StatusCause`` of a 422: ``field``, a ``reason`` such as
    ``FieldValueRequired`` and the per-field message ("Required value")."""

    field: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def required(path: str, detail: str = "") -> FieldError:
    return FieldError(
        path, "FieldValueRequired", "Required value" + (f": {detail}" if detail else "")
    )


def invalid_value(path: str, value: Any, detail: str) -> FieldError:
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    return FieldError(path, "FieldValueInvalid", f"Invalid value: {shown}: {detail}")


def forbidden_field(path: str, detail: str) -> FieldError:
    return FieldError(path, "FieldValueForbidden", f"Forbidden: {detail}")


def unsupported_value(path: str, value: Any, supported: list[str]) -> FieldError:
    choices = ", ".join(f'"{s}"' for s in supported)
    return FieldError(
        path, "FieldValueNotSupported", f'Unsupported value: "{value}": supported values: {choices}'
    )


@dataclass
class ApiError(Exception):
    """A failed request; ``status()`` is the body the apiserver would send."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    # send ``details`` even when empty, as ``NewForbidden`` does (``"details":{}``)
    always_details: bool = False

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details or self.always_details:
            body["details"] = self.details
        body["code"] = self.code  # after details, in metav1.Status's field order
        return body


def _details(resource: str, name: str, group: str = "") -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return details


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{_qualified(resource, group)} "{name}" not found',
        _details(resource, name, group),
    )


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{_qualified(resource, group)} "{name}" already exists',
        _details(resource, name, group),
    )


def conflict(resource: str, name: str, group: str = "", why: str = "") -> ApiError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version and try again"
    )
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": {why}',
        _details(resource, name, group),
    )


def invalid(kind: str, name: str, errors: list[FieldError], group: str = "") -> ApiError:
    """422 as ``errors.NewInvalid``: ``<Kind> "<name>" is invalid: <field>: <msg>, ...``."""
    joined = ", ".join(str(e) for e in errors)
    if len(errors) > 1:
        joined = "[" + joined + "]"
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": e.reason, "message": e.message, "field": e.field} for e in errors],
    }
    if group:
        details["group"] = group
    return ApiError(
        422,
        "Invalid",
        f'{kind}{"." + group if group else ""} "{name}" is invalid: {joined}',
        details,
    )


def forbidden(resource: str, name: str, why: str, group: str = "") -> ApiError:
    """403 as ``errors.NewForbidden``: ``<resource> "<name>" is forbidden: <why>``;
    without a name (a collection) ``<resource> is forbidden: <why>``; without a resource
    (a non-resource path such as ``/metrics``) ``forbidden: <why>`` and empty details."""
    if not resource:
        return ApiError(403, "Forbidden", f"forbidden: {why}", {}, always_details=True)
    qualified = _qualified(resource, group)
    details: dict[str, Any] = {"name": name, "kind": resource} if name else {"kind": resource}
    if group:
        details["group"] = group
    return ApiError(
        403,
        "Forbidden",
        f'{qualified} "{name}" is forbidden: {why}' if name else f"{qualified} is forbidden: {why}",
        details,
        always_details=True,
    )


def unauthorized() -> ApiError:
    """401 as the authentication filter answers a credential no authenticator accepts
    (``errors.NewUnauthorized("Unauthorized")``: no details)."""
    return ApiError(401, "Unauthorized", "Unauthorized")


def invalid_list_options(option: str, detail: str) -> ApiError:
    """422 for query parameters ``ValidateListOptions`` refuses."""
    return invalid("ListOptions", "", [forbidden_field(option, detail)], "meta.k8s.io")


def internal(message: str) -> ApiError:
    return ApiError(
        500,
        "InternalError",
        f"Internal error occurred: {message}",
        {"causes": [{"message": message}]},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f'the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got "{content_type}")',
    )


def no_such_route() -> ApiError:
    """What the apiserver answers for a path no API group serves."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def expired(message: str) -> ApiError:
    """410 Gone, reason Expired: a resourceVersion or continue token older than the
    history the server still keeps."""
    return ApiError(410, "Expired", message)


def too_large_resource_version(requested: int, current: int) -> ApiError:
    """504 the watch cache answers when asked for a resourceVersion it has not reached."""
    return ApiError(
        504,
        "Timeout",
        f"Timeout: Too large resource version: {requested}, current: {current}",
        {
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
    )
