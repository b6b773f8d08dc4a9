"""Reading arrays from files: .npy, .csv (with or without a header and a label column) and MNIST IDX (gzipped or not).

Shared by the `vaeserve` command line (its inputs), vaeserve-train (user data) and vaeserve-batch, so none of
them needs another's distribution to read a file.
"""

from __future__ import annotations

import csv
import gzip
import struct
from pathlib import Path

import numpy as np

__all__ = ["DataFileError", "is_numeric_row", "read_array", "read_labels"]

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


def read_array(path: str | Path, *, label_column: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(float64 data, integer labels or None) by file type: .npy, .csv, anything else as IDX."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    if path.suffix == ".npy":
        x, y = _read_npy(path), None
    elif path.suffix == ".csv":
        x, y = _read_csv(path, label_column)
    else:
        x, y = _read_idx(path), None
    if x.ndim == 0 or len(x) == 0:
        raise DataFileError(f"{path}: holds no rows")
    _require_finite(x, path)
    return x, y


def read_labels(path: str | Path, n: int) -> np.ndarray:
    """Integer class labels for n rows: .npy, .csv (the last column) or .txt (one per line), or IDX."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such labels file")
    if path.suffix == ".npy":
        labels = _read_npy(path).reshape(-1)
    elif path.suffix in (".csv", ".txt"):
        labels = _read_label_column(path)
    else:
        labels = _read_idx(path).reshape(-1)
    if len(labels) != n:
        raise DataFileError(f"{path}: {len(labels)} labels for {n} rows of data")
    return labels.astype(np.int64)


def _read_label_column(path: Path) -> np.ndarray:
    """One label per line (a header line is skipped), or the last column of a CSV file."""
    if path.suffix == ".csv":
        labels = _read_csv(path, None)[0][:, -1]
    else:
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataFileError(f"{path}: not a readable labels file ({exc})") from exc
        try:
            labels = np.array([float(v) for v in lines[0 if lines and is_numeric_row(lines[:1]) else 1 :]])
        except ValueError as exc:
            raise DataFileError(f"{path}: labels must be numbers, one per line ({exc})") from exc
    if np.any(labels != np.round(labels)):
        raise DataFileError(f"{path}: class labels must be whole numbers")
    return labels


def _require_finite(x: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataFileError(f"{path}: {int(bad.sum())} NaN or infinite values (first in row {row})")


def _read_npy(path: Path) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataFileError(f"{path}: not a readable .npy array ({exc})") from exc
    if x.dtype.kind not in "biuf":
        raise DataFileError(f"{path}: dtype {x.dtype} is not numeric")
    return x.astype(np.float64)


def _read_csv(path: Path, label_column: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFileError(f"{path}: not a readable CSV file ({exc})") from exc
    if not rows:
        raise DataFileError(f"{path}: the file is empty")
    header = None if is_numeric_row(rows[0]) else rows[0]
    body = rows[1:] if header else rows
    width = len(rows[0])
    label_index = None
    if label_column is not None:
        names = header or []
        label_index = (
            names.index(label_column)
            if label_column in names
            else int(label_column)
            if label_column.lstrip("-").isdigit()
            else None
        )
        if label_index is None or not -width <= label_index < width:
            raise DataFileError(f"{path}: no column {label_column!r} (columns: {', '.join(names) or width})")
        label_index %= width
    values = np.empty((len(body), width))
    for i, row in enumerate(body, start=2 if header else 1):
        if len(row) != width:
            raise DataFileError(f"{path}: line {i} has {len(row)} fields; the first line has {width}")
        try:
            values[i - (2 if header else 1)] = [float(v) for v in row]
        except ValueError as exc:
            raise DataFileError(f"{path}: line {i}: {exc}") from exc
    if not len(values):
        raise DataFileError(f"{path}: no data rows")
    if label_index is None:
        return values, None
    return np.delete(values, label_index, axis=1), values[:, label_index].astype(np.int64)


def is_numeric_row(row: list[str]) -> bool:
    """A CSV row of numbers only: a first row that is not is the header (readers and row counters agree)."""
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def _read_idx(path: Path) -> np.ndarray:
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataFileError(f"{path}: cannot read ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise DataFileError(f"{path}: not an IDX file (expected .npy, .csv, or MNIST-format IDX, optionally gzipped)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != need:
        raise DataFileError(f"{path}: IDX header says {dims} of {dtype} ({need} bytes), the file has {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(np.float64)
