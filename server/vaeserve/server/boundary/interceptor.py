"""The one request boundary: a grpc.aio server interceptor that every service's methods pass through.

For each call it gives the request an id (the client's ``x-request-id`` metadata, or a new one)
and sends it back in the trailing metadata of every reply, errors included; admits it or refuses
it at once beyond ``max_in_flight`` (RESOURCE_EXHAUSTED); maps domain errors to status codes with
their message (anything unexpected is logged with its traceback and answered INTERNAL); writes one
log line; and records the request metrics, labelled by the model and version that served it.
A new service gets all of this by being added to the server: no per-method decorators.

Health checking and reflection pass through untouched: probes are never refused nor logged.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from vaeserve.api.codec import TensorError
from vaeserve.server.boundary.metrics import Metrics
from vaeserve.server.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    LimitExceeded,
    ModelNotFound,
    NotReady,
)

__all__ = ["REQUEST_ID_KEY", "Boundary", "Context", "RequestInfo", "current_request", "status_of"]

log = logging.getLogger("vaeserve.requests")
errors_log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
PASS_THROUGH = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (TensorError, grpc.StatusCode.INVALID_ARGUMENT),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
]

_ID_PREFIX = uuid.uuid4().hex[:8]  # unique per process; a counter makes ids unique within it
_ids = itertools.count(1)

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass
class RequestInfo:
    """What the boundary knows of the call being handled; the registry fills in the model."""

    request_id: str
    model: str = ""
    version: str = ""


_current: ContextVar[RequestInfo | None] = ContextVar("vaeserve_request", default=None)


def current_request() -> RequestInfo:
    """The call being handled; outside a call (a direct test of a servicer), a blank one."""
    return _current.get() or RequestInfo("")


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"


_Interceptor: Any = grpc.aio.ServerInterceptor  # generic in grpc-stubs only, not at run time


class Boundary(_Interceptor):
    def __init__(self, max_in_flight: int, log_requests: bool = True, metrics: Metrics | None = None) -> None:
        self.max_in_flight = max_in_flight
        self.log_requests = log_requests
        self.metrics = metrics
        self.in_flight = 0
        if metrics:
            metrics.track_in_flight(lambda: self.in_flight)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # grpc-stubs types handlers' behaviours as synchronous; on a grpc.aio server they are async.
        handler: Any = await continuation(details)
        service, _, method = details.method.lstrip("/").rpartition("/")
        if handler is None or service in PASS_THROUGH:
            return handler
        if handler.unary_unary and inspect.iscoroutinefunction(handler.unary_unary):
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream and inspect.isasyncgenfunction(handler.stream_stream):
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    # --- the steps every call takes ------------------------------------------------------------

    def _begin(self, context: Context) -> RequestInfo:
        given = dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY)
        info = RequestInfo(str(given)[:64] if given else f"{_ID_PREFIX}-{next(_ids):x}")
        _current.set(info)
        context.set_trailing_metadata(((REQUEST_ID_KEY, info.request_id),))
        return info

    def _admit(self) -> None:
        if self.in_flight >= self.max_in_flight:
            raise LimitExceeded(
                f"server busy: {self.in_flight} requests in flight (max_in_flight "
                f"{self.max_in_flight}); retry with backoff"
            )
        self.in_flight += 1

    async def _fail(self, method: str, info: RequestInfo, exc: Exception, context: Context) -> None:
        """Answers the call with the error's status code and message (context.abort raises AbortError)."""
        code, message = status_of(exc)
        if code is grpc.StatusCode.INTERNAL:
            errors_log.error("%s failed (request %s)", method, info.request_id, exc_info=exc)
        await context.abort(code, message, trailing_metadata=((REQUEST_ID_KEY, info.request_id),))

    def _done(self, method: str, info: RequestInfo, code: str, started: float, in_bytes: int, out_bytes: int) -> None:
        seconds = time.perf_counter() - started
        if self.metrics:
            self.metrics.observe_request(method, code, info.model, info.version, seconds)
        if self.log_requests:
            model = f"{info.model}:{info.version}" if info.model else "-"
            log.info(
                "rpc method=%s id=%s model=%s status=%s in_bytes=%d out_bytes=%d ms=%.2f",
                method,
                info.request_id,
                model,
                code,
                in_bytes,
                out_bytes,
                seconds * 1000.0,
            )

    def _unary(
        self, method: str, behavior: Callable[[Message, Context], Awaitable[Message]]
    ) -> Callable[[Message, Context], Awaitable[Message]]:
        async def handle(request: Message, context: Context) -> Message:
            started, code, out_bytes = time.perf_counter(), "OK", 0
            info = self._begin(context)
            try:
                self._admit()
                try:
                    reply = await behavior(request, context)
                finally:
                    self.in_flight -= 1
                if self.log_requests:
                    out_bytes = reply.ByteSize()
                return reply
            except grpc.aio.AbortError:
                code = "ABORTED"
                raise
            except Exception as exc:
                code = status_of(exc)[0].name
                await self._fail(method, info, exc, context)
                raise  # context.abort raised already; this keeps the type checker's view honest
            except BaseException:
                code = "CANCELLED"
                raise
            finally:
                in_bytes = request.ByteSize() if self.log_requests else 0  # sizes cost a pass: only for the log
                self._done(method, info, code, started, in_bytes, out_bytes)

        return handle

    def _stream(
        self, method: str, behavior: Callable[[AsyncIterator[Message], Context], AsyncIterator[Message]]
    ) -> Callable[[AsyncIterator[Message], Context], AsyncIterator[Message]]:
        async def handle(requests: AsyncIterator[Message], context: Context) -> AsyncIterator[Message]:
            started, code, sizes = time.perf_counter(), "OK", [0, 0]
            info = self._begin(context)

            async def counted() -> AsyncIterator[Message]:
                async for request in requests:
                    sizes[0] += request.ByteSize()
                    yield request

            try:
                self._admit()
                try:
                    async for reply in behavior(counted(), context):
                        sizes[1] += reply.ByteSize()
                        yield reply
                finally:
                    self.in_flight -= 1
            except grpc.aio.AbortError:
                code = "ABORTED"
                raise
            except Exception as exc:
                code = status_of(exc)[0].name
                await self._fail(method, info, exc, context)
            except BaseException:
                code = "CANCELLED"
                raise
            finally:
                self._done(method, info, code, started, sizes[0], sizes[1])

        return handle
