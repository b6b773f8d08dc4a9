"""The served model: the engine plus what serving adds (limits, defaults, threads, batching, deadlines).

Engine calls are CPU-bound and release the GIL inside onnxruntime, so they run on a small
thread pool; the event loop stays free for the network. A call's `check` is polled between
chunks of work, so a passed deadline or a cancelled call stops it there.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.server.batcher import DynamicBatcher
from vaeserve.server.engine import Engine, no_check
from vaeserve.server.errors import Cancelled, DeadlineExceeded, InvalidArgument, LimitExceeded, ModelNotFound
from vaeserve.server.metrics import Metrics
from vaeserve.server.results import ScoreOptions, ScoreResult
from vaeserve.server.settings import Settings

__all__ = ["Defaults", "Limits", "ServedModel"]

T = TypeVar("T")
FALLBACK_K = 1000


@dataclass(frozen=True)
class Limits:
    max_batch: int
    max_k: int
    max_samples: int
    max_in_flight: int
    max_message_bytes: int


@dataclass(frozen=True)
class Defaults:
    k: int
    seed: int
    threshold_quantile: float


@dataclass(frozen=True)
class _ScoreItem:
    x: np.ndarray
    seed: int
    options: ScoreOptions
    deadline: float | None


class ServedModel:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.manifest: Manifest = engine.manifest
        self.replica_id = settings.replica_id
        calibration = self.manifest.calibration
        self.limits = Limits(
            settings.max_batch,
            settings.max_k,
            settings.max_samples,
            settings.max_in_flight,
            settings.max_message_mb << 20,
        )
        self.defaults = Defaults(
            k=settings.default_k or (calibration.k if calibration else FALLBACK_K),
            seed=settings.default_seed,
            threshold_quantile=settings.threshold_quantile,
        )
        self._executor = ThreadPoolExecutor(settings.executor_threads, thread_name_prefix="vaeserve-run")
        self._batching = settings.batching
        self._batch_max_k = settings.batch_max_k
        self._inline_rows = settings.inline_rows
        self._batchers: dict[str | tuple[str, ScoreOptions], DynamicBatcher[Any, Any]] = {}
        self._batch_max_inputs = settings.batch_max_inputs
        self._batch_max_delay_s = settings.batch_max_delay_ms / 1e3
        self.metrics: Metrics | None = None  # set by the server

    # --- request checks shared by every RPC ------------------------------------------------

    def check_model(self, name: str, version: str) -> None:
        if (name and name != self.manifest.name) or (version and version != self.manifest.version):
            asked = f"{name or '*'}:{version or '*'}"
            raise ModelNotFound(
                f"model {asked} is not served here; this server serves {self.manifest.name}:{self.manifest.version}"
            )

    def check_batch(self, n: int, what: str = "x") -> None:
        if n > self.limits.max_batch:
            raise LimitExceeded(
                f"{what} has {n} inputs; max_batch is {self.limits.max_batch} (split the request, or use ScoreStream)"
            )

    def check_k(self, k: int, what: str = "k") -> None:
        if k < 1:
            raise InvalidArgument(f"{what} must be at least 1, got {k}")
        if k > self.limits.max_k:
            raise LimitExceeded(f"{what}={k} is above max_k={self.limits.max_k}")

    def check_samples(self, n: int, what: str) -> None:
        if n > self.limits.max_samples:
            raise LimitExceeded(f"{what} asks for {n} latent draws; max_samples is {self.limits.max_samples}")

    def check_reply(self, nbytes: int, what: str) -> None:
        """Refuses, before any work, a request whose reply could not be sent."""
        if nbytes > self.limits.max_message_bytes:
            raise LimitExceeded(
                f"{what} would make a reply of about {nbytes / 2**20:.0f} MB; the limit is "
                f"{self.limits.max_message_bytes / 2**20:.0f} MB (max_message_mb): ask for fewer inputs at once"
            )

    # --- work -----------------------------------------------------------------------------

    async def call(
        self, fn: Callable[..., T], *args: object, deadline: float | None = None, rows: int | None = None
    ) -> T:
        """Runs fn(*args, check=...); check raises once the deadline passes or the call is cancelled.

        Work of up to `inline_rows` rows (inputs x draws) runs right here on the event loop: it takes
        less time than handing it to a thread and back. Larger work runs on the pool.
        """
        if rows is not None and rows <= self._inline_rows:
            return fn(*args, check=no_check)  # too short to be worth stopping
        stop = threading.Event()

        def check() -> None:
            if stop.is_set():
                raise Cancelled("the call was cancelled")
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("the deadline passed before the work was done")

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(*args, check=check))
        except asyncio.CancelledError:
            stop.set()
            raise

    def _count(self, method: str, inputs: int, draws: int = 0) -> None:
        if self.metrics:
            self.metrics.count_inputs(method, inputs, draws)

    async def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._count("Encode", len(x))
        if self._batching:
            return await self._batcher("encode", self._encode_many).submit(x, len(x))
        return (await self._encode_many([x]))[0]

    async def decode(self, z: np.ndarray) -> dict[str, np.ndarray]:
        self._count("Decode", len(z))
        if self._batching:
            return await self._batcher("decode", self._decode_many).submit(z, len(z))
        return (await self._decode_many([z]))[0]

    async def score(self, x: np.ndarray, options: ScoreOptions, seed: int, deadline: float | None) -> ScoreResult:
        calibration = self.manifest.calibration
        cost_k = max(options.k, calibration.k if options.anomaly and calibration else 0)
        self._count("Score", len(x), options.k)
        if self._batching and cost_k <= self._batch_max_k:
            # One batcher per kind of work; the threshold is applied to each request's rows afterwards.
            key = ("score", replace(options, threshold_quantile=0.0))
            item = _ScoreItem(x, seed, options, deadline)
            return await self._batcher(key, self._score_many).submit(item, len(x))
        return await self.call(self.engine.score, x, options, seed, deadline=deadline, rows=len(x) * cost_k)

    def _batcher(
        self, key: str | tuple[str, ScoreOptions], run: Callable[[list[Any]], Awaitable[list[Any]]]
    ) -> DynamicBatcher[Any, Any]:
        batcher = self._batchers.get(key)
        if batcher is None:
            kind = key if isinstance(key, str) else key[0]
            batcher = self._batchers[key] = DynamicBatcher(
                run,
                max_inputs=self._batch_max_inputs,
                max_delay_s=self._batch_max_delay_s,
                on_run=lambda inputs: self._observe_run(kind, inputs),
            )
        return batcher

    def _observe_run(self, kind: str, inputs: int) -> None:
        if self.metrics:
            self.metrics.observe_batch(kind, inputs)

    async def _encode_many(self, xs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        def run(check: Callable[[], None]) -> list[tuple[np.ndarray, np.ndarray]]:
            mean, logvar = self.engine.encode(np.concatenate(xs) if len(xs) > 1 else xs[0])
            return [(mean[s], logvar[s]) for s in _spans(xs)]

        return await self.call(run, rows=sum(len(x) for x in xs))

    async def _decode_many(self, zs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        def run(check: Callable[[], None]) -> list[dict[str, np.ndarray]]:
            params = self.engine.decode(np.concatenate(zs) if len(zs) > 1 else zs[0])
            return [{name: value[s] for name, value in params.items()} for s in _spans(zs)]

        return await self.call(run, rows=sum(len(z) for z in zs))

    async def _score_many(self, items: list[_ScoreItem]) -> list[ScoreResult]:
        xs = [item.x for item in items]
        options = items[0].options
        calibration = self.manifest.calibration
        cost_k = max(options.k, calibration.k if options.anomaly and calibration else 0)

        def run(check: Callable[[], None]) -> list[ScoreResult]:
            seeds = np.concatenate([np.full(len(item.x), item.seed, np.uint64) for item in items])
            merged = self.engine.score(np.concatenate(xs), options, seeds, check)
            parts = [merged.rows(s) for s in _spans(xs)]
            for item, part in zip(items, parts):
                if part.anomaly is not None:
                    part.anomaly = self.engine.flag(part.anomaly, item.options.threshold_quantile)
            return parts

        # The merged run may stop at the last of its callers' deadlines (never, if one has none).
        deadlines = [item.deadline for item in items]
        deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
        return await self.call(run, deadline=deadline, rows=sum(len(x) for x in xs) * cost_k)

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self._executor.shutdown(wait=True, cancel_futures=True)


def _spans(parts: list[np.ndarray]) -> list[slice]:
    spans, start = [], 0
    for part in parts:
        spans.append(slice(start, start + len(part)))
        start += len(part)
    return spans
