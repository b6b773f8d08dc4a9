"""Domain errors: what went wrong, in terms a caller can act on.

The request boundary maps each class to one status code (``vaeserve.server.boundary.status``, which
also holds the HTTP status of each code)::

    ServingError
    ├── InvalidArgument   bad input: shape, dtype, values, options  -> INVALID_ARGUMENT
    ├── LimitExceeded     over a configured limit                   -> RESOURCE_EXHAUSTED
    ├── ModelNotFound     a model name or version that is not served -> NOT_FOUND
    ├── NotReady          not serving yet, or shutting down         -> UNAVAILABLE
    ├── DeadlineExceeded  the caller's deadline passed mid-work     -> DEADLINE_EXCEEDED
    ├── Cancelled         the caller went away mid-work             -> CANCELLED
    ├── Unauthenticated   no bearer token, or not a known one       -> UNAUTHENTICATED
    ├── PermissionDenied  a known token not allowed this call       -> PERMISSION_DENIED
    └── FailedPrecondition  not possible in the server's setup     -> FAILED_PRECONDITION

Anything else is a bug: logged with its traceback and answered INTERNAL.
"""

from __future__ import annotations

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "LimitExceeded",
    "ModelNotFound",
    "NotReady",
    "PermissionDenied",
    "ServingError",
    "Unauthenticated",
]


class ServingError(Exception):
    """Base of the errors a request can end with, other than bugs."""


class InvalidArgument(ServingError, ValueError):
    pass


class LimitExceeded(ServingError):
    pass


class ModelNotFound(ServingError):
    pass


class NotReady(ServingError):
    pass


class DeadlineExceeded(ServingError):
    pass


class Cancelled(ServingError):
    pass


class Unauthenticated(ServingError):
    pass


class PermissionDenied(ServingError):
    pass


class FailedPrecondition(ServingError):
    pass
