"""A model's anomaly scores: which it serves, computing them for a batch, and reading them against
the calibration (percentiles, conformal p-values, flags at a level alpha).

Scoring and calibration share this code, so a served score and the calibration scores it is
compared with are computed the same way: with the calibration's K and seed (the same draws for
every input), which makes a new normal input's score exchangeable with the calibration scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vaeserve.api.manifest import Calibration, Standardization, check_alpha
from vaeserve.api.scores import ANOMALY_SCORES
from vaeserve.server.anomaly.base import AnomalyScoreFn
from vaeserve.server.anomaly.combined import Combined, component_names
from vaeserve.server.anomaly.complexity import Complexity
from vaeserve.server.anomaly.likelihood_ratio import LikelihoodRatio
from vaeserve.server.anomaly.nll import Nll
from vaeserve.server.anomaly.passes import SharedPasses
from vaeserve.server.anomaly.reconstruction import Reconstruction
from vaeserve.server.anomaly.results import AnomalyResult, TypicalityResult
from vaeserve.server.anomaly.typicality import typicality
from vaeserve.server.engine import Check, Engine, ScoreResult, no_check
from vaeserve.server.errors import InvalidArgument

__all__ = ["SCORE_FNS", "AnomalyScorer", "alpha_of", "with_dataset"]

_SINGLE: dict[str, AnomalyScoreFn] = {fn.name: fn for fn in (Nll(), Reconstruction(), Complexity(), LikelihoodRatio())}
SCORE_FNS: dict[str, AnomalyScoreFn] = {**_SINGLE, "combined": Combined(_SINGLE)}


class AnomalyScorer:
    """One model's scores. `calibration` overrides the manifest's (an ensemble's member reads its own part)."""

    ensemble = False

    def __init__(
        self, engine: Engine, background: Engine | None = None, calibration: Calibration | None = None
    ) -> None:
        self.engine = engine
        self.background = background
        self.manifest = engine.manifest
        self._calibration = calibration

    @property
    def calibration(self) -> Calibration | None:
        return self._calibration or self.manifest.calibration

    def aggregate(self, raw: np.ndarray) -> np.ndarray:
        """The score a reply shows of `raw`'s values ([B] here; an ensemble's [B, F] members' scores)."""
        return raw

    def reusable(self, result: ScoreResult) -> Any:
        """What the anomaly pass can take from a request's own pass at the calibration's K and seed."""
        return (-result["log_px"], result.sq_err)

    def computable(self) -> list[str]:
        """The scores this model can compute (calibrated or not), in the table's order."""
        return [s.name for s in ANOMALY_SCORES if SCORE_FNS[s.name].unavailable(self.manifest, self.background) is None]

    def status(self) -> dict[str, str | None]:
        """Every declared score: None when served, else why not."""
        out: dict[str, str | None] = {}
        for spec in ANOMALY_SCORES:
            reason = SCORE_FNS[spec.name].unavailable(self.manifest, self.background)
            if reason is None and (self.calibration is None or spec.name not in self.calibration.scores):
                reason = "not calibrated (vaeserve-train calibrate computes every score this model can serve)"
            out[spec.name] = reason
        return out

    def served(self) -> list[str]:
        return [name for name, reason in self.status().items() if reason is None]

    def resolve(self, names: Sequence[str]) -> tuple[str, ...]:
        """Checks requested score names (duplicates dropped, order kept)."""
        status = self.status()
        for name in names:
            if name not in status:
                raise InvalidArgument(f"unknown anomaly score {name!r}; this server knows {', '.join(status)}")
            if status[name] is not None:
                raise InvalidArgument(f"anomaly score {name!r} is not served by this model: {status[name]}")
        return tuple(dict.fromkeys(names))

    def raw(
        self,
        x: np.ndarray,
        names: Sequence[str],
        *,
        check: Check = no_check,
        reused: tuple[np.ndarray, np.ndarray | None] | None = None,
    ) -> dict[str, np.ndarray]:
        """The named scores of model-space inputs, with the calibration's K and seed."""
        calibration = self.calibration
        assert calibration is not None
        passes = self._passes(x, names, calibration.k, calibration.seed, check, reused)
        return {name: passes.score(name, SCORE_FNS[name].compute) for name in names}

    def judge(self, raw: dict[str, np.ndarray], names: Sequence[str], alpha: float) -> list[AnomalyResult]:
        """Percentiles, conformal p-values and flags at level alpha of the scores `names` of `raw`."""
        calibration = self.calibration
        assert calibration is not None
        results = []
        for name in names:
            score = raw[name]
            p_value = calibration.p_value(score, name)
            results.append(
                AnomalyResult(
                    name=name,
                    score=self.aggregate(score),
                    percentile=calibration.percentile(score, name),
                    p_value=p_value,
                    is_anomaly=p_value <= alpha + 1e-12,
                    threshold=calibration.threshold(alpha, name),
                    alpha=alpha,
                    min_alpha=calibration.min_alpha,
                    n_calibration=calibration.n,
                    k=calibration.k,
                    estimator=calibration.estimator,
                )
            )
        return results

    def typicality(self, nll: np.ndarray, alpha: float) -> TypicalityResult:
        calibration = self.calibration
        assert calibration is not None
        return typicality(nll, calibration.sorted_scores("nll"), alpha)

    def warnings(self, alpha: float) -> list[str]:
        calibration = self.calibration
        if calibration is None:
            return ["the bundle has no anomaly calibration: no anomaly scores (vaeserve-train calibrate)"]
        small = calibration.too_small_for(alpha)
        return [small] if small else []

    def calibrate(
        self,
        x: np.ndarray,
        *,
        k: int,
        seed: int,
        dataset: str,
        standardization: Standardization | None = None,
        check: Check = no_check,
    ) -> Calibration:
        """Every computable score of held-out normal model-space inputs, sorted, as served requests compute
        them; with a standardization (fixed on other normal rows: `standardize`), `combined` as well."""
        names = [name for name in self.computable() if name != "combined"]
        passes = self._passes(x, names, k, seed, check, None)
        raw = {name: passes.score(name, SCORE_FNS[name].compute) for name in names}
        if standardization is not None:
            raw["combined"] = standardization.combine(raw)
        scores = {name: sorted(values.tolist()) for name, values in raw.items()}
        return Calibration(k=k, seed=seed, dataset=dataset, scores=scores, standardization=standardization)

    def standardize(
        self, x: np.ndarray, *, k: int, seed: int, dataset: str, check: Check = no_check
    ) -> Standardization:
        """Medians and interquartile ranges of the `combined` score's components on normal model-space rows,
        which must not be the calibration rows (else the calibration scores would not be exchangeable)."""
        names = component_names(self.manifest)
        passes = self._passes(x, names, k, seed, check, None)
        return Standardization(
            components={name: _center_scale(SCORE_FNS[name].compute(passes)) for name in names}, dataset=dataset
        )

    def add(self, x: np.ndarray, dataset: str, check: Check = no_check) -> Calibration:
        """The calibration with more normal inputs scored the same way (same K and seed), merged in."""
        calibration = self.calibration
        assert calibration is not None
        more = self.raw(x, list(calibration.scores), check=check)
        merged = {name: sorted([*values, *more[name].tolist()]) for name, values in calibration.scores.items()}
        return calibration.model_copy(update={"scores": merged, "dataset": with_dataset(calibration, dataset)})

    def _passes(
        self,
        x: np.ndarray,
        names: Sequence[str],
        k: int,
        seed: int,
        check: Check,
        reused: tuple[np.ndarray, np.ndarray | None] | None,
    ) -> SharedPasses:
        need_sq_err = any(SCORE_FNS[name].needs_sq_err for name in names)
        calibration = self.calibration
        standardization = calibration.standardization if calibration else None
        return SharedPasses(x, self.engine, self.background, k, seed, need_sq_err, check, reused, standardization)


def with_dataset(calibration: Calibration, dataset: str) -> str:
    """The calibration's data set names with `dataset` added (once)."""
    names = calibration.dataset
    return names if dataset in names.split(" + ") else f"{names} + {dataset}"


def _center_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and interquartile range (the standard deviation, then 1, where the IQR is 0)."""
    q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])
    scale = float(q3 - q1) or float(np.std(values)) or 1.0
    return float(median), scale


def alpha_of(alpha: float | None, threshold_quantile: float | None, default: float) -> float:
    """The level of a request's flags: alpha, else 1 - threshold_quantile (older clients), else the default."""
    if alpha is None and threshold_quantile is not None:
        if not 0.0 <= threshold_quantile < 1.0:
            raise InvalidArgument(f"threshold_quantile must lie in [0, 1), got {threshold_quantile}")
        alpha = 1.0 - threshold_quantile
    value = default if alpha is None else alpha
    try:
        check_alpha(value)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc
    return value
