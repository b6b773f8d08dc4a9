"""An ensemble's anomaly scores: each member scores an input as it scored its own calibration fold, and the
cross-conformal p-value ranks member f's score among fold f's, pooled over the folds (Calibration.p_value).

Raw scores are [B, F] (column f: member f's, with its share of the calibration's K and its seed, so that it
is exchangeable with the scores of fold f); a reply shows their mean over the members as the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vaeserve.api.manifest import Calibration, Standardization
from vaeserve.server.anomaly.results import TypicalityResult
from vaeserve.server.anomaly.scorer import AnomalyScorer, with_dataset
from vaeserve.server.engine import Check, Engine, ScoreResult, no_check
from vaeserve.server.engine.ensemble import EnsembleEngine
from vaeserve.server.errors import InvalidArgument

__all__ = ["TYPICALITY_UNAVAILABLE", "EnsembleScorer", "open_scorer"]

TYPICALITY_UNAVAILABLE = (
    "the typicality test compares a batch with one calibration distribution; an ensemble's calibration holds "
    "each member's scores of its own fold, so the test does not apply (its per-input p-values do)"
)
# The one-model calibration would score every row with every member; each member calibrates on its own fold.
_MEMBER_BY_MEMBER = (
    "an ensemble is calibrated member by member, each on its own fold (vaeserve-train calibrate, or "
    "vaeserve.training.crossfit.calibrate_members)"
)


class EnsembleScorer(AnomalyScorer):
    ensemble = True

    def __init__(self, engine: EnsembleEngine) -> None:
        super().__init__(engine.lead)
        self.engine = engine  # type: ignore[assignment]
        self.manifest = engine.manifest
        calibration = self.manifest.calibration
        self.members = [
            AnomalyScorer(member, calibration=calibration.member(f) if calibration else None)
            for f, member in enumerate(engine.members)
        ]

    def aggregate(self, raw: np.ndarray) -> np.ndarray:
        return raw.mean(axis=1)  # type: ignore[no-any-return]

    def reusable(self, result: ScoreResult) -> Any:
        assert result.member_nll is not None
        sq_err = result.sq_err
        return [(result.member_nll[:, f], None if sq_err is None else sq_err[:, f]) for f in range(len(self.members))]

    def raw(
        self,
        x: np.ndarray,
        names: Sequence[str],
        *,
        check: Check = no_check,
        reused: Any = None,
    ) -> dict[str, np.ndarray]:
        engine: EnsembleEngine = self.engine  # type: ignore[assignment]
        parts = [
            member.raw(engine.member_input(x, f), names, check=check, reused=None if reused is None else reused[f])
            for f, member in enumerate(self.members)
        ]
        return {name: np.stack([part[name] for part in parts], axis=1) for name in names}

    def typicality(self, nll: np.ndarray, alpha: float) -> TypicalityResult:
        raise InvalidArgument(TYPICALITY_UNAVAILABLE)

    def add(self, x: np.ndarray, dataset: str, check: Check = no_check) -> Calibration:
        """More normal rows, seen by no member: row i joins member (i mod F)'s calibration, scored as its fold."""
        calibration = self.calibration
        assert calibration is not None and calibration.fold_sizes is not None
        members = len(self.members)
        engine: EnsembleEngine = self.engine  # type: ignore[assignment]
        merged: dict[str, list[float]] = {name: [] for name in calibration.scores}
        sizes = []
        for f, member in enumerate(self.members):
            rows = engine.member_input(x[f::members], f)
            grown = member.add(rows, dataset, check) if len(rows) else member.calibration
            assert grown is not None
            for name in merged:
                merged[name] += grown.scores[name]
            sizes.append(grown.n)
        update = {"scores": merged, "fold_sizes": sizes, "dataset": with_dataset(calibration, dataset)}
        return calibration.model_copy(update=update)

    def calibrate(self, *args: Any, **kwargs: Any) -> Calibration:
        raise TypeError(_MEMBER_BY_MEMBER)

    def standardize(self, *args: Any, **kwargs: Any) -> Standardization:
        raise TypeError(_MEMBER_BY_MEMBER)


def open_scorer(engine: Engine | EnsembleEngine, background: Engine | None = None) -> AnomalyScorer:
    """The anomaly scorer of an engine of either kind."""
    if isinstance(engine, EnsembleEngine):
        return EnsembleScorer(engine)
    return AnomalyScorer(engine, background)
