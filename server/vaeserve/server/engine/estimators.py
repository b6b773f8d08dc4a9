"""The estimators' arithmetic, in float64: running sums over chunks of K, then the results.

For input x with q = N(mu, diag(exp(logvar))) and draws z_k = mu + exp(logvar / 2) * eps_k:
  log w_k = log p(x|z_k) + log N(z_k; 0, I) - log q(z_k|x)
  IWAE_K  = logsumexp_k(log w_k) - log K
  SE      = sd(w) / (sqrt(K) mean(w))   (delta method, in log space) = sqrt((K/ESS - 1) / (K - 1))
  ESS     = (sum w)^2 / sum w^2
  ELBO    = mean_k log p(x|z_k) - KL(q || N(0, I)),  KL in closed form
  k-hat   = the generalized Pareto shape of the largest weights (PSIS: above 0.7, unreliable)
Sums of w run as (max, sum exp(lw - max), sum exp(2 (lw - max))) so memory stays bounded
and nothing overflows whatever K is; for k-hat only the M + 1 largest log weights are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vaeserve.server.engine.psis import pareto_khat

__all__ = [
    "ElboSums",
    "IwaeEstimates",
    "LogMeanExp",
    "gaussian_entropy",
    "kl_to_standard_normal",
    "log_standard_normal_const",
]

LOG_2PI = math.log(2.0 * math.pi)


def kl_to_standard_normal(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    mu, logvar = mu.astype(np.float64), logvar.astype(np.float64)
    return 0.5 * np.sum(mu * mu + np.exp(logvar) - 1.0 - logvar, axis=-1)  # type: ignore[no-any-return]


def gaussian_entropy(logvar: np.ndarray) -> np.ndarray:
    return 0.5 * np.sum(1.0 + LOG_2PI + logvar.astype(np.float64), axis=-1)  # type: ignore[no-any-return]


def log_standard_normal_const(dim: int) -> float:
    return -0.5 * dim * LOG_2PI


@dataclass
class IwaeEstimates:
    """Per input (arrays [B]): IWAE_K log p(x), its standard error, the ESS and k-hat. Not the manifest's
    `Estimate`, which is one stored figure over a data set."""

    log_px: np.ndarray
    se: np.ndarray
    ess: np.ndarray
    pareto_k: np.ndarray  # NaN where not fitted


class LogMeanExp:
    """Running log (1/K) sum_k w_k, its delta-method standard error and the ESS, per input."""

    def __init__(self, batch: int, tail: int = 0) -> None:
        self.max = np.full(batch, -np.inf)
        self.s1 = np.zeros(batch)
        self.s2 = np.zeros(batch)
        self.n = np.zeros(batch, dtype=np.int64)
        # The tail + 1 largest log weights per input, for k-hat (tail = 0: no fit).
        self.top = np.full((batch, tail + 1), -np.inf) if tail else None

    def add(self, rows: slice, log_w: np.ndarray) -> None:
        """log_w: float64 [b, C], the new draws for inputs `rows`."""
        new_max = np.maximum(self.max[rows], log_w.max(axis=1))
        rescale = np.exp(self.max[rows] - new_max)  # exp(-inf) = 0 for the first chunk
        shifted = np.exp(log_w - new_max[:, None])
        self.s1[rows] = self.s1[rows] * rescale + shifted.sum(axis=1)
        self.s2[rows] = self.s2[rows] * rescale * rescale + (shifted * shifted).sum(axis=1)
        self.max[rows] = new_max
        self.n[rows] += log_w.shape[1]
        if self.top is not None:
            keep = self.top.shape[1]
            both = np.concatenate([self.top[rows], log_w], axis=1)
            self.top[rows] = np.partition(both, both.shape[1] - keep, axis=1)[:, -keep:]

    def result(self) -> IwaeEstimates:
        n = self.n.astype(np.float64)
        log_px = self.max + np.log(self.s1) - np.log(n)
        ess = self.s1 * self.s1 / self.s2
        with np.errstate(divide="ignore", invalid="ignore"):
            se = np.where(n > 1, np.sqrt(np.maximum(n / ess - 1.0, 0.0) / (n - 1.0)), np.nan)
        pareto_k = pareto_khat(self.top) if self.top is not None else np.full(len(self.n), np.nan)
        return IwaeEstimates(log_px, se, ess, pareto_k)


class ElboSums:
    """Running mean and variance of log p(x|z_k), the mean of log p(z_k), and per-dim sums."""

    def __init__(self, batch: int, per_dim: int | None) -> None:
        self.sum = np.zeros(batch)
        self.sum_sq = np.zeros(batch)
        self.sum_log_pz = np.zeros(batch)
        self.n = np.zeros(batch, dtype=np.int64)
        self.per_dim = np.zeros((batch, per_dim)) if per_dim is not None else None
        self._ref = np.full(batch, np.nan)

    def add(self, rows: slice, log_lik: np.ndarray, log_pz: np.ndarray, per_dim: np.ndarray | None) -> None:
        ref = self._ref[rows]
        unset = np.isnan(ref)
        ref[unset] = log_lik[unset].mean(axis=1)
        self._ref[rows] = ref
        centred = log_lik - ref[:, None]
        self.sum[rows] += centred.sum(axis=1)
        self.sum_sq[rows] += (centred * centred).sum(axis=1)
        self.sum_log_pz[rows] += log_pz.sum(axis=1)
        self.n[rows] += log_lik.shape[1]
        if self.per_dim is not None and per_dim is not None:
            self.per_dim[rows] += per_dim

    def mean(self) -> np.ndarray:
        return self._ref + self.sum / self.n  # type: ignore[no-any-return]

    def se(self) -> np.ndarray:
        n = self.n.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            var = (self.sum_sq - self.sum * self.sum / n) / (n - 1.0)
            return np.where(n > 1, np.sqrt(np.maximum(var, 0.0) / n), np.nan)  # type: ignore[no-any-return]

    def mean_log_pz(self) -> np.ndarray:
        return self.sum_log_pz / self.n  # type: ignore[no-any-return]
