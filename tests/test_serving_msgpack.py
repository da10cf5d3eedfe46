"""The msgpack-numpy codec: round trips, the wire layout the published client expects, and malformed input."""

import msgpack
import numpy as np
import pytest

from openpi.serving import msgpack_numpy


@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64", "float16", "float32", "float64", "bool", ">f4", "<U3"])
def test_arrays_round_trip_with_dtype_and_shape(dtype):
    array = np.arange(24).reshape(2, 3, 4).astype(dtype)
    decoded = msgpack_numpy.unpackb(msgpack_numpy.packb({"x": array}))["x"]
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_non_contiguous_empty_and_scalar_values_round_trip():
    strided = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2].T
    obs = {
        "strided": strided,
        "empty": np.zeros((0, 3), np.int16),
        "scalar": np.float32(1.5),
        "nested": {"list": [1, "two", np.int64(3)], "text": "pick up the bowl"},
    }
    decoded = msgpack_numpy.unpackb(msgpack_numpy.packb(obs))
    np.testing.assert_array_equal(decoded["strided"], strided)
    assert decoded["empty"].shape == (0, 3)
    assert decoded["scalar"] == np.float32(1.5) and decoded["scalar"].dtype == np.float32
    assert decoded["nested"]["list"][2] == 3 and isinstance(decoded["nested"]["list"][2], np.int64)
    assert decoded["nested"]["text"] == "pick up the bowl"


def test_wire_layout_matches_the_published_client():
    raw = msgpack.unpackb(msgpack_numpy.packb(np.ones((2, 3), np.float32)), raw=False)
    assert raw == {
        b"__ndarray__": True,
        b"data": np.ones((2, 3), np.float32).tobytes(),
        b"dtype": "<f4",
        b"shape": [2, 3],
    }
    scalar = msgpack.unpackb(msgpack_numpy.packb(np.int32(7)), raw=False)
    assert scalar == {b"__npgeneric__": True, b"data": 7, b"dtype": "<i4"}


def test_object_and_complex_arrays_are_refused():
    with pytest.raises(TypeError, match="object"):
        msgpack_numpy.packb(np.array([{"a": 1}], dtype=object))
    with pytest.raises(TypeError, match="complex"):
        msgpack_numpy.packb(np.ones(2, np.complex64))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({b"__ndarray__": True, b"data": b"\x00" * 7, b"dtype": "<f4", b"shape": [2]}, "needs 8 bytes, got 7"),
        ({b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}, "unsupported dtype"),
        ({b"__ndarray__": True, b"data": b"", b"dtype": "nonsense", b"shape": [0]}, "invalid dtype"),
        ({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}, "invalid shape"),
    ],
)
def test_malformed_arrays_raise_value_error(payload, message):
    with pytest.raises(ValueError, match=message):
        msgpack_numpy.unpackb(msgpack.packb(payload, use_bin_type=True))


def test_garbage_bytes_raise_value_error():
    with pytest.raises(ValueError, match="not valid msgpack"):
        msgpack_numpy.unpackb(b"\xc1\xff\x00garbage")
