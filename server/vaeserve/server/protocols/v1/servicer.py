"""The VaeService servicer: each method decodes the request, calls the served model, encodes the reply.

The request boundary (ids, admission, status codes, logs, metrics) is the server's interceptor, which
passes each call through the request guard; a method finds its call's `RequestInfo` there and hands it
on: to the registry, which resolves the model version, holds it for the request and names it on the
call, and the request id to the reply's header.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc
from vaeserve.server.boundary.guard import Guard, RequestInfo
from vaeserve.server.boundary.interceptor import Context
from vaeserve.server.errors import FailedPrecondition, InvalidArgument
from vaeserve.server.protocols.v1 import convert
from vaeserve.server.repository.registry import ModelRegistry

__all__ = ["VaeServicer"]

STREAM_AHEAD = 1  # stream messages being worked on beyond the one whose reply is next


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    def __init__(self, registry: ModelRegistry, guard: Guard, workers: int = 1) -> None:
        self.registry = registry
        self.guard = guard
        self.workers = workers

    def _one_process(self, method: str) -> None:
        """Model control changes one process's registry: with workers it would reach only one of them."""
        if self.workers > 1:
            raise FailedPrecondition(
                f"{method} would reach only one of this server's {self.workers} workers; change the model "
                "repository and let --repository-poll-s load it in every worker (or run one worker)"
            )

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Context) -> pb.GetModelInfoResponse:
        info = self.guard.request_of(context)
        async with self.registry.lease(request.model.name, request.model.version, info) as model:
            return convert.model_info_to_pb(model, info.request_id)

    async def Encode(self, request: pb.EncodeRequest, context: Context) -> pb.EncodeResponse:
        call, info = convert.encode_from_pb(request), self.guard.request_of(context)
        async with self.registry.lease(request.model.name, request.model.version, info) as model:
            return convert.encode_to_pb(model, await model.encode(call, _deadline(context)), info.request_id)

    async def Decode(self, request: pb.DecodeRequest, context: Context) -> pb.DecodeResponse:
        call, info = convert.decode_from_pb(request), self.guard.request_of(context)
        async with self.registry.lease(request.model.name, request.model.version, info) as model:
            return convert.decode_to_pb(model, await model.decode(call), info.request_id)

    async def Sample(self, request: pb.SampleRequest, context: Context) -> pb.SampleResponse:
        call, info = convert.sample_from_pb(request), self.guard.request_of(context)
        async with self.registry.lease(request.model.name, request.model.version, info) as model:
            return convert.sample_to_pb(model, await model.sample(call), info.request_id)

    async def Score(self, request: pb.ScoreRequest, context: Context) -> pb.ScoreResponse:
        return await self._score(request, context, self.guard.request_of(context))

    async def ScoreStream(
        self, requests: AsyncIterator[pb.ScoreRequest], context: Context
    ) -> AsyncIterator[pb.ScoreResponse]:
        # One message is scored while the next is received and checked, and the previous reply sent:
        # replies still go out in order, and an error ends the stream at its own message.
        info = self.guard.request_of(context)
        pending: deque[asyncio.Task[pb.ScoreResponse]] = deque()
        try:
            async for request in requests:
                pending.append(asyncio.create_task(self._score(request, context, info)))
                if len(pending) > STREAM_AHEAD:
                    yield await pending.popleft()
            while pending:
                yield await pending.popleft()
        finally:
            for task in pending:
                task.cancel()

    async def _score(self, request: pb.ScoreRequest, context: Context, info: RequestInfo) -> pb.ScoreResponse:
        call = convert.score_from_pb(request)
        async with self.registry.lease(request.model.name, request.model.version, info) as model:
            return convert.score_to_pb(model, await model.score(call, _deadline(context), info), info.request_id)

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=convert.model_statuses_to_pb(self.registry.entries(request.name)),
            default_model=self.registry.default_name(),
        )

    async def LoadModel(self, request: pb.LoadModelRequest, context: Context) -> pb.LoadModelResponse:
        self._one_process("LoadModel")
        await self.registry.sync([_name(request.name)], explicit=True)
        return pb.LoadModelResponse(models=convert.model_statuses_to_pb(self.registry.entries(request.name)))

    async def UnloadModel(self, request: pb.UnloadModelRequest, context: Context) -> pb.UnloadModelResponse:
        self._one_process("UnloadModel")
        await self.registry.unload(_name(request.name), request.version)
        return pb.UnloadModelResponse(models=convert.model_statuses_to_pb(self.registry.entries(request.name)))


def _name(name: str) -> str:
    if not name:
        raise InvalidArgument("name the model (the `name` field is empty)")
    return name
