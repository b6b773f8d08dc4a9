"""What the engine returns: per-input columns (named in vaeserve.api.scores), split and joined by rows."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from vaeserve.api.scores import SCORE_COLUMNS

__all__ = ["ScoreOptions", "ScoreResult"]

_KNOWN = frozenset(c.name for c in SCORE_COLUMNS)


@dataclass(frozen=True)
class ScoreOptions:
    k: int
    prior_estimate: bool = False
    per_dim: bool = False
    reconstruction: bool = False
    sq_err: bool = False  # also E_q ||x - E[x|z]||^2 from the same draws (the reconstruction anomaly score)
    target_se: float | None = None  # adaptive K: double k per input until log_px_se <= target_se
    max_k: int | None = None  # ... or this many draws


@dataclass
class ScoreResult:
    """Per-input results: `columns` by name (each [B]), plus the per-dimension arrays when asked for."""

    columns: dict[str, np.ndarray]
    per_dim: np.ndarray | None = None  # [B, *input_shape]
    reconstruction: np.ndarray | None = None  # [B, *input_shape]
    sq_err: np.ndarray | None = field(
        default=None, repr=False
    )  # [B] ([B, F] for an ensemble), with ScoreOptions.sq_err
    # An ensemble's members' -log p(x) [B, F], each in its own model space: their anomaly nll, when the
    # request's K and seed are the calibration's.
    member_nll: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        unknown = self.columns.keys() - _KNOWN
        if unknown:
            raise KeyError(f"not score columns: {sorted(unknown)} (declare them in vaeserve.api.scores)")

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __len__(self) -> int:
        return len(self.columns["log_px"])

    def rows(self, rows: slice | np.ndarray) -> ScoreResult:
        """The results of some inputs (to split a merged batch)."""
        return replace(
            self,
            columns={name: value[rows] for name, value in self.columns.items()},
            per_dim=_take(self.per_dim, rows),
            reconstruction=_take(self.reconstruction, rows),
            sq_err=_take(self.sq_err, rows),
            member_nll=_take(self.member_nll, rows),
        )

    def expanded(self, n: int, index: np.ndarray) -> ScoreResult:
        """A result for n inputs holding this one's rows at `index` (the rest to be `put`)."""

        def grow(a: np.ndarray | None) -> np.ndarray | None:
            if a is None:
                return None
            out = np.zeros((n, *a.shape[1:]), a.dtype)
            out[index] = a
            return out

        return ScoreResult(
            {name: grow(v) for name, v in self.columns.items()},  # type: ignore[misc]
            grow(self.per_dim),
            grow(self.reconstruction),
            grow(self.sq_err),
            grow(self.member_nll),
        )

    def put(self, index: np.ndarray, part: ScoreResult) -> ScoreResult:
        """Writes part's rows over this result's rows at `index`; returns self."""
        for name, value in part.columns.items():
            self.columns[name][index] = value
        pairs = (
            (self.per_dim, part.per_dim),
            (self.reconstruction, part.reconstruction),
            (self.sq_err, part.sq_err),
            (self.member_nll, part.member_nll),
        )
        for mine, theirs in pairs:
            if mine is not None and theirs is not None:
                mine[index] = theirs
        return self


def _take(a: np.ndarray | None, rows: slice | np.ndarray) -> np.ndarray | None:
    return None if a is None else a[rows]
