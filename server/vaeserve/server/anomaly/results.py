"""What the anomaly scores give back for a batch: per-input columns and how they were judged."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AnomalyResult", "TypicalityResult"]


@dataclass(frozen=True)
class AnomalyResult:
    """One named score of a batch, read against its calibration (each array [B], in input order)."""

    name: str
    score: np.ndarray
    percentile: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray
    threshold: float  # the score above which p_value <= alpha (+inf: nothing can be flagged)
    alpha: float
    min_alpha: float
    n_calibration: int
    k: int
    estimator: str

    def field(self, name: str) -> np.ndarray:
        """A per-input field by its name in vaeserve.api.scores.ANOMALY_FIELDS."""
        value: np.ndarray = getattr(self, name)
        return value


@dataclass(frozen=True)
class TypicalityResult:
    """Is a batch's mean nll typical of normal data? (Nalisnick et al. 2019, bootstrap null.)"""

    batch_size: int
    mean_score: float
    expected: float
    threshold: float
    p_value: float
    is_atypical: bool
    alpha: float
    bootstraps: int
