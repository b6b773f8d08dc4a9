"""The importance-sampled passes that a request's anomaly scores share over its inputs, each run at most once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vaeserve.api.manifest import Manifest, Standardization
from vaeserve.server.engine import Check, Engine, no_check

__all__ = ["SharedPasses"]


@dataclass
class SharedPasses:
    """Model-space inputs with the calibration's K and seed, so every score reads its calibration's scale.

    `reused` is (nll, sq_err) from the request's own pass when that pass had the same K and seed: the
    scores then cost nothing more. Otherwise one pass gives the nll and, when a score needs it, the
    squared reconstruction error from the same draws.
    """

    x: np.ndarray
    engine: Engine
    background: Engine | None
    k: int
    seed: int
    need_sq_err: bool = False
    check: Check = no_check
    reused: tuple[np.ndarray, np.ndarray | None] | None = None
    standardization: Standardization | None = None  # the calibration's, for `combined`
    _main: tuple[np.ndarray, np.ndarray | None] | None = field(default=None, init=False, repr=False)
    _background_nll: np.ndarray | None = field(default=None, init=False, repr=False)
    _scores: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def score(self, name: str, compute: Callable[[SharedPasses], np.ndarray]) -> np.ndarray:
        """A named score of these inputs, computed once (`combined` reads scores also asked for by name)."""
        if name not in self._scores:
            self._scores[name] = compute(self)
        return self._scores[name]

    @property
    def manifest(self) -> Manifest:
        return self.engine.manifest

    def _pass(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._main is None:
            if self.reused is not None and (self.reused[1] is not None or not self.need_sq_err):
                self._main = self.reused
            else:
                self._main = self.engine.nll(self.x, self.k, self.seed, sq_err=self.need_sq_err, check=self.check)
        return self._main

    def nll(self) -> np.ndarray:
        """-log p(x), nats."""
        return self._pass()[0]

    def sq_err(self) -> np.ndarray:
        """E_q ||x - E[x|z]||^2 over the same draws."""
        sq_err = self._pass()[1]
        assert sq_err is not None, "need_sq_err was not set"
        return sq_err

    def background_nll(self) -> np.ndarray:
        """-log p_bg(x) under the background model, same K and seed."""
        assert self.background is not None
        if self._background_nll is None:
            self._background_nll, _ = self.background.nll(self.x, self.k, self.seed, check=self.check)
        return self._background_nll
