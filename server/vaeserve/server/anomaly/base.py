"""What every anomaly score module provides: a name, what it needs, and its computation from the shared passes."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vaeserve.api.manifest import Manifest
from vaeserve.server.anomaly.passes import SharedPasses
from vaeserve.server.engine import Engine

__all__ = ["AnomalyScoreFn"]


class AnomalyScoreFn(Protocol):
    """One score (declared in vaeserve.api.scores.ANOMALY_SCORES): higher means less like normal data."""

    name: str
    needs_sq_err: bool  # computed from the squared reconstruction error of the shared pass

    def unavailable(self, manifest: Manifest, background: Engine | None) -> str | None:
        """Why this model cannot compute the score, or None."""
        ...

    def compute(self, passes: SharedPasses) -> np.ndarray:
        """float64 [B] scores of the passes' inputs."""
        ...
