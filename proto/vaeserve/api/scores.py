"""The per-input score columns: declared once, read by every converter (proto, CSV, client tables).

Each column is a [B] array in input order. `field` is where the column travels in
``vaeserve.api.v1.ScoreResponse`` (a dotted path into sub-messages); a test checks that every
Tensor field of that message is a column here and the other way round. Adding a score is one
line here plus its computation in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["SCORE_COLUMNS", "ScoreColumn", "columns_of"]

Group = Literal["estimate", "prior", "anomaly"]


@dataclass(frozen=True)
class ScoreColumn:
    name: str
    dtype: Literal["float64", "bool"]
    meaning: str
    # estimate: in every reply; prior: with prior_estimate; anomaly: unless skip_anomaly (and calibrated)
    group: Group = "estimate"
    field: str = ""  # its path in ScoreResponse, when not the name itself
    v2: str = ""  # its output name in the Open Inference Protocol, when not the name itself

    @property
    def path(self) -> tuple[str, ...]:
        return tuple((self.field or self.name).split("."))

    @property
    def v2_name(self) -> str:
        return self.v2 or self.name


SCORE_COLUMNS: tuple[ScoreColumn, ...] = (
    ScoreColumn("elbo", "float64", "ELBO = reconstruction_term - kl, nats"),
    ScoreColumn("elbo_se", "float64", "Monte Carlo standard error of the ELBO (NaN for K = 1)"),
    ScoreColumn("reconstruction_term", "float64", "E_q[log p(x|z)]"),
    ScoreColumn("kl", "float64", "KL(q(z|x) || N(0, I)), closed form"),
    ScoreColumn("expected_log_joint", "float64", "E_q[log p(x, z)] (the ELBO's other form, with entropy)"),
    ScoreColumn("entropy", "float64", "H(q(z|x))"),
    ScoreColumn("log_px", "float64", "IWAE estimate of log p(x) with K draws from q(z|x), nats"),
    ScoreColumn("log_px_se", "float64", "delta-method standard error of log_px (NaN for K = 1)"),
    ScoreColumn("ess", "float64", "effective sample size (sum w)^2 / sum w^2 of the K draws"),
    ScoreColumn("bits_per_dim", "float64", "-log_px / (D ln 2)"),
    ScoreColumn("gap", "float64", "log_px - elbo: an estimate of KL(q(z|x) || p(z|x))"),
    ScoreColumn("gap_se", "float64", "standard error of the gap (conservative)"),
    ScoreColumn("prior_log_px", "float64", "naive Monte Carlo estimate of log p(x), z ~ p(z)", "prior"),
    ScoreColumn("prior_log_px_se", "float64", "standard error of prior_log_px", "prior"),
    ScoreColumn("prior_ess", "float64", "effective sample size of the prior draws", "prior"),
    ScoreColumn(
        "anomaly_score", "float64", "-log p(x) with the calibration's estimator and K", "anomaly", "anomaly.score"
    ),
    ScoreColumn(
        "percentile",
        "float64",
        "percent of calibration scores at or below the score",
        "anomaly",
        "anomaly.percentile",
        "anomaly_percentile",
    ),
    ScoreColumn("is_anomaly", "bool", "anomaly_score above the threshold", "anomaly", "anomaly.is_anomaly"),
)


def columns_of(*groups: Group) -> tuple[ScoreColumn, ...]:
    return tuple(c for c in SCORE_COLUMNS if c.group in groups)
