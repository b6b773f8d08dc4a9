"""The Pareto-smoothed importance sampling diagnostic k-hat, per input.

Vehtari, Simpson, Gelman, Yao and Gabry, "Pareto Smoothed Importance Sampling" (JMLR 2024): fit a
generalized Pareto distribution, F(x) = 1 - (1 + k x / sigma)^(-1/k), to the exceedances x_i = w_i - u
of the M largest importance weights over u, the (M+1)-th largest. Its shape k says how many moments
the weights have (the r-th exists for r < 1/k): above 0.7 the importance sampling estimate is not
reliable, above 1 the weights' mean may not exist.

The fit is Zhang and Stephens' (2009) empirical-Bayes estimator. With theta = -k / sigma and
k(theta) = mean_i log(1 - theta x_i), the profile log-likelihood of theta is
M (log(-theta / k(theta)) - k(theta) - 1); theta-hat is its posterior mean over the grid
theta_j = 1 / x_(M) + (1 - sqrt(m / (j - 1/2))) / (3 x*), j = 1..m, m = 30 + floor(sqrt M), x* the
first-quartile exceedance. k-hat = k(theta-hat), then pulled toward 0.5 as if by 10 prior draws.

theta x is all that enters, so the arithmetic runs on y = x / x* and log(1 - t y) is taken from log y:
exceedances are never formed as differences of weights (no cancellation) and tails spanning more
than float64's range (log weights hundreds of nats apart, as a poor encoder gives) still fit.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["KHAT_UNRELIABLE", "pareto_khat", "tail_size"]

KHAT_UNRELIABLE = 0.7  # above it the importance sampling estimate is not reliable (PSIS paper)

_MIN_TAIL = 5  # fewer exceedances leave the two-parameter fit meaningless
_GRID_BASE = 30  # PSIS's grid of 30 + floor(sqrt M) points (Zhang and Stephens used 20)
_PRIOR_SCALE = 3.0  # Zhang and Stephens' prior on theta puts its quartile scale at 3 x*
_PRIOR_K, _PRIOR_DRAWS = 0.5, 10.0  # the PSIS paper's weakly informative prior on k
_CHUNK_ELEMENTS = 1 << 21  # rows at a time so each [rows, grid, M] temporary stays near 16 MiB


def tail_size(k: int) -> int:
    """M, the number of largest weights the generalized Pareto fit uses: ceil(min(0.2 K, 3 sqrt K));
    0 when K is too small for a fit (M < 5)."""
    if k < 0:
        raise ValueError(f"the number of draws must be non-negative, got {k}")
    fifth = -(-k // 5)  # ceil(0.2 K) in integers, where a float 0.2 * K could round past one
    root = math.isqrt(9 * k)  # then ceil(3 sqrt K) = ceil(sqrt(9 K)), exactly
    if root * root < 9 * k:
        root += 1
    m = min(fifth, root)
    return m if m >= _MIN_TAIL else 0


def pareto_khat(log_w_top: np.ndarray) -> np.ndarray:
    """k-hat per row. log_w_top: float64 [B, M + 1], the M + 1 largest log importance weights of each row
    (in any order; M = tail_size(K) of that K). Returns float64 [B]; NaN for rows where no fit is possible
    (M < 5, non-finite values, or all tail weights equal).

    A row whose first-quartile exceedance is 0 (over a quarter of its tail ties the threshold) is NaN
    too: Zhang and Stephens' grid is scaled by that quartile.
    """
    lw = np.asarray(log_w_top, dtype=np.float64)
    if lw.ndim != 2 or lw.shape[1] < 1:
        raise ValueError(f"log_w_top must be [B, M + 1], got shape {lw.shape}")
    m_tail = lw.shape[1] - 1
    khat = np.full(lw.shape[0], np.nan)
    if m_tail < _MIN_TAIL:
        return khat
    lw = np.sort(lw, axis=1)
    quartile = math.floor(m_tail / 4 + 0.5) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        log_x = lw[:, 1:] + np.log(-np.expm1(lw[:, :1] - lw[:, 1:]))  # log(e^w - e^u); -inf at a tie
    fit = np.all(np.isfinite(lw), axis=1) & np.isfinite(log_x[:, quartile])
    if not fit.any():
        return khat
    log_y = log_x[fit] - log_x[fit, quartile, None]
    n_grid = _GRID_BASE + math.isqrt(m_tail)
    offsets = (1.0 - np.sqrt(n_grid / (np.arange(1, n_grid + 1) - 0.5))) / _PRIOR_SCALE  # all < 0
    rows = max(1, _CHUNK_ELEMENTS // (n_grid * m_tail))
    fitted = np.concatenate([_fit(log_y[i : i + rows], offsets) for i in range(0, len(log_y), rows)])
    khat[fit] = (m_tail * fitted + _PRIOR_DRAWS * _PRIOR_K) / (m_tail + _PRIOR_DRAWS)
    return khat


def _fit(log_y: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Zhang and Stephens' k for rows of log(x_i / x*), sorted ascending, in units where x* = 1."""
    m_tail = log_y.shape[1]
    t = np.exp(-log_y[:, -1:]) + offsets  # theta_j x* = x* / x_(M) + offset_j, each below 1 / y_(M)
    k = _log1m(t[:, :, None], log_y[:, None, :]).mean(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        loglik = m_tail * (np.log(-t / k) - k - 1.0)
    loglik = np.where(np.isfinite(loglik), loglik, -np.inf)  # t = 0 exactly is 0 / 0: no weight
    weight = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    t_hat = (weight * t).sum(axis=1) / weight.sum(axis=1)
    return _log1m(t_hat[:, None], log_y).mean(axis=1)


def _log1m(t: np.ndarray, log_y: np.ndarray) -> np.ndarray:
    """log(1 - t y) for t y < 1, from log y: a softplus of log |t y| when t < 0, so nothing overflows."""
    with np.errstate(divide="ignore"):
        z = np.log(np.abs(t)) + log_y  # -inf where t = 0 or y = 0, giving log 1 = 0
    return np.maximum(z, 0.0) + np.log1p(-np.sign(t) * np.exp(-np.abs(z)))
