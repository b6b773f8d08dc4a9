"""What a request asks of a served model, and what it gets back: protocol-free records.

A protocol's converter builds a `*Call` from its wire message (decoding tensors only: raw
units, unresolved defaults); the served model checks it against its limits, fills in its
defaults and runs it. Replies are built from the result records, which carry the resolved
seed and K, so a converter never needs the model's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vaeserve.api.scores import SCORE_COLUMNS
from vaeserve.server.anomaly import AnomalyResult, TypicalityResult
from vaeserve.server.engine.results import ScoreOptions, ScoreResult

__all__ = [
    "DecodeCall",
    "Decoded",
    "EncodeCall",
    "Encoded",
    "SampleCall",
    "Sampled",
    "ScoreCall",
    "Scored",
]


@dataclass(frozen=True)
class EncodeCall:
    x: np.ndarray  # raw units, as sent
    n_samples: int = 0
    seed: int | None = None
    resample: bool = False
    proposals: int | None = None


@dataclass(frozen=True)
class Encoded:
    z_mean: np.ndarray
    z_logvar: np.ndarray
    z_samples: np.ndarray | None
    ess: np.ndarray | None
    seed: int


@dataclass(frozen=True)
class DecodeCall:
    z: np.ndarray
    sample: bool = False
    seed: int | None = None


@dataclass(frozen=True)
class Decoded:
    params: dict[str, np.ndarray]
    x_sample: np.ndarray | None
    seed: int


@dataclass(frozen=True)
class SampleCall:
    n: int
    seed: int | None = None
    sample_x: bool = False


@dataclass(frozen=True)
class Sampled:
    z: np.ndarray
    decoded: Decoded


@dataclass(frozen=True)
class ScoreCall:
    x: np.ndarray  # raw units, as sent
    k: int | None = None
    seed: int | None = None
    prior_estimate: bool = False
    per_dim: bool = False
    reconstruction: bool = False
    anomaly: bool = True  # False: skip_anomaly
    threshold_quantile: float | None = None  # deprecated: alpha = 1 - threshold_quantile
    alpha: float | None = None
    anomaly_scores: tuple[str, ...] = ()  # empty: the model's default set, when it comes free
    typicality: bool = False
    target_se: float | None = None
    max_k: int | None = None


_ANOMALY_COLUMNS = {c.name: c.path[-1] for c in SCORE_COLUMNS if c.group == "anomaly"}


@dataclass(frozen=True)
class Scored:
    result: ScoreResult
    options: ScoreOptions
    seed: int
    anomalies: list[AnomalyResult] = field(default_factory=list)  # in the order asked; the first fills `anomaly`
    typicality: TypicalityResult | None = None
    warnings: list[str] = field(default_factory=list)

    def columns(self) -> dict[str, np.ndarray]:
        """The per-input columns of vaeserve.api.scores.SCORE_COLUMNS that this reply has, by name."""
        columns = dict(self.result.columns)
        if self.anomalies:
            first = self.anomalies[0]
            columns.update({name: first.field(leaf) for name, leaf in _ANOMALY_COLUMNS.items()})
        return columns
