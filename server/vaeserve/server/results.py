"""What the engine returns: per-input arrays, split and joined by rows for merged batches."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from vaeserve.server.estimators import Estimate

__all__ = ["Anomaly", "Estimate", "ScoreOptions", "ScoreResult"]


@dataclass(frozen=True)
class ScoreOptions:
    k: int
    prior_estimate: bool = False
    per_dim: bool = False
    reconstruction: bool = False
    anomaly: bool = True
    threshold_quantile: float = 0.99


@dataclass
class Anomaly:
    score: np.ndarray
    percentile: np.ndarray
    is_anomaly: np.ndarray
    threshold: float
    threshold_quantile: float
    k: int
    estimator: str


@dataclass
class ScoreResult:
    """Per-input results, each an array with the batch as its first axis."""

    elbo: np.ndarray
    elbo_se: np.ndarray
    reconstruction_term: np.ndarray
    kl: np.ndarray
    expected_log_joint: np.ndarray
    entropy: np.ndarray
    log_px: np.ndarray
    log_px_se: np.ndarray
    ess: np.ndarray
    bits_per_dim: np.ndarray
    gap: np.ndarray
    gap_se: np.ndarray
    prior: Estimate | None = None
    anomaly: Anomaly | None = None
    per_dim: np.ndarray | None = None
    reconstruction: np.ndarray | None = None

    def rows(self, rows: slice) -> ScoreResult:
        """The results of a contiguous run of inputs (to split a merged batch)."""

        def cut(value: Any) -> Any:
            if isinstance(value, np.ndarray):
                return value[rows]
            if isinstance(value, (Estimate, Anomaly)):
                return replace(value, **{f.name: cut(getattr(value, f.name)) for f in fields(value)})
            return value

        return replace(self, **{f.name: cut(getattr(self, f.name)) for f in fields(self)})
