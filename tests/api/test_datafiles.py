"""The shared data-file readers: .npy, .csv with or without a header and a label column, and MNIST IDX."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from vaeserve.api.datafiles import DataFileError, is_numeric_row, read_array, read_labels


def test_npy_reads_as_float64(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
    x, y = read_array(path)
    assert x.dtype == np.float64 and x.tolist() == [[0, 1, 2], [3, 4, 5]] and y is None


def test_csv_with_a_header_and_a_label_column_by_name_or_index(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,label,b\n1.5,0,2\n3,1,4\n")
    for column in ("label", "1", "-2"):
        x, y = read_array(path, label_column=column)
        assert x.tolist() == [[1.5, 2.0], [3.0, 4.0]]
        assert y is not None and y.dtype == np.int64 and y.tolist() == [0, 1]
    assert read_array(path)[0].shape == (2, 3)
    with pytest.raises(DataFileError, match=r"no column 'kind' \(columns: a, label, b\)"):
        read_array(path, label_column="kind")


def test_gzipped_idx(tmp_path: Path) -> None:
    images = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 2, 3) + images.tobytes()))
    x, _ = read_array(path)
    np.testing.assert_array_equal(x, images)
    labels = tmp_path / "labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 2) + bytes([7, 3]))
    assert read_labels(labels, 2).tolist() == [7, 3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2\n3\n", "line 2 has 1 fields; the first line has 2"),
        ("1,2\n3,nan\n", r"1 NaN or infinite values \(first in row 1\)"),
        ("a,b\n", "no data rows"),
    ],
)
def test_bad_csv_files_are_named_with_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataFileError, match=message) as caught:
        read_array(path)
    assert str(path) in str(caught.value)


def test_labels_files(tmp_path: Path) -> None:
    txt = tmp_path / "y.txt"
    txt.write_text("label\n1\n0\n2\n")
    assert read_labels(txt, 3).tolist() == [1, 0, 2]
    with pytest.raises(DataFileError, match="3 labels for 4 rows"):
        read_labels(txt, 4)
    txt.write_text("0.5\n1\n")
    with pytest.raises(DataFileError, match="whole numbers"):
        read_labels(txt, 2)


def test_a_header_is_a_row_that_is_not_all_numbers() -> None:
    assert is_numeric_row(["1", "-2.5", "3e4"]) and not is_numeric_row(["1", "x"])
