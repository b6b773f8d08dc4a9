"""Detection metrics with anomalies as the positive class, their bootstrap intervals, and exact rate intervals.

AUROC and average precision depend only on how many normal and anomalous scores sit at each distinct value,
so both are written as functions of those counts ([..., U] over the U pooled distinct values, ascending).
A bootstrap resample keeps the same distinct values and only changes the counts: a thousand resamples are
one bincount and a few cumulative sums over [rounds, U], never a thousand sorts. A paired bootstrap (two
methods' scores of the same rows) applies each round's resampled rows to both methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]
_Kernel = Callable[[np.ndarray, np.ndarray], np.ndarray]

_CHUNK_VALUES = 1 << 21  # resampled scores held at once; bounds memory at a few tens of MB


def _scores(normal: np.ndarray, anomalous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(normal, dtype=np.float64), np.asarray(anomalous, dtype=np.float64)
    for name, s in (("normal", a), ("anomalous", b)):
        if s.ndim != 1 or s.size == 0 or not np.isfinite(s).all():
            raise ValueError(f"{name} scores must be a non-empty 1-D array of finite numbers, got shape {s.shape}")
    return a, b


def _codes(normal: np.ndarray, anomalous: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Each score as the index of its value among the pooled distinct values, ascending."""
    values, inverse = np.unique(np.concatenate([normal, anomalous]), return_inverse=True)
    return inverse[: len(normal)], inverse[len(normal) :], len(values)


def _counts(codes: np.ndarray, size: int) -> np.ndarray:
    """[..., n] codes -> [..., size] counts per distinct value, one bincount for all leading rows."""
    rows = codes.reshape(-1, codes.shape[-1])
    offset = np.arange(len(rows))[:, None] * size
    flat = np.bincount((rows + offset).ravel(), minlength=len(rows) * size)
    return flat.reshape(*codes.shape[:-1], size).astype(np.float64)


def _auroc_kernel(normal: np.ndarray, anomalous: np.ndarray) -> np.ndarray:
    below = np.cumsum(normal, axis=-1) - normal  # normal scores strictly below each value
    wins = (anomalous * (below + 0.5 * normal)).sum(-1)
    return wins / (normal.sum(-1) * anomalous.sum(-1))


def _ap_kernel(normal: np.ndarray, anomalous: np.ndarray) -> np.ndarray:
    """sum over thresholds, high to low, of recall gained x precision there; tied scores are one threshold."""
    true_pos = np.cumsum(anomalous[..., ::-1], axis=-1)[..., ::-1]  # anomalies at or above each value
    flagged = true_pos + np.cumsum(normal[..., ::-1], axis=-1)[..., ::-1]
    precision = np.divide(true_pos, flagged, out=np.zeros_like(flagged), where=flagged > 0)
    return (anomalous * precision).sum(-1) / anomalous.sum(-1)


def _from_kernel(kernel: _Kernel, normal: np.ndarray, anomalous: np.ndarray) -> float:
    codes_n, codes_a, size = _codes(*_scores(normal, anomalous))
    return float(kernel(_counts(codes_n, size), _counts(codes_a, size)))


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """P(anomalous score > normal score) + P(tie) / 2: the Mann-Whitney statistic over all pairs."""
    return _from_kernel(_auroc_kernel, normal, anomalous)


def auprc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Average precision with anomalies positive (sklearn's average_precision_score, ties included)."""
    return _from_kernel(_ap_kernel, normal, anomalous)


_KERNELS: dict[Metric, _Kernel] = {auroc: _auroc_kernel, auprc: _ap_kernel}


def _resamples(rng: np.random.Generator, n: int, m: int, rounds: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Row indices of `rounds` resamples with replacement of each group, in chunks that fit in memory."""
    chunk = max(1, _CHUNK_VALUES // (n + m))
    for start in range(0, rounds, chunk):
        size = min(chunk, rounds - start)
        yield rng.integers(0, n, (size, n)), rng.integers(0, m, (size, m))


def _evaluator(metric: Metric, normal: np.ndarray, anomalous: np.ndarray) -> _Kernel:
    """(idx_normal [R, n], idx_anomalous [R, m]) -> [R] values of the metric on those resamples; vectorised for
    auroc and auprc (the distinct values are found once), a loop for any other metric."""
    normal, anomalous = _scores(normal, anomalous)
    kernel = _KERNELS.get(metric)
    if kernel is None:
        return lambda idx_n, idx_a: np.array([metric(normal[i], anomalous[j]) for i, j in zip(idx_n, idx_a)])
    codes_n, codes_a, size = _codes(normal, anomalous)
    return lambda idx_n, idx_a: kernel(_counts(codes_n[idx_n], size), _counts(codes_a[idx_a], size))


def _replicates(
    metric: Metric, normal: np.ndarray, anomalous: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """[n_boot] values of the metric on resamples."""
    at = _evaluator(metric, normal, anomalous)
    return np.concatenate([at(i, j) for i, j in _resamples(rng, len(normal), len(anomalous), n_boot)])


def _percentiles(replicates: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_ci(
    metric: Metric,
    normal: np.ndarray,
    anomalous: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval, each group resampled with replacement at its own size."""
    return _percentiles(_replicates(metric, normal, anomalous, n_boot, np.random.default_rng(seed)), level)


def mean_over_groups_ci(
    metric: Metric,
    groups: list[tuple[np.ndarray, np.ndarray]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(mean, low, high) of the metric averaged over groups (one per class); round r of the bootstrap resamples
    every group and averages their r-th values, so the interval is that of the mean, not of one class."""
    if not groups:
        raise ValueError("mean_over_groups_ci needs at least one group")
    rng = np.random.default_rng(seed)
    mean = float(np.mean([metric(normal, anomalous) for normal, anomalous in groups]))
    rounds = np.mean([_replicates(metric, normal, anomalous, n_boot, rng) for normal, anomalous in groups], axis=0)
    return (mean, *_percentiles(rounds, level))


def paired_difference_ci(
    metric: Metric,
    first: list[tuple[np.ndarray, np.ndarray]],
    second: list[tuple[np.ndarray, np.ndarray]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(mean, low, high) of metric(first) - metric(second) averaged over groups, two methods' scores of the same
    rows. Paired: round r resamples each group's normal and anomalous rows once and scores both methods on those
    same rows, so what the rows share (an easy or a hard split) cancels and only the methods' difference varies."""
    if not first or len(first) != len(second):
        raise ValueError(
            f"need the same non-zero number of groups for both methods, got {len(first)} and {len(second)}"
        )
    for (n1, a1), (n2, a2) in zip(first, second):
        if len(n1) != len(n2) or len(a1) != len(a2):
            raise ValueError("paired groups must score the same rows: normal and anomalous lengths differ")
    rng = np.random.default_rng(seed)
    mean = float(np.mean([metric(*one) - metric(*two) for one, two in zip(first, second)]))
    rounds = []
    for one, two in zip(first, second):
        at_one, at_two = _evaluator(metric, *one), _evaluator(metric, *two)
        draws = _resamples(rng, len(one[0]), len(one[1]), n_boot)
        rounds.append(np.concatenate([at_one(i, j) - at_two(i, j) for i, j in draws]))
    return (mean, *_percentiles(np.mean(rounds, axis=0), level))


def _binomial_tail(log_pmf_terms: np.ndarray, p: float, n: int, keep: np.ndarray) -> float:
    j = np.arange(n + 1)
    log_pmf = log_pmf_terms + j * np.log(p) + (n - j) * np.log1p(-p)
    top = log_pmf[keep].max()
    return float(np.exp(top) * np.exp(log_pmf[keep] - top).sum())


def _bisect(f: Callable[[float], float], target: float, increasing: bool) -> float:
    low, high = 0.0, 1.0
    for _ in range(100):  # 2^-100: past double precision even for rates near 1e-9
        mid = 0.5 * (low + high)
        if (f(mid) < target) == increasing:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def rate_ci(count: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval: the rates p at which neither binomial tail of `count` of `n` is below
    (1 - level) / 2. Found by bisection on the exact binomial tails (numpy only, no scipy), which equal the
    beta quantiles scipy.stats.beta.ppf would give."""
    if n < 1 or not 0 <= count <= n:
        raise ValueError(f"need 0 <= count <= n and n >= 1, got count={count}, n={n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    alpha = (1 - level) / 2
    j = np.arange(1, n + 1)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - j + 1) - np.log(j))])
    at_least, at_most = np.arange(n + 1) >= count, np.arange(n + 1) <= count
    low = 0.0 if count == 0 else _bisect(lambda p: _binomial_tail(log_choose, p, n, at_least), alpha, True)
    high = 1.0 if count == n else _bisect(lambda p: _binomial_tail(log_choose, p, n, at_most), alpha, False)
    return low, high
