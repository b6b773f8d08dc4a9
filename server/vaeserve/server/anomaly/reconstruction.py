"""`reconstruction`: E_q ||x - E[x|z]||^2, the expected squared reconstruction error under q(z|x).

A strong baseline for images (it ignores how likely the code z is and how sharp the decoder is),
computed from the same K draws as the nll, in model space.
"""

from __future__ import annotations

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.server.anomaly.passes import SharedPasses
from vaeserve.server.engine import Engine

__all__ = ["Reconstruction"]


class Reconstruction:
    name = "reconstruction"
    needs_sq_err = True

    def unavailable(self, manifest: Manifest, background: Engine | None) -> str | None:
        return None

    def compute(self, passes: SharedPasses) -> np.ndarray:
        return passes.sq_err()
