"""Dynamic batching: concurrent small requests merged into one engine run, like Triton's.

Requests queue while the engine is busy; a worker task drains the queue in batches of up
to `max_inputs` inputs, waiting at most `max_delay_s` for more, runs one merged call and
hands each request its own rows back. A request that finds the engine idle runs at once,
so batching costs nothing at low load; requests that arrive while a run is in progress
(on the thread pool) merge into the next one. If a merged run fails, each request is run
alone, so an error belongs to the request that caused it. The worker exits when the queue
is empty and is started again by the next request, so no request waits on a dead worker.
With tracing on, a queued request's trace context goes with it: the worker runs it in that context,
and a merged run under a `batch` span linked to every request in it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from vaeserve.server.boundary.tracing import Tracing

__all__ = ["DynamicBatcher"]

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    size: int
    future: asyncio.Future[Result]
    context: Any = None  # the request's trace context (tracing on)


class DynamicBatcher(Generic[Item, Result]):
    """`run(items)` computes the results of a list of items, in order; `run` decides where it executes."""

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        max_inputs: int,
        max_delay_s: float = 0.0,
        on_run: Callable[[int], None] = lambda inputs: None,
        tracing: Tracing | None = None,
    ) -> None:
        self._run = run
        self._tracing = tracing
        self._on_run = on_run
        self._max_inputs = max_inputs
        self._max_delay_s = max_delay_s
        self._queue: collections.deque[_Pending[Item, Result]] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._busy = False  # a run is in progress
        self.requests = 0  # submitted so far
        self.runs = 0  # engine runs so far; runs < requests when requests were merged

    async def submit(self, item: Item, size: int) -> Result:
        self.requests += 1
        if not self._busy and not self._queue:  # idle: run now, with no queue and no task to pay for
            self._busy = True
            self.runs += 1
            self._on_run(size)
            try:
                return (await self._run([item]))[0]
            finally:
                self._busy = False
                self._ensure_worker()
        loop = asyncio.get_running_loop()
        context = self._tracing.current() if self._tracing is not None else None
        pending: _Pending[Item, Result] = _Pending(item, size, loop.create_future(), context)
        self._queue.append(pending)
        self._ensure_worker()
        return await pending.future

    def _ensure_worker(self) -> None:
        if self._queue and not self._busy and (self._worker is None or self._worker.done()):
            self._worker = asyncio.get_running_loop().create_task(self._drain(), name="vaeserve-batcher")

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _drain(self) -> None:
        batch: list[_Pending[Item, Result]] = []
        try:
            while self._queue:
                if self._max_delay_s > 0 and sum(p.size for p in self._queue) < self._max_inputs:
                    await asyncio.sleep(self._max_delay_s)
                batch = self._take()
                if batch:
                    self._busy = True
                    try:
                        await self._execute(batch)
                    finally:
                        self._busy = False
                batch = []
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else asyncio.CancelledError()
            for pending in [*batch, *self._queue]:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            self._queue.clear()
            raise

    def _take(self) -> list[_Pending[Item, Result]]:
        batch: list[_Pending[Item, Result]] = []
        size = 0
        while self._queue and (not batch or size + self._queue[0].size <= self._max_inputs):
            pending = self._queue.popleft()
            if not pending.future.done():  # a caller that went away (cancelled) is skipped
                batch.append(pending)
                size += pending.size
        return batch

    async def _execute(self, batch: list[_Pending[Item, Result]]) -> None:
        self.runs += 1
        self._on_run(sum(p.size for p in batch))
        try:
            with self._traced(batch):
                results = await self._run([p.item for p in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exception=exc)
                return
            for pending in batch:
                try:
                    with self._traced([pending]):
                        result = (await self._run([pending.item]))[0]
                except Exception as alone:
                    _settle(pending, exception=alone)
                else:
                    _settle(pending, result=result)
            return
        for pending, result in zip(batch, results):
            _settle(pending, result=result)

    def _traced(self, batch: list[_Pending[Item, Result]]) -> contextlib.AbstractContextManager[None]:
        """The worker task's context is whichever request started it: each run goes on in its own."""
        if self._tracing is None:
            return contextlib.nullcontext()
        return self._tracing.batched([p.context for p in batch], sum(p.size for p in batch))


def _settle(
    pending: _Pending[Item, Result], *, result: Result | None = None, exception: Exception | None = None
) -> None:
    if pending.future.done():
        return
    if exception is not None:
        pending.future.set_exception(exception)
    else:
        pending.future.set_result(result)  # type: ignore[arg-type]
