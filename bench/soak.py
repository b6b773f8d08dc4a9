"""`python -m bench.soak` (`make soak`): what a real server does under mixed load, overload, a drain,
kill -9 and abuse, each figure printed against its goal. The server runs as its own process on a
loopback port (the bundled digits model); this process is the load, on the same cores.

Phases: the idle latency of a 1-input Encode; 64 clients of mixed RPCs; an overload of 3 x
max_in_flight heavy requests; a drain (SIGTERM with 20 long requests in flight and a drain delay);
kill -9 and a restart; and abuse (a 60 MB request, 1,000 malformed ones, 200 silent connections).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from sklearn.datasets import load_digits

from bench import pages
from bench.processes import VaeServer
from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "models" / "digits"
DIGITS = load_digits().data


@dataclass
class Report:
    lines: list[tuple[str, str, str, bool | None]] = field(default_factory=list)

    def add(self, what: str, value: str, goal: str = "", met: bool | None = None) -> None:
        self.lines.append((what, value, goal, met))
        mark = "" if met is None else ("  [met]" if met else "  [NOT met]")
        print(f"{what:58s} {value:>26s}  {goal}{mark}", flush=True)


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _requests() -> dict[str, tuple[str, Any, float]]:
    """name -> (method, request, weight): the mixed load."""
    one = codec.to_proto(DIGITS[:1])
    batch = codec.to_proto(DIGITS[:32])
    return {
        "Encode 1": ("Encode", pb.EncodeRequest(x=one), 0.5),
        "Score 1 (K 1000)": ("Score", pb.ScoreRequest(x=one), 0.2),
        "Score 32 (K 100, nll)": ("Score", pb.ScoreRequest(x=batch, k=100, anomaly_scores=["nll"]), 0.1),
        "Decode 4": ("Decode", pb.DecodeRequest(z=codec.to_proto(np.zeros((4, 8), np.float32))), 0.1),
        "Sample 8": ("Sample", pb.SampleRequest(n=8), 0.1),
    }


async def _timed(call: Awaitable[Any]) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        await call
        code = "OK"
    except grpc.aio.AioRpcError as error:
        code = error.code().name
    return (time.perf_counter() - started) * 1000.0, code


async def idle_encode(address: str, seconds: float) -> list[float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        request = pb.EncodeRequest(x=codec.to_proto(DIGITS[:1]))
        latencies: list[float] = []
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            ms, code = await _timed(stub.Encode(request))
            if code == "OK":
                latencies.append(ms)
        return latencies[20:]  # warm-up left out


async def mixed(address: str, clients: int, seconds: float, connections: int = 1, seed: int = 0) -> dict[str, Any]:
    kinds = _requests()
    names, weights = list(kinds), np.array([w for *_, w in kinds.values()])
    latencies: dict[str, list[float]] = defaultdict(list)
    codes: Counter[str] = Counter()
    # Each channel its own connection (a local subchannel pool): a server's workers each get some.
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(connections)
    ]
    try:
        stubs = [vae_pb2_grpc.VaeServiceStub(channel) for channel in channels]

        async def client(i: int) -> None:
            stub = stubs[i % len(stubs)]
            rng = np.random.default_rng(seed + i)
            stop = time.perf_counter() + seconds
            while time.perf_counter() < stop:
                name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
                method, request, _ = kinds[name]
                ms, code = await _timed(getattr(stub, method)(request, timeout=30))
                codes[code] += 1
                if code == "OK":
                    latencies[name].append(ms)

        await asyncio.gather(*(client(i) for i in range(clients)))
    finally:
        for channel in channels:
            await channel.close(None)
    return {"latencies": latencies, "codes": codes}


async def overload(address: str, clients: int, seconds: float) -> dict[str, Any]:
    request = pb.ScoreRequest(x=codec.to_proto(DIGITS[:64]), k=1000, skip_anomaly=True)
    by_code: dict[str, list[float]] = defaultdict(list)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)

        async def client() -> None:
            stop = time.perf_counter() + seconds
            while time.perf_counter() < stop:
                ms, code = await _timed(stub.Score(request, timeout=60))
                by_code[code].append(ms)
                if code == "RESOURCE_EXHAUSTED":
                    await asyncio.sleep(0.05)  # a client backing off, as the message asks

        await asyncio.gather(*(client() for _ in range(clients)))
    return by_code


async def drain(server: VaeServer, long_requests: int) -> tuple[Counter[str], float, int | None]:
    request = pb.ScoreRequest(x=codec.to_proto(DIGITS[:100]), k=4000, skip_anomaly=True)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        calls = [asyncio.ensure_future(_timed(stub.Score(request, timeout=120))) for _ in range(long_requests)]
        await asyncio.sleep(0.5)  # all in flight
        started = time.perf_counter()
        server.proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*calls)
    code = await asyncio.to_thread(server.proc.wait, 120)
    return Counter(c for _, c in results), time.perf_counter() - started, code


async def kill_restart(flags: list[str], clients: int) -> dict[str, Any]:
    """kill -9 under load: every call either succeeds or fails with a clear status; a new server serves."""
    server = VaeServer(BUNDLE, *flags)
    request = pb.EncodeRequest(x=codec.to_proto(DIGITS[:1]))
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)

        async def client(stop: float) -> None:
            while time.perf_counter() < stop:
                _, code = await _timed(stub.Encode(request, timeout=5))
                codes[code] += 1

        load = asyncio.gather(*(client(time.perf_counter() + 2.0) for _ in range(clients)))
        await asyncio.sleep(1.0)
        server.proc.kill()
        await load
    server.proc.wait()
    started = time.perf_counter()
    restarted = VaeServer(BUNDLE, *flags)
    serving_s = time.perf_counter() - started
    after: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(restarted.address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        for _ in range(200):
            after[(await _timed(stub.Encode(request, timeout=5)))[1]] += 1
    restarted.stop()
    return {"during": codes, "serving_s": serving_s, "after": after}


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def abuse(server: VaeServer, handshake_s: float) -> dict[str, float]:
    pid = server.proc.pid
    figures = {"idle_mb": server.rss_mb()}
    async with grpc.aio.insecure_channel(
        server.address, options=[("grpc.max_send_message_length", 80 << 20)]
    ) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        for _ in range(20):  # warm: the RSS a busy server settles at
            await stub.Score(pb.ScoreRequest(x=codec.to_proto(DIGITS[:256]), k=100))
        figures["warm_mb"] = server.rss_mb()
        big = np.zeros(((60 << 20) // (64 * 4), 64), np.float32)  # 60 MB: 245,760 inputs, above max_batch
        _, big_code = await _timed(stub.Score(pb.ScoreRequest(x=codec.to_proto(big)), timeout=60))
        figures["big_refused"] = float(big_code == "RESOURCE_EXHAUSTED")
        figures["after_big_peak_mb"] = server.rss_mb(peak=True)
        bad = pb.ScoreRequest(x=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[1000, 64], data=b"\0" * 1000))
        for _ in range(1000):
            await _timed(stub.Score(bad))
        figures["after_malformed_mb"] = server.rss_mb()
    fds_before = _fds(pid)
    sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
    await asyncio.sleep(0.5)
    figures["fds_open"] = _fds(pid) - fds_before
    await asyncio.sleep(handshake_s + 2.0)
    figures["fds_after_timeout"] = _fds(pid) - fds_before
    for s in sockets:
        s.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the mixed load")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-in-flight", type=int, default=32, help="the overload server's (the others: 128)")
    parser.add_argument("--server-flags", default="", help="more vaeserve-server flags for every server")
    parser.add_argument(
        "--connections", type=int, default=8, help="connections the mixed load's clients share (round robin)"
    )
    parser.add_argument(
        "--mixed-only", action="store_true", help="only the idle and mixed-load phases (e.g. to compare --workers)"
    )
    parser.add_argument("--page", type=Path, help="also write the report here as a markdown page")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = Report()
    _run(args, report)
    missed = [what for what, _, _, met in report.lines if met is False]
    print(f"\n{len(missed)} goal(s) not met" + (f": {'; '.join(missed)}" if missed else ""))
    rows = [(w.strip(), v, g, "" if m is None else ("met" if m else "**not met**")) for w, v, g, m in report.lines]
    setting = f"{args.clients} clients over {args.connections} connections, {args.seconds:g} s of mixed load"
    title = f"soak ({time.perf_counter() - started:.0f} s)"
    lines = [f"Servers of the bundled {BUNDLE.name} model, {setting}; the load runs on the same machine.", ""]
    lines += [*pages.table(("figure", "value", "goal", ""), rows), "", f"{len(missed)} goal(s) not met."]
    pages.write(args.page, [*pages.header(title, pages.command_line("bench.soak", argv)), "", *lines])
    return 0


def _run(args: argparse.Namespace, report: Report) -> None:
    handshake_s = 3.0
    flags = ["--handshake-timeout-s", str(handshake_s), *args.server_flags.split()]
    print(
        f"soak: {args.clients} clients over {args.connections} connections, {args.seconds:g} s mixed load; "
        f"servers of {BUNDLE.name}, {' '.join(flags)}"
    )
    print(f"{'figure':58s} {'value':>26s}  goal")

    server = VaeServer(BUNDLE, *flags)
    try:
        idle = asyncio.run(idle_encode(server.address, 3.0))
        report.add("Encode 1 input, idle: p50 / p99", f"{_p(idle, 50):.2f} / {_p(idle, 99):.2f} ms")
        result = asyncio.run(mixed(server.address, args.clients, args.seconds, args.connections))
        codes, latencies = result["codes"], result["latencies"]
        calls = sum(codes.values())
        failed = calls - codes["OK"]
        report.add("mixed load: calls, failed", f"{calls}, {failed}", "0 failed", failed == 0)
        for name, values in sorted(latencies.items()):
            report.add(f"  {name}: p50 / p99", f"{_p(values, 50):.1f} / {_p(values, 99):.1f} ms")
        encode_p99 = _p(latencies["Encode 1"], 99)
        ratio = encode_p99 / max(_p(idle, 99), 1e-9)
        report.add("  Encode 1 p99 under load / idle p99", f"{ratio:.1f} x", "<= 5 x (fair admission)", ratio <= 5)
        scored = len(latencies["Score 1 (K 1000)"]) + 32 * len(latencies["Score 32 (K 100, nll)"])
        report.add("  Score throughput", f"{scored / args.seconds:.0f} inputs/s")
        if args.mixed_only:
            return
        figures = asyncio.run(abuse(server, handshake_s))
    finally:
        server.stop()
    report.add("abuse: RSS idle, warm", f"{figures['idle_mb']:.0f}, {figures['warm_mb']:.0f} MB")
    report.add(
        "  60 MB request: refused (RESOURCE_EXHAUSTED), peak RSS",
        f"{'yes' if figures['big_refused'] else 'no'}, {figures['after_big_peak_mb']:.0f} MB",
        "refused",
        bool(figures["big_refused"]),
    )
    growth = figures["after_malformed_mb"] - figures["warm_mb"]
    report.add("  RSS after 1,000 malformed requests - warm", f"{growth:+.0f} MB", "<= 100 MB", growth <= 100)
    report.add(
        "  200 silent connections: fds held, after the handshake timeout",
        f"{figures['fds_open']:.0f}, {figures['fds_after_timeout']:.0f}",
        "0 held after",
        figures["fds_after_timeout"] <= 5,
    )

    server = VaeServer(BUNDLE, *flags, "--max-in-flight", str(args.max_in_flight))
    try:
        by_code = asyncio.run(overload(server.address, 3 * args.max_in_flight, 10.0))
        refused, admitted = by_code.get("RESOURCE_EXHAUSTED", []), by_code.get("OK", [])
        other = sum(len(v) for k, v in by_code.items() if k not in ("OK", "RESOURCE_EXHAUSTED"))
        report.add(
            f"overload, {3 * args.max_in_flight} clients: admitted, refused, other",
            f"{len(admitted)}, {len(refused)}, {other}",
            "0 other",
            other == 0,
        )
        p50_refused = _p(refused, 50)
        report.add(
            "  refusal latency p50 / p99",
            f"{p50_refused:.1f} / {_p(refused, 99):.1f} ms",
            "p50 < 20 ms",
            p50_refused < 20,
        )
        report.add("  admitted latency p50 / p99", f"{_p(admitted, 50):.0f} / {_p(admitted, 99):.0f} ms")
    finally:
        server.stop()

    draining = VaeServer(BUNDLE, *flags, "--drain-delay-s", "1", "--grace-s", "60")
    codes, seconds, exit_code = asyncio.run(drain(draining, 20))
    report.add(
        "drain: 20 long requests at SIGTERM: OK, other",
        f"{codes['OK']}, {sum(codes.values()) - codes['OK']}",
        "20, 0",
        codes["OK"] == 20,
    )
    report.add("  exit status, seconds from SIGTERM", f"{exit_code}, {seconds:.1f} s", "0", exit_code == 0)

    killed = asyncio.run(kill_restart(flags, 16))
    during = killed["during"]
    unclear = sum(n for code, n in during.items() if code not in ("OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"))
    report.add(
        "kill -9 under load: OK, UNAVAILABLE, other",
        f"{during['OK']}, {during['UNAVAILABLE']}, {unclear}",
        "0 other",
        unclear == 0,
    )
    after = killed["after"]
    report.add(
        "  restart to SERVING; 200 calls after: OK",
        f"{killed['serving_s']:.1f} s; {after['OK']}",
        "200",
        after["OK"] == 200,
    )


if __name__ == "__main__":
    raise SystemExit(main())
