"""The training objectives on a tractable model: a linear-Gaussian VAE with a closed-form log p(x)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.bundles import Encoder, LinearGaussian
from vaeserve.training.models import VAE, VAEConfig
from vaeserve.training.objectives import elbo, iwae_bound, kl_weight
from vaeserve.training.train import epoch_scale


class LinearVAE(VAE):
    """The closed-form model of tests.bundles, in torch, with a chosen encoder."""

    def __init__(self, model: LinearGaussian, encoder: Encoder) -> None:
        super().__init__()
        self.config = VAEConfig(input_shape=(model.W.shape[0],), likelihood="gaussian", latent_dim=model.W.shape[1])
        self.model, self.q = model, encoder

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = self.q.params(self.model, x.double().numpy())
        return torch.from_numpy(mean), torch.from_numpy(np.log(var).copy())

    def decode(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        mean = z @ torch.from_numpy(self.model.W.T) + torch.from_numpy(self.model.b)
        return {"mean": mean, "logvar": torch.full_like(mean, float(np.log(self.model.s2)))}


@pytest.fixture
def x(lg: LinearGaussian) -> torch.Tensor:
    return torch.from_numpy(lg.sample(6, seed=4))


def test_exact_posterior_iwae_is_log_px_for_every_k(lg: LinearGaussian, x: torch.Tensor) -> None:
    vae = LinearVAE(lg, Encoder())
    truth = lg.log_px(x.numpy())
    for k in (1, 7, 100):
        np.testing.assert_allclose(iwae_bound(vae, x, k).numpy(), truth, atol=1e-8)


def test_exact_posterior_elbo_equals_log_px_in_expectation(lg: LinearGaussian, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    vae = LinearVAE(lg, Encoder())
    draws = torch.stack([elbo(vae, x)[0] for _ in range(4000)])
    se = draws.std(0) / np.sqrt(len(draws))
    assert torch.all((draws.mean(0) - torch.from_numpy(lg.log_px(x.numpy()))).abs() < 4 * se)


def test_worse_q_iwae_rises_with_k_toward_log_px(lg: LinearGaussian, x: torch.Tensor) -> None:
    torch.manual_seed(1)
    vae = LinearVAE(lg, Encoder(shrink=0.7, var_scale=2.0))
    truth = torch.from_numpy(lg.log_px(x.numpy()))
    gaps = [
        float((truth - torch.stack([iwae_bound(vae, x, k) for _ in range(200)]).mean(0)).mean())
        for k in (1, 10, 100, 1000)
    ]
    assert all(a > b for a, b in itertools.pairwise(gaps)), gaps
    assert gaps[0] > 0.3 and 0 <= gaps[-1] < 0.05, gaps


def test_kl_warm_up() -> None:
    assert [kl_weight(e, 4) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0


def test_discretized_logistic_likelihood_against_scipy() -> None:
    """The training loss's discretized logistic (16 levels here) equals scipy's CDF differences."""
    from scipy.stats import logistic

    from vaeserve.training.objectives import log_likelihood

    rng = np.random.default_rng(0)
    levels = 16
    x = rng.integers(0, levels + 1, (5, 9)) / levels
    x[0, :3], x[1, :3] = 0.0, 1.0
    mean, log_scale = rng.uniform(-0.2, 1.2, (5, 9)), rng.uniform(-4, 0, (5, 9))
    got = log_likelihood(
        torch.from_numpy(x), {"mean": torch.from_numpy(mean), "log_scale": torch.from_numpy(log_scale)}, 1 / levels
    )
    w, s = 1 / levels, np.exp(log_scale)
    lo, hi = np.where(x <= w / 2, -np.inf, x - w / 2), np.where(x >= 1 - w / 2, np.inf, x + w / 2)
    want = np.log(logistic.cdf(hi, mean, s) - logistic.cdf(lo, mean, s)).sum(axis=1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-8)  # scipy subtracts CDFs: a few digits lost


def test_epoch_scale_gives_a_small_training_set_enough_updates() -> None:
    assert epoch_scale(88, 64, 8) == 4  # 2 batches per pass
    assert epoch_scale(250, 100, 8) == 3  # 3 batches
    assert epoch_scale(1257, 64, 8) == 1  # 20 batches: the full data sets are left alone
    assert epoch_scale(5, 64, 8) == 8
    assert epoch_scale(88, 64, 0) == 1  # off: counts taken literally
