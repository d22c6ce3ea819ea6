"""How cached Python values become bytes: a checksummed header, then orjson, raw bytes or an array.

Layout (little-endian)::

    version:u8  flags:u8  crc32:u32  [expires_at:f64 if flags & EXPIRES]  body

The CRC covers every byte except itself, so a flipped bit anywhere is caught. `body` is the
payload, zstd-compressed when flags & ZSTD. An ndarray payload is
``dtype_len:u8 dtype ndim:u8 shape:u64*ndim data`` with `dtype` like ``<f4``.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, NamedTuple

import numpy as np
import orjson
import zstandard

from ..errors import CorruptEntry

FORMAT_VERSION = 1

# Flags: the low two bits name the payload kind, the others are independent switches.
_KIND_MASK = 0b0000_0011
_KIND_JSON = 0
_KIND_BYTES = 1
_KIND_ARRAY = 2
_ZSTD = 0b0000_0100
_EXPIRES = 0b0000_1000
_KNOWN_FLAGS = _KIND_MASK | _ZSTD | _EXPIRES

_HEADER = struct.Struct("<BBI")
_EXPIRY = struct.Struct("<d")
_MAX_DECOMPRESSED_BYTES = 1 << 31
# Keep a compressed payload only when it is at least 1/8 smaller: a smaller saving is not
# worth the decompression on every hit.
_MAX_COMPRESSED_RATIO = 0.875


class Decoded(NamedTuple):
    value: Any
    expires_at: float | None


class Codec:
    """Encodes JSON-able values (orjson), `bytes` and numeric ndarrays; zstd above a threshold.

    JSON round trips turn tuples into lists; decoded arrays are read-only views of the entry.
    `expires_at` (wall-clock seconds) travels in the header so a tier that back-fills another
    can give it the remaining TTL.
    """

    def __init__(self, *, compress_min_bytes: int = 1024, zstd_level: int = 3) -> None:
        self.compress_min_bytes = compress_min_bytes
        self._compressor = zstandard.ZstdCompressor(level=zstd_level)
        self._decompressor = zstandard.ZstdDecompressor()

    def encode(self, value: Any, *, expires_at: float | None = None) -> bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            kind, payload = _KIND_BYTES, bytes(value)
        elif isinstance(value, np.ndarray):
            kind, payload = _KIND_ARRAY, _pack_array(value)
        else:
            kind, payload = _KIND_JSON, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
        flags = kind
        # Float arrays (embeddings) have near-random mantissas: zstd saves a few percent and
        # costs more than a memory hit on every read, so they are not even tried.
        if len(payload) >= self.compress_min_bytes and not (
            kind == _KIND_ARRAY and value.dtype.kind in "fc"
        ):
            compressed = self._compressor.compress(payload)
            if len(compressed) <= len(payload) * _MAX_COMPRESSED_RATIO:
                flags |= _ZSTD
                payload = compressed
        extra = b""
        if expires_at is not None:
            flags |= _EXPIRES
            extra = _EXPIRY.pack(expires_at)
        crc = zlib.crc32(payload, zlib.crc32(extra, zlib.crc32(bytes((FORMAT_VERSION, flags)))))
        return b"".join((_HEADER.pack(FORMAT_VERSION, flags, crc), extra, payload))

    def decode(self, data: bytes) -> Decoded:
        """Return the value and its expiry, or raise `CorruptEntry`."""
        if len(data) < _HEADER.size:
            raise CorruptEntry("cache entry is shorter than its header")
        version, flags, crc = _HEADER.unpack_from(data)
        if version != FORMAT_VERSION or flags & ~_KNOWN_FLAGS:
            raise CorruptEntry(f"unknown cache entry format {version}/{flags:#04x}")
        view = memoryview(data)
        body_start = _HEADER.size + (_EXPIRY.size if flags & _EXPIRES else 0)
        if len(data) < body_start:
            raise CorruptEntry("cache entry is shorter than its header")
        if zlib.crc32(view[_HEADER.size :], zlib.crc32(view[:2])) != crc:
            raise CorruptEntry("cache entry checksum mismatch")
        expires_at = _EXPIRY.unpack_from(data, _HEADER.size)[0] if flags & _EXPIRES else None
        body: bytes | memoryview = view[body_start:]
        try:
            if flags & _ZSTD:
                body = self._decompressor.decompress(body, max_output_size=_MAX_DECOMPRESSED_BYTES)
            kind = flags & _KIND_MASK
            if kind == _KIND_BYTES:
                value: Any = bytes(body)
            elif kind == _KIND_ARRAY:
                value = _unpack_array(body)
            elif kind == _KIND_JSON:
                value = orjson.loads(body)
            else:
                raise CorruptEntry(f"unknown cache payload kind {kind}")
        except (zstandard.ZstdError, ValueError, TypeError, IndexError, struct.error) as exc:
            # A checksum collision or a writer bug: still never hand back garbage.
            raise CorruptEntry(f"cache entry does not decode: {exc}") from exc
        return Decoded(value, expires_at)


def _pack_array(array: np.ndarray) -> bytes:
    if array.dtype.hasobject or array.dtype.names is not None:
        raise TypeError(f"cannot cache arrays of dtype {array.dtype}")
    dtype = array.dtype.str.encode()
    layout = f"<B{len(dtype)}sB{array.ndim}Q"
    header = struct.pack(layout, len(dtype), dtype, array.ndim, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def _unpack_array(body: bytes | memoryview) -> np.ndarray:
    dtype_len = body[0]
    dtype = np.dtype(bytes(body[1 : 1 + dtype_len]).decode())
    ndim = body[1 + dtype_len]
    shape_at = 2 + dtype_len
    shape = struct.unpack_from(f"<{ndim}Q", body, shape_at)
    data = body[shape_at + 8 * ndim :]
    return np.frombuffer(data, dtype=dtype).reshape(shape)
