"""The anomaly calibration a manifest carries: the calibration scores, their standardization for `combined`,
and for a cross-fitted ensemble its folds (the one schema, with `vaeserve.api.manifest`, which re-exports it)."""

from __future__ import annotations

import functools
import itertools
import math
import re
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

__all__ = [
    "Calibration",
    "CrossFit",
    "Standardization",
    "check_alpha",
    "member_draws",
    "member_seed",
]

_SCORE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SEED_STEP = 0x9E3779B97F4A7C15  # a Weyl step: member seeds far apart in the 2**64 seed space


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def member_draws(k: int, members: int, f: int) -> int:
    """Draws member f of an ensemble takes of a request's K: K split as evenly as possible (the first K mod F
    members take one more), and at least one each, so K below the member count costs one draw per member."""
    return max(1, k // members + (1 if f < k % members else 0))


def member_seed(seed: int, f: int) -> int:
    """The seed of member f's draws for a request with `seed` (member 0 draws the request's own)."""
    return (seed + f * _SEED_STEP) % 2**64


class Standardization(_Strict):
    """How the `combined` score puts its components on one scale: (score - center) / scale for each, then
    the largest. Centers (medians) and scales (interquartile ranges) come from normal rows apart from the
    calibration rows (the validation split), so `combined` is a fixed function of an input and its
    conformal p-values keep their guarantee exactly."""

    components: dict[str, tuple[float, float]] = Field(min_length=1)  # name -> (center, scale > 0)
    dataset: str

    @field_validator("components")
    @classmethod
    def _positive_scales(cls, components: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (center, scale) in components.items():
            if not (math.isfinite(center) and math.isfinite(scale) and scale > 0):
                raise ValueError(f"{name}: center must be finite and scale finite and > 0, got ({center}, {scale})")
        return components

    def combine(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """max over components of (score - center) / scale, float64 [B]."""
        columns = [(np.asarray(scores[name], np.float64) - c) / s for name, (c, s) in self.components.items()]
        return np.max(np.stack(columns), axis=0)  # type: ignore[no-any-return]


class Calibration(_Strict):
    """Anomaly scores of held-out normal data: one sorted list per named score, all of the same n inputs.

    Flags are conformal: for a new input's score s, p = (1 + #{calibration scores >= s}) / (n + 1), and
    a flag at level alpha (p <= alpha) has a false-positive rate of at most alpha on normal data
    exchangeable with the calibration inputs. So alpha can be no smaller than 1 / (n + 1).
    Manifests written before the named scores held one list, the `nll`; they read as {"nll": [...]}.
    """

    estimator: Literal["iwae"] = "iwae"
    k: PositiveInt  # K of the importance-sampled estimates behind the scores
    seed: int = Field(ge=0, lt=2**64)
    dataset: str
    scores: dict[str, list[float]] = Field(min_length=1)
    standardization: Standardization | None = None  # of the `combined` score's components
    # Cross-fitted ensembles (format 2): each score's list is F sorted segments, segment f holding member f's
    # scores of its own calibration rows (its fold, which it never trained on), of these sizes; `k` is the
    # request K the members split (member_draws) and member f draws with member_seed(seed, f). Each member has
    # its own standardization, fitted on its own validation rows.
    fold_sizes: list[PositiveInt] | None = Field(None, min_length=2)
    standardizations: list[Standardization] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_list_is_the_nll(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("scores"), list):
            return {**data, "scores": {"nll": data["scores"]}}
        return data

    @field_validator("scores")
    @classmethod
    def _sorted_finite(cls, scores: dict[str, list[float]]) -> dict[str, list[float]]:
        lengths = {len(values) for values in scores.values()}
        if len(lengths) > 1:
            raise ValueError(f"every score needs one value per calibration input; lengths are {sorted(lengths)}")
        for name, values in scores.items():
            if not _SCORE_NAME.match(name):
                raise ValueError(f"score name {name!r} must match {_SCORE_NAME.pattern}")
            if not values:
                raise ValueError(f"{name}: no calibration scores")
            if not all(math.isfinite(s) for s in values):
                raise ValueError(f"{name}: calibration scores must be finite")
        return scores

    @model_validator(mode="after")
    def _sorted_and_standardized(self) -> Calibration:
        for name, values in self.scores.items():
            for f, (start, stop) in enumerate(self._spans()):
                if any(b < a for a, b in itertools.pairwise(values[start:stop])):
                    where = "" if self.fold_sizes is None else f" within fold {f}"
                    raise ValueError(f"{name}: calibration scores must be sorted in ascending order{where}")
        if self.fold_sizes is not None:
            if sum(self.fold_sizes) != self.n:
                raise ValueError(f"fold_sizes add up to {sum(self.fold_sizes)}; there are {self.n} calibration scores")
            if self.standardization is not None:
                raise ValueError("a cross-fitted calibration has one standardization per member (standardizations)")
            if self.standardizations is not None and len(self.standardizations) != len(self.fold_sizes):
                raise ValueError(f"{len(self.standardizations)} standardizations for {len(self.fold_sizes)} members")
        elif self.standardizations is not None:
            raise ValueError("standardizations (one per member) go with fold_sizes; a single model has standardization")
        own = self.standardization or (self.standardizations[0] if self.standardizations else None)
        if "combined" in self.scores and own is None:
            raise ValueError("the combined score's calibration needs its standardization")
        for standardization in [self.standardization, *(self.standardizations or [])]:
            if standardization is not None:
                missing = set(standardization.components) - set(self.scores)
                if missing:
                    raise ValueError(f"standardization components {sorted(missing)} are not calibrated scores")
        return self

    def _spans(self) -> list[tuple[int, int]]:
        sizes = self.fold_sizes or [self.n]
        ends = list(itertools.accumulate(sizes))
        return [(end - size, end) for size, end in zip(sizes, ends)]

    @property
    def members(self) -> int:
        """1, or the number of cross-fitted members whose scores this calibration holds."""
        return len(self.fold_sizes) if self.fold_sizes else 1

    def member(self, f: int) -> Calibration:
        """Member f's own calibration: its fold's scores, its share of K, its seed and its standardization."""
        if self.fold_sizes is None:
            return self
        start, stop = self._spans()[f]
        return Calibration(
            estimator=self.estimator,
            k=member_draws(self.k, self.members, f),
            seed=member_seed(self.seed, f),
            dataset=self.dataset,
            scores={name: values[start:stop] for name, values in self.scores.items()},
            standardization=self.standardizations[f] if self.standardizations else None,
        )

    @functools.cached_property
    def _arrays(self) -> dict[str, np.ndarray]:  # cached once: read on every request
        return {name: np.asarray(values, dtype=np.float64) for name, values in self.scores.items()}

    @property
    def n(self) -> int:
        """The number of calibration inputs."""
        return len(next(iter(self.scores.values())))

    @property
    def min_alpha(self) -> float:
        """The smallest level a flag can have with n calibration inputs: 1 / (n + 1)."""
        return 1.0 / (self.n + 1)

    def sorted_scores(self, name: str) -> np.ndarray:
        if self.fold_sizes is not None:
            raise ValueError("a cross-fitted calibration holds one sorted list per member, not one for the model")
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError(f"no calibration for score {name!r}; calibrated: {', '.join(self.scores)}") from None

    def _ranks(self, scores: npt.ArrayLike, name: str, side: Literal["left", "right"]) -> np.ndarray:
        """Calibration scores below (left) or at or below (right) each score, summed over the folds: scores is
        [B], or [B, F] for a cross-fitted calibration (column f: member f's score, ranked in fold f)."""
        values = np.asarray(scores, dtype=np.float64)
        if name not in self.scores:
            raise KeyError(f"no calibration for score {name!r}; calibrated: {', '.join(self.scores)}")
        if self.fold_sizes is None:
            return np.searchsorted(self._arrays[name], values, side=side)
        if values.ndim != 2 or values.shape[1] != self.members:
            raise ValueError(f"a cross-fitted calibration ranks [B, {self.members}] member scores, got {values.shape}")
        column = self._arrays[name]
        return sum(  # type: ignore[return-value]
            np.searchsorted(column[start:stop], values[:, f], side=side)
            for f, (start, stop) in enumerate(self._spans())
        )

    def percentile(self, scores: npt.ArrayLike, name: str = "nll") -> np.ndarray:
        """Percent of calibration scores at or below each score (descriptive); for a cross-fitted calibration,
        each member's score against its own fold's, pooled."""
        return 100.0 * self._ranks(scores, name, "right") / self.n

    def p_value(self, scores: npt.ArrayLike, name: str = "nll") -> np.ndarray:
        """Conformal p-values (1 + #{calibration scores >= s}) / (n + 1); higher scores are more anomalous.
        Cross-fitted (cross-conformal, Vovk 2015; Barber et al. 2021): member f's score of the input against
        the scores member f gave its own fold, pooled over the folds."""
        return (1.0 + (self.n - self._ranks(scores, name, "left"))) / (self.n + 1.0)

    def threshold(self, alpha: float, name: str = "nll") -> float:
        """The score above which p <= alpha: +inf when alpha < min_alpha (nothing can be flagged). NaN for a
        cross-fitted calibration: its p-value ranks each member's own score, so no one score separates the flags."""
        check_alpha(alpha)
        if self.fold_sizes is not None:
            return math.nan
        allowed = math.floor(alpha * (self.n + 1) + 1e-9) - 1  # most calibration scores >= a flagged score
        if allowed < 0:
            return math.inf
        if allowed >= self.n:
            return -math.inf
        return float(self.sorted_scores(name)[self.n - 1 - allowed])

    def quantile(self, q: float, name: str = "nll") -> float:
        """The calibration scores' q-quantile, linearly interpolated (descriptive; flags use p-values). A
        cross-fitted calibration pools its members' scores here."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must lie in [0, 1], got {q}")
        if name not in self._arrays:
            raise KeyError(f"no calibration for score {name!r}; calibrated: {', '.join(self.scores)}")
        return float(np.quantile(self._arrays[name], q))

    def too_small_for(self, alpha: float) -> str | None:
        """Why flags at alpha cannot keep their promise with these n inputs, or None when they can."""
        if alpha >= self.min_alpha - 1e-12:
            return None
        return (
            f"the anomaly calibration has {self.n} inputs: flags at alpha = {alpha:g} need at least "
            f"{math.ceil(1 / alpha - 1 - 1e-9)}, so nothing can be flagged; the smallest attainable alpha is "
            f"{self.min_alpha:.4g}: set alpha (--alpha) to {_round_up(self.min_alpha)} or more, or add normal "
            f"rows (vaeserve-train calibrate BUNDLE DATA --add)"
        )


def _round_up(alpha: float) -> str:
    """The smallest of 2 significant digits at or above alpha, as text (0.0233 -> 0.024)."""
    digits = 1 - math.floor(math.log10(alpha))
    return f"{math.ceil(alpha * 10**digits - 1e-9) / 10**digits:.{digits}f}"


class CrossFit(_Strict):
    """How a cross-fitted ensemble used the normal rows: every row trained the members of the other folds and
    joined the calibration of exactly one member (its fold's), unless it was held out as a test row."""

    folds: int = Field(ge=2)
    n_train: list[int]  # rows each member trained on (its validation rows not counted)
    n_val: list[int]  # rows each member held out of its training for early stopping and standardization
    # The member whose calibration holds each row of the data (after --classes), in the data's order;
    # -1: a test row, seen by no member and not calibrated on.
    fold_of_row: list[int]
    # Rows of the data (indices in its order) that calibrate a member but trained none (the --split CALIB rows).
    added_rows: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _per_member(self) -> CrossFit:
        for field in ("n_train", "n_val"):
            if len(getattr(self, field)) != self.folds:
                raise ValueError(f"{field} needs one count per member ({self.folds})")
        if any(not 0 <= i < len(self.fold_of_row) for i in self.added_rows):
            raise ValueError(f"added_rows must index the {len(self.fold_of_row)} rows of fold_of_row")
        if any(not -1 <= f < self.folds for f in self.fold_of_row):
            raise ValueError(f"fold_of_row values must lie in [-1, {self.folds})")
        return self


def check_alpha(alpha: float) -> None:
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
