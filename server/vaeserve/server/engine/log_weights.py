"""One fused-graph run's draws in the estimators' terms: log p(x|z_k), log p(z_k) and the importance
weights log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), in float64, checked finite."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaeserve.server.engine.estimators import log_standard_normal_const
from vaeserve.server.engine.graphs import LOG_LIK, PER_DIM, SQ_ERR, Z_LOGVAR, Z_MEAN, Z_SQ, Variant
from vaeserve.server.errors import InvalidArgument

__all__ = ["Chunk", "chunk_terms"]


@dataclass
class Chunk:
    log_lik: np.ndarray  # float64 [b, C]
    log_pz: np.ndarray | None
    log_w: np.ndarray
    z_mean: np.ndarray | None = None
    z_logvar: np.ndarray | None = None
    per_dim: np.ndarray | None = None
    sq_err: np.ndarray | None = None


def chunk_terms(
    variant: Variant,
    out: dict[str, np.ndarray],
    eps: np.ndarray,
    log_lik_const: float,
    latent_dim: int,
    first_row: int,
) -> Chunk:
    """The terms of draws eps [E, C, L] from the graph's outputs `out`; inputs numbered from `first_row`."""
    log_lik = out[LOG_LIK].astype(np.float64) + log_lik_const
    if variant.proposal == "prior":
        chunk = Chunk(log_lik=log_lik, log_pz=None, log_w=log_lik)
    else:
        latent_const = log_standard_normal_const(latent_dim)
        logvar = out[Z_LOGVAR]
        eps_sq = np.einsum("ecl,ecl->ec", eps, eps, dtype=np.float64)
        log_pz = -0.5 * out[Z_SQ].astype(np.float64) + latent_const
        log_q = -0.5 * eps_sq - 0.5 * logvar.astype(np.float64).sum(axis=1, keepdims=True) + latent_const
        chunk = Chunk(
            log_lik=log_lik,
            log_pz=log_pz,
            log_w=log_lik + log_pz - log_q,
            z_mean=out[Z_MEAN],
            z_logvar=logvar,
            per_dim=out.get(PER_DIM),
            sq_err=out.get(SQ_ERR),
        )
    _require_finite_scores(chunk.log_w, first_row)
    return chunk


def _require_finite_scores(log_w: np.ndarray, first_row: int) -> None:
    finite = np.isfinite(log_w).all(axis=1)
    if not finite.all():
        rows = [first_row + int(i) for i in np.flatnonzero(~finite)[:5]]
        raise InvalidArgument(
            f"x{rows}: the model's log-likelihood is not finite for these inputs; "
            "they may lie far outside the data it was trained on"
        )
