"""The standard normal draws behind every seeded result.

For seed s, draw k (k = 0, 1, ...) is row k of
``numpy.random.default_rng(s).standard_normal((K, L), dtype=numpy.float32)``: a user can
reproduce the noise of any result in three lines of numpy. Draws come out in order, so
a result is the same however K is cut into chunks, and the first K draws are shared by
every K' > K. All inputs scored with one seed share the same draws (common random
numbers), which makes differences between their scores less noisy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

__all__ = ["NoiseCache", "NoiseSource", "stream"]


def stream(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


class NoiseCache:
    """A bounded, thread-safe cache of whole draws, keyed by (latent size, seed, n).

    Serving uses a few seeds over and over (the default seed above all), so drawing once and
    keeping the array saves the normal generation on every request. One cache can serve every
    model of a process, so its budget is the process's, however many models are loaded.
    """

    def __init__(self, budget_bytes: int = 64 << 20) -> None:
        self.budget_bytes = budget_bytes
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return self._used

    def draws(self, latent_dim: int, seed: int, n: int) -> np.ndarray:
        key = (latent_dim, seed, n)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        draws = stream(seed).standard_normal((n, latent_dim), dtype=np.float32)
        draws.setflags(write=False)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = draws
                self._used += draws.nbytes
            while self._used > self.budget_bytes and self._cache:
                _, old = self._cache.popitem(last=False)
                self._used -= old.nbytes
        return draws


class NoiseSource:
    """Standard normal draws [n, latent_dim] per seed; draws small enough are kept in a (shared) cache."""

    def __init__(self, latent_dim: int, cache: NoiseCache | None = None) -> None:
        self.latent_dim = latent_dim
        self.cache = cache if cache is not None else NoiseCache()

    def chunks(self, seed: int, n: int, size: int) -> Iterator[np.ndarray]:
        """The first n draws of seed's stream, in pieces of `size` rows (the last may be shorter)."""
        nbytes = n * self.latent_dim * 4
        if nbytes <= self.cache.budget_bytes // 4:
            draws = self.cache.draws(self.latent_dim, seed, n)
            for start in range(0, n, size):
                yield draws[start : start + size]
            return
        rng = stream(seed)
        for start in range(0, n, size):
            yield rng.standard_normal((min(size, n - start), self.latent_dim), dtype=np.float32)

    def draws(self, seed: int, n: int) -> np.ndarray:
        return (
            np.concatenate(list(self.chunks(seed, n, max(n, 1)))) if n else np.zeros((0, self.latent_dim), np.float32)
        )
