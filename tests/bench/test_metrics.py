"""Metrics against sklearn and scipy, computed independently; detectors on data with obvious anomalies."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from bench.detectors import DETECTORS, fit_all
from bench.metrics import Metric, auprc, auroc, bootstrap_ci, mean_over_groups_ci, rate_ci


def _groups(seed: int, n: int, m: int, levels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping normal and anomalous scores; `levels` rounds them onto a few values, so many tie."""
    rng = np.random.default_rng(seed)
    normal, anomalous = rng.normal(0, 1, n), rng.normal(1, 1, m)
    if levels is not None:
        normal, anomalous = np.round(normal * levels / 4), np.round(anomalous * levels / 4)
    return normal, anomalous


def _sklearn(metric: str, normal: np.ndarray, anomalous: np.ndarray) -> float:
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    reference = roc_auc_score if metric == "auroc" else average_precision_score
    return float(reference(labels, np.r_[normal, anomalous]))


@pytest.mark.parametrize("levels", [None, 3, 8])
@pytest.mark.parametrize("seed", range(4))
def test_auroc_and_auprc_match_sklearn_with_ties(seed: int, levels: int | None) -> None:
    normal, anomalous = _groups(seed, 60 + 13 * seed, 25 + 7 * seed, levels)
    assert auroc(normal, anomalous) == pytest.approx(_sklearn("auroc", normal, anomalous), abs=1e-12)
    assert auprc(normal, anomalous) == pytest.approx(_sklearn("auprc", normal, anomalous), abs=1e-12)


def test_all_tied_scores_are_chance_for_auroc_and_the_base_rate_for_auprc() -> None:
    assert auroc(np.zeros(30), np.zeros(10)) == 0.5
    assert auprc(np.zeros(30), np.zeros(10)) == pytest.approx(10 / 40)
    with pytest.raises(ValueError, match="anomalous scores"):
        auroc(np.zeros(3), np.array([]))
    with pytest.raises(ValueError, match="normal scores"):
        auprc(np.array([0.0, np.nan]), np.zeros(3))


@pytest.mark.parametrize("metric", [auroc, auprc])
def test_vectorised_bootstrap_equals_the_plain_loop_on_the_same_resamples(metric: Metric) -> None:
    normal, anomalous = _groups(0, 300, 120, levels=6)
    fast = bootstrap_ci(metric, normal, anomalous, n_boot=300, seed=3)
    slow = bootstrap_ci(lambda a, b: metric(a, b), normal, anomalous, n_boot=300, seed=3)  # a wrapper takes the loop
    assert fast == pytest.approx(slow, abs=1e-12)


@pytest.mark.parametrize("metric", [auroc, auprc])
def test_bootstrap_ci_covers_the_estimate_and_narrows_with_more_data(metric: Metric) -> None:
    widths = []
    for n in (100, 2000):
        normal, anomalous = _groups(1, n, n)
        low, high = bootstrap_ci(metric, normal, anomalous, seed=0)
        assert low < metric(normal, anomalous) < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # width ~ 1 / sqrt(n): 20 x the data, ~4.5 x narrower
    assert bootstrap_ci(auroc, normal, anomalous, seed=5) == bootstrap_ci(auroc, normal, anomalous, seed=5)


def test_mean_over_groups_is_the_mean_of_the_groups_with_an_interval_around_it() -> None:
    groups = [_groups(seed, 200, 50 + 10 * seed, levels=5) for seed in range(3)]
    mean, low, high = mean_over_groups_ci(auroc, groups, n_boot=500)
    assert mean == pytest.approx(np.mean([auroc(*g) for g in groups]))
    assert low < mean < high
    # One group: the same resamples as bootstrap_ci with the same seed.
    single = mean_over_groups_ci(auprc, groups[:1], n_boot=500, seed=7)
    assert single[1:] == bootstrap_ci(auprc, *groups[0], n_boot=500, seed=7)
    # Averaging three classes' independent errors narrows the interval below any one class's.
    assert high - low < min(np.subtract(*bootstrap_ci(auroc, *g, n_boot=500)[::-1]) for g in groups)


# Clopper-Pearson 95 % bounds printed by scipy 1.17 beta.ppf(0.025, k, n - k + 1) and ppf(0.975, k + 1, n - k),
# kept here so the check runs without scipy.
KNOWN = [
    (0, 10, 0.0, 0.3084971078187607),
    (5, 10, 0.18708602844739855, 0.8129139715526015),
    (1, 100, 0.00025314603297742064, 0.054459385392080645),
    (10, 10, 0.6915028921812392, 1.0),
]


@pytest.mark.parametrize(("count", "n", "low", "high"), KNOWN)
def test_rate_ci_matches_known_clopper_pearson_values(count: int, n: int, low: float, high: float) -> None:
    assert rate_ci(count, n) == pytest.approx((low, high), rel=1e-9, abs=1e-15)


def test_rate_ci_matches_scipy_beta_quantiles() -> None:
    beta = pytest.importorskip("scipy.stats").beta
    for count, n, level in [(0, 1, 0.95), (3, 7, 0.9), (17, 4000, 0.95), (3990, 4000, 0.99), (1, 10**5, 0.95)]:
        tail = (1 - level) / 2
        low = 0.0 if count == 0 else beta.ppf(tail, count, n - count + 1)
        high = 1.0 if count == n else beta.ppf(1 - tail, count + 1, n - count)
        assert rate_ci(count, n, level) == pytest.approx((low, high), rel=1e-8)
    with pytest.raises(ValueError, match="count"):
        rate_ci(11, 10)


@pytest.fixture(scope="module")
def blob() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normal rows on a noisy 2-D plane in 8 columns; anomalies the same, shifted 4 along every column."""
    rng = np.random.default_rng(0)
    loadings = rng.normal(0, 1, (2, 8))

    def rows(n: int) -> np.ndarray:
        return rng.normal(0, 1, (n, 2)) @ loadings + rng.normal(0, 0.2, (n, 8))

    return rows(200), rows(100), rows(100) + 4.0


@pytest.mark.parametrize("name", list(DETECTORS))
def test_each_detector_ranks_shifted_rows_above_normal_ones_the_same_way_each_time(
    name: str, blob: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    train, normal, anomalous = blob
    fitted = DETECTORS[name](train, 0)
    scores_n, scores_a = fitted(normal), fitted(anomalous)
    assert scores_n.dtype == np.float64 and scores_n.shape == (100,)
    assert auroc(scores_n, scores_a) > 0.95
    np.testing.assert_array_equal(DETECTORS[name](train, 0)(anomalous), scores_a)


def test_detectors_fit_on_few_images_with_constant_pixels() -> None:
    """150 rows of 784 pixels, a third of them never lit in training: the MNIST one-class case."""
    rng = np.random.default_rng(1)
    train = rng.uniform(0, 1, (150, 784)) * (np.arange(784) % 3 > 0)
    test = rng.uniform(0, 1, (20, 784))
    scores = {name: fitted(test) for name, fitted in fit_all(train, 0).items()}
    assert list(scores) == list(DETECTORS)
    assert all(s.shape == (20,) and np.isfinite(s).all() for s in scores.values())
    with pytest.raises(ValueError, match="train must be"):
        DETECTORS["gmm"](train[:5], 0)
