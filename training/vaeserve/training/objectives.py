"""Training objectives in torch: the ELBO (with a KL weight for warm-up) and the IWAE bound.

These are the differentiable training losses only. Every reported figure (test ELBO, IWAE
log p(x), calibration) is computed by the server's engine on the exported bundle.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from vaeserve.training.models import VAE

__all__ = ["elbo", "iwae_bound", "kl_weight", "log_likelihood"]

LOG_2PI = math.log(2.0 * math.pi)


def log_likelihood(x: torch.Tensor, params: dict[str, torch.Tensor], level_width: float = 1 / 255) -> torch.Tensor:
    """log p(x|z) summed over dimensions; params broadcast against x on leading axes."""
    if "logits" in params:
        logits = params["logits"]
        per_dim = x * logits - F.softplus(logits)
    elif "log_scale" in params:
        per_dim = _discretized_logistic(x, params["mean"], params["log_scale"], level_width)
    else:
        mean, logvar = params["mean"], params["logvar"]
        per_dim = -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))
    return per_dim.flatten(start_dim=per_dim.dim() - x.dim() + 1).sum(-1)


def _discretized_logistic(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, width: float) -> torch.Tensor:
    """log P(x) of the discretized logistic, per dimension: the mass on [x - w/2, x + w/2], the lowest level
    open to -inf and the highest to +inf; the same arithmetic as the server's fused graph."""
    inv_s = torch.exp(-log_scale)
    a = (x - mean + width / 2) * inv_s
    eps = width * inv_s
    log_mass = torch.where(eps < 1e-3, torch.log(eps) - eps / 2, torch.log(-torch.expm1(-eps.clamp(min=1e-3))))
    not_bottom = (x > width / 2).to(x.dtype)
    not_top = (x < 1 - width / 2).to(x.dtype)
    return not_top * F.logsigmoid(a) - not_bottom * F.softplus(a - eps) + not_top * not_bottom * log_mass


def _kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.sum(mu * mu + torch.exp(logvar) - 1.0 - logvar, dim=1)


def elbo(model: VAE, x: torch.Tensor, beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per input: (objective with KL weight beta, reconstruction term, KL), one draw of z."""
    params, mu, logvar = model(x)
    recon = log_likelihood(x, params, model.config.level_width)
    kl = _kl(mu, logvar)
    return recon - beta * kl, recon, kl


def iwae_bound(model: VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """Per input: log (1/k) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x) (Burda et al., 2016)."""
    mu, logvar = model.encode(x)
    eps = torch.randn((k, *mu.shape), device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps  # [k, B, L]
    params = model.decode(z.reshape(-1, mu.shape[1]))
    params = {name: value.reshape(k, *x.shape) for name, value in params.items()}
    log_px_z = log_likelihood(x, params, model.config.level_width)  # [k, B]
    log_pz = -0.5 * (z * z + LOG_2PI).sum(-1)
    log_qz = -0.5 * (eps * eps + LOG_2PI + logvar).sum(-1)
    return torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(k)


def kl_weight(epoch: int, warmup_epochs: int) -> float:
    """Linear KL warm-up from 0 to 1 over the first epochs (Bowman et al., Sønderby et al.)."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, (epoch + 1) / warmup_epochs)
