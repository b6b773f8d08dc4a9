"""The anomaly benchmark's runs: one normal set (a case) at a time, every method fitted on the same rows.

A case's held-out normal rows are set aside by the benchmark before anything trains, so every fold count F
and every classical detector is scored on the same held-out rows and the same anomalies: the VAE is trained
by `vaeserve-train train POOL.npy --folds F` on the rest (the pool), as a user would train on their own file,
and the detectors are fitted on the same pool.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.detectors import DETECTORS
from vaeserve.server.anomaly import AnomalyResult, AnomalyScorer
from vaeserve.training.cli import main as train_main
from vaeserve.training.data import Dataset, fit_preprocessing, load_dataset
from vaeserve.training.pipeline import cpu_scorer

ALPHAS = (0.01, 0.05)
TEST_SHARE = 0.2  # of each normal set, held out before training


@dataclass(frozen=True)
class Case:
    """One normal set in raw units: the pool every method is fitted on, its held-out normal rows, the anomalies."""

    label: str  # names the pool file and the bundles in the work directory
    seed: int  # of the held-out split, the training and the detectors
    pool: np.ndarray
    test: np.ndarray
    anomalies: np.ndarray


@dataclass
class Protocol:
    """One protocol's results: per method the (normal, anomalous) scores of each case, in the same case order for
    every method (so two methods' groups pair up), and per served method and alpha the flags' counts."""

    name: str
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    flags: dict[tuple[str, float], list[int]] = field(default_factory=dict)  # [false pos, normal, true pos, anomalous]
    folds: dict[str, int] = field(default_factory=dict)  # served method -> its F; detectors are absent
    pool_sizes: list[int] = field(default_factory=list)
    calibration: dict[int, list[int]] = field(default_factory=dict)  # F -> calibration rows of each case
    timings: dict[str, float] = field(default_factory=dict)  # "F=5", "detectors" -> seconds, over all cases
    seconds: float = 0.0

    def add(self, method: str, normal: np.ndarray, anomalous: np.ndarray) -> None:
        self.groups.setdefault(method, []).append((normal, anomalous))

    def time(self, what: str, started: float) -> None:
        self.timings[what] = self.timings.get(what, 0.0) + time.perf_counter() - started

    def count(self, method: str, alpha: float, normal_flags: np.ndarray, anomalous_flags: np.ndarray) -> None:
        counts = self.flags.setdefault((method, alpha), [0, 0, 0, 0])
        for i, value in enumerate(flag_counts(normal_flags, anomalous_flags)):
            counts[i] += value


def served_label(score: str, folds: int) -> str:
    return f"{score} (F={folds})"


def flag_counts(normal_flags: np.ndarray, anomalous_flags: np.ndarray) -> tuple[int, int, int, int]:
    """(false positives, normal rows, true positives, anomalous rows) of one case's flags."""
    normal, anomalous = np.asarray(normal_flags, dtype=bool), np.asarray(anomalous_flags, dtype=bool)
    return int(normal.sum()), normal.size, int(anomalous.sum()), anomalous.size


def split_rows(n: int, seed: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) row indices: a permutation drawn with the seed, its first n_test rows held out. It depends on
    nothing but (n, seed, n_test), so every fold count and detector of a case sees the same held-out rows."""
    if not 0 < n_test < n - 1:
        raise ValueError(f"cannot hold out {n_test} of {n} rows and keep at least two to train on")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def held_out(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The standard held-out split: TEST_SHARE of the rows, at least one."""
    return split_rows(n, seed, max(1, round(TEST_SHARE * n)))


def judged(scorer: AnomalyScorer, x: np.ndarray, alphas: tuple[float, ...] = ALPHAS) -> dict[str, list[AnomalyResult]]:
    """Every served score of raw rows, judged at each alpha. Rank by `.score` (the aggregate over an ensemble's
    members), never by the raw per-member scores."""
    names = scorer.served()
    raw = scorer.raw(scorer.engine.prepare(x.reshape(len(x), -1)), names)
    return {name: [scorer.judge(raw, [name], alpha)[0] for alpha in alphas] for name in names}


def write_pool(case: Case, data: Dataset, work: Path) -> tuple[Path, Dataset]:
    """The pool as a .npy file, checked to be read back as the built-in data set it came from is (its preset,
    likelihood, layout and value range), so the VAE trains with that data set's defaults."""
    path = work / f"{case.label}-pool.npy"
    np.save(path, case.pool)
    loaded = load_dataset(str(path))
    wanted: tuple[Any, ...] = (data.preset, data.likelihood, data.input_shape, data.value_range)
    found: tuple[Any, ...] = (loaded.preset, loaded.likelihood, loaded.input_shape, loaded.value_range)
    if found != wanted:
        raise RuntimeError(f"{path} reads as (preset, likelihood, shape, range) {found}, not {wanted} like {data.name}")
    return path, loaded


def train_bundle(pool: Path, out: Path, folds: int, seed: int, args: Any) -> Path:
    """`vaeserve-train train POOL --folds F` as a user runs it; its table goes to a log. A single model (F = 1) also
    trains the background model of likelihood_ratio, which an ensemble does not serve. Flags after `--` on the
    benchmark's command line come last, so they win."""
    argv = ["train", str(pool), "--out", str(out), "--folds", str(folds), "--seed", str(seed)]
    argv += ["--background"] if folds == 1 else []
    argv += ["--eval-k", "100", "--calib-k", str(args.k), "--no-progress"]
    if args.epochs:
        argv += ["--epochs", str(args.epochs)]
    argv += args.train_args
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        if train_main(argv) != 0:
            raise RuntimeError(f"vaeserve-train {' '.join(argv)} failed")
    (out.parent / f"{out.name}.txt").write_text(log.getvalue())
    return out


def run_case(result: Protocol, case: Case, data: Dataset, folds: list[int], args: Any, work: Path) -> None:
    """Trains one VAE per fold count on the case's pool and fits every detector on it; scores the held-out normal
    rows and the anomalies with each."""
    pool_file, pool = write_pool(case, data, work)
    result.pool_sizes.append(len(case.pool))
    for f in folds:
        started = time.perf_counter()
        scorer = cpu_scorer(train_bundle(pool_file, work / f"{case.label}-F{f}", f, case.seed, args))
        normal, anomalous = judged(scorer, case.test), judged(scorer, case.anomalies)
        for name in normal:
            method = served_label(name, f)
            result.folds[method] = f
            result.add(method, normal[name][0].score, anomalous[name][0].score)
            for alpha, on_normal, on_anomalous in zip(ALPHAS, normal[name], anomalous[name]):
                result.count(method, alpha, on_normal.is_anomaly, on_anomalous.is_anomaly)
        first = next(iter(normal.values()))[0]
        result.calibration.setdefault(f, []).append(first.n_calibration)
        result.time(f"F={f}", started)
    started = time.perf_counter()
    pre = fit_preprocessing(pool, pool.x)  # the training's rule, fitted on the whole pool

    def prepared(x: np.ndarray) -> np.ndarray:
        return pre.apply(x.reshape(len(x), -1)).astype(np.float64)

    train, test, anomalies = prepared(pool.x), prepared(case.test), prepared(case.anomalies)
    for name, fit in DETECTORS.items():
        fitted = fit(train, case.seed)
        result.add(name, fitted(test), fitted(anomalies))
    result.time("detectors", started)
