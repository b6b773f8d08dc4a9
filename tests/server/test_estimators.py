"""The engine's estimators against closed forms and an independent numpy computation.

Tolerances: the graphs run in float32, so quantities that are exact in theory are checked
to 1e-4 nats; Monte Carlo quantities are checked against their own reported standard
errors (results are seeded, so these checks are deterministic).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from tests.bundles import Encoder, LinearBernoulli, LinearGaussian, LinearLogistic
from vaeserve.server.engine.bundle import load_bundle
from vaeserve.server.engine.engine import Engine
from vaeserve.server.engine.results import ScoreOptions
from vaeserve.server.engine.runtime import RuntimeConfig

CPU = RuntimeConfig(device="cpu")


@pytest.fixture(scope="module")
def exact(exact_bundle: Path) -> Engine:
    return Engine(load_bundle(exact_bundle), CPU)


@pytest.fixture(scope="module")
def worse(worse_bundle: Path) -> Engine:
    return Engine(load_bundle(worse_bundle), CPU)


@pytest.fixture(scope="module")
def x(lg: LinearGaussian) -> np.ndarray:
    return lg.sample(8, seed=3)


def test_exact_posterior_gives_log_px_with_full_ess(exact: Engine, lg: LinearGaussian, x: np.ndarray) -> None:
    k = 1000
    r = exact.score(exact.prepare(x), ScoreOptions(k=k), seed=1)
    truth = lg.log_px(x)
    np.testing.assert_allclose(r["log_px"], truth, atol=1e-4)
    np.testing.assert_allclose(r["ess"], k, rtol=1e-4)
    assert np.all(r["log_px_se"] < 1e-3)
    # ELBO = E_q[log p(x|z)] - KL, the expectation by Monte Carlo: equal to log p(x) within its error.
    assert np.all(np.abs(r["elbo"] - truth) < 4 * r["elbo_se"])
    assert np.all(r["elbo_se"] < 0.05)


def test_worse_encoder_elbo_sits_below_by_the_closed_form_gap(worse: Engine, lg: LinearGaussian, x: np.ndarray) -> None:
    gap = Encoder(shrink=0.7, var_scale=2.0).kl_to_posterior(lg, x)
    r = worse.score(worse.prepare(x), ScoreOptions(k=5000), seed=2)
    truth = lg.log_px(x)
    assert np.all(np.abs(r["elbo"] - (truth - gap)) < 4 * r["elbo_se"])
    # The reported gap, log p(x) estimate - ELBO, estimates KL(q || p(z|x)).
    assert np.all(np.abs(r["gap"] - gap) < 4 * r["gap_se"])
    assert np.all(gap > 20 * r["gap_se"])  # the gap is resolved, not noise


def test_worse_encoder_iwae_rises_with_k_to_log_px(worse: Engine, lg: LinearGaussian, x: np.ndarray) -> None:
    truth = lg.log_px(x)
    means = []
    for k in (1, 10, 100, 1000, 5000):
        r = worse.score(worse.prepare(x), ScoreOptions(k=k), seed=4)
        means.append(float(np.mean(r["log_px"] - truth)))
    assert all(a < b for a, b in itertools.pairwise(means)), means
    r = worse.score(worse.prepare(x), ScoreOptions(k=5000), seed=4)
    assert np.all(np.abs(r["log_px"] - truth) < 3 * r["log_px_se"]), (r["log_px"] - truth) / r["log_px_se"]
    assert np.all(r["ess"] < 0.9 * 5000)  # unequal weights: q is not the posterior


def test_prior_estimate_agrees_with_far_lower_ess(worse: Engine, lg: LinearGaussian, x: np.ndarray) -> None:
    # Large K: with a handful of effective samples the delta-method error of the naive estimate is itself unreliable.
    k = 200_000
    r = worse.score(worse.prepare(x), ScoreOptions(k=k, prior_estimate=True), seed=5)
    assert "prior_log_px" in r.columns
    truth = lg.log_px(x)
    assert np.all(np.abs(r["prior_log_px"] - truth) < 3 * r["prior_log_px_se"]), (r["prior_log_px"] - truth) / r[
        "prior_log_px_se"
    ]
    ratio = r["prior_ess"] / r["ess"]
    assert np.all(ratio < 0.5) and np.median(ratio) < 0.15, ratio
    assert np.all(r["prior_log_px_se"] > r["log_px_se"])


def test_importance_resampling_moves_toward_the_exact_posterior(
    worse: Engine, lg: LinearGaussian, x: np.ndarray
) -> None:
    mean_q, _, samples, ess = worse.posterior_samples(worse.prepare(x), 4000, seed=6, resample=True, proposals=5000)
    assert samples.shape == (len(x), 4000, lg.W.shape[1]) and ess is not None
    exact_mean = lg.posterior_mean(x)
    resampled_error = np.linalg.norm(samples.mean(axis=1) - exact_mean, axis=1)
    q_error = np.linalg.norm(mean_q - exact_mean, axis=1)
    assert np.all(resampled_error < 0.5 * q_error), (resampled_error, q_error)


def test_bernoulli_path_matches_numpy(tmp_path: Path) -> None:
    model = LinearBernoulli.random()
    engine = Engine(model.write(tmp_path), CPU)
    rng = np.random.default_rng(0)
    x = (rng.random((5, model.W.shape[0])) < 0.5).astype(np.float64)
    x[0] = rng.random(model.W.shape[0])  # grey-level targets use the same formula
    k, seed = 300, 9
    r = engine.score(engine.prepare(x), ScoreOptions(k=k, per_dim=True, prior_estimate=True), seed=seed)

    eps = np.random.default_rng(seed).standard_normal((k, model.W.shape[1]), dtype=np.float32).astype(np.float64)
    mu = x @ model.A.T + model.c
    std = np.exp(0.5 * model.logvar)
    z = mu[:, None, :] + std * eps[None]  # [B, K, L]
    logits = z @ model.W.T + model.b
    per_dim = x[:, None, :] * logits - np.logaddexp(0.0, logits)
    log_lik = per_dim.sum(axis=2)
    log_pz = -0.5 * (z**2).sum(axis=2) - 0.5 * z.shape[2] * np.log(2 * np.pi)
    log_q = -0.5 * (eps**2).sum(axis=1) - 0.5 * model.logvar.sum() - 0.5 * z.shape[2] * np.log(2 * np.pi)
    log_w = log_lik + log_pz - log_q
    iwae = np.logaddexp.reduce(log_w, axis=1) - np.log(k)
    kl = 0.5 * np.sum(mu**2 + np.exp(model.logvar) - 1 - model.logvar, axis=1)
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    np.testing.assert_allclose(r["log_px"], iwae, atol=1e-4)
    np.testing.assert_allclose(r["elbo"], log_lik.mean(axis=1) - kl, atol=1e-4)
    np.testing.assert_allclose(r["kl"], kl, atol=1e-5)
    np.testing.assert_allclose(r["ess"], w.sum(axis=1) ** 2 / (w**2).sum(axis=1), rtol=1e-4)
    np.testing.assert_allclose(r["elbo_se"], log_lik.std(axis=1, ddof=1) / np.sqrt(k), rtol=1e-3)
    assert r.per_dim is not None
    np.testing.assert_allclose(r.per_dim, per_dim.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(
        r["expected_log_joint"] + r["entropy"] - r["elbo"], 0.0, atol=0.5
    )  # same ELBO, other form
    prior_logits = eps @ model.W.T + model.b  # z = eps ~ p(z): the naive estimate
    prior_lik = (x[:, None, :] * prior_logits - np.logaddexp(0.0, prior_logits)).sum(axis=2)
    assert "prior_log_px" in r.columns
    np.testing.assert_allclose(r["prior_log_px"], np.logaddexp.reduce(prior_lik, axis=1) - np.log(k), atol=1e-4)


def test_same_seed_same_numbers_and_chunking_does_not_matter(worse_bundle: Path, x: np.ndarray) -> None:
    whole = Engine(load_bundle(worse_bundle), CPU, chunk_samples=100_000)
    chunked = Engine(load_bundle(worse_bundle), CPU, chunk_samples=96)
    options = ScoreOptions(k=1000, per_dim=True, prior_estimate=True)
    a = whole.score(whole.prepare(x), options, seed=11)
    b = whole.score(whole.prepare(x), options, seed=11)
    c = chunked.score(chunked.prepare(x), options, seed=11)
    d = whole.score(whole.prepare(x), options, seed=12)
    for name in ("log_px", "log_px_se", "ess", "elbo", "elbo_se", "gap"):
        np.testing.assert_array_equal(a[name], b[name])
        np.testing.assert_allclose(a[name], c[name], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.per_dim, b.per_dim)
    np.testing.assert_allclose(a.per_dim, c.per_dim, rtol=1e-5, atol=1e-5)
    assert "prior_log_px" in a.columns and "prior_log_px" in c.columns
    np.testing.assert_allclose(a["prior_log_px"], c["prior_log_px"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a["log_px"], d["log_px"], rtol=0, atol=1e-9)


def test_a_result_does_not_depend_on_batch_position(worse: Engine, x: np.ndarray) -> None:
    options = ScoreOptions(k=500)
    batch = worse.score(worse.prepare(x), options, seed=3)
    for i in (0, 5):
        alone = worse.score(worse.prepare(x[i : i + 1]), options, seed=3)
        np.testing.assert_allclose(alone["log_px"], batch["log_px"][i : i + 1], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(alone["elbo"], batch["elbo"][i : i + 1], rtol=1e-6, atol=1e-5)
    shuffled = worse.score(worse.prepare(x[::-1]), options, seed=3)
    np.testing.assert_allclose(shuffled["log_px"][::-1], batch["log_px"], rtol=1e-6, atol=1e-5)


def test_per_input_seeds_equal_separate_calls(worse: Engine, x: np.ndarray) -> None:
    seeds = np.arange(len(x), dtype=np.uint64) + 100
    merged = worse.score(worse.prepare(x), ScoreOptions(k=64), seeds)
    for i in range(len(x)):
        alone = worse.score(worse.prepare(x[i : i + 1]), ScoreOptions(k=64), int(seeds[i]))
        np.testing.assert_allclose(alone["log_px"], merged["log_px"][i : i + 1], rtol=1e-6, atol=1e-5)


def test_k_one_reports_no_standard_error(worse: Engine, x: np.ndarray) -> None:
    r = worse.score(worse.prepare(x), ScoreOptions(k=1), seed=0)
    assert np.all(np.isnan(r["log_px_se"])) and np.all(np.isnan(r["elbo_se"]))
    np.testing.assert_allclose(r["ess"], 1.0)


def test_discretized_logistic_path_matches_scipy(tmp_path: Path) -> None:
    """log P(x|z) of the discretized logistic (the end levels' bins open) against scipy's CDF, same draws;
    raw inputs are whole levels 0..255, the server maps them to [0, 1]."""
    from scipy.stats import logistic

    model = LinearLogistic.random(dim=12, latent=3, levels=255, seed=4)
    engine = Engine(model.write(tmp_path / "logistic"), CPU)
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, (6, 12)).astype(np.float64)
    raw[0, :4] = 0  # the open bins at both ends
    raw[1, :4] = 255
    k, seed = 64, 9
    r = engine.score(engine.prepare(raw), ScoreOptions(k=k, per_dim=True), seed=seed)
    x = raw / 255
    eps = np.random.default_rng(seed).standard_normal((k, 3), dtype=np.float32).astype(np.float64)
    mean_z = x @ model.A.T + model.c
    z = mean_z[:, None, :] + np.exp(0.5 * model.logvar) * eps[None]
    mean = z @ model.W.T + model.b  # [B, K, D]
    s, w = np.exp(model.log_scale), 1 / 255
    lo = np.where(x <= w / 2, -np.inf, x - w / 2)[:, None, :]
    hi = np.where(x >= 1 - w / 2, np.inf, x + w / 2)[:, None, :]
    # log(F(hi) - F(lo)) from the side where it does not underflow: the CDF left of the mean, the survival
    # function right of it (scipy's logcdf and logsf; the far tails reach -100 nats per pixel here).
    with np.errstate(divide="ignore"):
        left = logistic.logcdf(hi, mean, s) + np.log1p(
            -np.exp(logistic.logcdf(lo, mean, s) - logistic.logcdf(hi, mean, s))
        )
        right = logistic.logsf(lo, mean, s) + np.log1p(
            -np.exp(logistic.logsf(hi, mean, s) - logistic.logsf(lo, mean, s))
        )
    per_draw = np.where(mean >= x[:, None, :], left, right)  # [B, K, D]
    np.testing.assert_allclose(r["reconstruction_term"], per_draw.sum(axis=2).mean(axis=1), rtol=1e-5, atol=1e-4)
    assert r.per_dim is not None
    np.testing.assert_allclose(r.per_dim.reshape(6, 12), per_draw.mean(axis=1), rtol=1e-5, atol=1e-4)
    # Draws of x land on the levels, inside [0, 1].
    params = engine.decode(mean_z.astype(np.float32))
    draws = engine.sample_x(params, seed=1) * 255
    np.testing.assert_allclose(draws, np.round(draws), atol=1e-3)
    assert draws.min() >= 0 and draws.max() <= 255
