"""Drawing from a model: latent codes from q(z|x), importance-resampled toward p(z|x) when asked, and data
from p(x|z). The engine encodes, decodes and weighs the draws (scoring's work); this module turns them into
samples. Every draw is a function of the seed and the draw's index, never of an input's place in the batch.
"""

from __future__ import annotations

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.server.engine.noise import stream

__all__ = ["draw_x", "importance_resample", "posterior_draws"]


def posterior_draws(mean: np.ndarray, logvar: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """z = mean + std * eps for every input and every draw eps [n, L]: float32 [B, n, L]."""
    std = np.exp(0.5 * logvar)
    return (mean[:, None, :] + std[:, None, :] * eps[None]).astype(np.float32)


def importance_resample(
    mean: np.ndarray, logvar: np.ndarray, eps: np.ndarray, log_w: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """n draws per input resampled from the proposals mean + std * eps [P, L] in proportion to their
    importance weights (log_w [B, P]), and the proposals' ESS per input.

    The i-th resampled draw of every input uses the same uniform, so results do not depend on batch position.
    """
    std = np.exp(0.5 * logvar)
    proposals = len(eps)
    weights = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    cdf = np.cumsum(weights, axis=1)
    uniforms = stream(seed ^ 0x5EED).random(n)
    picks = np.stack([np.minimum(np.searchsorted(c, uniforms * c[-1], side="right"), proposals - 1) for c in cdf])
    samples = mean[:, None, :] + std[:, None, :] * eps[picks]
    ess = weights.sum(axis=1) ** 2 / (weights * weights).sum(axis=1)
    return samples.astype(np.float32), ess


def draw_x(manifest: Manifest, params: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """x ~ p(x|z) for each row of the decoder's parameters; row i uses row i of the seed's noise."""
    rng = stream(seed ^ 0xD1CE)
    if manifest.likelihood == "bernoulli":
        probs = params["probs"]
        return (rng.random(probs.shape, dtype=np.float32) < probs).astype(np.float32)
    if manifest.likelihood == "logistic":  # a logistic draw, on the nearest level in [0, 1]
        mean, scale, width = params["mean"], np.exp(params["log_scale"]), manifest.level_width
        u = rng.random(mean.shape, dtype=np.float32).clip(1e-6, 1 - 1e-6)
        draw = mean + scale * (np.log(u) - np.log1p(-u))
        return (np.clip(np.round(draw / width) * width, 0.0, 1.0)).astype(np.float32)
    mean, logvar = params["mean"], params["logvar"]
    return (mean + np.exp(0.5 * logvar) * rng.standard_normal(mean.shape, dtype=np.float32)).astype(np.float32)
