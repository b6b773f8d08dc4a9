"""The request boundary's core, shared by every protocol: ids, admission, the log line and the metrics.

The gRPC interceptor (`interceptor.py`) and the HTTP routes (`protocols/v2/http.py`) each wrap a
call in `begin` ... `done`; between them `admit` refuses work beyond `max_in_flight` (counted over
all protocols together) and `status_of` turns a domain error into its status code and message.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field

import grpc

from vaeserve.api.codec import TensorError
from vaeserve.server.boundary.auth import Authenticator
from vaeserve.server.boundary.metrics import Metrics
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

__all__ = ["AUTHORIZATION_KEY", "REQUEST_ID_KEY", "CallBoundary", "RequestInfo", "current_request", "status_of"]

log = logging.getLogger("vaeserve.requests")
errors_log = logging.getLogger("vaeserve.server.boundary")

REQUEST_ID_KEY = "x-request-id"
AUTHORIZATION_KEY = "authorization"
# The Open Inference Protocol's health checks: open without a token, like grpc.health.v1 (unless guarded).
HEALTH_METHODS = frozenset({"ServerLive", "ServerReady"})

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

_ID_PREFIX = uuid.uuid4().hex[:8]  # unique per process; a counter makes ids unique within it
_ids = itertools.count(1)


@dataclass
class RequestInfo:
    """What the boundary knows of the call being handled; the registry fills in the model."""

    request_id: str
    protocol: str = ""
    method: str = ""
    model: str = ""
    version: str = ""
    started: float = field(default_factory=time.perf_counter)


_current: ContextVar[RequestInfo | None] = ContextVar("vaeserve_request", default=None)


def current_request() -> RequestInfo:
    """The call being handled; outside a call (a direct test of a servicer), a blank one."""
    return _current.get() or RequestInfo("")


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"


class CallBoundary:
    def __init__(
        self,
        max_in_flight: int,
        log_requests: bool = True,
        metrics: Metrics | None = None,
        auth: Authenticator | None = None,
        max_bytes_in_flight: int | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.log_requests = log_requests
        self.metrics = metrics
        self.auth = auth
        self.max_bytes_in_flight = max_bytes_in_flight
        self.bytes_in_flight = 0
        self.in_flight = 0
        if metrics:
            metrics.track_in_flight(lambda: self.in_flight)

    def begin(self, protocol: str, method: str, given_id: str | None) -> RequestInfo:
        info = RequestInfo(given_id[:64] if given_id else f"{_ID_PREFIX}-{next(_ids):x}", protocol, method)
        _current.set(info)
        return info

    def authorize(self, method: str, authorization: str | None) -> None:
        """Raises Unauthenticated or PermissionDenied unless the call's bearer token allows `method`."""
        if self.auth is not None and (method not in HEALTH_METHODS or self.auth.guard_health):
            self.auth.check(authorization, method)

    def admit(self) -> None:
        if self.in_flight >= self.max_in_flight:
            raise LimitExceeded(
                f"server busy: {self.in_flight} requests in flight (max_in_flight "
                f"{self.max_in_flight}); retry with backoff"
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    def hold(self, nbytes: int) -> None:
        """Counts a request's bytes while it is worked on; refuses one that would take the total past the bound
        (one request alone is always let through: the message limit bounds it)."""
        limit = self.max_bytes_in_flight
        if limit is not None and self.bytes_in_flight and self.bytes_in_flight + nbytes > limit:
            raise LimitExceeded(
                f"server busy: {self.bytes_in_flight / 2**20:.0f} MB of requests in progress and this one is "
                f"{nbytes / 2**20:.1f} MB (max_request_mb_in_flight {limit / 2**20:g}); retry with backoff"
            )
        self.bytes_in_flight += nbytes

    def unhold(self, nbytes: int) -> None:
        self.bytes_in_flight -= nbytes

    def failed(self, info: RequestInfo, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        """The status of a failed call; a bug is logged here with its traceback."""
        code, message = status_of(exc)
        if code is grpc.StatusCode.INTERNAL:
            errors_log.error("%s failed (request %s)", info.method, info.request_id, exc_info=exc)
        return code, message

    def done(self, info: RequestInfo, code: str, in_bytes: int = 0, out_bytes: int = 0) -> None:
        seconds = time.perf_counter() - info.started
        if self.metrics:
            self.metrics.observe_request(info.protocol, info.method, code, info.model, info.version, seconds)
        if self.log_requests:
            model = f"{info.model}:{info.version}" if info.model else "-"
            log.info(
                "rpc protocol=%s method=%s id=%s model=%s status=%s in_bytes=%d out_bytes=%d ms=%.2f",
                info.protocol,
                info.method,
                info.request_id,
                model,
                code,
                in_bytes,
                out_bytes,
                seconds * 1000.0,
            )
