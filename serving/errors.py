"""Errors as TF Serving reports them: a canonical status code and a message.

REST answers ``{"error": message}`` with the HTTP status TF Serving maps the code to;
gRPC aborts the call with the code itself.
"""

from __future__ import annotations

import grpc

OK = "OK"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
UNAUTHENTICATED = "UNAUTHENTICATED"
UNIMPLEMENTED = "UNIMPLEMENTED"
UNAVAILABLE = "UNAVAILABLE"
INTERNAL = "INTERNAL"
UNKNOWN = "UNKNOWN"

HTTP_STATUS = {
    INVALID_ARGUMENT: 400,
    FAILED_PRECONDITION: 400,
    NOT_FOUND: 404,
    UNAUTHENTICATED: 401,
    UNIMPLEMENTED: 501,
    UNAVAILABLE: 503,
    INTERNAL: 500,
    UNKNOWN: 500,
}


class ServingError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return getattr(grpc.StatusCode, self.code, grpc.StatusCode.UNKNOWN)
