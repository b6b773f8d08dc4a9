"""The one place where domain errors become gRPC status codes, with the per-request log line.

Every servicer method is wrapped by ``unary`` or ``stream``: they give the request an id,
enforce the bound on requests in flight (beyond it RESOURCE_EXHAUSTED, at once), map
errors to status codes with their message, and log one line per request.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from vaeserve.api.codec import TensorError
from vaeserve.server.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    LimitExceeded,
    ModelNotFound,
    NotReady,
)
from vaeserve.server.metrics import Metrics

__all__ = ["Context", "RequestGuard", "request_id", "status_of", "stream", "unary"]

log = logging.getLogger("vaeserve.requests")
errors_log = logging.getLogger(__name__)

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (TensorError, grpc.StatusCode.INVALID_ARGUMENT),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
]

_request_id: ContextVar[str] = ContextVar("request_id", default="")
_ID_PREFIX = uuid.uuid4().hex[:8]  # unique per process; a counter makes ids unique within it
_ids = itertools.count(1)

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep", bound=Message)


def request_id() -> str:
    """The id of the request being handled (for reply headers)."""
    return _request_id.get()


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"


class RequestGuard:
    def __init__(self, max_in_flight: int, log_requests: bool = True, metrics: Metrics | None = None) -> None:
        self.max_in_flight = max_in_flight
        self.log_requests = log_requests
        self.metrics = metrics
        self.in_flight = 0
        if metrics:
            metrics.track_in_flight(lambda: self.in_flight)

    def enter(self) -> None:
        if self.in_flight >= self.max_in_flight:
            raise LimitExceeded(
                f"server busy: {self.in_flight} requests in flight (max_in_flight "
                f"{self.max_in_flight}); retry with backoff"
            )
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1

    def begin(self, context: Context) -> str:
        given = dict(context.invocation_metadata() or ()).get("x-request-id")
        rid = str(given)[:64] if given else f"{_ID_PREFIX}-{next(_ids):x}"
        _request_id.set(rid)
        return rid

    @staticmethod
    def code_of(method: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
        code, message = status_of(exc)
        if code is grpc.StatusCode.INTERNAL:
            errors_log.error("%s failed (request %s)", method, request_id(), exc_info=exc)
        return code, message

    def done(self, method: str, rid: str, code: str, started: float, in_bytes: int, out_bytes: int) -> None:
        seconds = time.perf_counter() - started
        if self.metrics:
            self.metrics.observe_request(method, code, seconds)
        if self.log_requests:
            log.info(
                "rpc method=%s id=%s status=%s in_bytes=%d out_bytes=%d ms=%.2f",
                method,
                rid,
                code,
                in_bytes,
                out_bytes,
                seconds * 1000.0,
            )


class _Guarded(Protocol):
    guard: RequestGuard


def unary(
    method: Callable[[Any, Req, Context], Awaitable[Rep]],
) -> Callable[[Any, Req, Context], Awaitable[Rep]]:
    @functools.wraps(method)
    async def wrapper(self: _Guarded, request: Req, context: Context) -> Rep:
        guard, started = self.guard, time.perf_counter()
        rid, code, out_bytes = guard.begin(context), "OK", 0
        try:
            guard.enter()
            try:
                reply = await method(self, request, context)
            finally:
                guard.leave()
            if guard.log_requests:
                out_bytes = reply.ByteSize()
            return reply
        except grpc.aio.AbortError:
            code = "ABORTED"
            raise
        except Exception as exc:
            status, message = guard.code_of(method.__name__, exc)
            code = status.name
            await context.abort(status, message)
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            in_bytes = request.ByteSize() if guard.log_requests else 0  # sizes cost a pass: only for the log
            guard.done(method.__name__, rid, code, started, in_bytes, out_bytes)

    return wrapper


def stream(
    method: Callable[[Any, AsyncIterator[Req], Context], AsyncIterator[Rep]],
) -> Callable[[Any, AsyncIterator[Req], Context], AsyncIterator[Rep]]:
    @functools.wraps(method)
    async def wrapper(self: _Guarded, requests: AsyncIterator[Req], context: Context) -> AsyncIterator[Rep]:
        guard, started = self.guard, time.perf_counter()
        rid, code, sizes = guard.begin(context), "OK", [0, 0]

        async def counted() -> AsyncIterator[Req]:
            async for request in requests:
                sizes[0] += request.ByteSize()
                yield request

        try:
            guard.enter()
            try:
                async for reply in method(self, counted(), context):
                    sizes[1] += reply.ByteSize()
                    yield reply
            finally:
                guard.leave()
        except grpc.aio.AbortError:
            code = "ABORTED"
            raise
        except Exception as exc:
            status, message = guard.code_of(method.__name__, exc)
            code = status.name
            await context.abort(status, message)
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            guard.done(method.__name__, rid, code, started, sizes[0], sizes[1])

    return wrapper
