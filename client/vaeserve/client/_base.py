"""What the sync and async clients share: their options and the request target."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.client import _convert as cv
from vaeserve.client._channel import ChannelConfig, TlsConfig

__all__ = [
    "DEFAULT_TARGET",
    "DRAWS_PER_S",
    "LOAD_TIMEOUT_S",
    "ClientBase",
    "ScoreArgs",
    "StreamRequests",
    "batches",
    "default_target",
]

DEFAULT_TARGET = "localhost:50051"


def default_target() -> str:
    """The server a client talks to when none is named: $VAESERVE_TARGET, else localhost:50051 (read when a
    client is made, never at import, so a test or a shell can set it late)."""
    return os.environ.get("VAESERVE_TARGET") or DEFAULT_TARGET


# LoadModel returns once the bundle is loaded, checked and warmed up: minutes for a large model
# on a busy server, well past a deadline sized for inference calls.
LOAD_TIMEOUT_S = 600.0
# A Score call's deadline grows by a second per this many importance draws it asks for (inputs x K):
# a floor for a convolutional model on two busy cores, so large requests are not cut off by default.
DRAWS_PER_S = 10_000
AUTO_TIMEOUT_S = 60.0
_ASSUMED_K = 1000  # the server's default K (its calibration's) when a request leaves k unset


@dataclass(frozen=True)
class ScoreArgs:
    """The options of a Score request (see the client's `score`)."""

    k: int | None = None
    seed: int | None = None
    prior_estimate: bool = False
    per_dim: bool = False
    reconstruction: bool = False
    skip_anomaly: bool = False
    alpha: float | None = None
    anomaly_scores: Sequence[str] | None = None
    typicality: bool = False
    target_se: float | None = None
    max_k: int | None = None
    threshold_quantile: float | None = None

    def request(self, x: npt.ArrayLike, spec: pb.ModelSpec) -> pb.ScoreRequest:
        return cv.score_request(x, spec, **{f.name: getattr(self, f.name) for f in fields(self)})

    def draws(self, rows: int) -> int:
        """Importance draws a request of `rows` inputs may take (for its deadline)."""
        k = self.max_k or self.k or _ASSUMED_K
        second_pass = _ASSUMED_K * (1 + len(self.anomaly_scores or ())) if self.anomaly_scores or self.typicality else 0
        return rows * (k * (2 if self.target_se else 1) + second_pass)


def batches(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` rows covering n rows (one empty slice for n = 0: the server
    answers an empty batch with its own error)."""
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {size}")
    return [slice(start, min(start + size, n)) for start in range(0, n, size)] or [slice(0, 0)]


class StreamRequests:
    """ScoreStream requests built as the chunks come. gRPC would report an error raised while building
    one as a bare UNKNOWN, so the stream ends there and the error waits in `error`, to be raised."""

    def __init__(
        self,
        x: npt.ArrayLike | Iterable[npt.ArrayLike],
        batch_size: int,
        spec: pb.ModelSpec,
        args: ScoreArgs,
    ) -> None:
        if isinstance(x, np.ndarray):
            array = x
            self.chunks: Iterable[npt.ArrayLike] = (array[s] for s in batches(len(array), batch_size))
            self.total = len(array)
        else:
            self.chunks, self.total = x, 0  # type: ignore[assignment]
        self.build = functools.partial(args.request, spec=spec)
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[pb.ScoreRequest]:
        for chunk in self.chunks:
            try:
                request = self.build(np.asarray(chunk))
            except Exception as exc:
                self.error = exc
                return
            yield request

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


class ClientBase:
    """Options of `Client` and `AsyncClient`; `_open()` makes the channel and stubs."""

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float | Literal["auto"] | None = "auto",
        batch_size: int = 1024,
        concurrency: int = 2,
        model: str | None = None,
        version: str | None = None,
        tls: TlsConfig | None = None,
        retries: int = 3,
        round_robin: bool = False,
        max_message_mb: int = 64,
        token: str | None = None,
        connections: int = 1,
    ) -> None:
        """`target` is host:port, or dns:///name:port with `round_robin` to spread calls over replicas (None:
        $VAESERVE_TARGET, else localhost:50051);
        `timeout` is each call's deadline in seconds (None: none; "auto": 60 s, and a Score call's grows
        by a second per DRAWS_PER_S importance draws it asks for); arrays go in requests of `batch_size` inputs, with
        up to `concurrency` in flight; `model` and `version`, when given, must match the served model;
        calls answered UNAVAILABLE are retried up to `retries` times with exponential backoff; `token` is
        sent as a bearer token with every call (a server started with --auth-tokens needs one);
        `connections` opens that many connections and spreads a batched call's requests over them in turn,
        raising `concurrency` to at least as many (a server with --workers serves each connection in one
        worker: give a few per worker, since the kernel spreads connections over workers at random)."""
        self.config = ChannelConfig(
            target=target or default_target(),
            tls=tls,
            retries=retries,
            round_robin=round_robin,
            max_message_mb=max_message_mb,
            token=token,
            connections=max(1, connections),
        )
        self.auto_timeout = timeout == "auto"
        self.timeout: float | None = AUTO_TIMEOUT_S if timeout == "auto" else timeout
        self.batch_size = batch_size
        self.concurrency = max(1, concurrency, connections)  # every connection gets a request in flight
        self._spec: pb.ModelSpec = cv.model_spec(model, version)
        self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def _split(
        self, x: np.ndarray, build: Callable[..., Any], *, whole: bool = False, **options: Any
    ) -> tuple[list[Any], list[int]]:
        """Requests of `batch_size` rows of x (all rows in one with `whole`), and their sizes."""
        parts = [slice(0, len(x))] if whole else batches(len(x), self.batch_size)
        return [build(x[s], self._spec, **options) for s in parts], [s.stop - s.start for s in parts]

    def _score_requests(self, x: np.ndarray, args: ScoreArgs) -> tuple[list[pb.ScoreRequest], list[int]]:
        """Score requests of `batch_size` rows (one request with typicality: it tests the batch as a whole)."""
        parts = [slice(0, len(x))] if args.typicality else batches(len(x), self.batch_size)
        return [args.request(x[s], self._spec) for s in parts], [s.stop - s.start for s in parts]

    def _score_timeout(self, rows: int, args: ScoreArgs) -> float | None:
        if not self.auto_timeout:
            return self.timeout
        return AUTO_TIMEOUT_S + args.draws(rows) / DRAWS_PER_S
