"""The training defaults of each built-in data set (and of a user's file of the same shape); flags win."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = ["MIN_BATCHES", "PRESETS", "Preset", "preset_for"]


@dataclass(frozen=True)
class Preset:
    """Training defaults for a data set; flags override them."""

    model: Literal["mlp", "conv", "auto"] = "mlp"
    hidden: tuple[int, ...] = (256, 128)
    latent: int = 16
    epochs: int = 200
    batch_size: int = 128
    warmup: int = 10
    patience: int = 20


# 28x28 images (mnist5k's shape) train the convolutional model: `--model auto` chose it by validation ELBO per
# input on one-class mnist5k, and its anomaly scores rank best (docs/benchmarks/anomaly-mnist5k.md). The MLP
# 784-200-200-50 (`--model mlp`) is the bundled mnist5k model that the performance benchmarks compare with
# PyTorch. breast-cancer's latent size 12 had the best validation ELBO of 4, 8, 12 and 16.
PRESETS = {
    "digits": Preset(hidden=(256, 128), latent=8, epochs=300, batch_size=64, warmup=20, patience=40),
    "mnist5k": Preset(model="conv", hidden=(200, 200), latent=50, epochs=400, batch_size=100, warmup=30, patience=40),
    "breast-cancer": Preset(hidden=(64,), latent=12, epochs=1000, batch_size=32, warmup=50, patience=100),
}


# The presets' epoch counts were tuned on their full data sets, 9 (breast cancer) to 35 (mnist5k) batches per
# epoch; a smaller training set (one class, a user's short file) gets its epochs, warm-up and patience scaled to
# at least this many batches each (train.epoch_scale). Counts given as flags are taken literally.
MIN_BATCHES = 8


def preset_for(name: str | None, flags: dict[str, Any]) -> Preset:
    """The preset of a data set (the defaults for an unknown one) with the flags given (not None) over it."""
    preset = PRESETS.get(name or "", Preset())
    return replace(preset, **{key: value for key, value in flags.items() if value is not None})
