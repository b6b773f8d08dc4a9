"""k-hat against generalized Pareto draws of known shape, a closed-form importance sampling tail and a
direct linear-space transcription of the estimator.

A generalized Pareto draw (F(x) = 1 - (1 + k x / sigma)^(-1/k)) comes from inverting F at U ~ U(0, 1):
x = sigma ((1 - U)^(-k) - 1) / k. The estimator's sampling sd at M = 1000 is about (1 + k) / sqrt(M)
< 0.06, so means over 40 rows are checked to 0.03 and single rows to 0.25 (over 4 sd). All seeds are fixed.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from vaeserve.server.engine.psis import KHAT_UNRELIABLE, pareto_khat, tail_size


def regularised(k: float, m: int) -> float:
    """What the PSIS prior (10 draws at k = 0.5) turns a perfect fit of shape k into."""
    return (m * k + 10 * 0.5) / (m + 10)


def log_gpd(rng: np.random.Generator, k: float, shape: tuple[int, int]) -> np.ndarray:
    """log x for sigma = 1, formed in log space so shapes whose draws overflow float64 still work."""
    a = -k * np.log1p(-rng.random(shape))  # log (1 - U)^(-k)
    if k < 0:
        return np.log(-np.expm1(a)) - np.log(-k)
    return a + np.log(-np.expm1(-a)) - np.log(k)  # log(e^a - 1) without overflow


def tail_rows(rng: np.random.Generator, k: float, rows: int, m: int) -> np.ndarray:
    """[rows, m + 1] log weights: a threshold u = 1 (log 0) plus m exceedances, columns shuffled."""
    log_w = np.concatenate([np.zeros((rows, 1)), np.logaddexp(0.0, log_gpd(rng, k, (rows, m)))], axis=1)
    return rng.permuted(log_w, axis=1)


def reference_khat(log_w_top: np.ndarray) -> float:
    """Zhang and Stephens' estimator plus the PSIS prior, transcribed literally for one row in linear space."""
    w = np.sort(np.exp(log_w_top - log_w_top.max()))
    x = w[1:] - w[0]
    n = len(x)
    m = 30 + math.floor(math.sqrt(n))
    x_star = x[math.floor(n / 4 + 0.5) - 1]
    theta = 1 / x[-1] + (1 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))) / (3 * x_star)
    k = np.array([np.mean(np.log1p(-th * x)) for th in theta])
    loglik = n * (np.log(-theta / k) - k - 1)
    weight = np.exp(loglik - loglik.max())
    theta_hat = np.sum(weight * theta) / np.sum(weight)
    return regularised(float(np.mean(np.log1p(-theta_hat * x))), n)


@pytest.mark.parametrize("k", [0.2, 0.5, 0.9])
def test_generalized_pareto_shape_is_recovered(k: float) -> None:
    m = 1000
    khat = pareto_khat(tail_rows(np.random.default_rng(11), k, rows=40, m=m))
    assert khat.mean() == pytest.approx(regularised(k, m), abs=0.03)
    np.testing.assert_array_less(np.abs(khat - regularised(k, m)), 0.25)


@pytest.mark.parametrize("k", [-0.3, 0.5, 2.0])
def test_matches_a_literal_linear_space_transcription(k: float) -> None:
    log_w = tail_rows(np.random.default_rng(5), k, rows=4, m=tail_size(1000))
    expected = [reference_khat(row) for row in log_w]
    np.testing.assert_allclose(pareto_khat(log_w), expected, rtol=1e-10, atol=1e-12)


def test_tail_spanning_thousands_of_nats_still_fits() -> None:
    """exp() of these log weights over/underflows whatever the shift, so a linear-space fit gives NaN.
    k = 200 lies beyond the prior's grid (theta x* far below -3), which biases the estimate low,
    but it must stay finite and far above 1."""
    log_w = tail_rows(np.random.default_rng(3), 200.0, rows=4, m=1000)
    assert np.all(np.ptp(log_w, axis=1) > 1000.0)
    khat = pareto_khat(log_w)
    assert np.all(np.isfinite(khat))
    assert np.all(khat > 50.0)


def importance_khat(rng: np.random.Generator, ratio: float, rows: int, draws: int) -> np.ndarray:
    """k-hat of log N(z; 0, 1) - log N(z; 0, ratio^2) for z ~ N(0, ratio^2), from the top M + 1 of each row."""
    z = ratio * rng.standard_normal((rows, draws))
    log_w = 0.5 * z * z * (1.0 / ratio**2 - 1.0)  # up to a constant, which k-hat ignores
    m = tail_size(draws)
    return pareto_khat(np.partition(log_w, -(m + 1), axis=1)[:, -(m + 1) :])


@pytest.mark.parametrize("ratio", [0.4, 0.5])
def test_narrow_gaussian_proposal_has_the_closed_form_tail(ratio: float) -> None:
    """Target p = N(0, 1), proposal q = N(0, r^2), r < 1: w = p / q = r exp(a z^2 / 2), a = 1/r^2 - 1, and
    with s = |z| / r ~ |N(0, 1)|, P(w > t) = P(s^2 > 2 L / (a r^2)), L = log(t / r). The Gaussian tail
    P(s > c) ~ exp(-c^2 / 2) / c gives P(w > t) ~ t^(-1 / (a r^2)) / sqrt(L): a Pareto tail of shape
    k = a r^2 = 1 - r^2 (0.84 for r = 0.4, 0.75 for r = 0.5), reached only as t grows. The 1 / sqrt(L)
    factor makes the local shape at a finite threshold smaller: -dlog P / dlog t = 1/k + 1/(2L), and at
    the threshold of K = 20000 draws (s = z_c, the 1 - M / 2K normal quantile, L = z_c^2 / 2k) this is
    1/k + k / z_c^2. Further out the local shape climbs toward k, so the fit's mean lands in between;
    the mean of 100 rows is allowed 3 standard errors (one row's sd is about 0.08) either side."""
    draws = 20000
    m = tail_size(draws)
    k = 1.0 - ratio**2
    z_c = NormalDist().inv_cdf(1.0 - m / (2 * draws))  # 2.3035
    k_threshold = 1.0 / (1.0 / k + k / z_c**2)
    khat = importance_khat(np.random.default_rng(17), ratio, rows=100, draws=draws)
    noise = 3.0 * khat.std() / math.sqrt(len(khat))
    assert regularised(k_threshold, m) - noise < khat.mean() < regularised(k, m) + noise


def test_heavy_tailed_weights_are_flagged_unreliable() -> None:
    """For r = 0.4 the lower end of the bracket above is 0.736, so the mean k-hat must exceed 0.7.
    (For r = 0.5 it is 0.674: at K = 20000 only about half the rows exceed 0.7 though k = 0.75.)"""
    khat = importance_khat(np.random.default_rng(23), 0.4, rows=100, draws=20000)
    assert khat.mean() > KHAT_UNRELIABLE


def test_wide_gaussian_proposal_gives_light_tailed_weights() -> None:
    """r = 2 > 1: w = r exp(-a z^2 / 2), a = 1 - 1/r^2 > 0, is bounded by r (at z = 0), so k < 0: near the
    bound P(w_max - w < e) ~ sqrt(e), the shape of a tail with k = -2."""
    khat = importance_khat(np.random.default_rng(29), 2.0, rows=20, draws=20000)
    np.testing.assert_array_less(khat, 0.0)


def test_invariant_to_scale_and_column_order() -> None:
    rng = np.random.default_rng(7)
    log_w = tail_rows(rng, 0.7, rows=6, m=95)
    khat = pareto_khat(log_w)
    for shift in (-700.0, 1e-3, 123.4, 700.0):  # w -> c w for c from e^-700 to e^700
        np.testing.assert_allclose(pareto_khat(log_w + shift), khat, rtol=1e-9)
    np.testing.assert_array_equal(pareto_khat(rng.permuted(log_w, axis=1)), khat)


def test_rows_are_independent() -> None:
    rng = np.random.default_rng(9)
    log_w = np.concatenate([tail_rows(rng, k, rows=2, m=95) for k in (0.1, 0.6, 1.5)])
    log_w[1] = 0.0  # a row with no fit
    log_w[4, 3] = np.nan
    alone = np.array([pareto_khat(row[None, :])[0] for row in log_w])
    together = pareto_khat(log_w)
    np.testing.assert_array_equal(np.isnan(together), [False, True, False, False, True, False])
    np.testing.assert_allclose(together, alone, rtol=1e-13)
    np.testing.assert_allclose(pareto_khat(log_w[::-1])[::-1], together, rtol=1e-13)


def test_tail_size() -> None:
    assert [tail_size(k) for k in (0, 1, 20)] == [0, 0, 0]  # ceil(0.2 K) <= 4: too few for a fit
    assert tail_size(21) == 5  # ceil(4.2): the first K with a fit
    assert tail_size(100) == 20  # 0.2 K < 3 sqrt K = 30
    assert tail_size(225) == 45  # both are 45
    assert tail_size(1000) == 95  # ceil(94.87)
    assert tail_size(20000) == 425  # ceil(424.26)
    assert tail_size(10**6) == 3000
    with pytest.raises(ValueError, match="non-negative"):
        tail_size(-1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_gives_nan(bad: float) -> None:
    log_w = tail_rows(np.random.default_rng(1), 0.5, rows=2, m=20)
    log_w[0, 7] = bad
    khat = pareto_khat(log_w)
    assert np.isnan(khat[0])
    assert np.isfinite(khat[1])


def test_degenerate_tails_give_nan() -> None:
    log_w = np.zeros((3, 21))
    log_w[0] = 2.5  # all equal
    log_w[1, 10:] = np.linspace(1.0, 2.0, 11)  # half the tail ties the threshold: no quartile scale
    log_w[2] = np.linspace(0.0, 2.0, 21)  # a proper tail, for contrast
    khat = pareto_khat(log_w)
    assert np.isnan(khat[:2]).all()
    assert np.isfinite(khat[2])


def test_too_short_a_tail_gives_nan() -> None:
    log_w = np.linspace(0.0, 1.0, 12).reshape(2, 6)
    assert np.isnan(pareto_khat(log_w[:, :5])).all()  # M = 4
    assert np.isfinite(pareto_khat(log_w)).all()  # M = 5
    with pytest.raises(ValueError, match=r"\[B, M \+ 1\]"):
        pareto_khat(log_w[0])
