"""`python -m bench.batch` (make bench-batch): vaeserve-batch on Ray against the single-process engine, one run.

Two workloads on the bundled digits model, every row with its own seed (seed + global index) and no anomaly
scores, so the estimators alone are timed: the ELBO (K=1) over 100,000 inputs and IWAE (K=1000) over 1,000.
The inputs are the model's own: decoded means of prior draws on the data's 0-16 levels.

- engine: one RowScorer in this process over the rows in memory, in the batches one actor would get, with
  onnxruntime's default threads and with one thread (an actor's setting).
- Ray: vaeserve-batch's pipeline on a local Ray instance of --num-cpus CPUs, one single-threaded actor per
  CPU, from a .npy file to a Parquet file. `after the first results` is the rows that came after the first
  batch over the time they took (the actors' pace); `pipeline` the dataset's whole run (actors starting
  included); `end to end` adds starting and stopping the instance, as `vaeserve-batch score` does.

Every Ray result is checked against the engine's, row by row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pyarrow.parquet as pq

from bench import pages
from vaeserve.api.tables import format_table
from vaeserve.batch import Cluster, RowScorer, ScoreSpec, batch_rows, loopback_only, plan_inputs, row_seeds
from vaeserve.batch.summary import RunSummary

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "models" / "digits"
SEED = 0


def digit_rows(scorer: RowScorer, n: int) -> np.ndarray:
    z = np.random.default_rng(1).standard_normal((n, scorer.manifest.latent_dim)).astype(np.float32)
    return np.round(scorer.engine.decode(z)["probs"] * 16.0).reshape(n, 64)


def engine_run(x: np.ndarray, spec: ScoreSpec, threads: int) -> tuple[float, dict[str, np.ndarray]]:
    scorer = RowScorer(BUNDLE, threads=threads)
    rows = batch_rows(spec, scorer.manifest, len(x), 1)
    parts = []
    began = time.perf_counter()
    for start in range(0, len(x), rows):
        index = np.arange(start, min(start + rows, len(x)))
        parts.append(scorer.score(x[index], row_seeds(spec.seed, index), spec))
    seconds = time.perf_counter() - began
    return seconds, {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def ray_run(x: np.ndarray, spec: ScoreSpec, cpus: int, work: Path) -> tuple[RunSummary, float, dict[str, np.ndarray]]:
    from vaeserve.batch.pipeline import run  # imports Ray, after loopback_only

    scorer = RowScorer(BUNDLE)
    np.save(work / "x.npy", x)
    out = work / "scores.parquet"
    began = time.perf_counter()
    summary = run(
        plan_inputs([work / "x.npy"], scorer.manifest), scorer, spec, out, Cluster(num_cpus=cpus), progress=False
    )
    end_to_end = time.perf_counter() - began
    table = pq.read_table(out)
    return summary, end_to_end, {name: table.column(name).to_numpy() for name in table.column_names}


def worst_difference(ray: dict[str, np.ndarray], engine: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for name, expected in engine.items():
        got, want = np.asarray(ray[name], np.float64), np.asarray(expected, np.float64)
        both = np.isfinite(want)
        assert np.array_equal(np.isfinite(got), both), name
        scale = np.maximum(np.abs(want[both]), 1e-12)
        worst = max(worst, float(np.max(np.abs(got[both] - want[both]) / scale, initial=0.0)))
    return worst


def machine(cpus: int) -> dict[str, Any]:
    import ray

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ray_cpus": cpus,
        "ray": ray.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--elbo-rows", type=int, default=100_000)
    p.add_argument("--iwae-rows", type=int, default=1_000)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1, help="CPUs (and actors) of the Ray instance")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--page", type=Path, help="also write the report here as a markdown page")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    loopback_only()
    scorer = RowScorer(BUNDLE)
    workloads = [
        ("ELBO, K=1", scorer.spec(k=1, seed=SEED, anomaly_scores=()), args.elbo_rows),
        ("IWAE, K=1000", scorer.spec(k=1000, seed=SEED, anomaly_scores=()), args.iwae_rows),
    ]
    rows: list[list[object]] = []
    figures: list[dict[str, Any]] = []
    checks: list[str] = []
    for name, spec, n in workloads:
        x = digit_rows(scorer, n)
        default_s, engine = engine_run(x, spec, threads=0)
        single_s, _ = engine_run(x, spec, threads=1)
        with tempfile.TemporaryDirectory(prefix="bench-batch-") as work:
            summary, end_to_end_s, scored = ray_run(x, spec, args.num_cpus, Path(work))
        difference = worst_difference(scored, engine)
        runs = [
            ("engine, default threads", default_s),
            ("engine, 1 thread", single_s),
            (f"Ray, {args.num_cpus} actors: after the first results", (n - summary.first_rows) / summary.steady_rate),
            (f"Ray, {args.num_cpus} actors: pipeline", summary.seconds),
            (f"Ray, {args.num_cpus} actors: end to end", end_to_end_s),
        ]
        for how, seconds in runs:
            rows.append(
                [f"{name}, {n:,} inputs", how, round(seconds, 2), round(n / seconds, 1), round(default_s / seconds, 2)]
            )
        figures.append({"workload": name, "inputs": n, "seconds": dict(runs), "max_relative_difference": difference})
        checks.append(f"{name}: Ray and the engine differ by at most {difference:.1e} (relative) over {n:,} rows")
        print(checks[-1], flush=True)
    info = machine(args.num_cpus)
    title = f"vaeserve-batch vs the engine in-process ({info['cpu']}, {info['cores']} cores; Ray {info['ray']})"
    print(format_table(["workload", "run", "seconds", "inputs/s", "x engine"], rows, title=title))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "figures": figures}, indent=2))
    columns = ("workload", "run", "seconds", "inputs/s", "x engine")
    pages.write(
        args.page,
        [
            *pages.header("vaeserve-batch against the engine in-process", pages.command_line("bench.batch", argv)),
            "",
            f"The bundled {BUNDLE.name} model; a local Ray instance of {args.num_cpus} CPUs, one actor per CPU.",
            "",
            *pages.table(columns, rows, align="llrrr"),
            "",
            *(f"- {line}" for line in checks),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
