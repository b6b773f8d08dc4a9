"""Training data: the embedded data sets, user files, and clear errors for bad ones."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from vaeserve.training.data import DataError, load_dataset, make_splits


def _idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body = header + array.astype(">u1").tobytes()
    path.write_bytes(gzip.compress(body) if compress else body)
    return path


def test_builtin_data_sets() -> None:
    digits = load_dataset("digits")
    assert digits.x.shape == (1797, 1, 8, 8) and digits.likelihood == "bernoulli" and digits.bernoulli_scale == 1 / 16
    cancer = load_dataset("breast-cancer")
    assert cancer.x.shape == (569, 30) and cancer.image is None and cancer.likelihood == "gaussian"


def test_splits_and_standardisation_from_the_training_split_only() -> None:
    data = load_dataset("breast-cancer")
    splits = make_splits(data, seed=0)
    assert len(splits.train) + len(splits.val) + len(splits.calib) + len(splits.test) == 569
    z = splits.preprocessing.apply(splits.train)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-4)
    again = make_splits(data, seed=0)
    np.testing.assert_array_equal(again.test, splits.test)
    assert not np.array_equal(make_splits(data, seed=1).test, splits.test)


def test_class_subset_is_the_normal_data() -> None:
    data = load_dataset("digits")
    splits = make_splits(data, seed=0, classes=[0, 1])
    n = len(splits.train) + len(splits.val) + len(splits.calib) + len(splits.test)
    assert n == int(np.isin(data.y, [0, 1]).sum())
    with pytest.raises(DataError, match=r"classes \[11\] do not occur"):
        make_splits(data, seed=0, classes=[11])


def test_idx_files_gzipped_or_not(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (20, 6, 6))
    for compress in (False, True):
        data = load_dataset(str(_idx(tmp_path / f"x{compress}.idx", images, compress)))
        assert data.x.shape == (20, 1, 6, 6) and data.likelihood == "bernoulli" and data.bernoulli_scale == 1 / 255
    labels = _idx(tmp_path / "y.idx", np.arange(20) % 3)
    data = load_dataset(str(tmp_path / "xFalse.idx"), labels=str(labels))
    assert data.y is not None and list(data.y[:4]) == [0, 1, 2, 0]


def test_csv_with_header_and_label_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,label,b\n1.5,0,2\n3,1,4.25\n5,1,6\n")
    data = load_dataset(str(path), label_column="label")
    np.testing.assert_array_equal(data.x, [[1.5, 2], [3, 4.25], [5, 6]])
    assert data.y is not None and list(data.y) == [0, 1, 1] and data.likelihood == "gaussian"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1,2\n3\n", "line 2 has 1 fields; the first line has 2"),
        ("1,2\n3,x\n", "line 2: could not convert string to float"),
        ("", "the file is empty"),
        ("1,nan\n3,4\n", "NaN or infinite values"),
    ],
)
def test_bad_csv(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_dataset(str(path))
    assert "bad.csv" in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nothere\.npy: no such file"):
        load_dataset(str(tmp_path / "nothere.npy"))
    (tmp_path / "junk.idx").write_bytes(b"hello world")
    with pytest.raises(ValueError, match=r"junk\.idx: not an IDX file"):
        load_dataset(str(tmp_path / "junk.idx"))
    np.save(tmp_path / "five.npy", np.zeros((2, 2, 2, 2, 2)))
    with pytest.raises(DataError, match=r"five.npy: data has shape \(2, 2, 2, 2, 2\)"):
        load_dataset(str(tmp_path / "five.npy"))
    np.save(tmp_path / "inf.npy", np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match=r"inf\.npy: 1 NaN or infinite values"):
        load_dataset(str(tmp_path / "inf.npy"))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([[0.5, 300.0]]), "values up to 300; a Bernoulli model needs data in"),
        (np.array([[0.5, 2.5]]), "values up to 2.5"),
        (np.array([[-0.5, 0.5]]), "values down to -0.5"),
    ],
)
def test_bernoulli_data_out_of_range(tmp_path: Path, values: np.ndarray, message: str) -> None:
    np.save(tmp_path / "v.npy", values)
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / "v.npy"), likelihood="bernoulli")
