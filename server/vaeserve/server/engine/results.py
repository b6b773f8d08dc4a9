"""What the engine returns: per-input columns (named in vaeserve.api.scores), split and joined by rows."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vaeserve.api.scores import SCORE_COLUMNS

__all__ = ["AnomalyThreshold", "ScoreOptions", "ScoreResult"]

_KNOWN = frozenset(c.name for c in SCORE_COLUMNS)


@dataclass(frozen=True)
class ScoreOptions:
    k: int
    prior_estimate: bool = False
    per_dim: bool = False
    reconstruction: bool = False
    anomaly: bool = True
    threshold_quantile: float = 0.99


@dataclass(frozen=True)
class AnomalyThreshold:
    """How the anomaly columns were made: the flag's threshold and the calibration's estimator."""

    threshold: float
    threshold_quantile: float
    k: int
    estimator: str


@dataclass
class ScoreResult:
    """Per-input results: `columns` by name (each [B]), plus the per-dimension arrays when asked for."""

    columns: dict[str, np.ndarray]
    anomaly: AnomalyThreshold | None = None
    per_dim: np.ndarray | None = None  # [B, *input_shape]
    reconstruction: np.ndarray | None = None  # [B, *input_shape]

    def __post_init__(self) -> None:
        unknown = self.columns.keys() - _KNOWN
        if unknown:
            raise KeyError(f"not score columns: {sorted(unknown)} (declare them in vaeserve.api.scores)")

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __len__(self) -> int:
        return len(self.columns["log_px"])

    def rows(self, rows: slice) -> ScoreResult:
        """The results of a contiguous run of inputs (to split a merged batch)."""
        return replace(
            self,
            columns={name: value[rows] for name, value in self.columns.items()},
            per_dim=None if self.per_dim is None else self.per_dim[rows],
            reconstruction=None if self.reconstruction is None else self.reconstruction[rows],
        )
