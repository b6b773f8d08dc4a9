"""The gRPC servicer: each method decodes the request, calls the served model, encodes the reply."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc
from vaeserve.server import convert
from vaeserve.server.errors import NotReady
from vaeserve.server.model import ServedModel
from vaeserve.server.status import Context, RequestGuard, stream, unary

__all__ = ["VaeServicer"]

STREAM_AHEAD = 1  # stream messages being worked on beyond the one whose reply is next


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    """Serves one model; until `model` is set (loading, warming up) every call is UNAVAILABLE."""

    def __init__(self, guard: RequestGuard, model: ServedModel | None = None) -> None:
        self.guard = guard
        self.model = model

    def _ready(self, spec: pb.ModelSpec) -> ServedModel:
        if self.model is None:
            raise NotReady("the model is still loading; retry shortly (the health check says SERVING when ready)")
        self.model.check_model(spec.name, spec.version)
        return self.model

    @unary
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Context) -> pb.GetModelInfoResponse:
        model = self._ready(request.model)
        return convert.model_info_to_pb(model, model.engine.provider)

    @unary
    async def Encode(self, request: pb.EncodeRequest, context: Context) -> pb.EncodeResponse:
        model = self._ready(request.model)
        call = convert.encode_from_pb(request, model)
        if call.n_samples == 0:
            mean, logvar = await model.encode(call.x)
            return convert.encode_to_pb(model, call, mean, logvar, None, None)
        engine = model.engine
        mean, logvar, samples, ess = await model.call(
            lambda x, check: engine.posterior_samples(
                x, call.n_samples, call.seed, resample=call.resample, proposals=call.proposals, check=check
            ),
            call.x,
            deadline=_deadline(context),
        )
        return convert.encode_to_pb(model, call, mean, logvar, samples, ess)

    @unary
    async def Decode(self, request: pb.DecodeRequest, context: Context) -> pb.DecodeResponse:
        model = self._ready(request.model)
        call = convert.decode_from_pb(request, model)
        params = await model.decode(call.z)
        x_sample = model.engine.sample_x(params, call.seed) if call.sample else None
        return pb.DecodeResponse(
            header=convert.header(model), decoded=convert.decoded_to_pb(params, x_sample), seed=call.seed
        )

    @unary
    async def Sample(self, request: pb.SampleRequest, context: Context) -> pb.SampleResponse:
        model = self._ready(request.model)
        call = convert.sample_from_pb(request, model)
        z = model.engine.noise.draws(call.seed, call.n)
        params = await model.decode(z)
        x_sample = model.engine.sample_x(params, call.seed) if call.sample_x else None
        return pb.SampleResponse(
            header=convert.header(model),
            z=codec.to_proto(z),
            decoded=convert.decoded_to_pb(params, x_sample),
            seed=call.seed,
        )

    @unary
    async def Score(self, request: pb.ScoreRequest, context: Context) -> pb.ScoreResponse:
        return await self._score(request, context)

    @stream
    async def ScoreStream(
        self, requests: AsyncIterator[pb.ScoreRequest], context: Context
    ) -> AsyncIterator[pb.ScoreResponse]:
        # One message is scored while the next is received and checked, and the previous reply sent:
        # replies still go out in order, and an error ends the stream at its own message.
        pending: deque[asyncio.Task[pb.ScoreResponse]] = deque()
        try:
            async for request in requests:
                pending.append(asyncio.create_task(self._score(request, context)))
                if len(pending) > STREAM_AHEAD:
                    yield await pending.popleft()
            while pending:
                yield await pending.popleft()
        finally:
            for task in pending:
                task.cancel()

    async def _score(self, request: pb.ScoreRequest, context: Context) -> pb.ScoreResponse:
        model = self._ready(request.model)
        call = convert.score_from_pb(request, model)
        result = await model.score(call.x, call.options, call.seed, _deadline(context))
        return convert.score_to_pb(model, call, result)
