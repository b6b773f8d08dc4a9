"""Dynamic batching: concurrent small requests merged into one engine run, like Triton's.

Requests queue while the engine is busy; when it is free the worker takes everything
queued (up to `max_inputs` inputs), waiting at most `max_delay_s` for more, runs one merged
call and hands each request its own rows back. With max_delay_s = 0 a lone request is
never held back, so batching costs nothing at low load. If a merged run fails, each
request is run alone so an error belongs to the request that caused it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["DynamicBatcher"]

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Item, Result]):
    item: Item
    size: int
    future: asyncio.Future[Result] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class DynamicBatcher(Generic[Item, Result]):
    """`run(items)` computes a list of results for a list of items, in order (called in `executor`)."""

    def __init__(self, run: Callable[[list[Item]], list[Result]], executor: Executor, *,
                 max_inputs: int, max_delay_s: float = 0.0) -> None:
        self._run = run
        self._executor = executor
        self._max_inputs = max_inputs
        self._max_delay_s = max_delay_s
        self._queue: collections.deque[_Pending[Item, Result]] = collections.deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0  # merged runs so far (for tests and metrics)

    async def submit(self, item: Item, size: int) -> Result:
        pending: _Pending[Item, Result] = _Pending(item, size)
        self._queue.append(pending)
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="vaeserve-batcher")
        return await pending.future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = await self._take(loop)
            if not batch:
                continue
            self.batches += 1
            items = [p.item for p in batch]
            try:
                results = await loop.run_in_executor(self._executor, self._run, items)
            except Exception:
                if len(batch) == 1:
                    results = None
                else:
                    await self._run_alone(loop, batch)
                    continue
            if results is None:
                await self._run_alone(loop, batch)
                continue
            for pending, result in zip(batch, results):
                if not pending.future.done():
                    pending.future.set_result(result)

    async def _take(self, loop: asyncio.AbstractEventLoop) -> list[_Pending[Item, Result]]:
        batch: list[_Pending[Item, Result]] = []
        size = 0
        deadline = loop.time() + self._max_delay_s
        while True:
            while self._queue and (not batch or size + self._queue[0].size <= self._max_inputs):
                pending = self._queue.popleft()
                if pending.future.cancelled():
                    continue
                batch.append(pending)
                size += pending.size
            remaining = deadline - loop.time()
            if size >= self._max_inputs or remaining <= 0 or (batch and self._queue):
                return batch
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return batch

    async def _run_alone(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[Item, Result]]) -> None:
        for pending in batch:
            try:
                result = (await loop.run_in_executor(self._executor, self._run, [pending.item]))[0]
            except Exception as exc:
                if not pending.future.done():
                    pending.future.set_exception(exc)
                continue
            if not pending.future.done():
                pending.future.set_result(result)
