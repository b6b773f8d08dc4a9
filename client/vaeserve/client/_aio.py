"""The asyncio twin of `Client`: the same methods, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc
from vaeserve.client import _convert as cv
from vaeserve.client._base import LOAD_TIMEOUT_S, ClientBase, ScoreArgs, StreamRequests
from vaeserve.client._errors import UnavailableError, VaeServeError, from_rpc_error
from vaeserve.client._results import Decoded, Encoded, ModelInfo, ModelStatus, Sampled, Scores, concat
from vaeserve.client._trace_context import trace_metadata

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient(ClientBase):
    """Like `Client`, for asyncio code. Create it inside a running event loop."""

    def _open(self) -> None:
        self._slots = asyncio.Semaphore(self.concurrency)
        self._channels = [self.config.aio_channel() for _ in range(self.config.connections)]
        self._stubs = [vae_pb2_grpc.VaeServiceStub(channel) for channel in self._channels]
        self._channel, self._stub = self._channels[0], self._stubs[0]
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(grace=None)

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any, timeout: float | None = None) -> Any:
        try:
            async with self._slots:
                return await method(request, timeout=timeout or self.timeout, metadata=trace_metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.config.target) from None

    async def _batched(
        self,
        method: str,
        requests: list[Any],
        parse: Callable[[Any], T],
        timeouts: list[float | None] | None = None,
    ) -> list[T]:
        """Requests of RPC `method`, over the connections in turn; results in request order."""
        stubs = self._stubs
        async with asyncio.TaskGroup() as group:  # one failure cancels the other calls
            tasks = [
                group.create_task(
                    self._call(getattr(stubs[i % len(stubs)], method), r, timeouts[i] if timeouts else None)
                )
                for i, r in enumerate(requests)
            ]
        return [parse(task.result()) for task in tasks]

    async def info(self) -> ModelInfo:
        return cv.model_info(await self._call(self._stub.GetModelInfo, pb.GetModelInfoRequest(model=self._spec)))

    async def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        reply = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def list_models(self, name: str | None = None) -> list[ModelStatus]:
        reply = await self._call(self._stub.ListModels, pb.ListModelsRequest(name=name or ""))
        return cv.model_statuses(reply.models)

    async def load_model(self, name: str, *, timeout: float = LOAD_TIMEOUT_S) -> list[ModelStatus]:
        reply = await self._call(self._stub.LoadModel, pb.LoadModelRequest(name=name), timeout)
        return cv.model_statuses(reply.models)

    async def unload_model(self, name: str, version: str | None = None) -> list[ModelStatus]:
        reply = await self._call(self._stub.UnloadModel, pb.UnloadModelRequest(name=name, version=version or ""))
        return cv.model_statuses(reply.models)

    async def encode(
        self,
        x: npt.ArrayLike,
        *,
        n_samples: int = 0,
        seed: int | None = None,
        resample: bool = False,
        proposals: int | None = None,
    ) -> Encoded:
        requests, _ = self._split(
            np.asarray(x), cv.encode_request, n_samples=n_samples, seed=seed, resample=resample, proposals=proposals
        )
        return concat(await self._batched("Encode", requests, cv.encoded))

    async def decode(self, z: npt.ArrayLike, *, sample: bool = False, seed: int | None = None) -> Decoded:
        requests, _ = self._split(
            np.asarray(z, dtype=np.float32), cv.decode_request, whole=sample, sample=sample, seed=seed
        )
        return concat(await self._batched("Decode", requests, cv.decoded))

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
        alpha: float | None = None,
        anomaly_scores: Sequence[str] | None = None,
        typicality: bool = False,
        target_se: float | None = None,
        max_k: int | None = None,
        skip_anomaly: bool = False,
        threshold_quantile: float | None = None,
    ) -> Scores:
        args = ScoreArgs(
            k=k,
            seed=seed,
            prior_estimate=prior_estimate,
            per_dim=per_dim,
            reconstruction=reconstruction,
            skip_anomaly=skip_anomaly,
            alpha=alpha,
            anomaly_scores=anomaly_scores,
            typicality=typicality,
            target_se=target_se,
            max_k=max_k,
            threshold_quantile=threshold_quantile,
        )
        requests, sizes = self._score_requests(np.asarray(x), args)
        timeouts = [self._score_timeout(n, args) for n in sizes]
        return concat(await self._batched("Score", requests, cv.scores, timeouts))

    async def score_stream(
        self,
        x: npt.ArrayLike | Iterable[npt.ArrayLike],
        *,
        k: int | None = None,
        seed: int | None = None,
        alpha: float | None = None,
        anomaly_scores: Sequence[str] | None = None,
        skip_anomaly: bool = False,
        threshold_quantile: float | None = None,
    ) -> AsyncIterator[Scores]:
        """Scores `x` over one ScoreStream call: an array (`batch_size` rows per message) or an iterable
        of arrays (sent as they come); yields one Scores per message, in order."""
        args = ScoreArgs(
            k=k,
            seed=seed,
            alpha=alpha,
            anomaly_scores=anomaly_scores,
            skip_anomaly=skip_anomaly,
            threshold_quantile=threshold_quantile,
        )
        requests = StreamRequests(x, self.batch_size, self._spec, args)
        try:
            async for reply in self._stub.ScoreStream(iter(requests), metadata=trace_metadata()):
                yield cv.scores(reply)
        except grpc.RpcError as exc:
            requests.raise_error()
            raise from_rpc_error(exc, self.config.target) from None
        requests.raise_error()

    async def wait_until_serving(self, timeout: float = 60.0, poll_s: float = 0.1) -> None:
        """Returns once the server's health check says SERVING; UnavailableError after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                if await self.health(timeout=min(1.0, timeout)) == "SERVING":
                    return
                status = "NOT_SERVING"
            except VaeServeError as exc:
                status = str(exc)
            if loop.time() > deadline:
                message = f"not SERVING after {timeout:g} s ({status})"
                raise UnavailableError(grpc.StatusCode.UNAVAILABLE, message, self.config.target)
            await asyncio.sleep(poll_s)
