"""One error tree. Every error carries its HTTP status, its gRPC code and a stable code name.

The API turns any `LoopmlError` into Vertex error JSON
`{"error": {"code": <http>, "message": ..., "status": <code name>}}` (BigQuery routes add
`errors: [{"reason", "message", "domain"}]`). Messages say what happened and what to do next.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar


class LoopmlError(Exception):
    """Root of every error loopml raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL"
    grpc_code: ClassVar[int] = 13
    reason: ClassVar[str] = "backendError"  # BigQuery-style reason
    location: ClassVar[str | None] = None  # BigQuery `errors[].location`: the request field at fault

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_json(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "status": self.code,
                "details": self.details,
            }
        }

    def to_operation_error(self) -> dict[str, Any]:
        """The `error` field of a failed long-running operation (google.rpc.Status)."""
        return {"code": self.grpc_code, "message": self.message}


class InvalidArgument(LoopmlError):
    status = 400
    code = "INVALID_ARGUMENT"
    grpc_code = 3
    reason = "invalid"


class InvalidQuery(InvalidArgument):
    """SQL we cannot parse or run; the message names the line and column when known."""

    reason = "invalidQuery"
    location = "q"  # BigQuery names the query parameter `q` (locationType "parameter")


class FailedPrecondition(LoopmlError):
    status = 400
    code = "FAILED_PRECONDITION"
    grpc_code = 9
    reason = "invalid"


class PreconditionFailed(LoopmlError):
    """412: a request's precondition (If-Match etag, ifGenerationMatch) no longer holds."""

    status = 412
    code = "FAILED_PRECONDITION"
    grpc_code = 9
    reason = "conditionNotMet"


class NotFound(LoopmlError):
    status = 404
    code = "NOT_FOUND"
    grpc_code = 5
    reason = "notFound"


class AlreadyExists(LoopmlError):
    status = 409
    code = "ALREADY_EXISTS"
    grpc_code = 6
    reason = "duplicate"


class Aborted(LoopmlError):
    status = 409
    code = "ABORTED"
    grpc_code = 10
    reason = "invalid"


class PermissionDenied(LoopmlError):
    status = 403
    code = "PERMISSION_DENIED"
    grpc_code = 7
    reason = "accessDenied"


class PayloadTooLarge(LoopmlError):
    status = 413
    code = "INVALID_ARGUMENT"
    grpc_code = 3
    reason = "invalid"


class ResourceExhausted(LoopmlError):
    status = 429
    code = "RESOURCE_EXHAUSTED"
    grpc_code = 8
    reason = "rateLimitExceeded"


class Unimplemented(LoopmlError):
    status = 501
    code = "UNIMPLEMENTED"
    grpc_code = 12
    reason = "invalid"


class Unavailable(LoopmlError):
    status = 503
    code = "UNAVAILABLE"
    grpc_code = 14
    reason = "backendError"


class ServerUnreachable(LoopmlError):
    """The CLI or client could not reach a loopml server."""

    status = 503
    code = "UNAVAILABLE"
    grpc_code = 14


_BY_STATUS_NAME: dict[str, type[LoopmlError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        FailedPrecondition,
        NotFound,
        AlreadyExists,
        Aborted,
        PermissionDenied,
        ResourceExhausted,
        Unimplemented,
        Unavailable,
    )
}


def from_json(http_status: int, body: Any) -> LoopmlError:
    """Rebuild an error from an error response body (used by the Python client)."""
    message = f"HTTP {http_status}"
    status_name = ""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message", message))
        status_name = str(body["error"].get("status", ""))
    if http_status == 413:
        return PayloadTooLarge(message)
    if http_status == 404:
        return NotFound(message)
    if http_status == 409 and status_name != "ABORTED":
        return AlreadyExists(message)
    cls = _BY_STATUS_NAME.get(status_name)
    if cls is None:
        cls = InvalidArgument if 400 <= http_status < 500 else LoopmlError
    return cls(message)


def incident(exc: BaseException) -> tuple[str, str]:
    """A new incident id and the client's message for an unexpected error.

    The message names the exception type only: the details (paths, backend messages) belong in the
    server log, logged with the same id.
    """
    incident_id = secrets.token_hex(6)
    return (
        incident_id,
        f"Internal error {incident_id} ({type(exc).__name__}); the server log has the details.",
    )
