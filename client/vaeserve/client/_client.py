"""The synchronous client: one method per RPC, numpy in, typed results out."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
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

__all__ = ["Client"]

T = TypeVar("T")
Progress = Callable[[int, int], None]  # (inputs done, inputs in all)


class Client(ClientBase):
    """A vaeserve client. Large arrays are split into requests of `batch_size` inputs and the results joined
    in order; since a seeded result depends only on (input, K, seed), batching changes no number.

    >>> with Client("localhost:50051") as client:
    ...     scores = client.score(images, k=1000)
    ...     scores.log_px, scores.log_px_se, scores.percentile
    """

    def _open(self) -> None:
        self._channels = [self.config.channel() for _ in range(self.config.connections)]
        self._stubs = [vae_pb2_grpc.VaeServiceStub(channel) for channel in self._channels]
        self._channel, self._stub = self._channels[0], self._stubs[0]
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=trace_metadata())
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.config.target) from None

    def _batched(
        self,
        method: str,
        requests: list[Any],
        parse: Callable[[Any], T],
        progress: Progress | None,
        sizes: list[int],
        timeouts: list[float | None] | None = None,
    ) -> list[T]:
        """Sends requests of RPC `method` with up to `concurrency` in flight, over the connections in turn;
        results in request order."""
        pending: deque[Any] = deque()
        results: list[T] = []
        total, done = sum(sizes), 0

        def collect() -> None:
            nonlocal done
            results.append(parse(pending.popleft().result()))
            done += sizes[len(results) - 1]
            if progress:
                progress(done, total)

        try:
            for i, request in enumerate(requests):
                call = getattr(self._stubs[i % len(self._stubs)], method)
                timeout = timeouts[i] if timeouts else self.timeout
                pending.append(call.future(request, timeout=timeout, metadata=trace_metadata()))
                if len(pending) >= self.concurrency:
                    collect()
            while pending:
                collect()
        except grpc.RpcError as exc:
            for future in pending:
                future.cancel()
            raise from_rpc_error(exc, self.config.target) from None
        return results

    def info(self) -> ModelInfo:
        return cv.model_info(self._call(self._stub.GetModelInfo, pb.GetModelInfoRequest(model=self._spec)))

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """The standard gRPC health status name: SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN."""
        reply = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def list_models(self, name: str | None = None) -> list[ModelStatus]:
        """Every model and version the server knows (or only `name`'s), by name, newest version first."""
        return cv.model_statuses(self._call(self._stub.ListModels, pb.ListModelsRequest(name=name or "")).models)

    def load_model(self, name: str, *, timeout: float = LOAD_TIMEOUT_S) -> list[ModelStatus]:
        """Loads `name` from the server's repository by its version policy (new and changed versions loaded
        and warmed up, then swapped in; the others retired) and returns its versions once that is done.

        A version that fails to load is reported FAILED in the list, not raised. `timeout` is this
        call's deadline, apart from the client's: loading and warm-up can take minutes.
        """
        reply = self._call(self._stub.LoadModel, pb.LoadModelRequest(name=name), timeout)
        return cv.model_statuses(reply.models)

    def unload_model(self, name: str, version: str | None = None) -> list[ModelStatus]:
        """Retires `name` (or only its `version`) and returns what is left of it, once the retired versions
        have finished their requests in flight (up to the server's grace time; the client's timeout applies).
        Polling the repository does not bring it back; `load_model` does."""
        reply = self._call(self._stub.UnloadModel, pb.UnloadModelRequest(name=name, version=version or ""))
        return cv.model_statuses(reply.models)

    def wait_until_serving(self, timeout: float = 60.0, poll_s: float = 0.1) -> None:
        """Returns once the server's health check says SERVING; UnavailableError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health(timeout=min(1.0, timeout)) == "SERVING":
                    return
                status = "NOT_SERVING"
            except VaeServeError as exc:
                status = str(exc)
            if time.monotonic() > deadline:
                message = f"not SERVING after {timeout:g} s ({status})"
                raise UnavailableError(grpc.StatusCode.UNAVAILABLE, message, self.config.target)
            time.sleep(poll_s)

    def encode(
        self,
        x: npt.ArrayLike,
        *,
        n_samples: int = 0,
        seed: int | None = None,
        resample: bool = False,
        proposals: int | None = None,
    ) -> Encoded:
        """Posterior mean and log-variance per input; n_samples draws from q(z|x) (or resampled toward p(z|x))."""
        requests, sizes = self._split(
            np.asarray(x), cv.encode_request, n_samples=n_samples, seed=seed, resample=resample, proposals=proposals
        )
        return concat(self._batched("Encode", requests, cv.encoded, None, sizes))

    def decode(self, z: npt.ArrayLike, *, sample: bool = False, seed: int | None = None) -> Decoded:
        """Parameters of p(x|z); with sample, also x ~ p(x|z) (row i uses row i of the seed's noise, so one request)."""
        requests, sizes = self._split(
            np.asarray(z, dtype=np.float32), cv.decode_request, whole=sample, sample=sample, seed=seed
        )
        return concat(self._batched("Decode", requests, cv.decoded, None, sizes))

    def sample(self, n: int, *, seed: int | None = None, sample_x: bool = False) -> Sampled:
        """z ~ N(0, I), decoded; with sample_x, also x ~ p(x|z)."""
        return cv.sampled(self._call(self._stub.Sample, cv.sample_request(n, self._spec, seed=seed, sample_x=sample_x)))

    def score(
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
        progress: Progress | None = None,
    ) -> Scores:
        """ELBO and IWAE log p(x) with standard error, ESS and Pareto k-hat, and anomaly scores, per input.

        Anomaly scores use the calibration's K and seed: with `k` and `seed` left to the server they
        come from the same pass; otherwise name them (`anomaly_scores`) to have them computed.
        `alpha` is the flags' level (conformal p-values), `typicality` tests the whole array as one
        batch (sent as one request), `target_se` doubles K per input up to `max_k` until log_px_se
        is at most target_se.
        """
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
        return concat(self._batched("Score", requests, cv.scores, progress, sizes, timeouts))

    def score_stream(
        self,
        x: npt.ArrayLike | Iterable[npt.ArrayLike],
        *,
        k: int | None = None,
        seed: int | None = None,
        alpha: float | None = None,
        anomaly_scores: Sequence[str] | None = None,
        skip_anomaly: bool = False,
        threshold_quantile: float | None = None,
        progress: Progress | None = None,
    ) -> Iterator[Scores]:
        """Scores a large data set over one ScoreStream call: yields one Scores per batch, in order.

        `x` is an array (split into `batch_size` rows) or an iterable of arrays (sent as they come).
        """
        args = ScoreArgs(
            k=k,
            seed=seed,
            alpha=alpha,
            anomaly_scores=anomaly_scores,
            skip_anomaly=skip_anomaly,
            threshold_quantile=threshold_quantile,
        )
        requests = StreamRequests(x, self.batch_size, self._spec, args)
        done = 0
        try:
            for reply in self._stub.ScoreStream(iter(requests), timeout=None, metadata=trace_metadata()):
                result = cv.scores(reply)
                done += len(result)
                if progress:
                    progress(done, requests.total)
                yield result
        except grpc.RpcError as exc:
            requests.raise_error()
            raise from_rpc_error(exc, self.config.target) from None
        requests.raise_error()  # the stream ended early: a chunk could not be sent
