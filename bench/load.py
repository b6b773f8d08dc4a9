"""Closed-loop load: N concurrent callers, each calling again as soon as its reply arrives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["LoadResult", "closed_loop", "merge"]


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    seconds: float
    latencies_ms: np.ndarray

    @property
    def calls(self) -> int:
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        return self.calls / self.seconds

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 50))

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99))


def merge(results: list[LoadResult]) -> LoadResult:
    """Several turns of the same load as one: calls and time add up, latencies are pooled."""
    return LoadResult(
        results[0].concurrency,
        sum(r.seconds for r in results),
        np.concatenate([r.latencies_ms for r in results]),
    )


async def closed_loop(
    call: Callable[[], Awaitable[object]], concurrency: int, seconds: float, warmup_s: float = 0.5
) -> LoadResult:
    latencies: list[float] = []
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + seconds

    async def worker() -> None:
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            await call()
            ended = time.perf_counter()
            if began >= measure_from:
                latencies.append(ended - began)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(concurrency, seconds, np.array(latencies) * 1000.0)
