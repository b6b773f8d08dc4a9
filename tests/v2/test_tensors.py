"""V2 tensors without a server: every datatype round-trips in each wire form; malformed ones are refused."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from vaeserve.api import codec
from vaeserve.api.codec import TensorError
from vaeserve.api.v2 import grpc_predict_v2_pb2 as v2
from vaeserve.server.boundary.status import refusal_of
from vaeserve.server.errors import InvalidArgument
from vaeserve.server.protocols.v2.tensors import (
    DATATYPES,
    datatype_of,
    from_contents,
    from_json,
    from_raw,
    to_json,
    to_raw,
)

SAMPLES = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [16, 8, 4]], np.uint8),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [1, -1, 7]], np.int32),
    "INT64": np.array([[-(2**62), 0, 2**62], [1, -1, 7]], np.int64),
    "FP32": np.array([[0.5, -1.25, 3e38], [1e-38, 0.0, -0.0]], np.float32),
    "FP64": np.array([[0.1, -1e300, 1e-300], [np.pi, 0.0, -2.5]], np.float64),
}
CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
ALL = list(DATATYPES)


def test_the_datatypes_are_the_codecs_dtypes() -> None:
    assert ALL == ["BOOL", "UINT8", "INT32", "INT64", "FP32", "FP64"]  # the order refusals list them in
    assert set(DATATYPES.values()) == set(codec.DTYPES.values())
    assert all(dtype.byteorder in "<|=" for dtype in DATATYPES.values())


@pytest.mark.parametrize("datatype", ALL)
def test_raw_bytes_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    assert datatype_of(array) == datatype
    data = to_raw(array)
    assert data == array.astype(DATATYPES[datatype]).tobytes() and len(data) == array.nbytes
    back = from_raw("x", datatype, [2, 3], data, ALL)
    assert back.dtype == DATATYPES[datatype]
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("datatype", ALL)
def test_typed_contents_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    contents = v2.InferTensorContents(**{CONTENTS[datatype]: array.ravel().tolist()})
    back = from_contents("x", datatype, [2, 3], contents, ALL)
    assert back.dtype == DATATYPES[datatype]
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("datatype", ALL)
def test_json_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    data = json.loads(json.dumps(to_json(array)))  # as it crosses the wire
    assert len(data) == array.size
    back = from_json("x", datatype, [2, 3], data, ALL)
    assert back.dtype == DATATYPES[datatype]
    np.testing.assert_array_equal(back, array)


def test_json_takes_nested_lists_in_row_major_order() -> None:
    np.testing.assert_array_equal(from_json("x", "INT32", [2, 2], [[1, 2], [3, 4]], ALL), [[1, 2], [3, 4]])


def test_big_endian_and_strided_outputs_go_out_little_endian_and_contiguous() -> None:
    array = np.arange(12, dtype=">f8").reshape(3, 4)[:, ::2]
    assert datatype_of(array) == "FP64"
    np.testing.assert_array_equal(np.frombuffer(to_raw(array), "<f8").reshape(3, 2), array)


def test_json_has_no_nan_or_infinity_so_they_travel_as_null() -> None:
    assert to_json(np.array([1.0, np.nan, np.inf, -np.inf])) == [1.0, None, None, None]
    assert json.dumps(to_json(np.array([0.5, np.nan])), allow_nan=False) == "[0.5, null]"


def test_an_output_without_a_v2_datatype_is_a_server_bug() -> None:
    with pytest.raises(TypeError, match="float16 has no V2 datatype"):
        datatype_of(np.zeros(2, np.float16))
    with pytest.raises(TensorError, match="cannot be sent"):
        to_raw(np.zeros(2, np.complex64))


@pytest.mark.parametrize(
    ("decode", "message"),
    [
        (lambda: from_raw("x", "FP32", [1, 64], b"\0" * 10, ALL), "x has 10 bytes; shape [1, 64] of FP32 needs 256"),
        (lambda: from_raw("x", "FP16", [1, 4], b"\0" * 8, ALL), "x has datatype FP16; send one of BOOL, UINT8, INT32"),
        (lambda: from_raw("x", "", [1], b"", ALL), "x has datatype (none)"),
        (lambda: from_raw("z", "FP64", [1], b"\0" * 8, ["FP32"]), "z has datatype FP64; send one of FP32"),
        (lambda: from_raw("x", "FP32", [-1, 64], b"", ALL), "x has shape [-1, 64]; dimensions must be >= 0"),
        (lambda: from_raw("x", "FP32", [1] * 9, b"\0" * 4, ALL), "at most 8 of them"),
        (lambda: from_contents("x", "FP32", [1, 64], v2.InferTensorContents(), ALL), "x has 0 values in contents"),
        (lambda: from_json("x", "UINT8", [4, 64], [1, 2], ALL), "x has 2 values in data; shape [4, 64] needs 256"),
        (lambda: from_json("x", "INT64", [2], [1, 2.5], ALL), "x is INT64 but its data holds fractions"),
        (lambda: from_json("x", "FP32", [2], ["a", "b"], ALL), "x: data is not a list of numbers"),
        (lambda: from_json("x", "FP32", [2], [[1], [2, 3]], ALL), "x: data is not a list of numbers"),
    ],
)
def test_malformed_tensors_are_refused_naming_the_tensor(decode: Callable[[], np.ndarray], message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        decode()
    assert message in str(refused.value)
    assert refusal_of(refused.value).code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "decode",
    [
        lambda: from_raw("x", "FP32", [0, 2**40, 2**40], b"", ALL),
        lambda: from_contents("x", "FP32", [0, 2**40, 2**40], v2.InferTensorContents(), ALL),
        lambda: from_json("x", "FP32", [0, 2**40, 2**40], [], ALL),
    ],
)
def test_an_empty_tensor_with_absurd_dimensions_is_refused_not_crashed(decode: Callable[[], np.ndarray]) -> None:
    with pytest.raises(TensorError, match=r"x: shape \(0, 1099511627776, 1099511627776\) cannot be used") as refused:
        decode()
    assert refusal_of(refused.value).code is grpc.StatusCode.INVALID_ARGUMENT


def test_raw_bytes_are_read_in_place() -> None:
    data = to_raw(SAMPLES["FP64"])
    back = from_raw("x", "FP64", [2, 3], data, ALL)
    assert not back.flags.writeable and not back.flags.owndata  # a view of the request's bytes, not a copy
