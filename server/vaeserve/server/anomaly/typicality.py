"""A batch typicality test (Nalisnick et al. 2019, "Detecting out-of-distribution inputs to deep
generative models using typicality"): is the batch's mean nll as close to the normal data's mean
as a batch of that size drawn from normal data would be?

The null distribution of |mean - expected| comes from bootstrap batches of the same size drawn
from the calibration's nll scores, with a fixed seed, so the answer depends only on the batch.
A batch of normal data is atypical with probability at most about alpha; a batch of inputs much
simpler (likelier) or harder than the normal data is atypical although each input may look normal.
"""

from __future__ import annotations

import numpy as np

from vaeserve.server.anomaly.results import TypicalityResult

__all__ = ["BOOTSTRAPS", "typicality"]

BOOTSTRAPS = 1000
_SEED = 0x7E57
_BLOCK_DRAWS = 1 << 20  # bootstrap draws per block: bounded memory for large batches


def typicality(
    nll: np.ndarray, calibration: np.ndarray, alpha: float, bootstraps: int = BOOTSTRAPS
) -> TypicalityResult:
    size = len(nll)
    expected = float(calibration.mean())
    statistic = abs(float(nll.mean()) - expected)
    rng = np.random.default_rng(_SEED + size)
    per_block = max(1, _BLOCK_DRAWS // size)
    null = np.concatenate(
        [
            np.abs(
                calibration[rng.integers(0, len(calibration), size=(min(per_block, bootstraps - i), size))].mean(1)
                - expected
            )
            for i in range(0, bootstraps, per_block)
        ]
    )
    p_value = (1.0 + float((null >= statistic).sum())) / (bootstraps + 1.0)
    return TypicalityResult(
        batch_size=size,
        mean_score=float(nll.mean()),
        expected=expected,
        threshold=float(np.quantile(null, 1.0 - alpha)),
        p_value=p_value,
        is_atypical=p_value <= alpha,
        alpha=alpha,
        bootstraps=bootstraps,
    )
