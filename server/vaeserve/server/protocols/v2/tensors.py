"""V2 tensors <-> numpy: every way a tensor travels (raw bytes, typed contents, JSON lists), checked.

Each decoder refuses what a peer can get wrong (an unknown or unaccepted datatype, a bad shape,
a byte or element count that does not match the shape) with a message naming the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from vaeserve.api.codec import MAX_DIMS
from vaeserve.api.v2 import grpc_predict_v2_pb2 as v2
from vaeserve.server.errors import InvalidArgument

__all__ = ["DATATYPES", "datatype_of", "from_contents", "from_json", "from_raw", "to_json", "to_raw"]

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NAME_OF = {dtype: name for name, dtype in DATATYPES.items()}
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def datatype_of(array: np.ndarray) -> str:
    return _NAME_OF[array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype]


def _check(name: str, datatype: str, shape: Sequence[int], accepted: Collection[str]) -> tuple[np.dtype, int]:
    if datatype not in accepted:
        raise InvalidArgument(f"{name} has datatype {datatype or '(none)'}; send one of {', '.join(accepted)}")
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise InvalidArgument(f"{name} has shape {list(shape)}; dimensions must be >= 0, at most {MAX_DIMS} of them")
    return DATATYPES[datatype], math.prod(shape)


def from_raw(name: str, datatype: str, shape: Sequence[int], data: bytes, accepted: Collection[str]) -> np.ndarray:
    dtype, count = _check(name, datatype, shape, accepted)
    if len(data) != count * dtype.itemsize:
        raise InvalidArgument(
            f"{name} has {len(data)} bytes; shape {list(shape)} of {datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(tuple(shape))


def from_contents(
    name: str, datatype: str, shape: Sequence[int], contents: v2.InferTensorContents, accepted: Collection[str]
) -> np.ndarray:
    dtype, count = _check(name, datatype, shape, accepted)
    values = getattr(contents, _CONTENTS_FIELD[datatype])
    if len(values) != count:
        raise InvalidArgument(f"{name} has {len(values)} values in contents; shape {list(shape)} needs {count}")
    return np.asarray(values, dtype=dtype).reshape(tuple(shape))


def from_json(name: str, datatype: str, shape: Sequence[int], data: Any, accepted: Collection[str]) -> np.ndarray:
    """`data` as the protocol's JSON gives it: a flat (or nested) list in row-major order."""
    dtype, count = _check(name, datatype, shape, accepted)
    try:
        flat = np.asarray(data, dtype=np.float64 if dtype.kind == "f" else None).ravel()
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name}: data is not a list of numbers ({exc})") from exc
    if flat.size != count:
        raise InvalidArgument(f"{name} has {flat.size} values in data; shape {list(shape)} needs {count}")
    if flat.size and flat.dtype.kind not in "biuf":
        raise InvalidArgument(f"{name}: data holds {flat.dtype.kind!r} values, not numbers")
    if dtype.kind in "iu" and flat.dtype.kind == "f" and not np.all(np.mod(flat, 1) == 0):
        raise InvalidArgument(f"{name} is {datatype} but its data holds fractions")
    return flat.astype(dtype).reshape(tuple(shape))


def to_raw(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def to_json(array: np.ndarray) -> list[Any]:
    """Row-major values; NaN and infinities, which JSON cannot hold, become null."""
    flat = array.ravel()
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return [v if math.isfinite(v) else None for v in flat.tolist()]
    return flat.tolist()  # type: ignore[no-any-return]
