"""Requests in flight on a served model, so that a retired version finishes its work before it closes."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

__all__ = ["InFlight", "Lease"]

Held = TypeVar("Held")


class InFlight:
    """The number of requests holding a model; `wait_idle` returns once none does."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def lease(self, held: Held) -> Lease[Held]:
        return Lease(held, self)

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def exit(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class Lease(Generic[Held]):
    """`async with in_flight.lease(model) as model:` holds the model for a request (a class, not a generator:
    it runs on every request, and an async generator context costs several times as much)."""

    __slots__ = ("_held", "_in_flight")

    def __init__(self, held: Held, in_flight: InFlight) -> None:
        self._held = held
        self._in_flight = in_flight

    async def __aenter__(self) -> Held:
        self._in_flight.enter()
        return self._held

    async def __aexit__(self, *exc: object) -> None:
        self._in_flight.exit()
