"""The flags' false-positive rate on exchangeable data, over many random splits, for one model (split
conformal, F = 1) and for cross-fitted members (cross-conformal, F = 5): cheap stand-in members (a Gaussian
fitted to their training rows, scored by -log density) ranked by the manifest's own Calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vaeserve.api.manifest import Calibration

N, TEST, SPLITS = 40, 20, 1500


def _nll(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A stand-in member: -log N(x; mean, sd) fitted on its training rows (a shared constant dropped)."""
    mean, sd = train.mean(), train.std(ddof=1)
    return 0.5 * ((x - mean) / sd) ** 2 + math.log(sd)


def _split_conformal(rows: np.ndarray, test: np.ndarray) -> np.ndarray:
    """F = 1: train on 70 % of the rows, calibrate on the rest (today's split)."""
    train, calib = rows[: int(0.7 * N)], rows[int(0.7 * N) :]
    calibration = Calibration(k=1, seed=0, dataset="t", scores={"nll": sorted(_nll(train, calib).tolist())})
    return calibration.p_value(_nll(train, test), "nll")


def _cross_conformal(rows: np.ndarray, test: np.ndarray, folds: int) -> np.ndarray:
    """Member f trains on the folds other than f and scores fold f (out of fold) and the test rows."""
    fold_of = np.arange(N) % folds
    scores, sizes, members = [], [], []
    for f in range(folds):
        train = rows[fold_of != f]
        scores += sorted(_nll(train, rows[fold_of == f]).tolist())
        sizes.append(int(np.sum(fold_of == f)))
        members.append(_nll(train, test))
    calibration = Calibration(k=folds, seed=0, dataset="t", scores={"nll": scores}, fold_sizes=sizes)
    return calibration.p_value(np.stack(members, axis=1), "nll")


@pytest.mark.parametrize("folds", [1, 5])
def test_false_positive_rate_on_exchangeable_data(folds: int) -> None:
    rng = np.random.default_rng(folds)
    p_values = []
    for _ in range(SPLITS):
        data = rng.standard_normal(N + TEST)  # a fresh split each time: the guarantee is over splits
        rows, test = data[:N], data[N:]
        p_values.append(_split_conformal(rows, test) if folds == 1 else _cross_conformal(rows, test, folds))
    p = np.concatenate(p_values)
    n = N - int(0.7 * N) if folds == 1 else N  # calibration rows: the split's 12, or every row
    for alpha in (0.05, 0.1, 0.2):
        attainable = math.floor(alpha * (n + 1)) / (n + 1)  # the exact level of p <= alpha with n ranks
        rate = float(np.mean(p <= alpha))
        # Rows of one split share their calibration, so the error is the spread over splits, not over rows.
        per_split = np.mean(np.reshape(p <= alpha, (SPLITS, TEST)), axis=1)
        error = 3 * per_split.std(ddof=1) / math.sqrt(SPLITS)
        assert rate <= alpha + error, (folds, alpha, rate, error)
        assert rate >= attainable - 0.02 - error, (folds, alpha, rate)  # and not more conservative than it must be


def test_p_values_rank_each_members_score_in_its_own_fold() -> None:
    calibration = Calibration(k=4, seed=0, dataset="t", scores={"nll": [1.0, 2.0, 3.0, 10.0, 20.0]}, fold_sizes=[3, 2])
    # member 0's 2.5 is below 1 of its 3 scores... (>= 2.5: one); member 1's 15 (>= 15: one): (1 + 2) / 6
    np.testing.assert_allclose(calibration.p_value([[2.5, 15.0]], "nll"), [3 / 6])
    np.testing.assert_allclose(calibration.percentile([[2.5, 15.0]], "nll"), [100 * 3 / 5])
    assert math.isnan(calibration.threshold(0.5, "nll")) and calibration.min_alpha == 1 / 6
    member = calibration.member(1)
    assert member.scores == {"nll": [10.0, 20.0]} and member.k == 2 and member.fold_sizes is None
    with pytest.raises(ValueError, match=r"ranks \[B, 2\] member scores"):
        calibration.p_value([2.5], "nll")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scores": {"nll": [3.0, 1.0, 2.0]}, "fold_sizes": [2, 1]}, "sorted in ascending order within fold 0"),
        ({"scores": {"nll": [1.0, 2.0, 3.0]}, "fold_sizes": [2, 2]}, "fold_sizes add up to 4"),
        ({"scores": {"nll": [3.0, 1.0, 2.0]}, "fold_sizes": [1, 2]}, None),  # sorted within each fold
    ],
)
def test_fold_segments_are_checked(fields: dict[str, object], message: str | None) -> None:
    if message is None:
        Calibration(k=2, seed=0, dataset="t", **fields)  # type: ignore[arg-type]
        return
    with pytest.raises(ValueError, match=message):
        Calibration(k=2, seed=0, dataset="t", **fields)  # type: ignore[arg-type]
