"""RecordBatch v2: byte layout, header checks, patching, encoding and every decode error path."""

from __future__ import annotations

import ast
import gzip
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import engine.records as records_pkg
from engine.records.batch import (
    ATTRIBUTES_OFFSET,
    BASE_OFFSET_OFFSET,
    BASE_SEQUENCE_OFFSET,
    BASE_TIMESTAMP_OFFSET,
    CRC_OFFSET,
    DEFAULT_MAX_BATCH_BYTES,
    LAST_OFFSET_DELTA_OFFSET,
    LENGTH_OFFSET,
    LOG_APPEND_TIME,
    LOG_OVERHEAD,
    MAGIC_OFFSET,
    MAX_TIMESTAMP_OFFSET,
    PARTITION_LEADER_EPOCH_OFFSET,
    PRODUCER_EPOCH_OFFSET,
    PRODUCER_ID_OFFSET,
    RECORD_BATCH_OVERHEAD,
    RECORDS_COUNT_OFFSET,
    RECORDS_OFFSET,
    BatchHeader,
    Header,
    NewRecord,
    Record,
    decode_batch,
    decode_batches,
    decode_values,
    encode_batch,
    encode_values,
    iter_batches,
    parse_header,
    patch_base_offset,
    set_log_append_time,
    validate_batch,
    validate_produce_batch,
    verify_crc,
)
from engine.records.compression import Codec, compress
from engine.records.crc import crc32c
from engine.records.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    UnsupportedCodecError,
    UnsupportedMagicError,
)
from engine.records.record import decode_record_values, decode_records, uniform_values
from engine.records.varint import encode_varint, encode_varlong

TS = 1_700_000_000_000
VALUES = [f"value-{i:04d}".encode().ljust(100, b".") for i in range(1000)]


def reference_crc32c(data: bytes) -> int:
    """Bit-by-bit CRC-32C (reflected polynomial 0x82F63B78), independent of the codec's."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def raw_batch(
    records: bytes,
    count: int,
    last_offset_delta: int | None = None,
    *,
    attributes: int = 0,
    base_offset: int = 0,
    base_timestamp: int = TS,
    max_timestamp: int = TS,
    magic: int = 2,
    batch_length: int | None = None,
    crc: int | None = None,
) -> bytes:
    """A batch built field by field from the Kafka layout, with a correct CRC by default."""
    lad = count - 1 if last_offset_delta is None else last_offset_delta
    covered = struct.pack(
        ">hiqqqhii", attributes, lad, base_timestamp, max_timestamp, -1, -1, -1, count
    )
    covered += records
    length = 4 + 1 + 4 + len(covered) if batch_length is None else batch_length
    checksum = crc32c(covered) if crc is None else crc
    return struct.pack(">qiibI", base_offset, length, -1, magic, checksum) + covered


def record_bytes(
    offset_delta: int,
    value: bytes | None,
    key: bytes | None = None,
    headers: bytes = b"\x00",
    ts_delta: int = 0,
) -> bytes:
    """One record encoded from the documented layout."""
    body = b"\x00" + encode_varlong(ts_delta) + encode_varint(offset_delta)
    body += b"\x01" if key is None else encode_varint(len(key)) + key
    body += b"\x01" if value is None else encode_varint(len(value)) + value
    body += headers
    return encode_varint(len(body)) + body


def recrc(buf: bytearray) -> bytearray:
    struct.pack_into(">I", buf, CRC_OFFSET, crc32c(buf[ATTRIBUTES_OFFSET:]))
    return buf


# ---------------------------------------------------------------------------- layout


def test_crc32c_matches_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283 == reference_crc32c(b"123456789")
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


def test_field_offsets_follow_the_kafka_layout() -> None:
    offsets = [
        BASE_OFFSET_OFFSET,
        LENGTH_OFFSET,
        PARTITION_LEADER_EPOCH_OFFSET,
        MAGIC_OFFSET,
        CRC_OFFSET,
        ATTRIBUTES_OFFSET,
        LAST_OFFSET_DELTA_OFFSET,
        BASE_TIMESTAMP_OFFSET,
        MAX_TIMESTAMP_OFFSET,
        PRODUCER_ID_OFFSET,
        PRODUCER_EPOCH_OFFSET,
        BASE_SEQUENCE_OFFSET,
        RECORDS_COUNT_OFFSET,
        RECORDS_OFFSET,
    ]
    widths = [8, 4, 4, 1, 4, 2, 4, 8, 8, 8, 2, 4, 4]
    assert offsets == [sum(widths[:i]) for i in range(len(widths) + 1)]
    assert (LOG_OVERHEAD, RECORD_BATCH_OVERHEAD) == (12, 61)


def test_encode_batch_matches_a_batch_built_by_hand() -> None:
    records = [
        NewRecord(b"v1", key=b"k", timestamp=TS + 5),
        NewRecord(None, headers=(Header("h", b"x"), Header("n", None)), timestamp=TS),
        NewRecord(b"", key=b"", timestamp=None),
    ]
    got = encode_batch(
        records,
        base_offset=42,
        timestamp=TS + 9,
        producer_id=7,
        producer_epoch=1,
        base_sequence=3,
        partition_leader_epoch=5,
        is_transactional=True,
    )
    # record 0: length 9 -> 12; attrs 00; tsDelta 0; offsetDelta 0; key "k"; value "v1"; no headers
    rec0 = bytes.fromhex("12 00 00 00 02 6b 04 7631 00")
    # record 1: tsDelta -5 -> 09; offsetDelta 1 -> 02; null key, null value; 2 headers
    rec1 = bytes.fromhex("1a 00 09 02 01 01 04 02 68 02 78 02 6e 01")
    # record 2: tsDelta +4 -> 08; offsetDelta 2 -> 04; empty key, empty value
    rec2 = bytes.fromhex("0c 00 08 04 00 00 00")
    records_section = rec0 + rec1 + rec2
    covered = struct.pack(">hiqqqhii", 0x10, 2, TS + 5, TS + 9, 7, 1, 3, 3) + records_section
    crc = reference_crc32c(covered)
    expected = struct.pack(">qiibI", 42, 49 + len(records_section), 5, 2, crc) + covered
    assert got == expected
    header, decoded = decode_batch(got)
    assert header.crc == crc
    assert decoded == [
        Record(42, TS + 5, b"k", b"v1", ()),
        Record(43, TS, None, None, (Header("h", b"x"), Header("n", None))),
        Record(44, TS + 9, b"", b"", ()),
    ]


def test_record_example_from_the_docstring() -> None:
    buf = encode_batch([NewRecord(b"a"), NewRecord(b"hi")], timestamp=TS)
    assert buf[RECORDS_OFFSET:].endswith(bytes.fromhex("10 00 00 02 01 04 68 69 00"))


def test_compressed_batch_compresses_everything_after_records_count() -> None:
    records = [NewRecord(v, timestamp=TS) for v in VALUES[:10]]
    plain = encode_batch(records, timestamp=TS)
    zipped = encode_batch(records, timestamp=TS, codec=Codec.GZIP)
    header = parse_header(zipped)
    assert header.codec == Codec.GZIP
    assert header.attributes == 1
    assert zipped[ATTRIBUTES_OFFSET + 2 : RECORDS_OFFSET] == plain[ATTRIBUTES_OFFSET + 2 : 61]
    assert gzip.decompress(zipped[RECORDS_OFFSET:]) == plain[RECORDS_OFFSET:]


# ---------------------------------------------------------------------------- header


def test_batch_header_properties() -> None:
    header = parse_header(encode_batch([NewRecord(b"a")] * 3, base_offset=10, base_sequence=5))
    assert header.size == header.batch_length + 12
    assert (header.last_offset, header.next_offset) == (12, 13)
    assert header.codec == Codec.NONE
    assert header.timestamp_type == 0
    assert not header.is_transactional
    assert not header.is_control
    assert header.last_sequence == 7


def test_flags_and_sequence_wrapping() -> None:
    fields: dict[str, Any] = {
        f: 0 for f in BatchHeader.__dataclass_fields__ if f not in {"attributes", "base_sequence"}
    }
    header = BatchHeader(**fields, attributes=0x3B, base_sequence=2**31 - 2)
    assert header.codec == Codec.LZ4
    assert header.timestamp_type == LOG_APPEND_TIME
    assert header.is_transactional
    assert header.is_control
    assert header.last_sequence == 2**31 - 2
    wrapped = BatchHeader(
        **{**fields, "last_offset_delta": 3}, attributes=0, base_sequence=2**31 - 2
    )
    assert wrapped.last_sequence == 1  # MAX-1, MAX, 0, 1
    none = BatchHeader(**{**fields, "last_offset_delta": 3}, attributes=0, base_sequence=-1)
    assert none.last_sequence == -1
    bad = BatchHeader(**fields, attributes=0x06, base_sequence=0)
    assert bad.timestamp_type == 0
    with pytest.raises(UnsupportedCodecError):
        _ = bad.codec


@pytest.mark.parametrize("size", [0, 1, 16, 60])
def test_parse_header_needs_61_bytes(size: int) -> None:
    buf = encode_batch([NewRecord(b"x")])[:size]
    with pytest.raises(InvalidBatchError, match=f"needs 61 bytes, only {size} remain"):
        parse_header(buf)


def test_parse_header_rejects_other_magic_even_when_short() -> None:
    with pytest.raises(UnsupportedMagicError, match="magic byte is 1") as info:
        parse_header(raw_batch(b"", 0, 0, magic=1))
    assert info.value.magic == 1
    with pytest.raises(UnsupportedMagicError):
        parse_header(raw_batch(b"", 0, 0, magic=0)[:30])


@pytest.mark.parametrize("length", [-1, 0, 48])
def test_parse_header_rejects_short_batch_length(length: int) -> None:
    with pytest.raises(InvalidBatchError, match=f"batchLength {length} is below the minimum of 49"):
        parse_header(raw_batch(b"", 0, 0, batch_length=length))


def test_parse_header_rejects_batch_over_the_limit() -> None:
    buf = encode_batch([NewRecord(VALUES[0])])
    with pytest.raises(BatchTooLargeError) as info:
        parse_header(buf, 0, len(buf) - 1)
    assert (info.value.size, info.value.limit) == (len(buf), len(buf) - 1)
    assert parse_header(buf, 0, len(buf)).size == len(buf)


def test_parse_header_rejects_truncated_batch() -> None:
    buf = encode_batch([NewRecord(VALUES[0])])
    with pytest.raises(InvalidBatchError, match=f"batch of {len(buf)} bytes is truncated"):
        parse_header(buf[:-1])


@pytest.mark.parametrize("codec", [5, 6, 7])
def test_parse_header_rejects_unknown_codec(codec: int) -> None:
    with pytest.raises(UnsupportedCodecError) as info:
        parse_header(raw_batch(b"", 0, 0, attributes=codec))
    assert info.value.codec == codec


@pytest.mark.parametrize(
    ("count", "lad", "message"),
    [
        (-1, 0, "recordsCount -1 is negative"),
        (0, -1, "lastOffsetDelta -1 is negative"),
        (3, 1, "recordsCount 3 exceeds lastOffsetDelta \\+ 1 = 2"),
    ],
)
def test_parse_header_rejects_inconsistent_counts(count: int, lad: int, message: str) -> None:
    with pytest.raises(InvalidBatchError, match=message):
        parse_header(raw_batch(b"", count, lad))


def test_parse_header_at_a_position_and_negative_position() -> None:
    one = encode_batch([NewRecord(b"a")], base_offset=1)
    two = encode_batch([NewRecord(b"b")], base_offset=2)
    assert parse_header(one + two, len(one)).base_offset == 2
    with pytest.raises(InvalidBatchError) as info:
        parse_header(one, -1)
    assert info.value.position == -1


# ---------------------------------------------------------------------------- CRC, validation


def test_verify_crc_detects_damage() -> None:
    buf = bytearray(encode_batch([NewRecord(v) for v in VALUES[:3]]))
    header = parse_header(buf)
    verify_crc(buf, 0, header)
    buf[100] ^= 0x01
    with pytest.raises(CorruptBatchError, match="stored CRC-32C") as info:
        verify_crc(buf, 0, header)
    assert info.value.stored_crc == header.crc
    assert info.value.computed_crc == crc32c(bytes(buf[ATTRIBUTES_OFFSET:]))


def test_verify_crc_rejects_header_that_does_not_fit() -> None:
    buf = encode_batch([NewRecord(b"x")])
    with pytest.raises(InvalidBatchError, match="does not fit"):
        verify_crc(buf[:-1], 0, parse_header(buf))


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_validate_batch_accepts_every_buffer_type(kind: Callable[[bytes], Any]) -> None:
    buf = encode_batch([NewRecord(b"x")] * 4)
    assert validate_batch(kind(buf)).record_count == 4


def test_validate_produce_batch_accepts_a_producer_batch() -> None:
    buf = encode_batch([NewRecord(v) for v in VALUES[:5]], producer_id=3, producer_epoch=0,
                       base_sequence=0)
    header = validate_produce_batch(buf)
    assert header.producer_id == 3
    assert validate_produce_batch(buf, len(buf)) == header


def test_validate_produce_batch_needs_exactly_one_batch() -> None:
    buf = encode_batch([NewRecord(b"x")])
    with pytest.raises(InvalidBatchError, match="exactly one batch"):
        validate_produce_batch(buf + buf)
    with pytest.raises(InvalidBatchError, match="exactly one batch"):
        validate_produce_batch(buf + b"\x00")


def test_validate_produce_batch_rejects_empty_gapped_control_corrupt_large() -> None:
    with pytest.raises(InvalidBatchError, match="at least one record"):
        validate_produce_batch(raw_batch(b"", 0, 0))
    gapped = raw_batch(record_bytes(0, b"a") + record_bytes(2, b"b"), 2, 2)
    with pytest.raises(InvalidBatchError, match="no offset gaps"):
        validate_produce_batch(gapped)
    control = raw_batch(record_bytes(0, b"a"), 1, attributes=0x20)
    with pytest.raises(InvalidBatchError, match="control batches"):
        validate_produce_batch(control)
    corrupt = bytearray(encode_batch([NewRecord(b"abc")]))
    corrupt[-2] ^= 0xFF
    with pytest.raises(CorruptBatchError):
        validate_produce_batch(corrupt)
    with pytest.raises(BatchTooLargeError):
        validate_produce_batch(encode_batch([NewRecord(VALUES[0])]), 100)


def test_iter_batches_walks_consecutive_batches() -> None:
    batches = [encode_batch([NewRecord(b"v")] * n, base_offset=10 * n) for n in (1, 2, 3)]
    buf = b"".join(batches)
    found = list(iter_batches(buf))
    assert [pos for pos, _ in found] == [0, len(batches[0]), len(batches[0]) + len(batches[1])]
    assert [h.record_count for _, h in found] == [1, 2, 3]
    assert list(iter_batches(b"")) == []
    assert [p for p, _ in iter_batches(buf, len(batches[0]))] == [p for p, _ in found[1:]]


def test_iter_batches_reports_a_cut_or_corrupt_batch_after_the_good_ones() -> None:
    good = encode_batch([NewRecord(b"v")])
    walker = iter_batches(good + good[:-3])
    assert next(walker)[0] == 0
    with pytest.raises(InvalidBatchError, match="truncated"):
        next(walker)
    damaged = bytearray(good + good)
    damaged[-1] ^= 1
    with pytest.raises(CorruptBatchError):
        list(iter_batches(damaged))


# ---------------------------------------------------------------------------- patching


def test_patch_base_offset_keeps_the_crc_valid() -> None:
    buf = bytearray(encode_batch([NewRecord(v) for v in VALUES[:3]]))
    patch_base_offset(buf, 0, 1234)
    header = validate_batch(buf)
    assert header.base_offset == 1234
    assert [r.offset for r in decode_batch(buf)[1]] == [1234, 1235, 1236]


def test_patch_base_offset_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="base_offset"):
        patch_base_offset(bytearray(100), 0, 2**63)
    with pytest.raises(InvalidBatchError, match="no batch at byte 95"):
        patch_base_offset(bytearray(100), 95, 1)


def test_set_log_append_time_marks_the_batch_and_rewrites_the_crc() -> None:
    data = encode_batch([NewRecord(b"a", timestamp=TS), NewRecord(b"b", timestamp=TS + 3)])
    buf = bytearray(b"pad" + data)
    set_log_append_time(buf, 3, TS + 100)
    header = validate_batch(buf, 3)
    assert header.timestamp_type == LOG_APPEND_TIME
    assert header.max_timestamp == TS + 100
    assert header.base_timestamp == TS
    assert [r.timestamp for r in decode_batch(buf, 3)[1]] == [TS + 100, TS + 100]
    assert decode_values(buf, 3) == [b"a", b"b"]


def test_set_log_append_time_never_launders_a_corrupt_batch() -> None:
    buf = bytearray(encode_batch([NewRecord(b"abc")]))
    buf[-2] ^= 0x40
    before = bytes(buf)
    with pytest.raises(CorruptBatchError):
        set_log_append_time(buf, 0, TS)
    assert bytes(buf) == before
    with pytest.raises(ValueError, match="timestamp_ms"):
        set_log_append_time(bytearray(before), 0, -(2**63) - 1)


def test_log_append_time_on_a_uniform_batch() -> None:
    buf = bytearray(encode_values(VALUES[:100], timestamp=TS))
    set_log_append_time(buf, 0, TS + 1)
    assert {r.timestamp for r in decode_batch(buf)[1]} == {TS + 1}


# ---------------------------------------------------------------------------- encoding


def test_encode_batch_rejects_no_records() -> None:
    with pytest.raises(ValueError, match="number of records 0"):
        encode_batch([])
    with pytest.raises(ValueError, match="number of records 0"):
        encode_values([])


def test_encode_batch_timestamps() -> None:
    records = [NewRecord(b"a", timestamp=TS + 10), NewRecord(b"b"), NewRecord(b"c", timestamp=TS)]
    header, decoded = decode_batch(encode_batch(records, timestamp=TS + 50))
    assert header.base_timestamp == TS + 10
    assert header.max_timestamp == TS + 50
    assert [r.timestamp for r in decoded] == [TS + 10, TS + 50, TS]
    assert header.timestamp_type == 0


def test_encode_batch_defaults_to_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_234_567_890_123_456_789)
    header = parse_header(encode_batch([NewRecord(b"a")]))
    assert header.base_timestamp == header.max_timestamp == 1_234_567_890_123


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"base_offset": 2**63}, "base_offset"),
        ({"producer_id": -(2**63) - 1}, "producer_id"),
        ({"producer_epoch": 2**15}, "producer_epoch"),
        ({"base_sequence": 2**31}, "base_sequence"),
        ({"partition_leader_epoch": 2**31}, "partition_leader_epoch"),
        ({"timestamp": 2**63}, "baseTimestamp"),
    ],
)
def test_encode_rejects_fields_outside_their_wire_range(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        encode_batch([NewRecord(b"a")], **kwargs)
    with pytest.raises(ValueError, match=name):
        encode_values([b"a"], **kwargs)


def test_encode_rejects_non_bytes() -> None:
    with pytest.raises(TypeError):
        encode_batch([NewRecord("text")])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_values(["text"] * 40)  # type: ignore[list-item]


def test_encode_rejects_unknown_codec() -> None:
    with pytest.raises(UnsupportedCodecError):
        encode_batch([NewRecord(b"a")], codec=9)  # type: ignore[arg-type]


def test_encode_writes_producer_fields_and_flags() -> None:
    buf = encode_batch(
        [NewRecord(b"a")] * 2,
        codec=Codec.ZSTD,
        producer_id=99,
        producer_epoch=4,
        base_sequence=17,
        partition_leader_epoch=8,
        is_transactional=True,
    )
    header = validate_batch(buf)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (99, 4, 17)
    assert header.partition_leader_epoch == 8
    assert header.attributes == 0x10 | 4
    assert header.is_transactional
    assert header.codec == Codec.ZSTD


CASES: dict[str, tuple[list[bytes | None], list[bytes | None] | None]] = {
    "uniform": (list(VALUES[:200]), None),
    "uniform-small": (list(VALUES[:5]), None),
    "uniform-empty-values": ([b""] * 100, None),
    "varied": ([v[: 50 + i % 60] for i, v in enumerate(VALUES[:200])], None),
    "null-values": ([None if i % 3 else v for i, v in enumerate(VALUES[:100])], None),
    "keys": (list(VALUES[:100]), [None if i % 4 else b"k%d" % i for i in range(100)]),
    "big-values": ([b"x" * 20_000] * 40, None),
    "long-keys": (list(VALUES[:50]), [b"k" * (60 + 5 * i) for i in range(50)]),
}


@pytest.mark.parametrize("codec", list(Codec))
@pytest.mark.parametrize("case", list(CASES))
def test_encode_values_is_byte_identical_to_encode_batch(codec: Codec, case: str) -> None:
    values, keys = CASES[case]
    kwargs: dict[str, Any] = {"timestamp": TS, "base_offset": 5, "codec": codec}
    fast = encode_values(values, keys, **kwargs)
    keys_ = keys or [None] * len(values)
    slow = encode_batch([NewRecord(v, k) for v, k in zip(values, keys_, strict=True)], **kwargs)
    assert fast == slow
    assert decode_values(fast) == values


def test_encode_values_crossing_offset_delta_widths() -> None:
    values = [bytes([i % 251]) * 3 for i in range(8300)]  # offsetDelta widths 1, 2 and 3
    fast = encode_values(values, timestamp=TS)
    assert fast == encode_batch([NewRecord(v) for v in values], timestamp=TS)
    header, decoded = decode_batch(fast)
    assert [r.value for r in decoded] == values
    assert decoded[-1].offset == header.last_offset == 8299


def test_encode_values_key_count_must_match() -> None:
    with pytest.raises(ValueError, match="2 keys for 3 values"):
        encode_values([b"a", b"b", b"c"], [b"k", b"k"])


# ---------------------------------------------------------------------------- decoding


def test_decode_round_trip_with_every_kind_of_field() -> None:
    records = [
        NewRecord(b"v" * 20_000, key=b"k" * 300, timestamp=TS - 10**6),
        NewRecord(None, key=None, headers=(Header("é-key", b""), Header("", None)), timestamp=TS),
        NewRecord(b"", key=b"", timestamp=TS + 2**40),
    ]
    for codec in Codec:
        header, decoded = decode_batch(encode_batch(records, base_offset=2**40, codec=codec))
        assert header.codec == codec
        assert [(r.key, r.value, r.headers, r.timestamp) for r in decoded] == [
            (n.key, n.value, n.headers, n.timestamp) for n in records
        ]
        assert [r.offset for r in decoded] == [2**40, 2**40 + 1, 2**40 + 2]


def test_decode_at_a_position_and_decode_batches() -> None:
    first = encode_values(VALUES[:3], timestamp=TS, base_offset=0)
    second = encode_batch([NewRecord(b"z", key=b"q")], base_offset=3, codec=Codec.LZ4)
    buf = first + second
    assert decode_batch(buf, len(first))[1] == [
        Record(3, parse_header(second).base_timestamp, b"q", b"z", ())
    ]
    assert [r.offset for r in decode_batches(buf)] == [0, 1, 2, 3]
    assert [r.offset for r in decode_batches(buf, len(first))] == [3]
    assert list(decode_batches(b"")) == []


def test_decode_checks_crc_unless_told_not_to() -> None:
    buf = bytearray(encode_batch([NewRecord(b"abc")]))
    buf[CRC_OFFSET] ^= 0xFF
    with pytest.raises(CorruptBatchError):
        decode_batch(buf)
    with pytest.raises(CorruptBatchError):
        decode_values(buf)
    assert decode_batch(buf, verify_crc=False)[1][0].value == b"abc"
    assert decode_values(buf, verify_crc=False) == [b"abc"]


def test_decode_bounds_the_decompressed_size() -> None:
    buf = encode_values([bytes(1000)] * 100, codec=Codec.ZSTD, timestamp=TS)
    assert len(buf) < 1000
    with pytest.raises(BatchTooLargeError, match="decompressed zstd records"):
        decode_batch(buf, max_decompressed_bytes=50_000)
    assert len(decode_values(buf, max_decompressed_bytes=200_000)) == 100


def test_decode_passes_max_batch_bytes() -> None:
    buf = encode_values(VALUES[:10], timestamp=TS)
    with pytest.raises(BatchTooLargeError):
        decode_batch(buf, max_batch_bytes=100)
    with pytest.raises(BatchTooLargeError):
        list(decode_batches(buf, max_batch_bytes=100))


def test_garbage_compressed_payload_is_invalid() -> None:
    buf = raw_batch(b"this is not gzip", 1, attributes=int(Codec.GZIP))
    with pytest.raises(InvalidBatchError, match="records payload: gzip payload"):
        decode_batch(buf)


def test_records_are_named_tuples() -> None:
    record = decode_batch(encode_batch([NewRecord(b"v", key=b"k", timestamp=TS)]))[1][0]
    assert (record.offset, record.timestamp, record.key, record.value, record.headers) == (
        0,
        TS,
        b"k",
        b"v",
        (),
    )
    with pytest.raises(AttributeError):
        record.value = b"other"  # type: ignore[misc]


def _header_bytes(*pairs: tuple[bytes, bytes | None]) -> bytes:
    out = encode_varint(len(pairs))
    for key, value in pairs:
        out += encode_varint(len(key)) + key
        out += b"\x01" if value is None else encode_varint(len(value)) + value
    return out


def _bad_body(prefix: bytes) -> bytes:
    """A record whose length prefix matches whatever fields follow."""
    return encode_varint(len(prefix)) + prefix


BAD_RECORDS: dict[str, tuple[bytes, int, int, str]] = {
    # name: (records section, recordsCount, lastOffsetDelta, expected message)
    "count-too-high": (record_bytes(0, b"a"), 2, 1, "record 1: truncated"),
    "trailing-bytes": (record_bytes(0, b"a") + b"\x00", 1, 0, "1 bytes follow the last of the 1"),
    "empty-section": (b"", 1, 0, "record 0: truncated"),
    "length-too-small": (b"\x0a" + b"\x00" * 5, 1, 0, "length 5 is outside 6..5"),
    "length-past-end": (b"\x20\x00\x00\x00\x01\x01\x00", 1, 0, "length 16 is outside 6..6"),
    "negative-length": (b"\x01" + b"\x00" * 8, 1, 0, "length -1 is outside"),
    "key-length-below-minus-one": (_bad_body(b"\x00\x00\x00\x03\x01\x00"), 1, 0, "key length -2"),
    "value-length-below-minus-one": (
        _bad_body(b"\x00\x00\x00\x01\x03\x00"),
        1,
        0,
        "value length -2",
    ),
    "fields-shorter-than-length": (
        _bad_body(b"\x00\x00\x00\x01\x01\x00\x00"),
        1,
        0,
        "fields end -1 bytes",
    ),
    "value-overruns-record": (
        _bad_body(b"\x00\x00\x00\x01\x10abc\x00") + record_bytes(1, b"b"),
        2,
        1,
        "record 0",
    ),
    "offset-delta-over-last": (record_bytes(3, b"a"), 1, 0, "offsetDelta 3 is outside 0..0"),
    "offset-delta-negative": (record_bytes(-1, b"a"), 1, 0, "offsetDelta -1 is outside 0..0"),
    "header-count-negative": (record_bytes(0, b"a", headers=b"\x03"), 1, 0, "header count -2"),
    "header-count-too-big": (
        record_bytes(0, b"a", headers=b"\x0a\x00\x00"),
        1,
        0,
        "header count 5",
    ),
    "header-key-null": (
        record_bytes(0, b"a", headers=b"\x02\x01\x01"),
        1,
        0,
        "header 0 key length -1",
    ),
    "header-key-overruns": (
        record_bytes(0, b"a", headers=b"\x02\x10ab\x01"),
        1,
        0,
        "header 0 key length 8",
    ),
    "header-key-not-utf8": (
        record_bytes(0, b"a", headers=_header_bytes((b"\xff\xfe", b"v"))),
        1,
        0,
        "header 0 key is not UTF-8",
    ),
    "header-value-below-minus-one": (
        record_bytes(0, b"a", headers=b"\x02\x02k\x05"),
        1,
        0,
        "header 0 value length -3",
    ),
    "header-value-overruns": (
        record_bytes(0, b"a", headers=b"\x02\x02k\x20ab"),
        1,
        0,
        "header 0 value length 16",
    ),
    "varint-too-long": (
        _bad_body(b"\x00" + b"\x80" * 10 + b"\x00\x00\x01\x01\x00"),
        1,
        0,
        "longer than 10",
    ),
    "varint-truncated": (b"\x80", 1, 0, "truncated"),
}


@pytest.mark.parametrize("decoder", [decode_batch, decode_values])
@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_records_are_invalid_with_a_reason(decoder: Callable[..., Any], case: str) -> None:
    section, count, lad, message = BAD_RECORDS[case]
    buf = raw_batch(section, count, lad)
    with pytest.raises(InvalidBatchError, match=message):
        decoder(buf)
    with pytest.raises(InvalidBatchError, match=message):  # the same inside a gzip payload
        decoder(raw_batch(compress(Codec.GZIP, section), count, lad, attributes=1))


def test_good_headers_decode() -> None:
    section = record_bytes(0, b"a", headers=_header_bytes((b"k1", b"v1"), (b"k2", None)))
    _, decoded = decode_batch(raw_batch(section, 1))
    assert decoded[0].headers == (Header("k1", b"v1"), Header("k2", None))
    assert decode_values(raw_batch(section, 1)) == [b"a"]


def test_count_bigger_than_the_data_does_not_allocate() -> None:
    buf = raw_batch(record_bytes(0, b"a"), 2**31 - 1, 2**31 - 1)
    with pytest.raises(InvalidBatchError, match="record 1: truncated"):
        decode_batch(buf)


def test_uniform_fast_path_matches_the_record_loop() -> None:
    buf = encode_values(VALUES[:300], timestamp=TS, base_offset=7)
    _, fast = decode_batch(buf)
    data = buf[RECORDS_OFFSET:]
    assert uniform_values(data, 300, 299) is not None
    loop = decode_records(
        data,
        count=300,
        base_offset=7,
        base_ts=TS,
        last_delta=299,
        append_time=None,
        position=0,
    )
    assert fast == loop
    assert decode_values(buf) == decode_record_values(data, count=300, last_delta=299, position=0)


def test_uniform_fast_path_declines_lookalikes() -> None:
    values = list(VALUES[:100])
    data = encode_values(values, timestamp=TS)[RECORDS_OFFSET:]
    assert uniform_values(data, 100, 100) is None  # offsets with a gap
    assert uniform_values(data, 99, 98) is None  # count disagrees with the layout
    mixed = [*values[:50], b"short", *values[51:]]
    buf = encode_values(mixed, timestamp=TS)
    assert uniform_values(buf[RECORDS_OFFSET:], 100, 99) is None
    assert decode_values(buf) == mixed
    assert [r.value for r in decode_batch(buf)[1]] == mixed


# ---------------------------------------------------------------------------- package


def test_package_exports_exactly_its_api() -> None:
    for name in records_pkg.__all__:
        assert hasattr(records_pkg, name), name
    assert "encode_batch" in records_pkg.__all__
    assert "decode_values" in records_pkg.__all__
    assert len(set(records_pkg.__all__)) == len(records_pkg.__all__)
    assert DEFAULT_MAX_BATCH_BYTES == 8 * 1024 * 1024


def test_package_is_a_leaf() -> None:
    directory = Path(records_pkg.__file__).parent
    for path in directory.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith("engine") or name.startswith("engine.records"), (
                    f"{path.name} imports {name}"
                )
