"""The dynamic batcher on its own: what it merges, what each caller gets back, and how a failure spreads."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from vaeserve.server.serving.dynamic_batching import DynamicBatcher

T = TypeVar("T")


class Engine:
    """A stand-in for a merged engine run: records each run's items; `hold` keeps the next run busy."""

    def __init__(self, fail_on: frozenset[str] = frozenset()) -> None:
        self.runs: list[list[str]] = []
        self.inputs: list[int] = []  # what the batcher reported for each run
        self.fail_on = fail_on
        self.hold: asyncio.Event | None = None

    async def run(self, items: list[str]) -> list[str]:
        self.runs.append(list(items))
        if self.hold is not None:
            hold, self.hold = self.hold, None
            await hold.wait()
        bad = [item for item in items if item in self.fail_on]
        if bad:
            raise ValueError(f"cannot run {bad[0]}")
        await asyncio.sleep(0)  # a real run hands the loop to others while it works
        return [f"{item}!" for item in items]

    def batcher(self, max_inputs: int, max_delay_s: float = 0.0) -> DynamicBatcher[str, str]:
        return DynamicBatcher(self.run, max_inputs=max_inputs, max_delay_s=max_delay_s, on_run=self.inputs.append)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), 10.0))


async def busy(engine: Engine, batcher: DynamicBatcher[str, str]) -> tuple[asyncio.Task[str], asyncio.Event]:
    """A first request, running and held, so that the next ones queue behind it."""
    engine.hold = hold = asyncio.Event()
    first = asyncio.create_task(batcher.submit("first", 1))
    while not engine.runs:
        await asyncio.sleep(0)
    return first, hold


async def queued(batcher: DynamicBatcher[str, str], *items: str, size: int = 1) -> list[asyncio.Task[str]]:
    tasks = [asyncio.create_task(batcher.submit(item, size)) for item in items]
    await asyncio.sleep(0)  # each reaches the queue
    return tasks


def test_an_idle_batcher_runs_a_request_at_once_and_alone() -> None:
    async def scenario() -> str:
        engine = Engine()
        batcher = engine.batcher(max_inputs=8, max_delay_s=5.0)  # the delay applies only to queued requests
        result = await asyncio.wait_for(batcher.submit("a", 3), 1.0)
        assert engine.runs == [["a"]] and engine.inputs == [3]
        assert (batcher.requests, batcher.runs) == (1, 1)
        return result

    assert run(scenario) == "a!"


def test_requests_queued_behind_a_run_are_merged_up_to_max_inputs_each_caller_getting_its_own_result() -> None:
    async def scenario() -> tuple[list[str], list[list[str]], list[int], int]:
        engine = Engine()
        batcher = engine.batcher(max_inputs=3)
        first, hold = await busy(engine, batcher)
        later = await queued(batcher, "b", "c", "d", "e", "f")
        hold.set()
        results = await asyncio.gather(first, *later)
        return results, engine.runs, engine.inputs, batcher.runs

    results, runs, inputs, n_runs = run(scenario)
    assert results == ["first!", "b!", "c!", "d!", "e!", "f!"]  # in order, each to its own caller
    assert runs == [["first"], ["b", "c", "d"], ["e", "f"]]  # arrival order, at most 3 inputs a run
    assert inputs == [1, 3, 2] and n_runs == 3


def test_max_inputs_counts_inputs_not_requests_and_a_request_above_it_runs_alone() -> None:
    async def scenario() -> tuple[list[str], list[list[str]], list[int]]:
        engine = Engine()
        batcher = engine.batcher(max_inputs=4)
        first, hold = await busy(engine, batcher)
        big = await queued(batcher, "big", size=10)
        pair = await queued(batcher, "p", "q", size=2)
        third = await queued(batcher, "r", size=1)
        hold.set()
        results = await asyncio.gather(first, *big, *pair, *third)
        return results, engine.runs, engine.inputs

    results, runs, inputs = run(scenario)
    assert results == ["first!", "big!", "p!", "q!", "r!"]
    assert runs == [["first"], ["big"], ["p", "q"], ["r"]]  # 2 + 2 fills a run of 4; r waits for the next
    assert inputs == [1, 10, 4, 1]


def test_a_failing_merged_run_fails_only_the_caller_whose_input_caused_it() -> None:
    async def scenario() -> tuple[list[str | BaseException], list[list[str]]]:
        engine = Engine(fail_on=frozenset({"bad"}))
        batcher = engine.batcher(max_inputs=8)
        first, hold = await busy(engine, batcher)
        later = await queued(batcher, "b", "bad", "d")
        hold.set()
        results = await asyncio.gather(first, *later, return_exceptions=True)
        return results, engine.runs

    results, runs = run(scenario)
    assert results[:2] == ["first!", "b!"] and results[3] == "d!"
    error = results[2]
    assert isinstance(error, ValueError) and str(error) == "cannot run bad"
    # The merged run failed, so each of its requests was run again alone.
    assert runs == [["first"], ["b", "bad", "d"], ["b"], ["bad"], ["d"]]


def test_a_failing_lone_run_gives_its_caller_the_error_and_the_batcher_goes_on() -> None:
    async def scenario() -> tuple[BaseException | None, list[str], list[list[str]]]:
        engine = Engine(fail_on=frozenset({"bad"}))
        batcher = engine.batcher(max_inputs=8)
        with pytest.raises(ValueError, match="cannot run bad") as info:
            await batcher.submit("bad", 1)
        first, hold = await busy(engine, batcher)
        later = await queued(batcher, "bad")  # queued, and alone in its run: failed once, not retried
        hold.set()
        results = await asyncio.gather(first, *later, return_exceptions=True)
        after = await batcher.submit("e", 1)
        return info.value, [*map(str, results), after], engine.runs

    error, results, runs = run(scenario)
    assert isinstance(error, ValueError)
    assert results == ["first!", "cannot run bad", "e!"]
    assert runs == [["bad"], ["first"], ["bad"], ["e"]]


def test_the_worker_waits_up_to_max_delay_for_more_requests_when_the_queue_is_short() -> None:
    async def scenario(max_delay_s: float) -> list[list[str]]:
        engine = Engine()
        batcher = engine.batcher(max_inputs=8, max_delay_s=max_delay_s)
        first, hold = await busy(engine, batcher)
        early = await queued(batcher, "b")
        hold.set()
        await first  # the run ended: the worker starts and (with a delay) waits for more
        late = await queued(batcher, "c")
        await asyncio.gather(*early, *late)
        return engine.runs

    assert run(lambda: scenario(0.3)) == [["first"], ["b", "c"]]  # c arrived within the delay: merged
    assert run(lambda: scenario(0.0)) == [["first"], ["b"], ["c"]]  # no delay: b ran before c came


def test_a_full_queue_does_not_wait_for_the_delay() -> None:
    async def scenario() -> list[list[str]]:
        engine = Engine()
        batcher = engine.batcher(max_inputs=2, max_delay_s=30.0)
        first, hold = await busy(engine, batcher)
        later = await queued(batcher, "b", "c")
        hold.set()
        await asyncio.wait_for(asyncio.gather(first, *later), 5.0)  # far less than the delay
        return engine.runs

    assert run(scenario) == [["first"], ["b", "c"]]


def test_a_caller_that_went_away_is_left_out_of_the_merged_run() -> None:
    async def scenario() -> tuple[list[str], list[list[str]]]:
        engine = Engine()
        batcher = engine.batcher(max_inputs=8)
        first, hold = await busy(engine, batcher)
        gone, stays = await queued(batcher, "gone", "stays")
        gone.cancel()
        hold.set()
        results = await asyncio.gather(first, stays)
        assert gone.cancelled()
        return results, engine.runs

    results, runs = run(scenario)
    assert results == ["first!", "stays!"]
    assert runs == [["first"], ["stays"]]


def test_close_stops_the_worker_and_cancels_the_requests_still_queued() -> None:
    async def scenario() -> tuple[BaseException | str, list[list[str]]]:
        engine = Engine()
        batcher = engine.batcher(max_inputs=8, max_delay_s=30.0)
        first, hold = await busy(engine, batcher)
        (waiting,) = await queued(batcher, "b")
        hold.set()
        await first  # the worker now waits out its delay with b in the queue
        await batcher.close()
        (outcome,) = await asyncio.gather(waiting, return_exceptions=True)
        return outcome, engine.runs

    outcome, runs = run(scenario)
    assert isinstance(outcome, asyncio.CancelledError)
    assert runs == [["first"]]  # b never ran
