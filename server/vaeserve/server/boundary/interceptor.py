"""The gRPC side of the request boundary: a grpc.aio server interceptor every service passes through.

For each call it gives the request an id (the client's ``x-request-id`` metadata, or a new one)
and sends it back in the trailing metadata of every reply, errors included; admits it or refuses
it at once beyond ``max_in_flight`` (RESOURCE_EXHAUSTED); maps domain errors to status codes with
their message (anything unexpected is logged with its traceback and answered INTERNAL); writes one
log line; and records the request metrics, labelled by protocol and by the model and version that
served it. A new service gets all of this by being added to the server: no per-method decorators.

Health checking and reflection pass through untouched: probes are never refused nor logged.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from vaeserve.server.boundary.calls import AUTHORIZATION_KEY, REQUEST_ID_KEY, CallBoundary, RequestInfo, status_of

__all__ = ["Boundary", "Context"]

PASS_THROUGH = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})
PROTOCOLS = {"vaeserve.api.v1.VaeService": "v1", "inference.GRPCInferenceService": "v2"}

Context = grpc.aio.ServicerContext[Any, Any]
_Interceptor: Any = grpc.aio.ServerInterceptor  # generic in grpc-stubs only, not at run time


class Boundary(_Interceptor):  # type: ignore[misc]
    def __init__(self, calls: CallBoundary) -> None:
        self.calls = calls
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
            auth = self.calls.auth
            return _guarded(handler, method, self.calls) if auth is not None and auth.guard_health else handler
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

    def _begin(self, protocol: str, method: str, context: Context) -> tuple[RequestInfo, str | None]:
        metadata = dict(context.invocation_metadata() or ())
        given = metadata.get(REQUEST_ID_KEY)
        info = self.calls.begin(protocol, method, str(given) if given else None)
        context.set_trailing_metadata(((REQUEST_ID_KEY, info.request_id),))
        authorization = metadata.get(AUTHORIZATION_KEY)
        return info, str(authorization) if authorization is not None else None

    async def _abort(self, info: RequestInfo, exc: Exception, context: Context, in_bytes: int = 0) -> None:
        """Answers the call with the error's status code and message; context.abort raises AbortError.

        The log line and metrics are recorded first: abort sends the status before it raises, so a caller
        could otherwise see its error before the server has counted it."""
        code, message = self.calls.failed(info, exc)
        self.calls.done(info, code.name, in_bytes, 0)
        await context.abort(code, message, trailing_metadata=((REQUEST_ID_KEY, info.request_id),))

    def _unary(
        self, protocol: str, method: str, behavior: Callable[[Message, Context], Awaitable[Message]]
    ) -> Callable[[Message, Context], Awaitable[Message]]:
        calls = self.calls

        async def handle(request: Message, context: Context) -> Message:
            (info, authorization), code, out_bytes = self._begin(protocol, method, context), "OK", 0
            in_bytes = request.ByteSize()  # known to protobuf without a pass over the tensors' bytes
            try:
                calls.authorize(method, authorization)
                calls.admit()
                try:
                    calls.hold(in_bytes)
                    try:
                        reply = await behavior(request, context)
                    finally:
                        calls.unhold(in_bytes)
                finally:
                    calls.release()
                if calls.log_requests:
                    out_bytes = reply.ByteSize()
                return reply
            except grpc.aio.AbortError:
                code = "ABORTED"
                raise
            except Exception as exc:
                code = "recorded"
                await self._abort(info, exc, context, in_bytes)
                raise  # not reached: abort raised
            except BaseException:
                code = "CANCELLED"
                raise
            finally:
                if code != "recorded":
                    calls.done(info, code, in_bytes, out_bytes)

        return handle

    def _stream(
        self,
        protocol: str,
        method: str,
        behavior: Callable[[AsyncIterator[Message], Context], AsyncIterator[Message]],
    ) -> Callable[[AsyncIterator[Message], Context], AsyncIterator[Message]]:
        calls = self.calls

        async def handle(requests: AsyncIterator[Message], context: Context) -> AsyncIterator[Message]:
            (info, authorization), code, sizes = self._begin(protocol, method, context), "OK", [0, 0]

            async def counted() -> AsyncIterator[Message]:
                async for request in requests:
                    sizes[0] += request.ByteSize()
                    yield request

            try:
                calls.authorize(method, authorization)
                calls.admit()
                try:
                    async for reply in behavior(counted(), context):
                        sizes[1] += reply.ByteSize()
                        yield reply
                finally:
                    calls.release()
            except grpc.aio.AbortError:
                code = "ABORTED"
                raise
            except Exception as exc:
                code = "recorded"
                await self._abort(info, exc, context, sizes[0])
            except BaseException:
                code = "CANCELLED"
                raise
            finally:
                if code != "recorded":
                    calls.done(info, code, sizes[0], sizes[1])

        return handle


def _guarded(handler: Any, method: str, calls: CallBoundary) -> Any:
    """Health or reflection behind the token check alone (no admission, log or metrics: probes stay cheap)."""

    async def check(context: Context) -> None:
        try:
            calls.authorize(method, dict(context.invocation_metadata() or ()).get(AUTHORIZATION_KEY))
        except Exception as exc:
            await context.abort(*status_of(exc))

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
