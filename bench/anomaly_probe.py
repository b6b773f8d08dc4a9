"""The anomaly benchmark's probe: what the bundled models' served scores make of inputs simpler than (or unlike)
their training data: blank, constant, noise, inverted digits, another data set."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bench.anomaly_runs import judged
from bench.metrics import auroc
from vaeserve.training.data import load_dataset
from vaeserve.training.pipeline import bundle_splits, cpu_scorer

REPO = Path(__file__).resolve().parent.parent
PROBE_ALPHA = 0.01


def probe(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per bundled model and kind of input: the share each score flags at PROBE_ALPHA, and its AUROC against the
    model's held-out normal rows."""
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(args.seed)
    for model, top, side in (("digits", 16.0, 8), ("mnist5k", 255.0, 28)):
        scorer = cpu_scorer(REPO / "models" / model)
        normal = bundle_splits(scorer.engine.bundle).test.reshape(-1, side * side)
        sets = {
            "all black": np.zeros((50, side * side)),
            "all white": np.full((50, side * side), top),
            "constant grey": np.full((50, side * side), np.round(top / 2)),
            "uniform noise": np.round(rng.random((50, side * side)) * top),
            "inverted digits": top - normal[:200],
            "the other data set": _other_data_set(model, side, top, rng),
        }
        baseline = judged(scorer, normal, (PROBE_ALPHA,))
        for label, x in sets.items():
            row: dict[str, Any] = {"model": model, "inputs": label, "n": len(x)}
            for name, (result,) in judged(scorer, x, (PROBE_ALPHA,)).items():
                row[name] = {
                    "flagged": float(result.is_anomaly.mean()),
                    "auroc": auroc(baseline[name][0].score, result.score),
                }
            rows.append(row)
    return rows


def _other_data_set(model: str, side: int, top: float, rng: np.random.Generator) -> np.ndarray:
    """mnist5k images shrunk to 8x8 (0-16) for the digits model; digits grown to 28x28 (0-255) for mnist5k's."""
    if model == "digits":
        big = load_dataset("mnist5k").x[rng.choice(5000, 300, replace=False), 0]
        padded = np.pad(big, ((0, 0), (2, 2), (2, 2)))  # 32x32, then the mean of each 4x4 block
        small = padded.reshape(len(big), 8, 4, 8, 4).mean(axis=(2, 4))
        return np.round(small / 255.0 * top).reshape(len(big), -1)
    digits = load_dataset("digits").x[rng.choice(1797, 300, replace=False), 0]
    grown = np.kron(digits, np.ones((3, 3)))  # 24x24, centred in 28x28 as MNIST centres its digits
    return np.round(np.pad(grown, ((0, 0), (2, 2), (2, 2))) / 16.0 * top).reshape(len(digits), -1)


def probe_table(rows: list[dict[str, Any]]) -> list[str]:
    names = [k for k in rows[0] if k not in ("model", "inputs", "n")] if rows else []
    lines = [
        f"\nsimpler inputs, bundled models: share flagged at alpha = {PROBE_ALPHA:g} "
        "(AUROC against held-out normal rows)\n"
    ]
    lines.append("| model | inputs | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---:|" * len(names))
    for row in rows:
        cells = [f"{row[n]['flagged']:.2f} ({row[n]['auroc']:.3f})" if n in row else "—" for n in names]
        lines.append(f"| {row['model']} | {row['inputs']} ({row['n']}) | " + " | ".join(cells) + " |")
    return lines
