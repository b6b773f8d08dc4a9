"""Classical anomaly detectors, fitted on normal rows only, to set beside the VAE's served anomaly scores.

Every detector is `fit(train, seed) -> score`: `train` holds normal rows only (float64 [N, D], already in the
model's space: pixels in [0, 1] or standardised columns), and `score(test)` gives float64 [M], higher = more
anomalous. No hyperparameter ever sees an anomaly: each is a fixed default or is chosen on the normal training
rows alone, as the first line of each detector's docstring says. The same seed gives the same scores.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from sklearn.svm import OneClassSVM

MIN_ROWS = 10  # ppca holds out a fifth of the rows; fewer than this leaves it nothing to choose with


@dataclass(frozen=True)
class Fitted:
    """A fitted detector: call it on test rows for scores; `params` holds what it chose, for the report."""

    score: Callable[[np.ndarray], np.ndarray]
    params: dict[str, object] = field(default_factory=dict)

    def __call__(self, test: np.ndarray) -> np.ndarray:
        return np.asarray(self.score(_rows(test, "test")), dtype=np.float64)


Detector = Callable[[np.ndarray, int], Fitted]


def _rows(x: np.ndarray, name: str, min_rows: int = 1) -> np.ndarray:
    rows = np.asarray(x, dtype=np.float64)
    if rows.ndim != 2 or len(rows) < min_rows or not np.isfinite(rows).all():
        raise ValueError(f"{name} must be [N >= {min_rows}, D] finite numbers, got shape {rows.shape}")
    return rows


def _detector(fit: Detector) -> Detector:
    """Every detector checks its training rows the same way, whether called alone or through fit_all."""

    @functools.wraps(fit)
    def checked(train: np.ndarray, seed: int) -> Fitted:
        return fit(_rows(train, "train", MIN_ROWS), seed)

    return checked


@_detector
def isolation_forest(train: np.ndarray, seed: int) -> Fitted:
    """Fixed: 200 trees (twice the paper's 100, for steadier scores) on 256-row subsamples (the paper's)."""
    model = IsolationForest(n_estimators=200, random_state=seed).fit(train)
    return Fitted(lambda x: -model.score_samples(x), {"n_estimators": 200})


@_detector
def pca(train: np.ndarray, seed: int) -> Fitted:
    """Fixed rule: the fewest principal components explaining 90 % of the training variance; squared error."""
    model = PCA(n_components=0.9, svd_solver="full").fit(train)

    def score(x: np.ndarray) -> np.ndarray:
        return ((x - model.inverse_transform(model.transform(x))) ** 2).sum(1)

    return Fitted(score, {"components": int(model.n_components_)})


def _split(train: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four fifths to fit on, one fifth of normal rows held out to choose with."""
    order = np.random.default_rng(seed).permutation(len(train))
    held = len(train) // 5
    return train[order[held:]], train[order[:held]]


@_detector
def ppca(train: np.ndarray, seed: int) -> Fitted:
    """Chosen: the component count (geometric grid, 1 .. min(N, D) - 1) with the best held-out normal likelihood.

    sklearn's PCA is probabilistic PCA at its maximum likelihood (isotropic noise = the mean discarded
    variance), and score_samples is the PPCA log-likelihood; the choice is refitted on all the rows.
    """
    fit_rows, held_out = _split(train, seed)
    # All min(N, D) components leave no noise variance and a singular covariance; so does any count at or
    # beyond the data's rank (few rows, constant pixels): those candidates are skipped.
    top = max(1, min(fit_rows.shape) - 1)
    grid = np.unique(np.geomspace(1, top, 12).round().astype(int))
    held_ll = {}
    for q in grid:
        candidate = PCA(int(q), svd_solver="full").fit(fit_rows)
        if candidate.noise_variance_ > 1e-9 * max(float(candidate.explained_variance_[0]), 1e-300):
            held_ll[int(q)] = candidate.score(held_out)
    best = max(held_ll, key=held_ll.__getitem__) if held_ll else 1
    model = PCA(best, svd_solver="full").fit(train)
    return Fitted(lambda x: -model.score_samples(x), {"components": best})


@_detector
def knn(train: np.ndarray, seed: int) -> Fitted:
    """Fixed: mean Euclidean distance to the k = 5 nearest training rows (a training row would count itself)."""
    k = min(5, len(train))
    model = NearestNeighbors(n_neighbors=k).fit(train)
    return Fitted(lambda x: model.kneighbors(x)[0].mean(1), {"k": k})


@_detector
def ocsvm(train: np.ndarray, seed: int) -> Fitted:
    """Fixed: RBF kernel, gamma "scale" (1 / (D x variance of the rows)), nu = 0.1 (a tenth of rows as margin)."""
    model = OneClassSVM(kernel="rbf", gamma="scale", nu=0.1).fit(train)
    return Fitted(lambda x: -model.decision_function(x), {"gamma": "scale", "nu": 0.1})


@_detector
def gmm(train: np.ndarray, seed: int) -> Fitted:
    """Chosen: 1-8 components and the covariance type with the lowest BIC on the training rows.

    reg_covar = 1e-3 gives pixels that never vary in the normal class a small variance rather than none.
    Full and tied covariances are skipped when D >= N: from fewer rows than columns they are singular, held up
    only by reg_covar, their D(D+1)/2 parameters per component cost BIC more than the rows can repay, and each
    EM step would cost D^3 per component (784 pixels).
    """
    rows, dim = train.shape
    types = ["full", "tied", "diag", "spherical"] if dim < rows else ["diag", "spherical"]
    best: tuple[float, GaussianMixture, str, int] | None = None
    for covariance in types:
        for k in range(1, min(8, rows) + 1):
            model = GaussianMixture(k, covariance_type=covariance, reg_covar=1e-3, random_state=seed).fit(train)
            bic = float(model.bic(train))
            if best is None or bic < best[0]:
                best = (bic, model, covariance, k)
    assert best is not None
    _, chosen, covariance, k = best
    return Fitted(lambda x: -chosen.score_samples(x), {"components": k, "covariance": covariance})


DETECTORS: dict[str, Detector] = {
    "isolation_forest": isolation_forest,
    "pca": pca,
    "ppca": ppca,
    "knn": knn,
    "ocsvm": ocsvm,
    "gmm": gmm,
}


def fit_all(train: np.ndarray, seed: int) -> dict[str, Fitted]:
    """Every detector fitted on the same normal rows, in DETECTORS order."""
    return {name: fit(train, seed) for name, fit in DETECTORS.items()}
