"""Fitting one model the way every training run does: the kind picked by validation ELBO where asked."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import numpy as np

from vaeserve.training.models import VAE, VAEConfig, build_model
from vaeserve.training.train import History, TrainConfig, fit, seed_everything

__all__ = ["conv_fits", "epochs_choice", "fit_best", "flat"]


def fit_best(
    model_config: VAEConfig, train: np.ndarray, val: np.ndarray, train_config: TrainConfig
) -> tuple[VAE, History, VAEConfig, str]:
    """Fits the model; with kind "auto", an MLP and a convolutional model (where the image's sides allow one)
    and keeps the one with the better validation ELBO: normal held-out data only, the same likelihood, so
    the two are compared in the same units. Returns the model, its history, its config and the choice."""
    auto = model_config.kind == "auto"
    kinds: list[Literal["mlp", "conv", "auto"]] = ["mlp", "conv"] if auto else [model_config.kind]
    if auto and not conv_fits(model_config):
        kinds = ["mlp"]
    fitted = []
    for kind in kinds:
        candidate = replace(model_config, kind=kind)
        seed_everything(train_config.seed)
        model = build_model(candidate)
        history = fit(model, train, val, train_config)
        fitted.append((history.val_elbo[history.best_epoch - 1], kind, model, history, candidate))
    _, kind, model, history, chosen = max(fitted, key=lambda f: f[0])
    if not auto:
        return model, history, chosen, ""
    if len(fitted) == 1:
        return model, history, chosen, "mlp: the input is not an image a conv model takes"
    scores = ", ".join(f"{k} {e:.3f}" for e, k, *_ in fitted)
    return model, history, chosen, f"{kind}: the better validation ELBO per input ({scores} nats)"


def conv_fits(config: VAEConfig) -> bool:
    shape, layers = config.input_shape, len(config.channels)
    return len(shape) == 3 and shape[1] % 2**layers == 0 and shape[2] % 2**layers == 0


def flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), int(math.prod(x.shape[1:])))


def epochs_choice(t: TrainConfig, history: History, rows: int) -> str:
    """Why a small training set trained for more epochs than the preset's (train.epoch_scale)."""
    s = history.epoch_scale
    return (
        f"at most {t.epochs * s}, warm-up {t.warmup_epochs * s}, patience {t.patience * s}: {t.epochs} / "
        f"{t.warmup_epochs} / {t.patience} x {s}, as {rows} training rows make "
        f"{math.ceil(rows / t.batch_size)} batches of {t.batch_size} per epoch, fewer than {t.min_batches} "
        "(set --epochs, --warmup or --patience to take the counts as given)"
    )
