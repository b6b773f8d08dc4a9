"""The work queue: light runs overtake heavy ones that wait, heavy ones are not starved, waits are bounded."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.serving import RunningServer
from vaeserve.server.errors import LimitExceeded
from vaeserve.server.serving.work_queue import WorkQueue


def _job(name: str, seconds: float, order: list[str], gate: threading.Event | None = None) -> object:
    def run() -> str:
        if gate is not None:
            gate.wait(5)
        time.sleep(seconds)
        order.append(name)
        return name

    return run


def test_light_runs_overtake_queued_heavy_ones() -> None:
    async def scenario() -> list[str]:
        queue, order, gate = WorkQueue(1), [], threading.Event()
        busy = asyncio.create_task(queue.run(_job("running", 0.0, order, gate), rows=10**6))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        heavy = [asyncio.create_task(queue.run(_job(f"heavy{i}", 0.01, order), rows=10**6)) for i in range(2)]  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        light = asyncio.create_task(queue.run(_job("light", 0.0, order), rows=10))  # type: ignore[arg-type]
        gate.set()
        await asyncio.gather(busy, *heavy, light)
        queue.shutdown()
        return order

    # The light run arrived last and waited only for the run in progress.
    assert asyncio.run(scenario()) == ["running", "light", "heavy0", "heavy1"]


def test_a_heavy_run_is_not_starved() -> None:
    """Its deadline (arrival + expected time) comes up while light runs keep arriving after it."""

    async def scenario() -> int:
        queue, order = WorkQueue(1), []
        heavy = asyncio.create_task(queue.run(_job("heavy", 0.0, order), rows=2 * 10**5))  # type: ignore[arg-type]
        lights = []
        for i in range(200):  # a steady stream of light runs, each arriving after the heavy one
            lights.append(asyncio.create_task(queue.run(_job(f"l{i}", 0.002, order), rows=10)))  # type: ignore[arg-type]
            await asyncio.sleep(0.002)
        await asyncio.gather(heavy, *lights)
        queue.shutdown()
        return order.index("heavy")

    assert asyncio.run(scenario()) < 150  # it ran while light ones were still arriving


def test_a_run_that_waits_too_long_is_refused_and_a_cancelled_one_never_starts() -> None:
    async def scenario() -> tuple[str, list[str]]:
        queue, order, gate = WorkQueue(1, max_queue_s=0.1), [], threading.Event()
        busy = asyncio.create_task(queue.run(_job("running", 0.0, order, gate), rows=1))  # type: ignore[arg-type]
        await asyncio.sleep(0.02)
        waiting = asyncio.create_task(queue.run(_job("late", 0.0, order), rows=1))  # type: ignore[arg-type]
        dropped = asyncio.create_task(queue.run(_job("dropped", 0.0, order), rows=1))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        dropped.cancel()
        with pytest.raises(LimitExceeded) as info:
            await waiting
        gate.set()
        await busy
        await asyncio.sleep(0.05)
        queue.shutdown()
        return str(info.value), order

    message, order = asyncio.run(scenario())
    assert "waited" in message and "max_queue_ms 100" in message
    assert order == ["running"]  # neither the expired nor the cancelled run started


def _thread_niceness() -> list[int]:
    """The niceness of every thread of this process (field 19 of /proc/self/task/<tid>/stat)."""
    values = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            values.append(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))
    return values


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread niceness is read from Linux's /proc")
def test_engine_threads_run_niced_and_the_event_loop_does_not(
    serve: Callable[..., RunningServer], digits_bundle: Path
) -> None:
    before = _thread_niceness().count(7)
    server = serve(digits_bundle, engine_nice=7, intra_op_threads=2)

    async def niceness_on_the_loop_and_in_a_run() -> tuple[int, int]:
        here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        there = await server.app.work.run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), rows=1)
        return here, there

    loop_nice, run_nice = server.run(niceness_on_the_loop_and_in_a_run())
    assert (loop_nice, run_nice) == (0, 7)
    # onnxruntime's pool threads (one per two-thread session) were started niced by the loader.
    assert _thread_niceness().count(7) - before >= 3
