"""The one numpy <-> wire tensor codec, used by the client and the server alike.

A tensor on the wire is a dtype, a shape and raw little-endian bytes in C order
(never ``repeated float``: raw bytes are about 18 times cheaper to encode and decode).
``from_proto`` checks everything a peer could get wrong before any number is used.
The server's Open Inference Protocol tensors use the same dtypes, byte order, shape rule and
byte decoding (`DTYPES`, `wire_dtype`, `as_wire`, `valid_shape`, `reshaped`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from vaeserve.api.v1 import vae_pb2

__all__ = [
    "DTYPES",
    "MAX_DIMS",
    "TensorError",
    "as_wire",
    "from_proto",
    "reshaped",
    "to_proto",
    "valid_shape",
    "wire_dtype",
]

MAX_DIMS = 8

_NUMPY_OF: dict[int, np.dtype] = {
    vae_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    vae_pb2.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    vae_pb2.DATA_TYPE_UINT8: np.dtype("u1"),
    vae_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
    vae_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    vae_pb2.DATA_TYPE_BOOL: np.dtype("?"),
}
_CODE_OF: dict[np.dtype, int] = {dt: code for code, dt in _NUMPY_OF.items()}  # native dtypes: one lookup
_UNSWAPPED: dict[str, np.dtype] = {dt.str.lstrip("<|"): dt for dt in _NUMPY_OF.values()}
DTYPES: dict[str, np.dtype] = {dt.name: dt for dt in _NUMPY_OF.values()}  # by numpy name: "float32", "bool", ...


class TensorError(ValueError):
    """A tensor is malformed or does not have the dtype or shape that was expected."""


def _wire_name(code: int) -> str:
    known = code in vae_pb2.DataType.values()
    return vae_pb2.DataType.Name(vae_pb2.DataType.ValueType(code)) if known else f"unknown dtype {code}"


def wire_dtype(dtype: np.dtype) -> np.dtype | None:
    """The dtype whose little-endian bytes carry `dtype`'s values (itself, or its byte-swapped twin); None if none."""
    return dtype if dtype in _CODE_OF else _UNSWAPPED.get(dtype.str.lstrip("<>|="))


def as_wire(array: npt.ArrayLike) -> np.ndarray:
    """The array in its wire dtype (`.tobytes()` is then its wire form); refuses dtypes that have no wire
    form (complex, object, strings)."""
    arr = np.asarray(array)
    if arr.dtype in _CODE_OF:
        return arr
    wire = wire_dtype(arr.dtype)
    if wire is None:
        raise TensorError(f"dtype {arr.dtype} cannot be sent; use float32, float64, uint8, int32, int64 or bool")
    return arr.astype(wire)  # big-endian to little-endian


def valid_shape(shape: Sequence[int]) -> bool:
    return len(shape) <= MAX_DIMS and all(s >= 0 for s in shape)


def reshaped(flat: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """`flat` in `shape` (its size already checked); a shape numpy cannot hold is refused."""
    try:
        return flat.reshape(shape)
    except ValueError as exc:  # e.g. an empty tensor with absurd dimensions
        raise TensorError(f"{name}: shape {shape} cannot be used ({exc})") from exc


def to_proto(array: npt.ArrayLike) -> vae_pb2.Tensor:
    """Encodes an array; refuses dtypes that have no wire form (complex, object, strings)."""
    arr = as_wire(array)
    return vae_pb2.Tensor(dtype=_CODE_OF[arr.dtype], shape=arr.shape, data=arr.tobytes())  # type: ignore[arg-type]


def from_proto(
    tensor: vae_pb2.Tensor,
    *,
    name: str = "tensor",
    dtypes: Collection[np.dtype] | None = None,
    shapes: Sequence[Sequence[int | None]] | None = None,
) -> np.ndarray:
    """Decodes a tensor, checking its dtype, shape and byte length.

    ``dtypes`` is a collection of numpy dtypes (a set is fastest); ``shapes`` lists the
    accepted shapes, where ``None`` matches any size. The array returned is a read-only
    view of the message's bytes.
    """
    dtype = _NUMPY_OF.get(tensor.dtype)
    if dtype is None:
        raise TensorError(f"{name}: {_wire_name(tensor.dtype)} is not a valid tensor dtype")
    if dtypes is not None and dtype not in dtypes:
        allowed = ", ".join(sorted(np.dtype(d).name for d in dtypes))
        raise TensorError(f"{name}: dtype {dtype.name} is not accepted here (accepted: {allowed})")
    shape = tuple(tensor.shape)
    if not valid_shape(shape):
        if len(shape) > MAX_DIMS:
            raise TensorError(f"{name}: {len(shape)} dimensions; at most {MAX_DIMS} are accepted")
        raise TensorError(f"{name}: shape {shape} has a negative dimension")
    if shapes is not None and not any(_matches(shape, want) for want in shapes):
        expected = " or ".join(_show(want) for want in shapes)
        raise TensorError(f"{name}: expected shape {expected}, got {shape}")
    expected_bytes = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected_bytes:
        raise TensorError(f"{name}: shape {shape} of {dtype.name} needs {expected_bytes} bytes, got {len(tensor.data)}")
    return reshaped(np.frombuffer(tensor.data, dtype=dtype), shape, name)


def _matches(shape: tuple[int, ...], want: Sequence[int | None]) -> bool:
    return len(shape) == len(want) and all(w is None or w == s for s, w in zip(shape, want))


def _show(want: Sequence[int | None]) -> str:
    return "(" + ", ".join("*" if w is None else str(w) for w in want) + ("," if len(want) == 1 else "") + ")"
