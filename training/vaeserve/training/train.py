"""The training loop: Adam, KL warm-up, ELBO or IWAE objective, early stopping on validation ELBO."""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from vaeserve.training.models import VAE
from vaeserve.training.objectives import elbo, iwae_bound, kl_weight

__all__ = ["History", "TrainConfig", "epoch_scale", "fit", "resolve_device", "seed_everything"]


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    objective: Literal["elbo", "iwae"] = "elbo"
    k: int = 1  # samples per input for the IWAE objective
    warmup_epochs: int = 10  # KL weight rises linearly to 1 over these epochs
    patience: int = 20  # epochs without a better validation ELBO before stopping (after warm-up)
    # An epoch of fewer batches counts as a fraction of one (epoch_scale); 0 takes the counts above literally.
    min_batches: int = 0
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_elbo: list[float] = field(default_factory=list)
    best_epoch: int = 0
    epochs: int = 0
    epoch_scale: int = 1  # passes over the training rows per configured epoch
    duration_s: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device (or this torch build has no CUDA)")
    return device


@torch.no_grad()
def validation_elbo(model: VAE, x: torch.Tensor, seed: int, batch_size: int = 1024) -> float:
    """Mean single-draw ELBO over x, with noise fixed by the seed so epochs compare fairly."""
    model.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # training's own random state, on every device, is left alone
        torch.manual_seed(seed)
        total = 0.0
        for start in range(0, len(x), batch_size):
            total += float(elbo(model, x[start : start + batch_size])[0].sum())
    model.train()
    return total / len(x)


def epoch_scale(n_rows: int, batch_size: int, min_batches: int) -> int:
    """Passes over the training rows that make one epoch of `fit`.

    Epoch counts tuned on a full data set mean few updates on a subset of it: one class of digits (88 rows)
    is 2 batches of 64, so a 20-epoch warm-up and a 40-epoch patience are 40 and 80 updates, and training
    stopped undertrained (validation ELBO still rising). Multiplying epochs, warm-up and patience by
    ceil(min_batches / batches) gives a small training set at least `min_batches` updates per epoch.
    """
    if min_batches <= 0:
        return 1
    batches = max(1, math.ceil(n_rows / batch_size))
    return max(1, math.ceil(min_batches / batches))


def fit(model: VAE, train: np.ndarray, val: np.ndarray, config: TrainConfig) -> History:
    """Trains in place and leaves the model at its best validation ELBO. Inputs are model-space arrays."""
    seed_everything(config.seed)
    device = torch.device(config.device)
    model.to(device)
    x_train = torch.as_tensor(train, dtype=torch.float32, device=device)
    x_val = torch.as_tensor(val, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    shuffle = torch.Generator().manual_seed(config.seed)
    history, best, best_state = History(), -math.inf, copy.deepcopy(model.state_dict())
    started = time.perf_counter()
    scale = history.epoch_scale = epoch_scale(len(x_train), config.batch_size, config.min_batches)
    epochs, warmup, patience = config.epochs * scale, config.warmup_epochs * scale, config.patience * scale
    # disable=None: a bar only on a terminal (logs and pipes get the summary alone)
    bar = tqdm(range(epochs), desc="training", unit="epoch", disable=None if config.progress else True, leave=False)
    for epoch in bar:
        beta = kl_weight(epoch, warmup)
        order = torch.randperm(len(x_train), generator=shuffle).to(device)
        losses = []
        for start in range(0, len(order), config.batch_size):
            batch = x_train[order[start : start + config.batch_size]]
            if config.objective == "iwae" and beta >= 1.0:
                objective = iwae_bound(model, batch, config.k)
            else:
                objective = elbo(model, batch, beta)[0]
            loss = -objective.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            losses.append(float(loss.detach()))
        val_elbo = validation_elbo(model, x_val, config.seed + 1)
        history.train_loss.append(float(np.mean(losses)))
        history.val_elbo.append(val_elbo)
        history.epochs = epoch + 1
        if not math.isfinite(val_elbo):
            raise FloatingPointError(f"validation ELBO became {val_elbo} at epoch {epoch + 1}; lower --lr")
        if beta >= 1.0 and val_elbo > best:
            best, history.best_epoch = val_elbo, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{history.train_loss[-1]:.2f}", val_elbo=f"{val_elbo:.2f}", best=history.best_epoch)
        if beta >= 1.0 and epoch + 1 - history.best_epoch >= patience:
            break
    if history.best_epoch == 0:  # stopped before warm-up ended: keep the last state
        history.best_epoch, best_state = history.epochs, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    history.duration_s = time.perf_counter() - started
    return history
