"""The same IWAE computation outside the server: the engine in-process, and PyTorch eager as a user writes it."""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
from torch.nn import functional as F

from vaeserve.server.engine.bundle import Bundle
from vaeserve.training.models import VAE, VAEConfig, build_model


def torch_model(bundle: Bundle) -> VAE:
    """The bundle's MLP rebuilt in torch from its training summary, with the ONNX weights loaded."""
    assert bundle.manifest.training is not None, "the torch reference needs the training summary's architecture"
    arch = dict(bundle.manifest.training.architecture)
    arch["input_shape"] = tuple(arch["input_shape"])
    arch["hidden"] = tuple(arch["hidden"])
    arch["channels"] = tuple(arch["channels"])
    model = build_model(VAEConfig(**arch))
    state = {
        t.name.removeprefix("vae."): torch.from_numpy(onnx.numpy_helper.to_array(t).copy())
        for graph in (bundle.encoder.graph, bundle.decoder.graph)
        for t in graph.initializer
        if t.name.startswith("vae.")
    }
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def torch_iwae(model: VAE, x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """log (1/K) sum_k p(x, z_k) / q(z_k|x) per input, all K draws at once (how one writes it by hand).

    The draws are the server's for this seed (vaeserve.server.engine.noise), so the numbers can be compared.
    """
    eps = torch.from_numpy(np.random.default_rng(seed).standard_normal((k, model.config.latent_dim), dtype=np.float32))
    out = []
    for row in torch.from_numpy(x.reshape(len(x), *model.config.input_shape).astype(np.float32)):
        mu, logvar = model.encode(row[None])
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = model.decode(z)["logits"].flatten(1)
        target = row.flatten()
        log_lik = (target * logits - F.softplus(logits)).sum(1)
        log_pz = -0.5 * (z * z).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
        log_q = -0.5 * (eps * eps + logvar).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
        out.append(float(torch.logsumexp(log_lik + log_pz - log_q, 0) - math.log(k)))
    return np.array(out)
