"""V2 tensors <-> numpy: every way a tensor travels (raw bytes, typed contents, JSON lists), checked.

Each decoder refuses what a peer can get wrong (an unknown or unaccepted datatype, a bad shape,
a byte or element count that does not match the shape) with a message naming the tensor.

Why not `vaeserve.api.codec` alone: the Open Inference Protocol names its datatypes ("FP32") where
VaeService has an enum, and carries tensors in two more forms (typed `contents`, JSON lists) whose
values are not bytes; and its clients (tritonclient) already read these messages. What the two
share is the codec's: the dtypes and their little-endian byte order, the shape rule, byte decoding.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from vaeserve.api import codec
from vaeserve.api.v2 import grpc_predict_v2_pb2 as v2
from vaeserve.server.errors import InvalidArgument

__all__ = ["DATATYPES", "datatype_of", "from_contents", "from_json", "from_raw", "to_json", "to_raw"]

_V2_NAMES = {"bool": "BOOL", "uint8": "UINT8", "int32": "INT32", "int64": "INT64", "float32": "FP32", "float64": "FP64"}
DATATYPES: dict[str, np.dtype] = {v2_name: codec.DTYPES[name] for name, v2_name in _V2_NAMES.items()}
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
    wire = codec.wire_dtype(array.dtype)
    if wire is None:  # outputs are the server's own arrays: a bug, not the caller's doing
        raise TypeError(f"dtype {array.dtype} has no V2 datatype")
    return _NAME_OF[wire]


def _check(name: str, datatype: str, shape: Sequence[int], accepted: Collection[str]) -> tuple[np.dtype, int]:
    if datatype not in accepted:
        raise InvalidArgument(f"{name} has datatype {datatype or '(none)'}; send one of {', '.join(accepted)}")
    if not codec.valid_shape(shape):
        raise InvalidArgument(
            f"{name} has shape {list(shape)}; dimensions must be >= 0, at most {codec.MAX_DIMS} of them"
        )
    return DATATYPES[datatype], math.prod(shape)


def from_raw(name: str, datatype: str, shape: Sequence[int], data: bytes, accepted: Collection[str]) -> np.ndarray:
    dtype, count = _check(name, datatype, shape, accepted)
    if len(data) != count * dtype.itemsize:
        raise InvalidArgument(
            f"{name} has {len(data)} bytes; shape {list(shape)} of {datatype} needs {count * dtype.itemsize}"
        )
    return codec.reshaped(np.frombuffer(data, dtype=dtype), tuple(shape), name)


def from_contents(
    name: str, datatype: str, shape: Sequence[int], contents: v2.InferTensorContents, accepted: Collection[str]
) -> np.ndarray:
    dtype, count = _check(name, datatype, shape, accepted)
    values = getattr(contents, _CONTENTS_FIELD[datatype])
    if len(values) != count:
        raise InvalidArgument(f"{name} has {len(values)} values in contents; shape {list(shape)} needs {count}")
    return codec.reshaped(np.asarray(values, dtype=dtype), tuple(shape), name)


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
    return codec.reshaped(flat.astype(dtype), tuple(shape), name)


def to_raw(array: np.ndarray) -> bytes:
    return codec.as_wire(array).tobytes()


def to_json(array: np.ndarray) -> list[Any]:
    """Row-major values; NaN and infinities, which JSON cannot hold, become null."""
    flat = array.ravel()
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return [v if math.isfinite(v) else None for v in flat.tolist()]
    return flat.tolist()  # type: ignore[no-any-return]
