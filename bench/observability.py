"""`python -m bench.observability`: what tracing and payload logging cost a default Score, in one run.

Four servers of the bundled digits model run side by side: plain, `--tracing` (exporting to an OTLP/gRPC
receiver in this process, as to a collector), `--payload-log FILE`, and both. They take turns under the
same closed-loop load of default Score requests (one input, the calibration's K and the default anomaly
scores), so a drift in the machine's speed hits all alike; a second plain server shows how far two
identical servers differ in one run. The goal: with both on, throughput and p99
at most 10 % worse than plain.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from sklearn.datasets import load_digits

from bench import pages
from bench.load import LoadResult, closed_loop, merge
from bench.machine import REPO
from bench.processes import VaeServer
from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb

BUNDLE = REPO / "models" / "digits"
METHOD = "/vaeserve.api.v1.VaeService/Score"


class SpanCounter(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace endpoint that counts what it is sent: the servers export to a real receiver."""

    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def _load(target: str, payload: bytes, concurrency: int, seconds: float) -> tuple[LoadResult, int]:
    """The measured part of a closed loop, and every call made (warm-up included, for CPU per call)."""
    made = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD, None, None)

        async def once() -> object:
            nonlocal made
            made += 1
            return await call(payload)

        await closed_loop(once, concurrency, 0.2, warmup_s=0.2)
        return await closed_loop(once, concurrency, seconds, warmup_s=0.2), made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16, help="callers in the closed loop")
    parser.add_argument("--seconds", type=float, default=16.0, help="measuring time per server, split into turns")
    parser.add_argument("--rounds", type=int, default=4, help="turns each server takes")
    parser.add_argument("--inputs", default="1,32", help="inputs per Score request, comma-separated sizes")
    parser.add_argument("--page", type=Path, help="also write the report here as a markdown page")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    started = time.perf_counter()

    counter = SpanCounter()
    receiver = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counter, receiver)  # type: ignore[no-untyped-call]
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{receiver.add_insecure_port('127.0.0.1:0')}"
    receiver.start()
    sizes = [int(n) for n in args.inputs.split(",")]
    digits = load_digits().data
    payloads = {n: pb.ScoreRequest(x=codec.to_proto(digits[1500 : 1500 + n])).SerializeToString() for n in sizes}
    turns: dict[tuple[int, str], list[LoadResult]] = {}
    cpu: dict[tuple[int, str], float] = {}
    calls: dict[tuple[int, str], int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-observability-") as work:
        log = str(Path(work) / "payload.jsonl")
        both = ["--tracing", "--payload-log"]
        flags = {
            "off": [],
            "off, a second server (the noise floor)": [],
            "tracing": ["--tracing"],
            "payload log": ["--payload-log", log + ".1"],
            "tracing and payload log": [*both, log + ".2"],
            "both, 10 % sampled": [*both, log + ".3", "--payload-log-sample", "0.1"],
        }
        # The standard OpenTelemetry sampler that keeps a tenth of the traces whose caller did not decide.
        sampled = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
        servers: dict[str, VaeServer] = {}
        try:
            for name, extra in flags.items():
                servers[name] = VaeServer(BUNDLE, *extra, env=sampled if "sampled" in name else None)
            for n, (_, name) in itertools.product(sizes, itertools.product(range(args.rounds), servers)):
                server, turn = servers[name], args.seconds / args.rounds
                before = server.cpu_seconds()
                result, made = asyncio.run(_load(server.address, payloads[n], args.concurrency, turn))
                cpu[n, name] = cpu.get((n, name), 0.0) + server.cpu_seconds() - before
                calls[n, name] = calls.get((n, name), 0) + made
                turns.setdefault((n, name), []).append(result)
        finally:
            for server in servers.values():
                server.stop()
        records = sum(len(p.read_text().splitlines()) for p in Path(work).glob("payload.jsonl*"))
    receiver.stop(None)

    results = {key: merge(r) for key, r in turns.items()}
    rows, goals = [], []
    for (n, name), r in results.items():
        off = results[n, "off"]
        per_turn = [t.rps / off.rps for t in turns[n, name]]
        rows.append(
            (
                n,
                name,
                f"{r.rps:.1f}",
                f"{r.rps / off.rps:.2f}",
                f"{r.p50_ms:.1f}",
                f"{r.p99_ms:.1f}",
                f"{r.p99_ms / off.p99_ms:.2f}",
                f"{min(per_turn):.2f}-{max(per_turn):.2f}",
                f"{1e6 * cpu[n, name] / calls[n, name]:.0f}",
            )
        )
        if name.startswith("tracing and payload log") or name.startswith("both,"):
            goals += [
                pages.goal(f"{n} input(s), {name}: throughput >= 0.9 x off", r.rps / off.rps, 0.9, "x"),
                pages.goal(f"{n} input(s), {name}: p99 <= 1.1 x off", r.p99_ms / off.p99_ms, 1.1, "x", at_most=True),
            ]
    columns = ("inputs", "server", "Score/s", "x off", "p50 ms", "p99 ms", "p99 x off", "x off per turn", "CPU us/call")
    body = [
        f"Default Score requests of {args.inputs} digits (the calibration's K = 1000, the default anomaly scores) from "
        f"{args.concurrency} callers in a closed loop, {args.rounds} turns of {args.seconds / args.rounds:g} s per "
        f"server; the load runs on the same machine. Spans received: {counter.spans}; payload records "
        f"written: {records}.",
        "",
        *pages.table(columns, rows, align="rlrrrrrrr"),
        "",
        *pages.table(("goal (a ratio in this run)", "this run", ""), goals),
    ]
    print("\n".join(body))
    title = f"observability overhead ({time.perf_counter() - started:.0f} s)"
    pages.write(args.page, [*pages.header(title, pages.command_line("bench.observability", argv)), "", *body])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
