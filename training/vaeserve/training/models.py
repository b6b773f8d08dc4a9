"""VAE models: an MLP VAE for any input and a convolutional VAE for images.

Both expose ``encode(x) -> (mu, logvar)``, ``reparameterize``, ``decode(z) -> params`` and
``forward``; ``decode`` returns the parameters of p(x|z) shaped like the input:
``{"logits"}`` for a Bernoulli likelihood, ``{"mean", "logvar"}`` for a Gaussian one.
The config travels with the checkpoint and the bundle, so a model can be rebuilt from it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLPVAE", "VAE", "ConvVAE", "VAEConfig", "build_model"]

# The Gaussian decoder's log-variance is bounded below softly: on standardised tables an
# unbounded variance can collapse onto single training points and the likelihood explodes.
MIN_LOGVAR = -7.0
MIN_LOG_SCALE = -8.0  # the discretized logistic's scale, softly bounded the same way (far below 1/255)

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


@dataclass
class VAEConfig:
    input_shape: tuple[int, ...]
    likelihood: Literal["bernoulli", "gaussian", "logistic"] = "bernoulli"
    kind: Literal["mlp", "conv", "auto"] = "mlp"  # auto: training keeps the better of the two on validation data
    latent_dim: int = 8
    hidden: tuple[int, ...] = (256, 128)  # MLP layer widths, input side first
    activation: str = "tanh"  # tanh: the IWAE paper's choice, smooth for the Gaussian decoder
    channels: tuple[int, ...] = field(default_factory=lambda: (32, 64))  # conv: one stride-2 layer each
    level_width: float = 1 / 255  # logistic: one raw level in model space (the bins of the likelihood)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class VAE(nn.Module):
    config: VAEConfig

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        eps = torch.randn_like(mu) if eps is None else eps
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    def _params(self, out: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
        shape = (n, *self.config.input_shape)
        if self.config.likelihood == "bernoulli":
            return {"logits": out.reshape(shape)}
        mean, raw = out.chunk(2, dim=1)
        if self.config.likelihood == "logistic":
            return {
                "mean": mean.reshape(shape),
                "log_scale": (MIN_LOG_SCALE + F.softplus(raw - MIN_LOG_SCALE)).reshape(shape),
            }
        return {"mean": mean.reshape(shape), "logvar": (MIN_LOGVAR + F.softplus(raw - MIN_LOGVAR)).reshape(shape)}

    @property
    def out_features(self) -> int:
        dim = math.prod(self.config.input_shape)
        return dim if self.config.likelihood == "bernoulli" else 2 * dim


def _mlp(sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), _ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class MLPVAE(VAE):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        dim, hidden = math.prod(config.input_shape), list(config.hidden)
        self.encoder = _mlp([dim, *hidden], config.activation)
        self.to_latent = nn.Linear(hidden[-1] if hidden else dim, 2 * config.latent_dim)
        self.decoder = _mlp([config.latent_dim, *hidden[::-1]], config.activation)
        self.to_output = nn.Linear(hidden[0] if hidden else config.latent_dim, self.out_features)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_latent(self.encoder(x.flatten(1))).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._params(self.to_output(self.decoder(z)), z.shape[0])


class ConvVAE(VAE):
    """Stride-2 convolutions down to (H/2^n, W/2^n), a linear map to the latent, and back."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        if len(config.input_shape) != 3:
            raise ValueError(f"a conv VAE needs image inputs (C, H, W), got shape {config.input_shape}")
        c, h, w = config.input_shape
        n = len(config.channels)
        if h % 2**n or w % 2**n:
            raise ValueError(f"a conv VAE with {n} stride-2 layers needs H and W divisible by {2**n}, got {h}x{w}")
        act = _ACTIVATIONS[config.activation]
        chans = [c, *config.channels]
        self.encoder = nn.Sequential(
            *[m for a, b in itertools.pairwise(chans) for m in (nn.Conv2d(a, b, 4, stride=2, padding=1), act())]
        )
        self.grid = (chans[-1], h // 2**n, w // 2**n)
        flat = math.prod(self.grid)
        self.to_latent = nn.Linear(flat, 2 * config.latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(config.latent_dim, flat), act())
        back = chans[::-1]
        out_c = c if config.likelihood == "bernoulli" else 2 * c
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(back)):
            last = i == len(back) - 2
            layers += [nn.ConvTranspose2d(a, out_c if last else b, 4, stride=2, padding=1)]
            if not last:
                layers += [act()]
        self.decoder = nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_latent(self.encoder(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.decoder(self.from_latent(z).reshape(-1, *self.grid))
        if self.config.likelihood != "bernoulli":
            mean, raw = out.chunk(2, dim=1)
            out = torch.cat([mean.flatten(1), raw.flatten(1)], dim=1)
        return self._params(out.flatten(1), z.shape[0])


def build_model(config: VAEConfig) -> VAE:
    return MLPVAE(config) if config.kind == "mlp" else ConvVAE(config)
