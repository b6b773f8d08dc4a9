"""Closed-loop load: N concurrent callers, each calling again as soon as its reply arrives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.calls / self.seconds


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
    lat = np.array(latencies) * 1000.0
    return LoadResult(concurrency, len(lat), seconds, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)))
