"""PNG pictures of image data: grids of samples, and input / reconstruction / anomaly-map panels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["anomaly_panel", "grid", "save_grid", "to_pixels"]

_PAD = 2


def to_pixels(images: np.ndarray, *, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """[N, H, W] or [N, C, H, W] values in [low, high] -> uint8 [N, H, W, 3]."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, H, W) or (N, C, H, W) with 1 or 3 channels, got {images.shape}")
    scaled = np.clip((images - low) / max(high - low, 1e-12), 0.0, 1.0)
    rgb = np.repeat(scaled, 3, axis=1) if images.shape[1] == 1 else scaled
    return (rgb.transpose(0, 2, 3, 1) * 255.0 + 0.5).astype(np.uint8)


def grid(images: np.ndarray, *, columns: int = 8, scale: int = 4, low: float = 0.0, high: float = 1.0) -> Image.Image:
    pixels = to_pixels(images, low=low, high=high)
    n, h, w, _ = pixels.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    canvas = np.full((rows * (h + _PAD) + _PAD, columns * (w + _PAD) + _PAD, 3), 64, np.uint8)
    for i, tile in enumerate(pixels):
        r, c = divmod(i, columns)
        canvas[_PAD + r * (h + _PAD) : _PAD + r * (h + _PAD) + h, _PAD + c * (w + _PAD) : _PAD + c * (w + _PAD) + w] = (
            tile
        )
    picture = Image.fromarray(canvas)
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def save_grid(images: np.ndarray, path: str | Path, **options: int | float) -> Path:
    path = Path(path)
    grid(images, **options).save(path, format="PNG")  # type: ignore[arg-type]
    return path


def _heat(values: np.ndarray) -> np.ndarray:
    """Per-pixel log-likelihood [H, W] -> RGB: the least likely pixels brightest red."""
    surprise = -values
    span = max(float(surprise.max() - surprise.min()), 1e-12)
    t = (surprise - surprise.min()) / span
    return (np.stack([t, t * 0.25, 0.2 * (1 - t)], axis=-1) * 255.0).astype(np.uint8)


def anomaly_panel(
    inputs: np.ndarray,
    reconstructions: np.ndarray,
    per_dim: np.ndarray,
    captions: Sequence[str],
    path: str | Path,
    *,
    scale: int = 6,
) -> Path:
    """One row per input: the input, its reconstruction and its per-pixel anomaly map, with a caption."""
    if not (len(inputs) == len(reconstructions) == len(per_dim) == len(captions)):
        raise ValueError("inputs, reconstructions, anomaly maps and captions must have the same length")
    ins, recs = to_pixels(inputs), to_pixels(reconstructions)
    maps = per_dim.reshape(len(per_dim), *ins.shape[1:3])
    h, w = ins.shape[1:3]
    tile_h, tile_w = h * scale, w * scale
    caption_w = 300
    canvas = Image.new(
        "RGB", (3 * (tile_w + _PAD * scale) + caption_w, len(ins) * (tile_h + _PAD * scale)), (32, 32, 32)
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i in range(len(ins)):
        top = i * (tile_h + _PAD * scale)
        for j, tile in enumerate((ins[i], recs[i], _heat(maps[i]))):
            picture = Image.fromarray(tile).resize((tile_w, tile_h), Image.Resampling.NEAREST)
            canvas.paste(picture, (j * (tile_w + _PAD * scale), top))
        draw.multiline_text((3 * (tile_w + _PAD * scale) + 4, top + 4), captions[i], fill=(230, 230, 230), font=font)
    path = Path(path)
    canvas.save(path, format="PNG")
    return path
