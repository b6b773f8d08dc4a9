"""`likelihood_ratio`: log p_bg(x) - log p(x) against a background model (Ren et al. 2019).

The background model is trained on normal data with a fraction of its features replaced by noise,
so it learns the data's low-level statistics (smooth backgrounds, constant pixels) but not their
semantics. Subtracting its log-likelihood cancels what makes simple inputs likely under both,
which is what fools a plain likelihood on simpler out-of-distribution data.
"""

from __future__ import annotations

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.server.anomaly.passes import SharedPasses
from vaeserve.server.engine import Engine

__all__ = ["LikelihoodRatio"]


class LikelihoodRatio:
    name = "likelihood_ratio"
    needs_sq_err = False

    def unavailable(self, manifest: Manifest, background: Engine | None) -> str | None:
        if background is None:
            return "the bundle has no background model (train it with vaeserve-train train --background)"
        return None

    def compute(self, passes: SharedPasses) -> np.ndarray:
        return passes.nll() - passes.background_nll()
