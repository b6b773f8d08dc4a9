"""Classical density models measured beside the VAE on the same standardised data."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from vaeserve.server.engine.bundle import Bundle
from vaeserve.server.engine.results import ScoreOptions
from vaeserve.training.data import Splits
from vaeserve.training.pipeline import cpu_engine

__all__ = ["compare"]


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def compare(bundle: Bundle, splits: Splits, *, k: int = 5000, seed: int = 0) -> list[tuple[str, float, float, str]]:
    """Test log p(x) (nats per input, model space) of the VAE, probabilistic PCA and a Gaussian mixture.

    PPCA gets the VAE's latent size; the mixture's size and covariance type are chosen on the
    validation split. All three see the data after the bundle's own preprocessing.
    """
    engine = cpu_engine(bundle)
    train, val, test = (engine.prepare(s).astype(np.float64) for s in (splits.train, splits.val, splits.test))
    seeds = np.uint64(seed) + np.arange(len(test), dtype=np.uint64)
    vae = engine.score(test.astype(np.float32), ScoreOptions(k=k), seeds)
    latent = bundle.manifest.latent_dim
    ppca = PCA(n_components=min(latent, train.shape[1]), random_state=seed).fit(train)
    best: tuple[float, GaussianMixture] | None = None
    for kind in ("full", "diag"):
        for n in (1, 2, 3, 4, 6, 8):
            gmm = GaussianMixture(n, covariance_type=kind, reg_covar=1e-4, random_state=seed).fit(train)
            score = float(gmm.score(val))
            if best is None or score > best[0]:
                best = (score, gmm)
    assert best is not None
    gmm = best[1]
    return [
        ("VAE, IWAE", *_mean_se(vae["log_px"]), f"K={k}, latent {latent}"),
        ("probabilistic PCA", *_mean_se(ppca.score_samples(test)), f"{ppca.n_components_} components"),
        (
            "Gaussian mixture",
            *_mean_se(gmm.score_samples(test)),
            f"{gmm.n_components} x {gmm.covariance_type} (best on val)",
        ),
    ]
