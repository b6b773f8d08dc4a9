"""What the codec shares with the server's Open Inference Protocol tensors: dtypes, byte order, shape rule."""

from __future__ import annotations

import numpy as np
import pytest

from vaeserve.api import codec


@pytest.mark.parametrize("name", ["float32", "float64", "uint8", "int32", "int64", "bool"])
def test_each_wire_dtype_is_its_own_and_its_byte_swapped_twin_travels_as_it(name: str) -> None:
    dtype = codec.DTYPES[name]
    assert codec.wire_dtype(np.dtype(name)) == dtype
    assert codec.wire_dtype(dtype.newbyteorder(">")) == dtype
    swapped = np.arange(3).astype(dtype.newbyteorder(">"))
    assert codec.as_wire(swapped).dtype == dtype and codec.as_wire(swapped).tobytes() == swapped.astype(dtype).tobytes()


@pytest.mark.parametrize("dtype", [np.float16, np.complex64, np.str_, np.object_])
def test_dtypes_without_a_wire_form(dtype: type) -> None:
    assert codec.wire_dtype(np.dtype(dtype)) is None
    with pytest.raises(codec.TensorError, match="cannot be sent"):
        codec.as_wire(np.zeros(1, dtype))


def test_an_array_already_in_its_wire_dtype_is_not_copied() -> None:
    array = np.ones(4, np.float32)
    assert codec.as_wire(array) is array


def test_the_shape_rule() -> None:
    assert codec.valid_shape(()) and codec.valid_shape([0, 3]) and codec.valid_shape([1] * codec.MAX_DIMS)
    assert not codec.valid_shape([1] * (codec.MAX_DIMS + 1)) and not codec.valid_shape([2, -1])
    assert codec.reshaped(np.arange(6), (2, 3), "x").shape == (2, 3)
    with pytest.raises(codec.TensorError, match=r"x: shape \(0, 1099511627776, 1099511627776\) cannot be used"):
        codec.reshaped(np.zeros(0), (0, 2**40, 2**40), "x")
