"""Cross-fitted training end to end with real VAEs: every row trains members and calibrates one, the flags
keep their false-positive rate on held-out rows, and the members disagree off the training distribution."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from vaeserve.api.manifest import member_draws
from vaeserve.server.engine import Engine, ScoreOptions, load_bundle
from vaeserve.training import crossfit
from vaeserve.training.cli import main
from vaeserve.training.data import load_dataset
from vaeserve.training.pipeline import bundle_folds, bundle_splits, cpu_scorer

QUICK = ["--epochs", "3", "--warmup", "1", "--eval-k", "16", "--no-progress"]


@pytest.fixture(scope="module")
def one_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One digit (183 rows): fewer than 1,000, so five members by default."""
    out = tmp_path_factory.mktemp("crossfit") / "threes"
    assert main(["train", "digits", "--classes", "3", "--out", str(out), "--calib-k", "30", *QUICK]) == 0
    return out


def test_every_row_trains_members_and_calibrates_once(one_class: Path) -> None:
    bundle = load_bundle(one_class)
    m = bundle.manifest
    assert m.format_version == 2 and m.members == [f"member-{f}" for f in range(5)] and len(bundle.members) == 5
    assert m.cross_fit is not None and m.calibration is not None and m.training is not None
    rows = int(np.sum(load_dataset("digits").y == 3))
    assert len(m.cross_fit.fold_of_row) == rows and min(m.cross_fit.fold_of_row) == 0  # no row left out
    assert m.calibration.n == rows == m.training.n_calib and m.calibration.min_alpha == 1 / (rows + 1)
    counts = np.bincount(m.cross_fit.fold_of_row)
    assert m.calibration.fold_sizes == counts.tolist()
    for f, member in enumerate(bundle.members):
        summary = member.manifest.training
        assert summary is not None and summary.n_test == counts[f]  # its fold: never trained on
        assert summary.n_train + summary.n_val == rows - counts[f] == m.cross_fit.n_train[f] + m.cross_fit.n_val[f]
        assert m.calibration.member(f).k == member_draws(30, 5, f) == 6
    assert m.training.choices["folds"].startswith("5 cross-fitted members: 183 normal rows")
    folds = bundle_folds(bundle)
    for f in range(5):  # the folds rebuilt from the manifest: member f's rows never include fold f
        train, val = folds.member(f)
        fold = folds.calib(f)
        assert not {r.tobytes() for r in fold} & {r.tobytes() for r in np.concatenate([train, val])}


def test_recalibrate_and_add_rows_no_member_saw(
    one_class: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    more = tmp_path / "more.npy"
    np.save(more, load_dataset("digits").x[:12].reshape(12, -1))
    assert main(["calibrate", str(one_class), str(more), "--add"]) == 0
    calibration = load_bundle(one_class).manifest.calibration
    assert calibration is not None and calibration.n == 183 + 12 and sum(calibration.fold_sizes or []) == 195
    assert main(["calibrate", str(one_class), "--k", "20"]) == 0  # its own folds again, at a new K
    calibration = load_bundle(one_class).manifest.calibration
    assert calibration is not None and calibration.n == 183 and calibration.k == 20
    assert main(["evaluate", str(one_class)]) == 2
    assert "held out no test rows" in capsys.readouterr().err


def test_flags_keep_their_rate_and_members_disagree_off_distribution(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    args = ["train", "digits", "--folds", "5", "--split", "0.1,0.05,0.3", "--calib-k", "30", "--out", str(out)]
    assert main([*args, *QUICK]) == 0
    bundle = load_bundle(out)
    assert bundle.manifest.cross_fit is not None and len(bundle.manifest.cross_fit.added_rows) == round(0.05 * 1797)
    test = bundle_splits(bundle).test
    assert len(test) == round(0.3 * 1797)
    scorer = cpu_scorer(bundle)
    x = scorer.engine.prepare(test.reshape(len(test), -1))
    raw = scorer.raw(x, ["combined", "nll"])
    for alpha in (0.05, 0.1):
        for name in ("combined", "nll"):
            rate = float(scorer.judge(raw, [name], alpha)[0].is_anomaly.mean())
            assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(test)), (name, alpha, rate)
    noise = np.random.default_rng(0).random((200, 64)).astype(np.float32)
    spread = {
        label: scorer.engine.score(rows, ScoreOptions(k=30), 0)["disagreement"]
        for label, rows in (("normal", x), ("noise", noise))
    }
    assert np.median(spread["noise"]) > 2 * np.median(spread["normal"]), {k: np.median(v) for k, v in spread.items()}
    assert main(["evaluate", str(out), "--ks", "1,8"]) == 0  # the held-out test rows


def test_a_small_table_calibrates_on_every_row_and_members_never_see_their_fold(tmp_path: Path) -> None:
    """100 rows of a table: five members by default, alpha = 0.01 attainable (1 / 101), and each member's
    standardization of the columns fitted on its own training rows only."""
    rng = np.random.default_rng(0)
    table = rng.normal([5.0, -2.0, 100.0, 0.0], [1.0, 3.0, 20.0, 0.1], size=(100, 4))
    np.save(tmp_path / "table.npy", table)
    out = tmp_path / "table"
    assert (
        main(["train", str(tmp_path / "table.npy"), "--out", str(out), "--latent", "2", "--calib-k", "10", *QUICK]) == 0
    )
    bundle = load_bundle(out)
    calibration = bundle.manifest.calibration
    assert calibration is not None and calibration.n == 100 and calibration.too_small_for(0.01) is None
    folds = bundle_folds(bundle)
    for f, member in enumerate(bundle.members):
        train, _ = folds.member(f)
        np.testing.assert_allclose(member.manifest.preprocessing.shift, train.mean(axis=0))
        assert not np.allclose(member.manifest.preprocessing.shift, table.mean(axis=0))
    assert bundle.manifest.preprocessing == bundle.members[0].manifest.preprocessing


def test_members_trained_side_by_side_equal_those_trained_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker processes (one per core) train the same members as training them one by one (to float rounding:
    a worker runs torch on one thread)."""
    rows = np.random.default_rng(1).normal(size=(60, 3))
    np.save(tmp_path / "table.npy", rows)
    args = [str(tmp_path / "table.npy"), "--latent", "2", "--calib-k", "10", "--folds", "3", *QUICK]
    assert main(["train", *args, "--out", str(tmp_path / "in-turn")]) == 0
    monkeypatch.setattr(crossfit, "_WORTH_A_WORKER", 0)
    assert main(["train", *args, "--out", str(tmp_path / "side-by-side")]) == 0
    x = rows.astype(np.float32)
    for f in range(3):
        mine, theirs = (Engine(load_bundle(tmp_path / run / f"member-{f}")) for run in ("in-turn", "side-by-side"))
        np.testing.assert_allclose(mine.encode(x)[0], theirs.encode(x)[0], rtol=1e-4, atol=1e-5)
