"""The asyncio twin of `Client`: the same methods, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc
from vaeserve.client import _convert as cv
from vaeserve.client._base import ClientBase
from vaeserve.client._client import batches
from vaeserve.client._errors import from_rpc_error
from vaeserve.client._results import Decoded, Encoded, ModelInfo, Sampled, Scores, concat

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient(ClientBase):
    """Like `Client`, for asyncio code. Create it inside a running event loop."""

    def _open(self) -> None:
        self._slots = asyncio.Semaphore(self.concurrency)
        self._channel = self.config.aio_channel()
        self._stub = vae_pb2_grpc.VaeServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any, timeout: float | None = None) -> Any:
        try:
            async with self._slots:
                return await method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.config.target) from None

    async def _batched(
        self, method: Callable[..., Awaitable[Any]], requests: list[Any], parse: Callable[[Any], T]
    ) -> list[T]:
        replies = await asyncio.gather(*(self._call(method, r) for r in requests))
        return [parse(reply) for reply in replies]

    async def info(self) -> ModelInfo:
        return cv.model_info(await self._call(self._stub.GetModelInfo, pb.GetModelInfoRequest(model=self._spec)))

    async def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        reply = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def encode(
        self,
        x: npt.ArrayLike,
        *,
        n_samples: int = 0,
        seed: int | None = None,
        resample: bool = False,
        proposals: int | None = None,
    ) -> Encoded:
        x = np.asarray(x)
        requests = [
            cv.encode_request(x[s], self._spec, n_samples=n_samples, seed=seed, resample=resample, proposals=proposals)
            for s in batches(len(x), self.batch_size)
        ]
        return concat(await self._batched(self._stub.Encode, requests, cv.encoded))

    async def decode(self, z: npt.ArrayLike, *, sample: bool = False, seed: int | None = None) -> Decoded:
        z = np.asarray(z, dtype=np.float32)
        parts = [slice(0, len(z))] if sample else batches(len(z), self.batch_size)
        requests = [cv.decode_request(z[s], self._spec, sample=sample, seed=seed) for s in parts]
        return concat(await self._batched(self._stub.Decode, requests, cv.decoded))

    async def sample(self, n: int, *, seed: int | None = None, sample_x: bool = False) -> Sampled:
        request = cv.sample_request(n, self._spec, seed=seed, sample_x=sample_x)
        return cv.sampled(await self._call(self._stub.Sample, request))

    async def score(
        self,
        x: npt.ArrayLike,
        *,
        k: int | None = None,
        seed: int | None = None,
        prior_estimate: bool = False,
        per_dim: bool = False,
        reconstruction: bool = False,
        threshold_quantile: float | None = None,
        skip_anomaly: bool = False,
    ) -> Scores:
        x = np.asarray(x)
        requests = [
            cv.score_request(
                x[s],
                self._spec,
                k=k,
                seed=seed,
                prior_estimate=prior_estimate,
                per_dim=per_dim,
                reconstruction=reconstruction,
                threshold_quantile=threshold_quantile,
                skip_anomaly=skip_anomaly,
            )
            for s in batches(len(x), self.batch_size)
        ]
        return concat(await self._batched(self._stub.Score, requests, cv.scores))

    async def score_stream(
        self,
        x: npt.ArrayLike,
        *,
        k: int | None = None,
        seed: int | None = None,
        skip_anomaly: bool = False,
        threshold_quantile: float | None = None,
    ) -> AsyncIterator[Scores]:
        """Scores `x` over one ScoreStream call, `batch_size` rows per message; yields per batch, in order."""
        array = np.asarray(x)
        requests = [
            cv.score_request(
                array[s],
                self._spec,
                k=k,
                seed=seed,
                prior_estimate=False,
                per_dim=False,
                reconstruction=False,
                threshold_quantile=threshold_quantile,
                skip_anomaly=skip_anomaly,
            )
            for s in batches(len(array), self.batch_size)
        ]
        try:
            async for reply in self._stub.ScoreStream(iter(requests)):
                yield cv.scores(reply)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.config.target) from None
