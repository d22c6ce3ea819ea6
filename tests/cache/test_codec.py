"""`Codec`: round trips, compression above the threshold, corruption always detected."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from metis_rag.cache import Codec, CorruptEntry

HEADER = 6


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**62),
        3.25,
        "",
        "naïve café ☕ 你好",
        [1, "two", [3.0, None]],
        {"answer": "42", "sources": [{"doc": 1, "score": 0.5}], "empty": {}},
        b"",
        bytes(range(256)),
    ],
)
def test_round_trips(value: Any) -> None:
    codec = Codec()
    decoded = codec.decode(codec.encode(value))
    assert decoded.value == value
    assert type(decoded.value) is type(value)
    assert decoded.expires_at is None


def test_bytes_like_come_back_as_bytes() -> None:
    codec = Codec()
    assert codec.decode(codec.encode(bytearray(b"abc"))).value == b"abc"
    assert codec.decode(codec.encode(memoryview(b"abc"))).value == b"abc"


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(0).standard_normal((7, 384)).astype(np.float32),
        np.arange(10, dtype=np.int64),
        np.array(3.5, dtype=np.float64),
        np.zeros((0, 384), dtype=np.float32),
        np.arange(12, dtype=">i4").reshape(3, 4),
        np.arange(40, dtype=np.float32).reshape(8, 5)[::2, 1:4],  # not contiguous
        np.array([True, False]),
    ],
)
def test_arrays_keep_dtype_shape_and_values(array: np.ndarray) -> None:
    codec = Codec()
    out = codec.decode(codec.encode(array)).value
    assert out.dtype == array.dtype
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    assert not out.flags.writeable  # a cached array cannot be changed behind the cache's back


def test_float32_array_is_stored_raw() -> None:
    array = np.random.default_rng(1).standard_normal(384).astype(np.float32)
    encoded = Codec().encode(array)
    assert len(encoded) < array.nbytes + 32  # raw floats plus a small header, not JSON text


def test_numpy_scalars_inside_json() -> None:
    codec = Codec()
    value = {"score": np.float32(0.5), "ids": np.array([1, 2])}
    assert codec.decode(codec.encode(value)).value == {"score": 0.5, "ids": [1, 2]}


def test_object_arrays_and_unserialisable_values_are_refused() -> None:
    codec = Codec()
    with pytest.raises(TypeError):
        codec.encode(np.array([object()]))
    with pytest.raises(TypeError):
        codec.encode({"x": object()})


def test_compresses_only_above_the_threshold() -> None:
    codec = Codec(compress_min_bytes=1000)
    small = b"a" * 999
    large = b"a" * 1000
    assert len(codec.encode(small)) == HEADER + 999
    encoded = codec.encode(large)
    assert len(encoded) < 100
    assert codec.decode(encoded).value == large


def test_incompressible_payload_is_kept_raw() -> None:
    noise = os.urandom(10_000)
    encoded = Codec(compress_min_bytes=100).encode(noise)
    assert len(encoded) == HEADER + len(noise)
    assert Codec().decode(encoded).value == noise


def test_large_json_compresses() -> None:
    codec = Codec()
    value = {"chunks": [{"text": "the quick brown fox " * 20, "i": i} for i in range(200)]}
    encoded = codec.encode(value)
    uncompressed = Codec(compress_min_bytes=2**40).encode(value)
    assert len(encoded) * 10 < len(uncompressed)
    assert codec.decode(encoded).value == value


def test_expiry_travels_in_the_header() -> None:
    codec = Codec()
    decoded = codec.decode(codec.encode([1], expires_at=1_700_000_123.5))
    assert decoded == ([1], 1_700_000_123.5)


@pytest.mark.parametrize(
    "value",
    [{"k": "v" * 50}, "x" * 5000, np.arange(64, dtype=np.float32)],
    ids=["json", "compressed", "array"],
)
def test_any_flipped_bit_is_detected(value: Any) -> None:
    codec = Codec(compress_min_bytes=1000)
    encoded = codec.encode(value, expires_at=1_700_000_000.0)
    for position in range(len(encoded)):
        for bit in (0x01, 0x80):
            damaged = bytearray(encoded)
            damaged[position] ^= bit
            with pytest.raises(CorruptEntry):
                codec.decode(bytes(damaged))


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01\x00\x00\x00\x00", b"not a cache entry"])
def test_garbage_is_detected(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        Codec().decode(data)


def test_truncated_entry_is_detected() -> None:
    codec = Codec()
    encoded = codec.encode({"k": list(range(100))})
    for end in range(len(encoded)):
        with pytest.raises(CorruptEntry):
            codec.decode(encoded[:end])


def test_unknown_version_is_detected() -> None:
    encoded = bytearray(Codec().encode("v"))
    encoded[0] = 99
    with pytest.raises(CorruptEntry, match="format"):
        Codec().decode(bytes(encoded))


def test_corrupt_entry_is_a_metis_error() -> None:
    from metis_rag.errors import MetisError

    with pytest.raises(MetisError) as info:
        Codec().decode(b"")
    assert info.value.code == "cache_corrupt_entry"


def test_float_arrays_are_not_compressed() -> None:
    # Decompressing on every hit would cost more than the few percent zstd saves on embeddings.
    zeros = np.zeros(1000, dtype=np.float32)
    assert len(Codec(compress_min_bytes=100).encode(zeros)) > zeros.nbytes
    ints = np.zeros(1000, dtype=np.int32)
    assert len(Codec(compress_min_bytes=100).encode(ints)) < 100
