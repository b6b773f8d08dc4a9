"""The tensor codec: round trips for every wire dtype, and clear refusals of malformed tensors."""

from __future__ import annotations

import numpy as np
import pytest

from vaeserve.api import TensorError, from_proto, to_proto
from vaeserve.api.v1 import vae_pb2 as pb


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int32, np.int64, np.bool_])
def test_round_trip(dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 2).astype(dtype)
    tensor = to_proto(array)
    assert list(tensor.shape) == [2, 3, 4] and len(tensor.data) == array.nbytes
    back = from_proto(tensor)
    assert back.dtype == np.dtype(dtype) and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_big_endian_and_strided_inputs_are_sent_little_endian_and_contiguous() -> None:
    array = np.arange(12, dtype=">f8").reshape(3, 4)[:, ::2]
    back = from_proto(to_proto(array))
    assert back.dtype == np.dtype("<f8")
    np.testing.assert_array_equal(back, array)


def test_scalars_and_empty_arrays() -> None:
    assert from_proto(to_proto(np.float64(2.5))).shape == ()
    assert from_proto(to_proto(np.zeros((0, 5), np.float32))).shape == (0, 5)


@pytest.mark.parametrize("value", [np.zeros(2, np.complex64), np.array(["a"]), np.zeros(2, np.float16)])
def test_dtypes_without_a_wire_form_are_refused(value: np.ndarray) -> None:
    with pytest.raises(TensorError, match="cannot be sent"):
        to_proto(value)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (pb.Tensor(), "not a valid tensor dtype"),
        (pb.Tensor(dtype=99, shape=[1]), "unknown dtype 99"),
        (pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[2, 2], data=b"\0" * 15), "needs 16 bytes, got 15"),
        (pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[-1, 2], data=b""), "negative dimension"),
    ],
)
def test_malformed_tensors(tensor: pb.Tensor, message: str) -> None:
    with pytest.raises(TensorError, match=message):
        from_proto(tensor, name="x")


def test_expected_dtype_and_shape() -> None:
    tensor = to_proto(np.zeros((3, 4), np.float32))
    assert from_proto(tensor, shapes=[(None, 4)]).shape == (3, 4)
    with pytest.raises(TensorError, match=r"z: expected shape \(\*, 5\) or \(5,\), got \(3, 4\)"):
        from_proto(tensor, name="z", shapes=[(None, 5), (5,)])
    with pytest.raises(TensorError, match="dtype float32 is not accepted here"):
        from_proto(tensor, dtypes=[np.uint8])


def test_absurd_shapes_are_refused_not_crashed() -> None:
    with pytest.raises(TensorError, match="at most 8"):
        from_proto(pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[1] * 9, data=b"\0" * 4))
    with pytest.raises(TensorError, match="cannot be used"):
        from_proto(pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[0, 2**40, 2**40], data=b""))
