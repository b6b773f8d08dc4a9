"""Typed results: numpy arrays in, numpy arrays and small records out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.api.scores import ANOMALY_FIELDS, SCORE_COLUMNS, anomaly_column

__all__ = [
    "AnomalyScores",
    "Decoded",
    "Encoded",
    "InputScore",
    "ModelInfo",
    "ModelStatus",
    "Sampled",
    "Scores",
    "ServedBy",
    "Typicality",
    "concat",
]


@dataclass(frozen=True)
class ServedBy:
    """Which model, version and replica produced a reply."""

    model: str
    version: str
    replica: str


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    input_shape: tuple[int, ...]
    latent_dim: int
    likelihood: str
    manifest: Manifest
    execution_provider: str
    limits: dict[str, int]
    defaults: dict[str, float]
    server_version: str
    served_by: ServedBy
    anomaly_scores: dict[str, str] = field(default_factory=dict)  # every anomaly score: "" if served, else why not
    default_anomaly_scores: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # what to know before trusting the numbers (e.g. a small calibration)


@dataclass(frozen=True)
class ModelStatus:
    """One version of a model the server knows (ListModels, LoadModel, UnloadModel)."""

    name: str
    version: str
    state: str  # LOADING, READY, UNLOADING (finishing its requests in flight) or FAILED
    reason: str  # why it FAILED, or why it is kept serving; empty otherwise
    path: str  # the bundle directory, on the server's file system
    in_flight: int  # requests it is working on


@dataclass(frozen=True)
class Encoded:
    z_mean: np.ndarray  # [B, L]
    z_logvar: np.ndarray  # [B, L]
    z_samples: np.ndarray | None  # [B, n, L]
    ess: np.ndarray | None  # [B], importance resampling only
    seed: int
    served_by: ServedBy


@dataclass(frozen=True)
class Decoded:
    params: dict[str, np.ndarray]  # bernoulli: logits, probs; gaussian: mean, logvar; each [N, *input_shape]
    x_sample: np.ndarray | None
    seed: int
    served_by: ServedBy


@dataclass(frozen=True)
class Sampled:
    z: np.ndarray  # [n, L]
    params: dict[str, np.ndarray]
    x_sample: np.ndarray | None
    seed: int
    served_by: ServedBy


@dataclass(frozen=True)
class InputScore:
    """One input's numbers, each with its uncertainty (nats, model space)."""

    elbo: float
    elbo_se: float
    log_px: float
    log_px_se: float
    ess: float
    bits_per_dim: float
    gap: float
    gap_se: float
    anomaly_score: float | None
    percentile: float | None
    is_anomaly: bool | None
    p_value: float | None = None
    pareto_k: float = float("nan")
    disagreement: float | None = None  # ensembles only


@dataclass(frozen=True)
class AnomalyScores:
    """One named anomaly score of a batch (vaeserve.api.scores.ANOMALY_SCORES), each array [B]."""

    name: str
    score: np.ndarray
    percentile: np.ndarray
    p_value: np.ndarray  # conformal: P(p_value <= alpha) <= alpha for normal data
    is_anomaly: np.ndarray  # p_value <= alpha
    threshold: float  # the score above which inputs are flagged (inf: none can be at this alpha)
    alpha: float
    min_alpha: float  # 1 / (n_calibration + 1)
    n_calibration: int
    k: int


@dataclass(frozen=True)
class Typicality:
    """Whether a batch as a whole is typical of the normal data (one request's inputs)."""

    batch_size: int
    mean_score: float  # the batch's mean nll
    expected: float  # the normal data's
    threshold: float
    p_value: float
    is_atypical: bool
    alpha: float


# Per-input columns of Scores, in the order of the one table (the CSV writer's order too).
COLUMNS = tuple(c.name for c in SCORE_COLUMNS)


@dataclass(frozen=True)
class Scores:
    """Score results for a batch: one array per quantity (float64 [B]), in input order.

    The per-input arrays are the columns of `vaeserve.api.scores.SCORE_COLUMNS` (a test checks
    that every column is a field here). Index it for one input's `InputScore`; optional
    quantities are None when not asked for.
    """

    k: int
    seed: int
    elbo: np.ndarray
    elbo_se: np.ndarray
    reconstruction_term: np.ndarray
    kl: np.ndarray
    expected_log_joint: np.ndarray
    entropy: np.ndarray
    log_px: np.ndarray
    log_px_se: np.ndarray
    ess: np.ndarray
    pareto_k: np.ndarray
    unreliable: np.ndarray
    bits_per_dim: np.ndarray
    gap: np.ndarray
    gap_se: np.ndarray
    disagreement: np.ndarray | None  # ensembles only: the spread of the members' log p(x)
    k_used: np.ndarray | None
    prior_log_px: np.ndarray | None
    prior_log_px_se: np.ndarray | None
    prior_ess: np.ndarray | None
    anomaly_score: np.ndarray | None
    percentile: np.ndarray | None
    p_value: np.ndarray | None
    is_anomaly: np.ndarray | None
    threshold: float | None
    anomaly_k: int | None
    per_dim: np.ndarray | None
    reconstruction: np.ndarray | None
    served_by: ServedBy
    anomalies: dict[str, AnomalyScores] = field(default_factory=dict)  # by name, in the order asked
    typicality: Typicality | None = None
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.log_px)

    def __getitem__(self, i: int) -> InputScore:
        def opt(a: np.ndarray | None) -> float | None:
            return None if a is None else float(a[i])

        return InputScore(
            elbo=float(self.elbo[i]),
            elbo_se=float(self.elbo_se[i]),
            log_px=float(self.log_px[i]),
            log_px_se=float(self.log_px_se[i]),
            ess=float(self.ess[i]),
            bits_per_dim=float(self.bits_per_dim[i]),
            gap=float(self.gap[i]),
            gap_se=float(self.gap_se[i]),
            anomaly_score=opt(self.anomaly_score),
            percentile=opt(self.percentile),
            is_anomaly=None if self.is_anomaly is None else bool(self.is_anomaly[i]),
            p_value=opt(self.p_value),
            pareto_k=float(self.pareto_k[i]),
            disagreement=opt(self.disagreement),
        )

    def __iter__(self) -> Iterator[InputScore]:
        return (self[i] for i in range(len(self)))

    @property
    def alpha(self) -> float | None:
        first = next(iter(self.anomalies.values()), None)
        return None if first is None else first.alpha

    def columns(self) -> dict[str, np.ndarray]:
        """The per-input quantities that are present, by name (for tables and CSV): the score columns,
        then `<score>_<field>` for every named anomaly score but the first (already `anomaly_score`, ...)."""
        out = {name: value for name in COLUMNS if (value := getattr(self, name)) is not None}
        for name, scores in list(self.anomalies.items())[1:]:
            out.update({anomaly_column(name, f.name): getattr(scores, f.name) for f in ANOMALY_FIELDS})
        return out


R = TypeVar("R", Encoded, Decoded, Scores)


def concat(parts: Sequence[R]) -> R:
    """Joins the results of consecutive batches of one call: arrays along the batch axis."""
    if not parts:
        raise ValueError("nothing to concatenate")
    first = parts[0]
    joined = _joined(parts)
    replicas = sorted({p.served_by.replica for p in parts})
    if len(replicas) > 1:
        joined["served_by"] = ServedBy(first.served_by.model, first.served_by.version, ",".join(replicas))
    return type(first)(**joined)


def _joined(parts: Sequence[Any]) -> dict[str, Any]:
    """Field by field: arrays concatenated (also inside dicts and nested records), warnings merged,
    anything else (K, seed, thresholds) taken from the first part."""
    joined: dict[str, Any] = {}
    for f in fields(parts[0]):
        values = [getattr(p, f.name) for p in parts]
        first = values[0]
        if isinstance(first, np.ndarray):
            joined[f.name] = np.concatenate(values)
        elif isinstance(first, dict):
            joined[f.name] = {key: _join_values([v[key] for v in values]) for key in first}
        elif isinstance(first, tuple) and f.name == "warnings":
            joined[f.name] = tuple(dict.fromkeys(w for v in values for w in v))
        else:
            joined[f.name] = first
    return joined


def _join_values(values: list[Any]) -> Any:
    if isinstance(values[0], np.ndarray):
        return np.concatenate(values)
    first: Any = values[0]
    if isinstance(first, AnomalyScores):
        return AnomalyScores(**_joined(values))
    return first
