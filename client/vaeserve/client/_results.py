"""Typed results: numpy arrays in, numpy arrays and small records out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import TypeVar

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.api.scores import SCORE_COLUMNS

__all__ = ["Decoded", "Encoded", "InputScore", "ModelInfo", "ModelStatus", "Sampled", "Scores", "ServedBy", "concat"]


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
    bits_per_dim: np.ndarray
    gap: np.ndarray
    gap_se: np.ndarray
    prior_log_px: np.ndarray | None
    prior_log_px_se: np.ndarray | None
    prior_ess: np.ndarray | None
    anomaly_score: np.ndarray | None
    percentile: np.ndarray | None
    is_anomaly: np.ndarray | None
    threshold: float | None
    anomaly_k: int | None
    per_dim: np.ndarray | None
    reconstruction: np.ndarray | None
    served_by: ServedBy

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
        )

    def __iter__(self) -> Iterator[InputScore]:
        return (self[i] for i in range(len(self)))

    def columns(self) -> dict[str, np.ndarray]:
        """The per-input quantities that are present, by name (for tables and CSV)."""
        return {name: value for name in COLUMNS if (value := getattr(self, name)) is not None}


R = TypeVar("R", Encoded, Decoded, Scores)


def concat(parts: Sequence[R]) -> R:
    """Joins the results of consecutive batches of one call: arrays along the batch axis."""
    if not parts:
        raise ValueError("nothing to concatenate")
    first = parts[0]
    joined: dict[str, object] = {}
    for f in fields(first):
        values = [getattr(p, f.name) for p in parts]
        if isinstance(values[0], np.ndarray):
            joined[f.name] = np.concatenate(values)
        elif isinstance(values[0], dict):
            joined[f.name] = {key: np.concatenate([v[key] for v in values]) for key in values[0]}
        else:
            joined[f.name] = values[0]
    replicas = sorted({p.served_by.replica for p in parts})
    if len(replicas) > 1:
        joined["served_by"] = ServedBy(first.served_by.model, first.served_by.version, ",".join(replicas))
    return type(first)(**joined)  # type: ignore[arg-type]
