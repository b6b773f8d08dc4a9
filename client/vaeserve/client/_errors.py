"""The client's exceptions: every failed call raises one, keeping the server's status code and message.

::

    VaeServeError                 .code (grpc.StatusCode), .details (the server's message)
    ├── InvalidArgumentError      the request was wrong: shape, dtype, values, options
    ├── NotFoundError             the model name or version is not served there
    ├── ResourceExhaustedError    over a server limit (batch, K, requests in flight, message size)
    ├── UnavailableError          server down, unreachable, loading or shutting down (retried first)
    ├── DeadlineExceededError     the call's deadline passed
    ├── CancelledError            the call was cancelled
    ├── AuthenticationError       TLS or credentials refused (UNAUTHENTICATED, PERMISSION_DENIED)
    └── ServerError               anything else (INTERNAL, UNKNOWN, ...)
"""

from __future__ import annotations

import grpc

__all__ = [
    "AuthenticationError",
    "CancelledError",
    "DeadlineExceededError",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "ServerError",
    "UnavailableError",
    "VaeServeError",
    "from_rpc_error",
]


class VaeServeError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, target: str = "") -> None:
        self.code = code
        self.details = details
        self.target = target
        where = f" from {target}" if target else ""
        super().__init__(f"{code.name}{where}: {details}")


class InvalidArgumentError(VaeServeError):
    pass


class NotFoundError(VaeServeError):
    pass


class ResourceExhaustedError(VaeServeError):
    pass


class UnavailableError(VaeServeError):
    pass


class DeadlineExceededError(VaeServeError):
    pass


class CancelledError(VaeServeError):
    pass


class AuthenticationError(VaeServeError):
    pass


class ServerError(VaeServeError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[VaeServeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
}


def from_rpc_error(exc: grpc.RpcError, target: str = "") -> VaeServeError:
    """The one place where gRPC errors become the client's exceptions."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    return _BY_CODE.get(code, ServerError)(code, details, target)
