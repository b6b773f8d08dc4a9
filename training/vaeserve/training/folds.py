"""Cross-fitting's use of the normal rows: F folds, each calibrating the member trained on the others.

The rows (after --classes) are shuffled with the seed; the first TEST share is held out from every
member and from the calibration, the next CALIB share calibrates a member but trains none, and the
rest are dealt into F folds in turn. Member f trains on the folds other than f, less a VAL share of
those rows (its own early-stopping and standardization rows, shuffled with (seed, f)), so nothing of
fold f (preprocessing included) reaches member f, and every row calibrates exactly one member.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaeserve.api.manifest import CrossFit, Preprocessing
from vaeserve.training.data import DataError, Dataset, fit_preprocessing, select_classes

__all__ = ["DEFAULT_FOLDS", "FOLDS_BELOW", "FoldSplits", "default_folds", "make_folds"]

DEFAULT_FOLDS = 5
# Below this many normal rows the split's calibration (10 % raised toward 300 rows within 30 %) cannot reach
# its 300 rows, so flags at alpha = 0.01 have few ranks to stand on: training cross-fits instead.
FOLDS_BELOW = 1000
DEFAULT_VAL = 0.1


def default_folds(rows: int) -> tuple[int, str]:
    """The number of members for a data set of this many normal rows, and why."""
    if rows < FOLDS_BELOW:
        return DEFAULT_FOLDS, (
            f"{DEFAULT_FOLDS} cross-fitted members: {rows} normal rows are fewer than {FOLDS_BELOW:,}, so a "
            "held-out calibration split would be short of 300 rows; this way every row trains four members and "
            "calibrates the fifth (--folds 1: one model, split conformal)"
        )
    return 1, f"one model: {rows} normal rows leave a calibration split of 300 rows (--folds 5 to cross-fit)"


@dataclass
class FoldSplits:
    data: Dataset
    rows: np.ndarray  # raw [N, *input_shape], the data after --classes
    folds: int
    fold_of_row: np.ndarray  # int [N]: the member each row calibrates; -1: a test row
    added: np.ndarray  # bool [N]: calibrates a member, trains none
    n_val: list[int]
    seed: int
    rule: str = ""

    @property
    def test(self) -> np.ndarray:
        return self.rows[self.fold_of_row == -1]

    @property
    def pool(self) -> np.ndarray:
        """The rows that train members."""
        return self.rows[(self.fold_of_row >= 0) & ~self.added]

    def calib(self, f: int) -> np.ndarray:
        """Member f's calibration rows: its fold, then the added rows dealt to it."""
        mine = self.fold_of_row == f
        return np.concatenate([self.rows[mine & ~self.added], self.rows[mine & self.added]])

    def member(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, validation rows) of member f: the other folds' rows."""
        others = np.flatnonzero((self.fold_of_row >= 0) & (self.fold_of_row != f) & ~self.added)
        order = np.random.default_rng([self.seed, f]).permutation(len(others))
        val = others[order[: self.n_val[f]]]
        train = others[order[self.n_val[f] :]]
        return self.rows[train], self.rows[val]

    def preprocessing(self, f: int) -> Preprocessing:
        """Member f's preprocessing, fitted on its training rows only."""
        return fit_preprocessing(self.data, self.member(f)[0])

    def cross_fit(self) -> CrossFit:
        return CrossFit(
            folds=self.folds,
            n_train=[len(self.member(f)[0]) for f in range(self.folds)],
            n_val=list(self.n_val),
            fold_of_row=self.fold_of_row.tolist(),
            added_rows=np.flatnonzero(self.added).tolist(),
        )


def make_folds(
    data: Dataset,
    seed: int,
    folds: int,
    *,
    classes: list[int] | None = None,
    fractions: tuple[float, float, float] | None = None,
    cross_fit: CrossFit | None = None,
) -> FoldSplits:
    """The folds of a new run (`fractions`: VAL, CALIB, TEST shares; default 10 %, 0, 0), or a bundle's own
    (`cross_fit`, as its manifest stores them)."""
    rows = data.x if classes is None else select_classes(data, classes)
    n = len(rows)
    if cross_fit is not None:
        if len(cross_fit.fold_of_row) != n:
            raise DataError(f"{data.name}: {n} rows, but the bundle's folds were made of {len(cross_fit.fold_of_row)}")
        added = np.zeros(n, bool)
        added[cross_fit.added_rows] = True
        fold_of_row = np.asarray(cross_fit.fold_of_row)
        return FoldSplits(
            data, rows, cross_fit.folds, fold_of_row, added, list(cross_fit.n_val), seed, "the bundle's own folds"
        )
    val_share, calib_share, test_share = fractions or (DEFAULT_VAL, 0.0, 0.0)
    if min(val_share, calib_share, test_share) < 0 or calib_share + test_share >= 1 or val_share >= 1:
        raise DataError(
            f"--split {val_share:g},{calib_share:g},{test_share:g}: shares must be >= 0 and leave rows to train"
        )
    n_test, n_added = round(test_share * n), round(calib_share * n)
    pool = n - n_test - n_added
    if pool < 2 * folds:
        raise DataError(f"{data.name}: {pool} rows are too few for {folds} folds (at least 2 per fold)")
    order = np.random.default_rng(seed).permutation(n)
    fold_of_row = np.full(n, -1)
    added = np.zeros(n, bool)
    added_rows = order[n_test : n_test + n_added]
    fold_of_row[added_rows] = np.arange(n_added) % folds
    added[added_rows] = True
    fold_of_row[order[n_test + n_added :]] = np.arange(pool) % folds
    others = [int(np.count_nonzero((fold_of_row >= 0) & (fold_of_row != f) & ~added)) for f in range(folds)]
    n_val = [max(1, round(val_share * m)) if val_share > 0 else 0 for m in others]
    if any(m - v < 2 for m, v in zip(others, n_val)):
        raise DataError(f"{data.name}: {pool} rows leave too few training rows per member for {folds} folds")
    if any(v < 1 for v in n_val):
        raise DataError("--split VAL must be above 0: each member needs validation rows for early stopping")
    rule = (
        f"{folds} folds of {pool} rows (each member trains on about {others[0] - n_val[0]}, validates on "
        f"{n_val[0]}, calibrates on its fold of about {pool // folds}); {n_added} calibration-only rows, "
        f"{n_test} test rows"
    )
    return FoldSplits(data, rows, folds, fold_of_row, added, n_val, seed, rule)
