"""Raw client inputs to checked model-space arrays: shape, finiteness, the bundle's preprocessing, data range."""

from __future__ import annotations

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.server.errors import InvalidArgument

__all__ = ["InputChecker", "require_finite"]

# Values a float32 graph squares without overflow; far beyond any preprocessed data.
_GAUSSIAN_LIMIT = 1e6
_BERNOULLI_SLACK = 1e-5  # float rounding of raw * scale, e.g. 255 * (1 / 255)
_NAMES = {"bernoulli": "Bernoulli", "logistic": "discretized logistic"}


class InputChecker:
    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        shape = tuple(manifest.input_shape)
        # The manifest's shape, without a leading channel of 1, and flat.
        self.shapes = (
            [shape]
            + ([shape[1:]] if len(shape) == 3 and shape[0] == 1 else [])
            + ([(manifest.dim,)] if len(shape) > 1 else [])
        )
        self._dim = manifest.dim
        self._preprocessing = manifest.preprocessing
        self._bernoulli = manifest.bounded

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        """Raw client inputs [B, *input_shape] or [B, D] -> checked model-space float32 [B, D]."""
        if raw.ndim < 1 or raw.shape[1:] not in self.shapes:
            wanted = " or ".join("(" + ", ".join(["B", *map(str, s)]) + ")" for s in self.shapes)
            raise InvalidArgument(f"x has shape {tuple(raw.shape)}; this model takes {wanted}")
        if raw.shape[0] == 0:
            raise InvalidArgument("x is an empty batch; send at least one input")
        flat = raw.reshape(raw.shape[0], self._dim)
        x = self._preprocessing.apply(flat)
        # The common case costs two reductions: NaN fails every comparison, so it takes the slow path too.
        if self._bernoulli:
            if not (float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
                self._check_bernoulli(raw, flat, x)
        elif not float(np.abs(x).max()) <= _GAUSSIAN_LIMIT:
            self._check_gaussian(raw, flat, x)
        return x

    @staticmethod
    def _check_finite(raw: np.ndarray, flat: np.ndarray, x: np.ndarray) -> None:
        if not np.isfinite(x).all():  # NaN and infinity survive the affine map (or overflow float32)
            raw_bad = raw.dtype.kind == "f" and not np.isfinite(flat).all()
            require_finite(flat if raw_bad else x, "x" if raw_bad else "x after preprocessing")

    def _check_bernoulli(self, raw: np.ndarray, flat: np.ndarray, x: np.ndarray) -> None:
        """Raises for values outside [0, 1]; clips (in place) those just outside by float rounding."""
        self._check_finite(raw, flat, x)
        if float(x.min()) < -_BERNOULLI_SLACK or float(x.max()) > 1 + _BERNOULLI_SLACK:
            bad = (x < -_BERNOULLI_SLACK) | (x > 1 + _BERNOULLI_SLACK)
            row, col = (int(i) for i in np.unravel_index(int(np.argmax(bad)), x.shape))
            raise InvalidArgument(
                f"x[{row}] feature {col} is {flat[row, col]:g} in raw units, {x[row, col]:.6g} after "
                f"preprocessing; this {_NAMES[self.manifest.likelihood]} model takes values in [0, 1] after "
                f"preprocessing (raw range {self._raw_range(col)})"
            )
        np.clip(x, 0.0, 1.0, out=x)

    def _check_gaussian(self, raw: np.ndarray, flat: np.ndarray, x: np.ndarray) -> None:
        self._check_finite(raw, flat, x)
        row = int(np.argmax(np.abs(x).max(axis=1)))
        raise InvalidArgument(
            f"x[{row}] has a value of magnitude above {_GAUSSIAN_LIMIT:g} after preprocessing; "
            "far outside anything this model can score"
        )

    def _raw_range(self, feature: int) -> str:
        ends = self.manifest.preprocessing.invert(np.array([[0.0], [1.0]]))
        col = 0 if ends.shape[1] == 1 else feature
        low, high = sorted((float(ends[0, col]), float(ends[1, col])))
        return f"{low:g} to {high:g}"


def require_finite(values: np.ndarray, what: str) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        bad = np.argwhere(~finite)
        row = int(bad[0, 0])
        raise InvalidArgument(f"{what} holds {len(bad)} NaN or infinite value(s), first in row {row}")
