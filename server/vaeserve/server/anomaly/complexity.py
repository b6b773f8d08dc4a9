"""`complexity`: -log2 p(x) minus the input's length in bits under a lossless image compressor.

Likelihood models rate simple inputs (blank, smooth, low-contrast images) as likely whatever they
were trained on; a general-purpose compressor also finds them short. Subtracting the compressed
length cancels that bias (Serrà et al. 2020, "Input complexity and out-of-distribution detection
with likelihood-based generative models"). The compressor is PNG's: each row is filtered by the
predictor that leaves the smallest residuals (libpng's heuristic), then deflated (zlib, level 9).
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.server.anomaly.passes import SharedPasses
from vaeserve.server.engine import Engine

__all__ = ["Complexity", "png_bits", "to_uint8"]


class Complexity:
    name = "complexity"
    needs_sq_err = False

    def unavailable(self, manifest: Manifest, background: Engine | None) -> str | None:
        if manifest.image is None:
            return "not an image model (the manifest has no image layout)"
        return None

    def compute(self, passes: SharedPasses) -> np.ndarray:
        bits = png_bits(to_uint8(passes.x, passes.manifest))
        return passes.nll() / math.log(2.0) - bits


def to_uint8(x: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Model-space inputs [B, D] as 8-bit images [B, C, H, W]: data in [0, 1] (Bernoulli, logistic) times 255;
    other models' raw units (pixels 0-255) rounded and clipped."""
    assert manifest.image is not None
    values = x * 255.0 if manifest.bounded else manifest.preprocessing.invert(x)
    image = manifest.image
    shape = (len(x), image.channels, image.height, image.width)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8).reshape(shape)


def png_bits(images: np.ndarray) -> np.ndarray:
    """Bits of each image [B, C, H, W] uint8 after PNG filtering and deflate."""
    batch, channels, height, width = images.shape
    rows = images.transpose(0, 2, 3, 1).reshape(batch, height, width * channels).astype(np.int16)
    residuals = _filtered(rows, channels)  # [B, 5, H, W*C]
    signed = residuals.astype(np.int8).astype(np.int16)
    best = np.abs(signed).sum(axis=3).argmin(axis=1)  # [B, H]: the filter type of each row
    chosen = np.take_along_axis(residuals, best[:, None, :, None], axis=1)[:, 0]
    lines = np.concatenate([best[..., None].astype(np.uint8), chosen.astype(np.uint8)], axis=2)
    return np.array([8.0 * len(zlib.compress(line.tobytes(), 9)) for line in lines])


def _filtered(rows: np.ndarray, bpp: int) -> np.ndarray:
    """The five PNG filters' residuals (mod 256) for every row: none, sub, up, average, Paeth."""
    left = np.zeros_like(rows)
    left[:, :, bpp:] = rows[:, :, :-bpp]
    up = np.zeros_like(rows)
    up[:, 1:] = rows[:, :-1]
    up_left = np.zeros_like(rows)
    up_left[:, :, bpp:] = up[:, :, :-bpp]
    estimate = left + up - up_left
    pa, pb, pc = np.abs(estimate - left), np.abs(estimate - up), np.abs(estimate - up_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    predictions = np.stack([np.zeros_like(rows), left, up, (left + up) // 2, paeth], axis=1)
    return (rows[:, None] - predictions) % 256  # type: ignore[no-any-return]
