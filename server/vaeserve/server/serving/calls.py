"""What a request asks of a served model, and what it gets back: protocol-free records.

A protocol's converter builds a `*Call` from its wire message (decoding tensors only: raw
units, unresolved defaults); the served model checks it against its limits, fills in its
defaults and runs it. Replies are built from the result records, which carry the resolved
seed and K, so a converter never needs the model's settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    anomaly: bool = True
    threshold_quantile: float | None = None


@dataclass(frozen=True)
class Scored:
    result: ScoreResult
    options: ScoreOptions
    seed: int
