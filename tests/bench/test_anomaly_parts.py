"""The anomaly benchmark's parts without training: held-out splits made once for every fold count, flag counts,
the paired bootstrap of an AUROC difference, and the pooled false-positive rate."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import bench.anomaly_runs as runs
from bench.anomaly import SMALL_POOL, cases
from bench.anomaly_report import best_lines, pooled_fpr
from bench.anomaly_runs import Case, Protocol, flag_counts, run_case, split_rows, write_pool
from bench.metrics import auroc, paired_difference_ci
from vaeserve.training.data import load_dataset


def _separated(seed: int, n: int, m: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, n), rng.normal(shift, 1, m)


def _noisy(groups: list[tuple[np.ndarray, np.ndarray]], seed: int, sd: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Another method's scores of the same rows: the same signal with its own noise."""
    rng = np.random.default_rng(seed)
    return [(n + rng.normal(0, sd, n.shape), a + rng.normal(0, sd, a.shape)) for n, a in groups]


def test_identical_methods_differ_by_exactly_nothing() -> None:
    groups = [_separated(s, 80, 40, 1.0) for s in range(3)]
    assert paired_difference_ci(auroc, groups, [(n.copy(), a.copy()) for n, a in groups]) == (0.0, 0.0, 0.0)


def test_equally_good_methods_get_an_interval_around_zero_and_a_better_one_above_it() -> None:
    signal = [_separated(s, 300, 150, 1.0) for s in range(3)]
    one, other = _noisy(signal, 1, 0.5), _noisy(signal, 2, 0.5)
    mean, low, high = paired_difference_ci(auroc, one, other, n_boot=500)
    assert low < 0 < high and abs(mean) < 0.02
    mean, low, high = paired_difference_ci(auroc, signal, _noisy(signal, 3, 1.5), n_boot=500)
    assert 0 < low < mean < high
    expected = np.mean([auroc(*s) - auroc(*w) for s, w in zip(signal, _noisy(signal, 3, 1.5))])
    assert mean == pytest.approx(expected, abs=1e-12)


def test_pairing_is_narrower_than_resampling_each_method_apart() -> None:
    """Scores of the same rows share most of their variation, which pairing cancels."""
    signal = [_separated(0, 200, 100, 1.0)]
    first, second = _noisy(signal, 1, 0.3), _noisy(signal, 2, 0.3)
    _, low, high = paired_difference_ci(auroc, first, second, n_boot=400, seed=1)
    rng = np.random.default_rng(5)
    shuffled = [(rng.permutation(n), rng.permutation(a)) for n, a in second]  # same scores, rows unpaired
    _, low_u, high_u = paired_difference_ci(auroc, first, shuffled, n_boot=400, seed=1)
    assert high - low < 0.6 * (high_u - low_u)


def test_the_vectorised_paired_bootstrap_equals_the_plain_loop() -> None:
    groups = [_separated(s, 60, 30, 0.8) for s in range(2)]
    rounded = [(np.round(n * 2), np.round(a * 2)) for n, a in groups]  # ties
    fast = paired_difference_ci(auroc, groups, rounded, n_boot=200, seed=4)
    slow = paired_difference_ci(lambda n, a: auroc(n, a), groups, rounded, n_boot=200, seed=4)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_paired_groups_must_score_the_same_rows() -> None:
    with pytest.raises(ValueError, match="same rows"):
        paired_difference_ci(auroc, [(np.zeros(3), np.ones(2))], [(np.zeros(4), np.ones(2))])
    with pytest.raises(ValueError, match="number of groups"):
        paired_difference_ci(auroc, [(np.zeros(3), np.ones(2))], [])


def test_flags_count_false_and_true_positives_across_cases() -> None:
    assert flag_counts(np.array([True, False, False, True]), np.array([True, True, False])) == (2, 4, 2, 3)
    result = Protocol("p")
    result.count("nll (F=1)", 0.05, np.array([False, True]), np.array([True, True, True]))
    result.count("nll (F=1)", 0.05, np.array([False, False, False]), np.array([False]))
    assert result.flags[("nll (F=1)", 0.05)] == [1, 5, 3, 4]


def test_split_rows_is_a_seeded_partition() -> None:
    pool, test = split_rows(100, 7, 20)
    assert len(test) == 20 and len(pool) == 80 and not set(pool) & set(test)
    assert sorted([*pool, *test]) == list(range(100))
    again = split_rows(100, 7, 20)
    assert np.array_equal(again[0], pool) and np.array_equal(again[1], test)
    assert not np.array_equal(split_rows(100, 8, 20)[1], test)
    with pytest.raises(ValueError, match="hold out"):
        split_rows(10, 0, 9)


def test_the_protocols_hold_out_the_same_rows_for_a_seed_and_new_ones_for_the_next() -> None:
    args = argparse.Namespace(classes=[3], anomalies_per_class=0)
    cancer = load_dataset("breast-cancer")
    (small,) = cases("small-table", cancer, 0, args)
    assert (len(small.pool), len(small.test), len(small.anomalies)) == (SMALL_POOL, 357 - SMALL_POOL, 212)
    (again,) = cases("small-table", cancer, 0, args)
    (next_seed,) = cases("small-table", cancer, 1, args)
    assert np.array_equal(again.test, small.test) and not np.array_equal(next_seed.test, small.test)
    digits = load_dataset("digits")
    (three,) = cases("digits", digits, 0, args)
    assert len(three.test) == round(0.2 * 183) and len(three.pool) + len(three.test) == 183
    assert len(three.anomalies) == 1797 - 183


@pytest.mark.parametrize("name", ["digits", "breast-cancer"])
def test_a_pool_file_reads_back_as_its_built_in_data_set(name: str, tmp_path: Path) -> None:
    data = load_dataset(name)
    assert data.y is not None
    rows = data.x[data.y == 1][:60]
    path, pool = write_pool(Case("pool", 0, rows, rows[:5], rows[:5]), data, tmp_path)
    assert pool.preset == name and np.array_equal(np.load(path), rows)
    flat = tmp_path / "flat.npy"  # a user's rows of 64 whole numbers are digits too
    np.save(flat, rows.reshape(len(rows), -1))
    assert load_dataset(str(flat)).preset == name


class _Scorer:
    """A served model that scores a row by its sum and records every row it is given."""

    def __init__(self, seen: list[np.ndarray]) -> None:
        self.seen = seen
        self.engine = SimpleNamespace(prepare=lambda x: x)

    def served(self) -> list[str]:
        return ["nll"]

    def raw(self, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        self.seen.append(x.copy())
        return {"nll": np.tile(x.sum(1)[:, None], (1, 3))}  # [B, members]: the scorer must not be ranked by this

    def judge(self, raw: dict[str, np.ndarray], names: list[str], alpha: float) -> list[Any]:
        score = raw["nll"].mean(1)
        return [SimpleNamespace(score=score, is_anomaly=score > 500, n_calibration=40)]


def test_every_fold_count_trains_on_the_same_pool_and_scores_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[tuple[int, np.ndarray]] = []
    seen: dict[int, list[np.ndarray]] = {}

    def train(pool: Path, out: Path, folds: int, seed: int, args: Any) -> Path:
        trained.append((folds, np.load(pool)))
        seen[folds] = []
        return out

    monkeypatch.setattr(runs, "train_bundle", train)
    monkeypatch.setattr(runs, "cpu_scorer", lambda out: _Scorer(seen[int(str(out).rsplit("F", 1)[1])]))
    monkeypatch.setattr(runs, "DETECTORS", {"sum": lambda rows, seed: lambda x: x.sum(1)})
    digits = load_dataset("digits")
    (case,) = cases("digits", digits, 0, argparse.Namespace(classes=[3], anomalies_per_class=0))
    result = Protocol("digits")
    run_case(result, case, digits, [1, 5], argparse.Namespace(), tmp_path)
    assert [f for f, _ in trained] == [1, 5] and np.array_equal(trained[0][1], trained[1][1])
    assert np.array_equal(trained[0][1], case.pool)
    flat = case.test.reshape(len(case.test), -1)
    assert all(np.array_equal(seen[f][0], flat) for f in (1, 5))  # the held-out normal rows, then the anomalies
    assert set(result.groups) == {"nll (F=1)", "nll (F=5)", "sum"} and result.folds == {"nll (F=1)": 1, "nll (F=5)": 5}
    normal, anomalous = result.groups["nll (F=5)"][0]
    assert normal.shape == (len(case.test),) and anomalous.shape == (len(case.anomalies),)
    assert result.flags[("nll (F=5)", 0.05)][1::2] == [len(case.test), len(case.anomalies)]
    assert result.calibration == {1: [40], 5: [40]} and result.pool_sizes == [len(case.pool)]


def _protocol(name: str, flagged: int, n: int) -> Protocol:
    p = Protocol(name, folds={"nll (F=5)": 5}, pool_sizes=[100])
    signal = [_separated(s, 100, 50, 2.0) for s in range(2)]
    p.groups = {"nll (F=5)": signal, "knn": _noisy(signal, 1, 2.0)}
    for alpha in (0.01, 0.05):
        p.flags[("nll (F=5)", alpha)] = [flagged, n, 40, 50]
    return p


def test_the_false_positive_rate_is_pooled_over_protocols_and_judged_against_alpha() -> None:
    text = "\n".join(pooled_fpr([_protocol("a", 10, 1000), _protocol("b", 12, 1200)]))
    assert "| nll (F=5) | 2200 | 0.010 (" in text
    assert "within error | 0.010 (" in text and "below alpha" in text  # 22 of 2200 is alpha 0.01, not 0.05
    assert "F=5: 2200 held-out normal rows pooled: enough" in text
    assert "ABOVE alpha" in "\n".join(pooled_fpr([_protocol("a", 200, 1000)]))


def test_the_best_line_gives_the_paired_difference() -> None:
    (_, line, step) = best_lines([_protocol("a", 10, 1000)], n_boot=200)
    assert line.startswith("- a (0 s; 2 normal sets; every method fitted on the same 100 rows):")
    assert step.startswith("  - F=5: served nll ") and " vs knn " in step and "95 % paired bootstrap +0." in step
