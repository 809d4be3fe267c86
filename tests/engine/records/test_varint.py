"""Zig-zag varints: known encodings, bounds, and every way a varint on the wire can be bad."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.records.errors import InvalidBatchError
from engine.records.varint import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    NULL_VARINT,
    SMALL_VARINTS,
    decode_varint,
    decode_varlong,
    encode_varint,
    encode_varint_column,
    encode_varlong,
    varint_size,
)

# (value, bytes) pairs worked out by hand from the zig-zag + base-128 definition.
KNOWN = [
    (0, "00"),
    (-1, "01"),
    (1, "02"),
    (-2, "03"),
    (63, "7e"),
    (-64, "7f"),
    (64, "8001"),
    (-65, "8101"),
    (300, "d804"),
    (8191, "fe7f"),
    (8192, "808001"),
    (INT32_MAX, "feffffff0f"),
    (INT32_MIN, "ffffffff0f"),
]
KNOWN_LONG = [
    *KNOWN,
    (INT32_MAX + 1, "8080808010"),
    (INT64_MAX, "feffffffffffffffff01"),
    (INT64_MIN, "ffffffffffffffffff01"),
]


@pytest.mark.parametrize(("value", "hex_bytes"), KNOWN)
def test_encode_varint_known_values(value: int, hex_bytes: str) -> None:
    assert encode_varint(value) == bytes.fromhex(hex_bytes)


@pytest.mark.parametrize(("value", "hex_bytes"), KNOWN_LONG)
def test_encode_varlong_known_values(value: int, hex_bytes: str) -> None:
    assert encode_varlong(value) == bytes.fromhex(hex_bytes)


@pytest.mark.parametrize(("value", "hex_bytes"), KNOWN)
def test_decode_varint_known_values_at_an_offset(value: int, hex_bytes: str) -> None:
    raw = bytes.fromhex(hex_bytes)
    buf = b"\xaa\xbb" + raw + b"\xcc"
    assert decode_varint(buf, 2) == (value, 2 + len(raw))


@pytest.mark.parametrize(("value", "hex_bytes"), KNOWN_LONG)
def test_decode_varlong_known_values(value: int, hex_bytes: str) -> None:
    raw = bytes.fromhex(hex_bytes)
    assert decode_varlong(raw, 0) == (value, len(raw))


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_accepts_every_buffer_type(kind: type) -> None:
    buf = kind(bytes.fromhex("00d804"))
    assert decode_varint(buf, 1) == (300, 3)
    assert decode_varlong(buf, 1) == (300, 3)


@pytest.mark.parametrize("value", [INT32_MAX + 1, INT32_MIN - 1, 2**40])
def test_encode_varint_rejects_values_outside_int32(value: int) -> None:
    with pytest.raises(ValueError, match="outside the int32 range"):
        encode_varint(value)


@pytest.mark.parametrize("value", [INT64_MAX + 1, INT64_MIN - 1])
def test_encode_varlong_rejects_values_outside_int64(value: int) -> None:
    with pytest.raises(ValueError, match="outside the int64 range"):
        encode_varlong(value)


@pytest.mark.parametrize("decode", [decode_varint, decode_varlong])
@pytest.mark.parametrize(
    ("buf", "position"),
    [(b"", 0), (b"\x80", 0), (b"\xff\xff", 0), (b"\x00", 1), (b"\x00", 5)],
)
def test_truncated_varint_is_invalid_not_index_error(
    decode: object, buf: bytes, position: int
) -> None:
    assert callable(decode)
    with pytest.raises(InvalidBatchError, match="truncated"):
        decode(buf, position)


@pytest.mark.parametrize("decode", [decode_varint, decode_varlong])
def test_negative_position_is_invalid(decode: object) -> None:
    assert callable(decode)
    with pytest.raises(InvalidBatchError, match="negative"):
        decode(b"\x00\x00", -1)


def test_varint_longer_than_five_bytes_is_invalid() -> None:
    with pytest.raises(InvalidBatchError, match="longer than 5 bytes"):
        decode_varint(b"\x80\x80\x80\x80\x80\x00", 0)


def test_varlong_longer_than_ten_bytes_is_invalid() -> None:
    with pytest.raises(InvalidBatchError, match="longer than 10 bytes"):
        decode_varlong(b"\x80" * 10 + b"\x00", 0)


def test_five_byte_varint_over_32_bits_is_invalid() -> None:
    with pytest.raises(InvalidBatchError, match="does not fit in 32 bits"):
        decode_varint(b"\xff\xff\xff\xff\x1f", 0)


def test_ten_byte_varlong_over_64_bits_is_invalid() -> None:
    with pytest.raises(InvalidBatchError, match="does not fit in 64 bits"):
        decode_varlong(b"\xff" * 9 + b"\x02", 0)


def test_error_reports_the_position_of_the_varint() -> None:
    with pytest.raises(InvalidBatchError) as info:
        decode_varint(b"\x00\x00\x80", 2)
    assert info.value.position == 2


def test_non_minimal_encoding_is_accepted_like_kafka() -> None:
    assert decode_varint(b"\x80\x00", 0) == (0, 2)
    assert decode_varlong(b"\x82\x80\x00", 0) == (1, 3)


def test_small_varint_cache_matches_the_encoder() -> None:
    assert encode_varint(-1) == NULL_VARINT
    for value in (0, 1, 63, 64, 8191, 8192, len(SMALL_VARINTS) - 1):
        assert SMALL_VARINTS[value] == encode_varlong(value) == encode_varint(value)


@pytest.mark.parametrize("value", [0, -1, 63, 64, -65, 8192, INT32_MAX, INT64_MIN, INT64_MAX])
def test_varint_size_matches_encoding(value: int) -> None:
    assert varint_size(value) == len(encode_varlong(value))


@pytest.mark.parametrize(
    ("low", "high", "width"),
    [(0, 64, 1), (64, 8192, 2), (8192, 8300, 3), (2**20, 2**20 + 5, 4), (2**27, 2**27 + 3, 5)],
)
def test_varint_column_matches_scalar_encoding(low: int, high: int, width: int) -> None:
    values = np.arange(low, high, dtype=np.int64)
    column = encode_varint_column(values, width)
    assert column.shape == (high - low, width)
    assert [bytes(row) for row in column] == [encode_varint(v) for v in range(low, high)]


@settings(max_examples=2000, deadline=None, database=None)
@given(st.integers(INT32_MIN, INT32_MAX), st.binary(max_size=3))
def test_varint_round_trip(value: int, tail: bytes) -> None:
    raw = encode_varint(value)
    assert len(raw) <= 5
    assert decode_varint(raw + tail, 0) == (value, len(raw))


@settings(max_examples=2000, deadline=None, database=None)
@given(st.integers(INT64_MIN, INT64_MAX))
def test_varlong_round_trip(value: int) -> None:
    raw = encode_varlong(value)
    assert len(raw) == varint_size(value) <= 10
    assert decode_varlong(raw, 0) == (value, len(raw))


@settings(max_examples=2000, deadline=None, database=None)
@given(st.binary(max_size=12), st.integers(-2, 14))
def test_arbitrary_bytes_decode_or_raise_invalid_batch(buf: bytes, position: int) -> None:
    for decode in (decode_varint, decode_varlong):
        try:
            value, end = decode(buf, position)
        except InvalidBatchError:
            continue
        assert position < end <= len(buf)
        assert isinstance(value, int)
