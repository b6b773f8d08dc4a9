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
    assert digits.x.shape == (1797, 1, 8, 8) and digits.likelihood == "bernoulli" and digits.value_range == (0, 16)
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
        assert data.x.shape == (20, 1, 6, 6) and data.likelihood == "bernoulli" and data.value_range == (0, 255)
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
        (np.array([[0.5, 300.0]]), "the values are real numbers from 0.5 to 300; a Bernoulli model needs data in"),
        (np.array([[0.5, 2.5]]), "real numbers from 0.5 to 2.5"),
        (np.array([[-0.5, 0.5]]), "real numbers from -0.5 to 0.5"),
        (np.array([[0.0, 40.0]]), r"whole numbers from 0 to 40; .* Give --value-range LOW,HIGH .* --value-range 0,40"),
    ],
)
def test_bernoulli_data_out_of_range(tmp_path: Path, values: np.ndarray, message: str) -> None:
    np.save(tmp_path / "v.npy", values)
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / "v.npy"), likelihood="bernoulli")


def test_the_calibration_split_rule() -> None:
    """10 % each for validation and test; calibration 10 %, raised toward 300 rows within 30 %."""
    digits = load_dataset("digits")
    assert make_splits(digits, seed=0).counts == (180, 300, 180)
    assert make_splits(digits, seed=0, classes=[3]).counts == (18, 54, 18)  # 183 rows: 30 % is 54.9 -> 54
    assert make_splits(load_dataset("breast-cancer"), seed=0).counts == (57, 170, 57)
    assert make_splits(digits, seed=0, fractions=(0.05, 0.5, 0.05)).counts == (90, 898, 90)
    with pytest.raises(DataError, match="leave rows to train"):
        make_splits(digits, seed=0, fractions=(0.5, 0.5, 0.1))


def test_a_users_digits_file_is_read_like_the_built_in_digits(tmp_path: Path) -> None:
    """Rows of 64 whole numbers 0-16 are 8x8 digit images: the digits preset, range 0-16 (never 1/255)."""
    from sklearn.datasets import load_digits

    np.save(tmp_path / "flat.npy", load_digits().data)  # (1797, 64)
    np.save(tmp_path / "images.npy", load_digits().images)  # (1797, 8, 8)
    for name in ("flat.npy", "images.npy"):
        data = load_dataset(str(tmp_path / name))
        assert data.x.shape == (1797, 1, 8, 8) and data.likelihood == "bernoulli" and data.preset == "digits"
        assert data.value_range == (0, 16) and data.image is not None
        assert "digits-shaped images" in data.choices["value range"] and "bernoulli" in data.choices["likelihood"]
        assert make_splits(data, seed=0).preprocessing.scale == [1 / 16]


def test_value_range_and_image_flags(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "counts.npy", rng.integers(0, 41, (50, 20)).astype(float))
    data = load_dataset(str(tmp_path / "counts.npy"), likelihood="bernoulli", value_range=(0, 40))
    assert make_splits(data, seed=0).preprocessing.scale == [1 / 40] and data.choices["value range"].endswith(
        "(--value-range)"
    )
    with pytest.raises(DataError, match="outside --value-range 0,30"):
        load_dataset(str(tmp_path / "counts.npy"), likelihood="bernoulli", value_range=(0, 30))
    with pytest.raises(DataError, match="--value-range maps data onto"):
        load_dataset(str(tmp_path / "counts.npy"), likelihood="gaussian", value_range=(0, 40))
    np.save(tmp_path / "real.npy", rng.normal(100, 30, (50, 24)))
    images = load_dataset(str(tmp_path / "real.npy"), image=(2, 3, 4), likelihood="gaussian")
    assert images.x.shape == (50, 2, 3, 4) and images.image is not None
    pre = make_splits(images, seed=0).preprocessing  # one shift and scale for every pixel
    assert len(pre.shift) == len(pre.scale) == 1 and "one shift and scale" in images.choices["scaling"]
    with pytest.raises(DataError, match="--image 2,3,3 holds 18 values; rows have 24"):
        load_dataset(str(tmp_path / "real.npy"), image=(2, 3, 3))


@pytest.mark.parametrize(("suffix", "text"), [(".csv", "id,label\n0,1\n1,2\n2,1\n"), (".txt", "label\n1\n2\n1\n")])
def test_labels_as_text(tmp_path: Path, suffix: str, text: str) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 4)))
    (tmp_path / f"y{suffix}").write_text(text)
    data = load_dataset(str(tmp_path / "x.npy"), labels=str(tmp_path / f"y{suffix}"))
    assert data.y is not None and data.y.tolist() == [1, 2, 1]
    (tmp_path / "bad.txt").write_text("1\n2.5\n1\n")
    with pytest.raises(ValueError, match="class labels must be whole numbers"):
        load_dataset(str(tmp_path / "x.npy"), labels=str(tmp_path / "bad.txt"))
