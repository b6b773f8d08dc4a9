"""The per-input score columns and the anomaly scores: declared once, read by every converter.

`SCORE_COLUMNS` are the [B] arrays of a Score reply, in input order. `field` is where a column
travels in ``vaeserve.api.v1.ScoreResponse`` (a dotted path into sub-messages); a test checks that
every Tensor field of that message is a column here and the other way round. Adding a column is
one line here plus its computation in the engine.

`ANOMALY_SCORES` are the named anomaly scores a model can serve (higher = more anomalous), each
calibrated on held-out normal data. A request names the ones it wants; each comes back as an
`Anomaly` entry whose per-input fields are `ANOMALY_FIELDS`, so its columns are named
``<score>_<field>`` (`nll_p_value`, ...) in tables, CSV files and the Open Inference Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ANOMALY_FIELDS",
    "ANOMALY_SCORES",
    "DEFAULT_ANOMALY_SCORE",
    "SCORE_COLUMNS",
    "AnomalyScore",
    "ScoreColumn",
    "anomaly_column",
    "anomaly_score",
    "columns_of",
]

Group = Literal["estimate", "prior", "anomaly", "adaptive", "ensemble"]
Dtype = Literal["float64", "bool", "int64"]


@dataclass(frozen=True)
class ScoreColumn:
    name: str
    dtype: Dtype
    meaning: str
    # estimate: in every reply; prior: with prior_estimate; anomaly: the first requested anomaly score
    # (unless skip_anomaly, and when calibrated); adaptive: with target_se; ensemble: from a model of
    # several members only (absent, not zero, for a single model)
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
    ScoreColumn("pareto_k", "float64", "Pareto k-hat of the importance weights' tail (PSIS; NaN for K < 21)"),
    ScoreColumn("unreliable", "bool", "pareto_k > 0.7: log_px and its standard error are not reliable"),
    ScoreColumn("bits_per_dim", "float64", "-log_px / (D ln 2)"),
    ScoreColumn("gap", "float64", "log_px - elbo: an estimate of KL(q(z|x) || p(z|x))"),
    ScoreColumn("gap_se", "float64", "standard error of the gap (conservative)"),
    ScoreColumn(
        "disagreement",
        "float64",
        "standard deviation over the ensemble's members of their log p(x) estimates, nats: where they disagree, "
        "the input is unlike what they were trained on (ensembles only)",
        "ensemble",
    ),
    ScoreColumn("k_used", "int64", "draws used for this input (adaptive K: target_se)", "adaptive"),
    ScoreColumn("prior_log_px", "float64", "naive Monte Carlo estimate of log p(x), z ~ p(z)", "prior"),
    ScoreColumn("prior_log_px_se", "float64", "standard error of prior_log_px", "prior"),
    ScoreColumn("prior_ess", "float64", "effective sample size of the prior draws", "prior"),
    ScoreColumn(
        "anomaly_score", "float64", "the first requested anomaly score (the default: nll)", "anomaly", "anomaly.score"
    ),
    ScoreColumn(
        "percentile",
        "float64",
        "percent of calibration scores at or below the score",
        "anomaly",
        "anomaly.percentile",
        "anomaly_percentile",
    ),
    ScoreColumn(
        "p_value",
        "float64",
        "conformal p-value (1 + #{calibration scores >= score}) / (n + 1)",
        "anomaly",
        "anomaly.p_value",
        "anomaly_p_value",
    ),
    ScoreColumn("is_anomaly", "bool", "p_value <= alpha", "anomaly", "anomaly.is_anomaly"),
)


@dataclass(frozen=True)
class AnomalyScore:
    name: str
    meaning: str
    # what a model needs to serve it: an image layout, a background model in its bundle, or the
    # calibration's standardization of the component scores
    needs: Literal["", "image", "background", "standardization"] = ""


ANOMALY_SCORES: tuple[AnomalyScore, ...] = (
    AnomalyScore("nll", "-log p(x), the IWAE estimate with the calibration's K, nats"),
    AnomalyScore("reconstruction", "E_q ||x - E[x|z]||^2: expected squared reconstruction error in model space"),
    AnomalyScore(
        "complexity",
        "-log2 p(x) minus the 8-bit image's length in bits under PNG-style zlib compression (Serra et al. 2020)",
        "image",
    ),
    AnomalyScore(
        "likelihood_ratio",
        "log p_bg(x) - log p(x) against the bundle's background model, nats (Ren et al. 2019)",
        "background",
    ),
    AnomalyScore(
        "combined",
        "the largest of nll, reconstruction and (image models) complexity, each as (score - median) / IQR with "
        "medians and IQRs fixed on normal validation data: flags what any of them finds extreme, at one level",
        "standardization",
    ),
)
DEFAULT_ANOMALY_SCORE = "nll"


@dataclass(frozen=True)
class AnomalyField:
    name: str  # the field of vaeserve.api.v1.Anomaly
    dtype: Dtype
    meaning: str


ANOMALY_FIELDS: tuple[AnomalyField, ...] = (
    AnomalyField("score", "float64", "the anomaly score (higher: less like the normal data)"),
    AnomalyField("percentile", "float64", "percent of calibration scores at or below the score"),
    AnomalyField("p_value", "float64", "conformal p-value (1 + #{calibration scores >= score}) / (n + 1)"),
    AnomalyField("is_anomaly", "bool", "p_value <= alpha"),
)


def columns_of(*groups: Group) -> tuple[ScoreColumn, ...]:
    return tuple(c for c in SCORE_COLUMNS if c.group in groups)


def anomaly_score(name: str) -> AnomalyScore:
    for score in ANOMALY_SCORES:
        if score.name == name:
            return score
    raise KeyError(f"unknown anomaly score {name!r}; known: {', '.join(s.name for s in ANOMALY_SCORES)}")


def anomaly_column(score: str, field: str) -> str:
    """The column (and V2 output) name of one field of a named anomaly score: `nll_p_value`."""
    return f"{score}_{field}"
