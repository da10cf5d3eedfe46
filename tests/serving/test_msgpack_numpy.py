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
        ({b"__ndarray__": True, b"data": b"", b"dtype": "nonsense", b"shape": [0]}, "unsupported dtype"),
        ({b"__ndarray__": True, b"data": b"", b"dtype": "i4,)", b"shape": [0]}, "unsupported dtype"),
        ({b"__npgeneric__": True, b"data": 1000, b"dtype": "|u1"}, "does not fit dtype uint8"),
        ({b"__npgeneric__": True, b"data": -1, b"dtype": "<u4"}, "does not fit dtype uint32"),
        ({b"__npgeneric__": True, b"data": [1], b"dtype": "<f4"}, "has data of type list"),
        ({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}, "invalid shape"),
    ],
)
def test_malformed_arrays_raise_value_error(payload, message):
    with pytest.raises(ValueError, match=message):
        msgpack_numpy.unpackb(msgpack.packb(payload, use_bin_type=True))


def test_garbage_bytes_raise_value_error():
    with pytest.raises(ValueError, match="not valid msgpack"):
        msgpack_numpy.unpackb(b"\xc1\xff\x00garbage")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"\xc1", "FormatError"),
        (b"\x91" * 100_000 + b"\xc0", "nested too deeply"),
        (b"\xdf\xff\xff\xff\xff" + b"\x80" * 1000, "exceeds max_map_len"),
        (b"\xdd\x00\xff\xff\xff" + b"\x80" * 1000, "exceeds max_array_len"),
        (b"", "Unpack"),
    ],
)
def test_every_malformed_frame_is_a_named_value_error(frame, message):
    with pytest.raises(ValueError, match=f"Message is not valid msgpack-numpy: .*{message}"):
        msgpack_numpy.unpackb(frame)


def _random_object(rng: np.random.Generator, depth: int = 0):
    """Random msgpack-numpy-shaped objects: valid, almost valid and junk arrays/scalars in maps and lists."""
    kind = rng.integers(8 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([0, -1, 2**40, 1.5, "text", b"\x00\xff", None, True])
    if kind == 1:
        dtype = rng.choice(["<f4", "|u1", "<i8", "|b1", "<U3", "i4,)", "|O", "<c8", "x", "<f99", 5])
        shape = [int(d) for d in rng.integers(-1, 4, rng.integers(0, 3))]
        return {
            b"__ndarray__": True,
            b"data": bytes(rng.integers(0, 256, rng.integers(0, 40)).tolist()),
            b"dtype": dtype,
            b"shape": shape if rng.random() < 0.9 else "3",
        }
    if kind == 2:
        dtype = rng.choice(["|u1", "<i2", "<f4", "|b1", "<U2", "junk"])
        return {b"__npgeneric__": True, b"data": rng.choice([0, 300, -5, 1e40, "s", b"b"]), b"dtype": dtype}
    if kind == 3:
        return bytes(rng.integers(0, 256, rng.integers(0, 8)).tolist())
    if kind < 6:
        return {f"k{i}": _random_object(rng, depth + 1) for i in range(rng.integers(0, 4))}
    return [_random_object(rng, depth + 1) for _ in range(rng.integers(0, 4))]


def test_decoder_fuzz_raises_only_named_value_errors():
    rng = np.random.default_rng(0)
    decoded = failed = 0
    for _ in range(100_000):
        frame = msgpack.packb(_random_object(rng), use_bin_type=True)
        if rng.random() < 0.3:  # corrupt some bytes too
            frame = bytes(b if rng.random() > 0.05 else int(rng.integers(256)) for b in frame)
        try:
            msgpack_numpy.unpackb(frame)
            decoded += 1
        except ValueError as e:
            assert str(e).startswith("Message is not valid msgpack-numpy: ") and len(str(e)) > 40, str(e)
            failed += 1
    assert decoded > 5000 and failed > 5000, "the fuzz exercises both paths"


def test_a_message_of_too_many_entries_is_refused_while_decoding():
    many = msgpack_numpy.packb({f"k{i}": np.zeros(1, np.uint8) for i in range(5_000)})
    with pytest.raises(msgpack_numpy.TooManyEntries, match="more than 1024 keys and list items"):
        msgpack_numpy.unpackb(many, max_entries=1024)
    lists = msgpack.packb([list(range(60_000))] * 10)
    with pytest.raises(msgpack_numpy.TooManyEntries):
        msgpack_numpy.unpackb(lists, max_entries=1024)
    # 6 entries: the top map (2), the array (1) and its shape list (1), the list (2)
    assert len(msgpack_numpy.unpackb(msgpack_numpy.packb({"a": np.zeros(3), "b": [1, 2]}), max_entries=6)) == 2
