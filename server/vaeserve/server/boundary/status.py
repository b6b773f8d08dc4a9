"""The status a caller sees for a domain error (`vaeserve.server.errors`), in one table for every protocol.

Each error class maps to a canonical status code (gRPC's codes, which the gRPC services answer
as they are); the HTTP routes answer the HTTP status of that code. Anything not in the table is
a bug: INTERNAL (HTTP 500) with a message that points at the server log and shows no details.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from vaeserve.api.codec import TensorError
from vaeserve.server.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    ModelNotFound,
    NotReady,
    PermissionDenied,
    Unauthenticated,
)

__all__ = ["HTTP_STATUS", "Refusal", "refusal_of"]

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (TensorError, grpc.StatusCode.INVALID_ARGUMENT),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
]

# As grpc-gateway maps the same codes; FAILED_PRECONDITION (model control) has no HTTP route, so no entry.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
}


@dataclass(frozen=True)
class Refusal:
    """Why a call got no reply: a status code and a message the caller can act on."""

    code: grpc.StatusCode
    message: str

    @property
    def is_bug(self) -> bool:
        """INTERNAL: nothing the caller did; the server logs it with its traceback."""
        return self.code is grpc.StatusCode.INTERNAL

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


def refusal_of(exc: BaseException) -> Refusal:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return Refusal(code, str(exc))
    return Refusal(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log")
