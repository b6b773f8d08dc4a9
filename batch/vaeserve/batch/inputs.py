"""The inputs of a run: files and directories of shards -> an ordered plan, and each file's rows.

Rows are numbered across all inputs in the order given (a directory's files sorted by their path),
so a row's global index, and with it its seed, is fixed on the driver before any work is split
over workers. Planning reads headers only (a CSV file is counted line by line); the rows themselves
are read by the workers. .npy, .csv and IDX files are read by the client's reader, so the batch
tool and `vaeserve score` take the same files the same way.
"""

from __future__ import annotations

import csv
import gzip
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vaeserve.api.datafiles import DataFileError, is_numeric_row, read_array
from vaeserve.api.manifest import Manifest
from vaeserve.server.engine.inputs import InputChecker
from vaeserve.server.errors import InvalidArgument

__all__ = ["KINDS", "DataFileError", "InputFile", "expand", "plan_inputs", "read_rows"]

KINDS = {".npy": "npy", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_IDX_TYPES = frozenset({0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E})
_ROW = re.compile(r"\bx\[(\d+)\]")  # how the engine names an input: x[3] is the file's row 3
_EXPECTED = "expected .npy, .csv, .parquet or MNIST-format IDX (optionally gzipped)"


@dataclass(frozen=True)
class InputFile:
    path: Path
    kind: str  # npy, csv, parquet or idx
    rows: int
    offset: int  # the global index of its first row
    row_shape: tuple[int, ...] | None  # None for a Parquet list column: known once read
    label_column: str | None = None  # the column left out of this file's rows


def expand(paths: Sequence[Path]) -> list[Path]:
    """Files as given; a directory gives its data files (recursively, hidden ones skipped), sorted by path."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
                and _is_data_name(p)
            )
            if not found:
                raise DataFileError(f"{path}: a directory without data files ({_EXPECTED})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataFileError(f"{path}: no such file or directory")
    return files


def plan_inputs(paths: Sequence[Path], manifest: Manifest, *, label_column: str | None = None) -> list[InputFile]:
    """Every input file with its rows and the global index of its first row; shapes checked against the model."""
    shapes = InputChecker(manifest).shapes
    plan: list[InputFile] = []
    offset = 0
    for path in expand(paths):
        kind = KINDS.get(path.suffix.lower(), "idx")
        label = _label_in(path, kind, label_column)
        rows, row_shape = _count(path, kind, label)
        if row_shape is not None and row_shape not in shapes:
            wanted = " or ".join("(" + ", ".join(["N", *map(str, s)]) + ")" for s in shapes)
            raise DataFileError(
                f"{path}: rows of shape {row_shape}; model {manifest.name}:{manifest.version} takes {wanted}"
            )
        plan.append(InputFile(path, kind, rows, offset, row_shape, label))
        offset += rows
    return plan


def read_rows(item: InputFile, manifest: Manifest) -> np.ndarray:
    """The file's rows as raw float64 [rows, D], checked as the server checks a request's inputs."""
    if item.kind == "parquet":
        x = _read_parquet(item.path, item.label_column)
    else:
        x, _ = read_array(item.path, label_column=item.label_column)
    if len(x) != item.rows:
        raise DataFileError(f"{item.path}: {len(x)} rows, {item.rows} when the run was planned (did it change?)")
    try:
        InputChecker(manifest).prepare(x)
    except InvalidArgument as exc:
        message = _ROW.sub(r"row \1", str(exc))
        raise DataFileError(f"{item.path}: {message}") from None
    return x.reshape(len(x), -1)


def _is_data_name(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix.lower() in KINDS or "ubyte" in name or ".idx" in name


def _label_in(path: Path, kind: str, label_column: str | None) -> str | None:
    """The label column where this file has it (by name; a CSV file's also by position), else None."""
    if label_column is None or kind not in ("csv", "parquet"):
        return None
    if kind == "csv" and label_column.lstrip("-").isdigit():
        return label_column
    try:
        if kind == "parquet":
            names = pq.read_schema(path).names
        else:
            with path.open(newline="", encoding="utf-8") as f:
                names = next((row for row in csv.reader(f) if row), [])
    except (OSError, ValueError, pa.ArrowException, csv.Error) as exc:
        raise DataFileError(f"{path}: not a readable {kind} file ({exc})") from None
    return label_column if label_column in names else None


def _count(path: Path, kind: str, label_column: str | None) -> tuple[int, tuple[int, ...] | None]:
    """(rows, the shape of one row) from the file's header, or by counting a CSV file's lines."""
    try:
        if kind == "npy":
            return _count_npy(path)
        if kind == "csv":
            return _count_csv(path, label_column)
        if kind == "parquet":
            return _count_parquet(path, label_column)
        return _count_idx(path)
    except DataFileError:
        raise
    except (OSError, ValueError, EOFError, struct.error, pa.ArrowException, csv.Error, UnicodeDecodeError) as exc:
        raise DataFileError(f"{path}: not a readable {kind} file ({exc})") from None


def _count_npy(path: Path) -> tuple[int, tuple[int, ...]]:
    x = np.load(path, mmap_mode="r", allow_pickle=False)
    if x.dtype.kind not in "biuf":
        raise DataFileError(f"{path}: dtype {x.dtype} is not numeric")
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataFileError(f"{path}: holds no rows")
    return int(x.shape[0]), tuple(int(d) for d in x.shape[1:])


def _count_csv(path: Path, label_column: str | None) -> tuple[int, tuple[int, ...]]:
    """Counted as the client's reader reads it: blank lines skipped, a first line of names is a header."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        first = next((row for row in reader if row), None)
        if first is None:
            raise DataFileError(f"{path}: the file is empty")
        rows = sum(1 for row in reader if row) + int(is_numeric_row(first))
    if rows == 0:
        raise DataFileError(f"{path}: no data rows")
    return rows, (len(first) - (label_column is not None),)


def _count_parquet(path: Path, label_column: str | None) -> tuple[int, tuple[int, ...] | None]:
    meta = pq.ParquetFile(path)
    names, list_type = _parquet_columns(meta.schema_arrow, path, label_column)
    rows = int(meta.metadata.num_rows)
    if rows == 0:
        raise DataFileError(f"{path}: holds no rows")
    if list_type is None:
        return rows, (len(names),)
    return rows, ((list_type.list_size,) if pa.types.is_fixed_size_list(list_type) else None)


def _count_idx(path: Path) -> tuple[int, tuple[int, ...]]:
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gzipped else path.open("rb") as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in _IDX_TYPES or magic[3] == 0:
            raise DataFileError(f"{path}: not a data file ({_EXPECTED})")
        dims = struct.unpack(f">{magic[3]}I", f.read(4 * magic[3]))
    if dims[0] == 0:
        raise DataFileError(f"{path}: holds no rows")
    return dims[0], tuple(dims[1:])


def _parquet_columns(
    schema: pa.Schema, path: Path, label_column: str | None
) -> tuple[list[str], pa.ListType | pa.FixedSizeListType | pa.LargeListType | None]:
    """The input columns: the one list column of numbers, else every numeric column (others are ignored)."""
    fields = [f for f in schema if f.name != label_column]
    lists = [f for f in fields if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]
    lists += [f for f in fields if pa.types.is_fixed_size_list(f.type)]
    if len(lists) > 1:
        raise DataFileError(f"{path}: {len(lists)} list columns ({', '.join(f.name for f in lists)}); rows need one")
    if lists:
        value_type = lists[0].type.value_type
        if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
            raise DataFileError(f"{path}: list column {lists[0].name!r} holds {value_type}, not numbers")
        return [lists[0].name], lists[0].type
    numeric = [f.name for f in fields if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
    if not numeric:
        raise DataFileError(f"{path}: no numeric columns and no list column of numbers")
    return numeric, None


def _read_parquet(path: Path, label_column: str | None) -> np.ndarray:
    try:
        names, list_type = _parquet_columns(pq.read_schema(path), path, label_column)
        table = pq.read_table(path, columns=names)
    except (OSError, pa.ArrowException) as exc:
        raise DataFileError(f"{path}: not a readable parquet file ({exc})") from None
    if list_type is None:
        x = np.column_stack([table.column(n).to_numpy(zero_copy_only=False) for n in names]).astype(np.float64)
    else:
        column = table.column(names[0]).combine_chunks()
        if column.null_count:
            raise DataFileError(f"{path}: column {names[0]!r} has {column.null_count} empty (null) rows")
        if not pa.types.is_fixed_size_list(list_type):
            lengths = column.value_lengths().to_numpy()
            if (lengths != lengths[0]).any():
                row = int(np.flatnonzero(lengths != lengths[0])[0])
                raise DataFileError(
                    f"{path}: row {row} of column {names[0]!r} has {lengths[row]} values; row 0 has {lengths[0]}"
                )
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        x = values.reshape(len(column), -1)
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataFileError(f"{path}: {int(bad.sum())} null, NaN or infinite values (first in row {row})")
    return x
