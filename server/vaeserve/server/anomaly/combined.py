"""`combined`: the most extreme of the model's other scores, each on the scale of normal data.

No single score catches every kind of anomaly: a likelihood (and a reconstruction error) rates a blank
image as more normal than any real one, while the complexity-corrected likelihood lets noise pass
(docs: anomaly detection, the probe table). `combined` takes, for each component, (score - median) / IQR
with the median and interquartile range of normal validation rows, and keeps the largest. The standardization
is fixed before the calibration rows are scored, so `combined` is one more fixed score and its conformal
p-value keeps the guarantee exactly: one flag, at level alpha, for "any component finds this extreme".
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.server.anomaly.base import AnomalyScoreFn
from vaeserve.server.anomaly.passes import SharedPasses
from vaeserve.server.engine import Engine

__all__ = ["Combined", "component_names"]


def component_names(manifest: Manifest) -> list[str]:
    """nll and reconstruction, and complexity for image models: the served scores that need one pass."""
    return ["nll", "reconstruction"] + (["complexity"] if manifest.image is not None else [])


class Combined:
    name = "combined"
    needs_sq_err = True

    def __init__(self, components: Mapping[str, AnomalyScoreFn]) -> None:
        self.components = components

    def unavailable(self, manifest: Manifest, background: Engine | None) -> str | None:
        calibration = manifest.calibration
        if calibration is None or (calibration.standardization or calibration.standardizations) is None:
            return "the calibration has no standardization of its components (vaeserve-train calibrate adds it)"
        return None

    def compute(self, passes: SharedPasses) -> np.ndarray:
        spec = passes.standardization
        assert spec is not None
        return spec.combine({name: passes.score(name, self.components[name].compute) for name in spec.components})
