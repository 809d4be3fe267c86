"""Zig-zag varints, the integer encoding inside Kafka records.

Byte layout (protobuf-style base-128, least significant group first)::

    zigzag(v) = (v << 1) ^ (v >> 63)        # -1 -> 1, 1 -> 2, -2 -> 3: small magnitudes stay short
    each byte = 7 payload bits | 0x80 when another byte follows

    varint  (int32 fields: record length, offsetDelta, key/value/header lengths, header count)
            at most 5 bytes
    varlong (int64 field: timestampDelta)
            at most 10 bytes

    0 -> 00    -1 -> 01    1 -> 02    63 -> 7e    64 -> 80 01    -65 -> 81 01

Decoding reads untrusted bytes, so it caps the width (5 / 10 bytes), rejects values that overflow
the field, and reports a short buffer as :class:`InvalidBatchError`, never ``IndexError``.
Non-minimal encodings (``80 00`` for 0) are accepted, as Kafka's own reader accepts them.

The ``*_column`` helper encodes a whole numpy column at once for the batch encoder's fast path.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.records.crc import BytesLike
from engine.records.errors import InvalidBatchError

INT16_MIN = -(2**15)
INT16_MAX = 2**15 - 1
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

VARINT_MAX_BYTES = 5
VARLONG_MAX_BYTES = 10

_CACHE_SIZE = 1 << 14


def _unsigned(z: int) -> bytes:
    """Base-128 bytes of a non-negative integer."""
    if z < 0x80:
        return bytes((z,))
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


SMALL_VARINTS: tuple[bytes, ...] = tuple(_unsigned(v << 1) for v in range(_CACHE_SIZE))
"""``SMALL_VARINTS[v]`` is the varint of ``0 <= v < 16384``: lengths and offset deltas, cached
so the encoder's per-record work is an index instead of a loop."""

NULL_VARINT = b"\x01"
"""The varint of -1, Kafka's length of a null key, value or header value."""


def encode_varint(value: int) -> bytes:
    """Zig-zag varint of an int32; raises ValueError outside the int32 range."""
    if 0 <= value < _CACHE_SIZE:
        return SMALL_VARINTS[value]
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"varint value {value} is outside the int32 range")
    return _unsigned(((value << 1) ^ (value >> 31)) & 0xFFFFFFFF)


def encode_varlong(value: int) -> bytes:
    """Zig-zag varint of an int64 (Kafka's varlong); raises ValueError outside int64."""
    if 0 <= value < _CACHE_SIZE:
        return SMALL_VARINTS[value]
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"varlong value {value} is outside the int64 range")
    return _unsigned(((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF)


def _decode(buf: BytesLike, position: int, max_bytes: int, bits: int, what: str) -> tuple[int, int]:
    """Decode one zig-zag varint of at most ``max_bytes`` bytes whose value fits ``bits``."""
    if position < 0:
        raise InvalidBatchError(f"{what} position {position} is negative", position)
    end = len(buf)
    result = 0
    shift = 0
    pos = position
    for _ in range(max_bytes):
        if pos >= end:
            raise InvalidBatchError(
                f"{what} is truncated: the buffer ends after {pos - position} of its bytes",
                position,
            )
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >> bits:
                raise InvalidBatchError(f"{what} does not fit in {bits} bits", position)
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
    raise InvalidBatchError(f"{what} is longer than {max_bytes} bytes", position)


def decode_varint(buf: BytesLike, position: int) -> tuple[int, int]:
    """Decode an int32 zig-zag varint at ``position``; returns ``(value, next_position)``."""
    if 0 <= position < len(buf):
        byte = buf[position]
        if byte < 0x80:
            return (byte >> 1) ^ -(byte & 1), position + 1
    return _decode(buf, position, VARINT_MAX_BYTES, 32, "varint")


def decode_varlong(buf: BytesLike, position: int) -> tuple[int, int]:
    """Decode an int64 zig-zag varlong at ``position``; returns ``(value, next_position)``."""
    if 0 <= position < len(buf):
        byte = buf[position]
        if byte < 0x80:
            return (byte >> 1) ^ -(byte & 1), position + 1
    return _decode(buf, position, VARLONG_MAX_BYTES, 64, "varlong")


def varint_size(value: int) -> int:
    """Number of bytes :func:`encode_varlong` writes for ``value`` (int64 range)."""
    z = ((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF
    return max(1, (z.bit_length() + 6) // 7)


def encode_varint_column(values: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.uint8]:
    """Varints of non-negative int32 ``values`` that all encode to exactly ``width`` bytes.

    Returns an ``(n, width)`` uint8 matrix whose row ``i`` is ``encode_varint(values[i])``; the
    batch encoder copies it into a column of the output with one numpy assignment.
    """
    zigzag = values.astype(np.uint64) << np.uint64(1)
    out = np.empty((len(values), width), dtype=np.uint8)
    for i in range(width):
        group = (zigzag >> np.uint64(7 * i)) & np.uint64(0x7F)
        if i < width - 1:
            group |= np.uint64(0x80)
        out[:, i] = group
    return out
