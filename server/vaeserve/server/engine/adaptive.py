"""Adaptive K: more draws only for the inputs whose estimate is not yet as precise as asked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from vaeserve.server.engine.results import ScoreOptions, ScoreResult

__all__ = ["ScoreFixed", "score_adaptive"]

# An engine's fixed-K scoring: (x, options, one seed per input, check) -> result.
ScoreFixed = Callable[[np.ndarray, ScoreOptions, np.ndarray, Callable[[], None]], ScoreResult]


def score_adaptive(
    score_fixed: ScoreFixed,
    x: np.ndarray,
    options: ScoreOptions,
    seeds: np.ndarray,
    check: Callable[[], None],
) -> ScoreResult:
    """Doubles K for the inputs whose log_px_se is above target_se, up to max_k.

    Each round scores the inputs still open from scratch with the first K draws of their seeds,
    so an input's numbers are exactly those of a plain request at its k_used (and never depend
    on the other inputs); the cost is at most twice that of the last round.
    """
    assert options.target_se is not None
    cap = max(options.max_k or options.k, options.k)
    k, open_rows = options.k, np.arange(len(x))
    k_used = np.zeros(len(x), np.int64)
    result: ScoreResult | None = None
    while True:
        part = score_fixed(x[open_rows], replace(options, k=k, target_se=None), seeds[open_rows], check)
        result = part.expanded(len(x), open_rows) if result is None else result.put(open_rows, part)
        k_used[open_rows] = k
        done = (part["log_px_se"] <= options.target_se) | (k >= cap)
        open_rows = open_rows[~done]
        if not len(open_rows):
            break
        k = min(2 * k, cap)
    result.columns["k_used"] = k_used
    return result
