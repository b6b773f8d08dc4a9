"""Sections b and e of `python -m bench`: Encode of one input round trip, vaeserve against a bare gRPC echo
server of the same message sizes (b), and one server process against --workers auto (e)."""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import grpc
import numpy as np

from bench import pages
from bench.load import LoadResult, closed_loop, merge
from bench.machine import BUNDLE, SERVER_FLAGS, rate
from bench.processes import EchoServer, VaeServer
from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.server.engine.bundle import load_bundle
from vaeserve.server.engine.engine import Engine
from vaeserve.server.engine.runtime import RuntimeConfig

__all__ = ["section_encode", "section_workers"]


async def _encode_load(
    target: str, method: str, payload: bytes, concurrency: int, seconds: float, connections: int = 1
) -> tuple[LoadResult, int]:
    """The measured part of a closed loop, and every call made (warm-up included, for CPU per call)."""
    # Each channel its own connection (a local subchannel pool), so a server's workers all get some.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    try:
        # raw bytes both ways: the same client cost for every server
        calls = itertools.cycle([channel.unary_unary(method, None, None) for channel in channels])
        made = 0

        async def once() -> object:
            nonlocal made
            made += 1
            return await next(calls)(payload)

        await closed_loop(once, concurrency, 0.1, warmup_s=0.1)  # connect and warm up
        return await closed_loop(once, concurrency, seconds, warmup_s=0.2), made
    finally:
        for channel in channels:
            await channel.close(None)


def section_encode(x: np.ndarray, seconds: float, rounds: int, rows: list[dict[str, Any]]) -> None:
    """Both servers run side by side and take turns, so drifts in the machine's speed hit both alike."""
    request = pb.EncodeRequest(x=codec.to_proto(x[:1].astype(np.float32))).SerializeToString()
    server = VaeServer(BUNDLE, *SERVER_FLAGS)
    echo: EchoServer | None = None
    targets = {"vaeserve": (server.address, "/vaeserve.api.v1.VaeService/Encode")}
    try:
        with grpc.insecure_channel(server.address) as channel:
            reply_bytes = len(channel.unary_unary(targets["vaeserve"][1], None, None)(request))
        echo = EchoServer(reply_bytes)
        targets["echo"] = (echo.address, "/bench.Echo/Call")
        turns: dict[tuple[str, int], list[LoadResult]] = {}
        for c in (1, 16, 64):
            for _ in range(rounds):
                for name, (address, method) in targets.items():
                    result, _ = asyncio.run(_encode_load(address, method, request, c, seconds / rounds))
                    turns.setdefault((name, c), []).append(result)
    finally:
        server.stop()
        if echo is not None:
            echo.stop()
    # The same work in-process (input checks, preprocessing, the encoder), in a warm loop: what serving adds.
    engine = Engine(load_bundle(BUNDLE), RuntimeConfig(device="cpu"))
    raw = x[:1].astype(np.float32)
    calls = 2000
    in_process = rate(calls, lambda: [engine.encode(engine.prepare(raw)) for _ in range(calls)])
    rows.append(
        {
            "section": "b",
            "what": "Encode, 1 input: in-process engine (checks, preprocessing, encoder), warm loop",
            "value": in_process,
            "unit": "calls/s",
            "ratio": f"{1e6 / in_process:.0f} us per call",
        }
    )
    for c in (1, 16, 64):
        ours, bare = merge(turns[("vaeserve", c)]), merge(turns[("echo", c)])
        per_turn = [a.rps / b.rps for a, b in zip(turns[("vaeserve", c)], turns[("echo", c)])]
        rows.append(
            {
                "section": "b",
                "what": f"Encode, 1 input, {c} concurrent: vaeserve",
                "value": ours.rps,
                "unit": "requests/s",
                "ratio": f"{ours.rps / bare.rps:.2f} x echo (turns {min(per_turn):.2f}-{max(per_turn):.2f}); "
                f"p50 {ours.p50_ms:.2f} ms, p99 {ours.p99_ms:.2f} ms",
                "goals": (
                    [pages.goal("one-input Encode at 64 clients >= 0.8 x echo", ours.rps / bare.rps, 0.8, "x")]
                    if c == 64
                    else [pages.goal("one-input Encode p99 at 1 client <= 2 ms", ours.p99_ms, 2.0, "ms", at_most=True)]
                    if c == 1
                    else []
                ),
            }
        )
        rows.append(
            {
                "section": "b",
                "what": f"Encode, 1 input, {c} concurrent: bare gRPC echo ({len(request)} B in, {reply_bytes} B out)",
                "value": bare.rps,
                "unit": "requests/s",
                "ratio": f"p50 {bare.p50_ms:.2f} ms, p99 {bare.p99_ms:.2f} ms",
            }
        )


def section_workers(x: np.ndarray, seconds: float, rounds: int, rows: list[dict[str, Any]]) -> None:
    """Encode at 64 concurrent over 8 connections: one server process, --workers auto, and the echo, in turns;
    server CPU per call from /proc (a supervisor's workers included). The load generator (this process)
    shares the machine's cores with the servers."""
    concurrency, connections = 64, 8
    request = pb.EncodeRequest(x=codec.to_proto(x[:1].astype(np.float32))).SerializeToString()
    servers: dict[str, VaeServer | EchoServer] = {}
    methods: dict[str, str] = {}
    try:
        servers["vaeserve, 1 process"] = VaeServer(BUNDLE, *SERVER_FLAGS)
        servers["vaeserve --workers auto"] = VaeServer(BUNDLE, "--workers", "auto", *SERVER_FLAGS)
        with grpc.insecure_channel(servers["vaeserve, 1 process"].address) as channel:
            reply_bytes = len(channel.unary_unary("/vaeserve.api.v1.VaeService/Encode", None, None)(request))
        servers["bare gRPC echo, 1 process"] = EchoServer(reply_bytes)
        for name in servers:
            methods[name] = "/bench.Echo/Call" if "echo" in name else "/vaeserve.api.v1.VaeService/Encode"
        turns: dict[str, list[LoadResult]] = {}
        cpu: dict[str, float] = {}
        made: dict[str, int] = {}
        for _ in range(rounds):
            for name, server in servers.items():
                before = server.cpu_seconds()
                load, calls = asyncio.run(
                    _encode_load(server.address, methods[name], request, concurrency, seconds / rounds, connections)
                )
                cpu[name] = cpu.get(name, 0.0) + server.cpu_seconds() - before
                made[name] = made.get(name, 0) + calls
                turns.setdefault(name, []).append(load)
    finally:
        for server in servers.values():
            server.stop()
    echo = merge(turns["bare gRPC echo, 1 process"])
    cores = len(os.sched_getaffinity(0))
    for name, results in turns.items():
        load = merge(results)
        per_call_us = 1e6 * cpu[name] / made[name]
        rows.append(
            {
                "section": "e",
                "what": f"Encode, 1 input, {concurrency} concurrent over {connections} connections: {name}",
                "value": load.rps,
                "unit": "requests/s",
                "ratio": (f"{load.rps / echo.rps:.2f} x echo; " if "echo" not in name else "")
                + f"p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms; server CPU {per_call_us:.0f} us per call "
                f"({cores} cores, shared with the load generator)",
                "goals": [
                    pages.goal("--workers auto: Encode at 64 clients >= 0.8 x echo", load.rps / echo.rps, 0.8, "x")
                ]
                if name.endswith("--workers auto")
                else [],
            }
        )
