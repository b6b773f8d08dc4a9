"""The gRPC side of the request boundary: a grpc.aio server interceptor every service passes through.

Each call goes through the request guard (`guard.py`: id, token, admission, status mapping, log
line, metrics, shared with the HTTP routes); here it gets what is gRPC's own: the request id from
the client's ``x-request-id`` metadata and back in the trailing metadata of every reply, errors
included, and a refusal answered as its status code and message. A new service gets all of this
by being added to the server: no per-method decorators. Its servicer finds the call's
`RequestInfo` with `guard.request_of(context)`.

Health checking and reflection pass through untouched: probes are never refused nor logged.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message

from vaeserve.server.boundary.guard import AUTHORIZATION_KEY, REQUEST_ID_KEY, Guard, Passage, RequestInfo
from vaeserve.server.boundary.status import Refusal

__all__ = ["Boundary", "Context"]

PASS_THROUGH = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})
PROTOCOLS = {"vaeserve.api.v1.VaeService": "v1", "inference.GRPCInferenceService": "v2"}

Context = grpc.aio.ServicerContext[Any, Any]
_ANSWERED = (grpc.aio.AbortError,)  # a handler that called context.abort has answered its call itself
_Interceptor: Any = grpc.aio.ServerInterceptor  # generic in grpc-stubs only, not at run time


class Boundary(_Interceptor):  # type: ignore[misc]
    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        # The wrapped handler of each method, made on its first call: a server's services are fixed once
        # it starts, and building a handler per call costs more than the rest of the boundary.
        self._handlers: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        wrapped = self._handlers.get(details.method)
        if wrapped is None:
            wrapped = self._wrap(await continuation(details), details.method)
            if wrapped is not None:
                self._handlers[details.method] = wrapped
        return wrapped  # type: ignore[no-any-return]

    def _wrap(self, handler: Any, path: str) -> Any:
        # grpc-stubs types handlers' behaviours as synchronous; on a grpc.aio server they are async.
        service, _, method = path.lstrip("/").rpartition("/")
        if handler is None:
            return handler
        if service in PASS_THROUGH:
            auth = self.guard.auth
            return _guarded(handler, method, self.guard) if auth is not None and auth.guard_health else handler
        protocol = PROTOCOLS.get(service, service)
        if handler.unary_unary and inspect.iscoroutinefunction(handler.unary_unary):
            return grpc.unary_unary_rpc_method_handler(
                self._unary(protocol, method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream and inspect.isasyncgenfunction(handler.stream_stream):
            return grpc.stream_stream_rpc_method_handler(
                self._stream(protocol, method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _request(self, protocol: str, method: str, context: Context, in_bytes: int = 0, hold: bool = True) -> Passage:
        metadata = dict(context.invocation_metadata() or ())
        given, authorization = metadata.get(REQUEST_ID_KEY), metadata.get(AUTHORIZATION_KEY)
        return self.guard.request(
            protocol,
            method,
            request_id=str(given) if given else None,
            authorization=str(authorization) if authorization is not None else None,
            in_bytes=in_bytes,
            hold=hold,
            key=context,
            answered=_ANSWERED,
            carrier=metadata,  # the caller's W3C trace context (traceparent), when tracing is on
        )

    def _unary(
        self, protocol: str, method: str, behavior: Callable[[Message, Context], Awaitable[Message]]
    ) -> Callable[[Message, Context], Awaitable[Message]]:
        log_requests = self.guard.log_requests

        async def handle(request: Message, context: Context) -> Message:
            # ByteSize is known to protobuf without a pass over the tensors' bytes.
            with self._request(protocol, method, context, request.ByteSize()) as info:
                context.set_trailing_metadata(((REQUEST_ID_KEY, info.request_id),))
                if info.refusal is None:
                    reply = await behavior(request, context)
                    if log_requests:
                        info.out_bytes = reply.ByteSize()
            if info.refusal is not None:
                await _abort(info.refusal, info, context)
            return reply

        return handle

    def _stream(
        self,
        protocol: str,
        method: str,
        behavior: Callable[[AsyncIterator[Message], Context], AsyncIterator[Message]],
    ) -> Callable[[AsyncIterator[Message], Context], AsyncIterator[Message]]:
        async def handle(requests: AsyncIterator[Message], context: Context) -> AsyncIterator[Message]:
            # A stream's size is not known up front: it is counted as it arrives, not held.
            with self._request(protocol, method, context, hold=False) as info:
                context.set_trailing_metadata(((REQUEST_ID_KEY, info.request_id),))
                if info.refusal is None:
                    async for reply in behavior(_counted(requests, info), context):
                        info.out_bytes += reply.ByteSize()
                        yield reply
            if info.refusal is not None:
                await _abort(info.refusal, info, context)

        return handle


async def _abort(refusal: Refusal, info: RequestInfo, context: Context) -> NoReturn:
    """Answers a refused or failed call with its status code and message (context.abort raises AbortError).
    The guard has counted it already: a caller never sees its error before the server has."""
    await context.abort(refusal.code, refusal.message, trailing_metadata=((REQUEST_ID_KEY, info.request_id),))


async def _counted(requests: AsyncIterator[Message], info: RequestInfo) -> AsyncIterator[Message]:
    async for request in requests:
        info.in_bytes += request.ByteSize()
        yield request


def _guarded(handler: Any, method: str, guard: Guard) -> Any:
    """Health or reflection behind the token check alone (no admission, log or metrics: probes stay cheap)."""

    async def check(context: Context) -> None:
        authorization = dict(context.invocation_metadata() or ()).get(AUTHORIZATION_KEY)
        refusal = guard.authorize(method, str(authorization) if authorization is not None else None)
        if refusal is not None:
            await context.abort(refusal.code, refusal.message)

    if handler.unary_unary:
        behavior = handler.unary_unary

        async def unary(request: Message, context: Context) -> Message:
            await check(context)
            return await behavior(request, context)  # type: ignore[no-any-return]

        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        stream_behavior = handler.unary_stream

        async def watch(request: Message, context: Context) -> AsyncIterator[Message]:
            await check(context)
            async for reply in stream_behavior(request, context):
                yield reply

        return grpc.unary_stream_rpc_method_handler(watch, handler.request_deserializer, handler.response_serializer)
    if handler.stream_stream:
        streams = handler.stream_stream

        async def both(requests: AsyncIterator[Message], context: Context) -> AsyncIterator[Message]:
            await check(context)
            async for reply in streams(requests, context):
                yield reply

        return grpc.stream_stream_rpc_method_handler(both, handler.request_deserializer, handler.response_serializer)
    return handler
