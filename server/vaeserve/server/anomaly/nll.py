"""`nll`: -log p(x), the IWAE estimate with the calibration's K; the plain likelihood score."""

from __future__ import annotations

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.server.anomaly.passes import SharedPasses
from vaeserve.server.engine import Engine

__all__ = ["Nll"]


class Nll:
    name = "nll"
    needs_sq_err = False

    def unavailable(self, manifest: Manifest, background: Engine | None) -> str | None:
        return None

    def compute(self, passes: SharedPasses) -> np.ndarray:
        return passes.nll()
