"""Anomaly scores: one module per score (nll, reconstruction, complexity, likelihood_ratio), a batch
typicality test, and the scorer that computes them and reads them against the calibration."""

from vaeserve.server.anomaly.complexity import png_bits, to_uint8
from vaeserve.server.anomaly.ensemble import TYPICALITY_UNAVAILABLE, EnsembleScorer, open_scorer
from vaeserve.server.anomaly.results import AnomalyResult, TypicalityResult
from vaeserve.server.anomaly.scorer import SCORE_FNS, AnomalyScorer, alpha_of
from vaeserve.server.anomaly.typicality import typicality

__all__ = [
    "SCORE_FNS",
    "TYPICALITY_UNAVAILABLE",
    "AnomalyResult",
    "AnomalyScorer",
    "EnsembleScorer",
    "TypicalityResult",
    "alpha_of",
    "open_scorer",
    "png_bits",
    "to_uint8",
    "typicality",
]
