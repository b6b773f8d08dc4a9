"""The process's engine runs: one pool of threads shared by every model, fed by cost, not by arrival.

A run waits in a queue ordered by its virtual deadline: when it arrived plus how long it should take
(its rows, inputs x draws, at the rate runs have been going). A light run (a one-input Encode) so
overtakes heavy runs that arrived just before it, while a heavy run still goes once its deadline
comes up, whatever keeps arriving after it: no starvation. A run that waits longer than `max_queue_s`
is refused (RESOURCE_EXHAUSTED) rather than served late. Queue depth and waits are metrics per model;
with tracing on, each run is a `queue wait` span then an `engine run` span under the request's span.

The pool's threads run at a raised OS niceness (`--engine-nice`): when the cores are saturated, the
event loop (which answers light calls itself and hands out the heavy ones) gets the CPU first, and
heavy runs take what is left; on an idle machine niceness changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vaeserve.server.boundary.metrics import Metrics
from vaeserve.server.boundary.tracing import RunSpans, Tracing
from vaeserve.server.errors import LimitExceeded

__all__ = ["WorkQueue", "nice_this_thread"]

T = TypeVar("T")
_RATE_ROWS_PER_S = 2e5  # a start for the rate estimate (rows are inputs x draws); runs update it
_RATE_WEIGHT = 0.2  # of each finished run in the moving estimate


@dataclass(order=True)
class _Job:
    deadline: float
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    rows: int = field(compare=False)
    labels: tuple[str, str] = field(compare=False)
    queued: float = field(compare=False)
    expiry: asyncio.TimerHandle | None = field(default=None, compare=False)  # only while it waits
    spans: RunSpans | None = field(default=None, compare=False)


def nice_this_thread(nice: int) -> None:
    """Sets the calling OS thread's niceness (Linux: per thread; threads it starts later inherit it).
    Raising it needs no privilege; where it cannot be set, the thread keeps its priority."""
    if nice and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class WorkQueue:
    def __init__(
        self,
        threads: int,
        *,
        max_queue_s: float | None = None,
        metrics: Metrics | None = None,
        nice: int = 0,
        tracing: Tracing | None = None,
    ) -> None:
        self.nice = nice
        self.tracing = tracing
        self._executor = ThreadPoolExecutor(
            threads, thread_name_prefix="vaeserve-run", initializer=nice_this_thread, initargs=(nice,)
        )
        self._free = threads
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._rate = _RATE_ROWS_PER_S
        self.max_queue_s = max_queue_s
        self.metrics = metrics
        self.depths: Counter[tuple[str, str]] = Counter()  # waiting runs by (model, version)

    async def run(self, fn: Callable[[], T], *, rows: int, labels: tuple[str, str] = ("", "")) -> T:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        job = _Job(now + rows / self._rate, next(self._seq), fn, loop.create_future(), rows, labels, now)
        if self.tracing is not None:
            job.spans = self.tracing.run_spans(labels, rows)
        heapq.heappush(self._heap, job)
        self._depth(labels, +1)
        if self.max_queue_s is not None:
            job.expiry = loop.call_later(self.max_queue_s, self._expire, job)
        self._dispatch(loop)
        try:
            result: T = await job.future
            return result
        finally:
            if job.expiry is not None:
                job.expiry.cancel()
            if not job.future.done():
                job.future.cancel()  # the caller went away while the run waited: it never starts
            if job.spans is not None:
                job.spans.left()

    def run_inline(self, fn: Callable[[], T], *, rows: int, labels: tuple[str, str] = ("", "")) -> T:
        """Runs fn right here, on the event loop: work too small to be worth a thread hop."""
        if self.tracing is None:
            return fn()
        with self.tracing.inline_run(labels, rows):
            return fn()

    def shutdown(self) -> None:
        for job in self._heap:
            if not job.future.done():
                job.future.cancel()
        self._heap.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._free and self._heap:
            job = heapq.heappop(self._heap)
            self._depth(job.labels, -1)
            if job.future.done():  # cancelled or expired while waiting
                continue
            if job.expiry is not None:
                job.expiry.cancel()  # started in time: the limit is on waiting, not on running
            self._free -= 1
            if self.metrics:
                self.metrics.observe_queue_wait(*job.labels, time.monotonic() - job.queued)
            if job.spans is not None:
                job.spans.started()
            running = self._executor.submit(job.fn)
            running.add_done_callback(self._finisher(loop, job, time.monotonic()))

    def _finisher(self, loop: asyncio.AbstractEventLoop, job: _Job, started: float) -> Callable[[Future[Any]], None]:
        """Back on the event loop when the run is done (the callback itself runs on the worker thread)."""

        def finished(done: Future[Any]) -> None:
            loop.call_soon_threadsafe(self._done, done, job, started)

        return finished

    def _done(self, done: Future[Any], job: _Job, started: float) -> None:
        self._free += 1
        elapsed = time.monotonic() - started
        if job.rows and elapsed > 0:
            self._rate += _RATE_WEIGHT * (job.rows / elapsed - self._rate)
        if job.spans is not None:
            job.spans.finished(None if done.cancelled() else done.exception())
        if not job.future.done():
            error = done.exception()
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(done.result())
        self._dispatch(asyncio.get_running_loop())

    def _expire(self, job: _Job) -> None:
        if not job.future.done():
            waited = (time.monotonic() - job.queued) * 1000.0
            refused = LimitExceeded(
                f"the request waited {waited:.0f} ms for the engine behind {len(self._heap)} queued runs "
                f"(max_queue_ms {self.max_queue_s * 1000.0:g}); retry with backoff"  # type: ignore[operator]
            )
            if job.spans is not None:
                job.spans.finished(refused)
            job.future.set_exception(refused)

    def _depth(self, labels: tuple[str, str], change: int) -> None:
        self.depths[labels] += change
        if self.metrics:
            self.metrics.set_queue_depth(*labels, self.depths[labels])
