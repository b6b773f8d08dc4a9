"""Evaluation and calibration of an exported bundle, computed by the server's own engine.

Evaluation gives every test input its own seed (seed + index), so the Monte Carlo noise
of different inputs is independent and the standard error over the test set is honest.
Calibration scores the held-out normal data exactly as a served Score request with the
same K and seed would, so a served percentile reads the same scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaeserve.api.manifest import Calibration, Estimate, Standardization
from vaeserve.client.images import save_grid
from vaeserve.server.anomaly import AnomalyScorer
from vaeserve.server.engine import Engine, EnsembleEngine
from vaeserve.server.engine.results import ScoreOptions

__all__ = ["KRow", "active_units", "calibrate", "evaluate", "mean_se", "save_pictures"]


@dataclass(frozen=True)
class KRow:
    """Test-set means (nats per input) at one K, each with its standard error over the test set."""

    k: int
    log_px: float
    log_px_se: float
    elbo: float
    elbo_se: float
    mc_se: float  # mean per-input Monte Carlo standard error of log p(x)
    ess: float  # mean effective sample size

    def iwae(self) -> Estimate:
        return Estimate(value=self.log_px, se=self.log_px_se, k=self.k)


def mean_se(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def evaluate(engine: Engine | EnsembleEngine, raw: np.ndarray, ks: list[int], seed: int) -> list[KRow]:
    x = engine.prepare(raw)
    seeds = np.uint64(seed) + np.arange(len(x), dtype=np.uint64)
    rows = []
    for k in ks:
        result = engine.score(x, ScoreOptions(k=k), seeds)
        log_px, log_px_se = mean_se(result["log_px"])
        elbo, elbo_se = mean_se(result["elbo"])
        se = result["log_px_se"]  # NaN for K = 1, and for an ensemble while a member takes one draw
        mc = float(np.nanmean(se)) if np.isfinite(se).any() else float("nan")
        rows.append(KRow(k, log_px, log_px_se, elbo, elbo_se, mc, float(result["ess"].mean())))
    return rows


def active_units(engine: Engine | EnsembleEngine, raw: np.ndarray, threshold: float = 0.01) -> int:
    """Latent units whose posterior mean varies across inputs: Cov_x(E_q[z_u]) > 0.01 (Burda et al., 2016)."""
    mean, _ = engine.encode(engine.prepare(raw))
    return int((mean.astype(np.float64).var(axis=0) > threshold).sum())


def calibrate(
    scorer: AnomalyScorer,
    raw: np.ndarray,
    *,
    k: int,
    seed: int,
    dataset: str,
    standardize_on: tuple[np.ndarray, str] | None = None,
    standardization: Standardization | None = None,
) -> Calibration:
    """Every anomaly score the model can serve, of held-out normal data, sorted, as the server computes them;
    `combined` too, standardized on other normal rows (`standardize_on`: raw rows and their name) or as given."""
    if standardization is None and standardize_on is not None:
        rows, name = standardize_on
        standardization = scorer.standardize(scorer.engine.prepare(rows), k=k, seed=seed, dataset=name)
    return scorer.calibrate(
        scorer.engine.prepare(raw), k=k, seed=seed, dataset=dataset, standardization=standardization
    )


def save_pictures(engine: Engine | EnsembleEngine, raw: np.ndarray, out: Path, *, seed: int, n: int = 32) -> list[Path]:
    """PNG grids: inputs above their reconstructions, and samples from the prior (image models only)."""
    manifest = engine.manifest
    if manifest.image is None:
        return []
    out.mkdir(parents=True, exist_ok=True)
    x = engine.prepare(raw[:n])
    shape = (-1, *manifest.input_shape)
    low, high = (0.0, 1.0) if manifest.bounded else (float(x.min()), float(x.max()))
    pairs = np.concatenate([x.reshape(shape), engine.reconstruct(x).reshape(shape)])
    _, params = engine.sample_prior(64, seed)
    samples = params[manifest.mean_output]
    return [
        save_grid(pairs, out / "reconstructions.png", columns=len(x), low=low, high=high),
        save_grid(samples, out / "samples.png", columns=8, low=low, high=high),
    ]
