"""Property tests: round trips, damage detection and fuzzing of the RecordBatch v2 codec.

The decoder reads bytes from disks and networks, so the fuzz tests hold it to one rule: any
input either decodes or raises a ``RecordError`` subclass - never IndexError, struct.error,
UnicodeDecodeError, MemoryError, a compression library's own error, or anything else. Two more
rules: a batch the produce path accepts for storage always decodes (nothing stored can fail a
consumer), and a length field declaring more than the buffer holds is refused before that much
memory is allocated (measured with tracemalloc).

Every property runs 2,000 examples (RELIABILITY-PLAN T7). The strategies are kept small (a few
records, short fields) so that the whole of tests/engine/records stays near a minute of CPU:
generating a 12-record batch costs more than checking it.
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.records.batch import (
    ATTRIBUTES_OFFSET,
    CRC_OFFSET,
    RECORDS_OFFSET,
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
    validate_batch,
    validate_produce_batch,
)
from engine.records.compression import Codec, compress, decompress
from engine.records.crc import crc32c
from engine.records.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    RecordError,
)
from engine.records.record import decode_records
from engine.records.varint import encode_varint

TS = 1_700_000_000_000
PROPERTY = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

headers_st = st.lists(
    st.builds(Header, st.text(max_size=4), st.none() | st.binary(max_size=6)), max_size=2
).map(tuple)
record_st = st.builds(
    NewRecord,
    value=st.none() | st.binary(max_size=24),
    key=st.none() | st.binary(max_size=12),
    headers=headers_st,
    timestamp=st.none() | st.integers(0, 2**45),
)
records_st = st.lists(record_st, min_size=1, max_size=6)
small_records_st = st.lists(record_st, min_size=1, max_size=4)  # for damage and fuzzing


def _cut_records(blob: bytes, shape: int) -> list[NewRecord]:
    """1 to 4 header-less records cut from ``blob``; ``shape`` picks the count, null keys and
    values, and own or default timestamps. Two draws instead of dozens: for the properties
    where the CRC does the detecting, so the record structure matters little."""
    count = shape % 4 + 1
    bits = shape >> 2
    step = len(blob) // (2 * count)
    return [
        NewRecord(
            value=None if bits >> 3 * i & 1 else blob[(2 * i + 1) * step : (2 * i + 2) * step],
            key=None if bits >> 3 * i + 1 & 1 else blob[2 * i * step : (2 * i + 1) * step],
            timestamp=TS + 1000 * i if bits >> 3 * i + 2 & 1 else None,
        )
        for i in range(count)
    ]


cut_records_st = st.builds(_cut_records, st.binary(max_size=96), st.integers(0, 2**14 - 1))
codec_st = st.sampled_from(list(Codec))
COMPRESSED = [Codec.GZIP, Codec.SNAPPY, Codec.LZ4, Codec.ZSTD]


def _split(blob: bytes, count: int) -> list[bytes]:
    size = len(blob) // count
    return [blob[i * size : (i + 1) * size] for i in range(count)]


# one blob cut into equal values: one draw instead of up to 150
uniform_values_st = st.tuples(st.integers(0, 40), st.integers(1, 150)).flatmap(
    lambda shape: st.binary(min_size=shape[0] * shape[1], max_size=shape[0] * shape[1]).map(
        lambda blob: _split(blob, shape[1])
    )
)
varied_values_st = st.lists(st.none() | st.binary(max_size=80), min_size=1, max_size=40)
values_st = uniform_values_st | varied_values_st


def recrc(buf: bytearray) -> bytearray:
    """Give damaged bytes a valid CRC so that decoding reaches the records."""
    if len(buf) >= RECORDS_OFFSET:
        struct.pack_into(">I", buf, CRC_OFFSET, crc32c(buf[ATTRIBUTES_OFFSET:]))
    return buf


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The result, or the RecordError subclass raised; anything else fails the test."""
    try:
        return fn(*args, **kwargs)
    except RecordError as exc:
        return type(exc)


# ---------------------------------------------------------------------------- round trips


@PROPERTY
@given(
    records=records_st,
    codec=codec_st,
    base_offset=st.integers(0, 2**62),
    timestamp=st.integers(0, 2**45),
    producer=st.tuples(
        st.integers(-1, 2**62), st.integers(-1, 2**15 - 1), st.integers(-1, 2**31 - 1)
    ),
    transactional=st.booleans(),
)
def test_encode_decode_round_trip(
    records: list[NewRecord],
    codec: Codec,
    base_offset: int,
    timestamp: int,
    producer: tuple[int, int, int],
    transactional: bool,
) -> None:
    producer_id, producer_epoch, base_sequence = producer
    buf = encode_batch(
        records,
        base_offset=base_offset,
        codec=codec,
        timestamp=timestamp,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        is_transactional=transactional,
    )
    header, decoded = decode_batch(buf)
    if transactional or (producer_id >= 0 and base_sequence < 0):
        with pytest.raises(InvalidBatchError, match=r"transactional|baseSequence"):
            validate_produce_batch(buf)  # Kafka's rules: no transactions, no id without sequence
    else:
        assert validate_produce_batch(buf) == header
    times = [timestamp if r.timestamp is None else r.timestamp for r in records]
    assert decoded == [
        Record(base_offset + i, times[i], r.key, r.value, r.headers) for i, r in enumerate(records)
    ]
    assert decode_values(buf) == [r.value for r in records]
    assert list(decode_batches(buf + buf)) == decoded + decoded
    assert (header.base_timestamp, header.max_timestamp) == (times[0], max(times))
    assert (header.codec, header.is_transactional) == (codec, transactional)
    assert (header.producer_id, header.producer_epoch) == (producer_id, producer_epoch)
    assert header.base_sequence == base_sequence
    assert header.record_count == header.last_offset_delta + 1 == len(records)
    assert header.size == len(buf)


@PROPERTY
@given(values=values_st, with_keys=st.booleans(), codec=codec_st, data=st.data())
def test_encode_values_equals_encode_batch(
    values: list[bytes | None], with_keys: bool, codec: Codec, data: st.DataObject
) -> None:
    keys = None
    if with_keys and len(values) <= 40:  # keys take the record loop: a long list adds nothing
        keys = data.draw(
            st.lists(st.none() | st.binary(max_size=70), min_size=len(values), max_size=len(values))
        )
    fast = encode_values(values, keys, codec=codec, timestamp=TS)
    slow_keys = keys or [None] * len(values)
    slow = encode_batch(
        [NewRecord(v, k) for v, k in zip(values, slow_keys, strict=True)], codec=codec, timestamp=TS
    )
    assert fast == slow
    assert decode_values(fast) == values
    assert [(r.key, r.value) for r in decode_batch(fast)[1]] == list(
        zip(slow_keys, values, strict=True)
    )


# ---------------------------------------------------------------------------- damage


def _covered_byte(size: int) -> st.SearchStrategy[int]:
    # Bytes 0-7 (baseOffset) and 12-15 (partitionLeaderEpoch) are outside the CRC by design:
    # the broker rewrites them in place on every append without re-checksumming. batchLength
    # (8-11) is outside too, but changing it moves the CRC's range or the batch's end.
    return st.integers(8, 11) | st.integers(16, size - 1)


@PROPERTY
@given(records=cut_records_st, codec=codec_st, data=st.data())
def test_any_single_bit_flip_is_detected(
    records: list[NewRecord], codec: Codec, data: st.DataObject
) -> None:
    buf = encode_batch(records, codec=codec, timestamp=TS)
    damaged = bytearray(buf)
    damaged[data.draw(_covered_byte(len(buf)))] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises((CorruptBatchError, InvalidBatchError, BatchTooLargeError)):
        validate_batch(damaged)
    with pytest.raises((CorruptBatchError, InvalidBatchError, BatchTooLargeError)):
        decode_batch(damaged)


@PROPERTY
@given(
    records=cut_records_st, index=st.integers(0, 7) | st.integers(12, 15), bit=st.integers(0, 7)
)
def test_flips_in_base_offset_and_leader_epoch_pass_by_design(
    records: list[NewRecord], index: int, bit: int
) -> None:
    buf = bytearray(encode_batch(records, timestamp=TS))
    before = parse_header(buf)
    buf[index] ^= 1 << bit
    after = validate_batch(buf)
    assert (after.base_offset, after.partition_leader_epoch) != (
        before.base_offset,
        before.partition_leader_epoch,
    )


@PROPERTY
@given(records=cut_records_st, codec=codec_st, data=st.data())
def test_any_truncation_is_detected(
    records: list[NewRecord], codec: Codec, data: st.DataObject
) -> None:
    buf = encode_batch(records, codec=codec, timestamp=TS)
    cut = buf[: data.draw(st.integers(0, len(buf) - 1))]
    with pytest.raises(InvalidBatchError):
        validate_batch(cut)
    with pytest.raises(InvalidBatchError):
        decode_batch(cut)
    if cut:
        with pytest.raises(InvalidBatchError):
            list(iter_batches(buf + cut))


# ---------------------------------------------------------------------------- fuzzing


def _every_decoder(buf: bytes | bytearray) -> None:
    produced = outcome(validate_produce_batch, buf)
    if not isinstance(produced, type):  # accepted for storage: every consumer must read it
        header, records = decode_batch(buf)
        assert header == produced
        assert len(records) == header.record_count
        assert decode_values(buf) == [r.value for r in records]
    for check in (True, False):
        batch = outcome(decode_batch, buf, verify_crc=check)
        values = outcome(decode_values, buf, verify_crc=check)
        if isinstance(batch, type):
            assert batch == values  # the same checks fail the same way
        else:
            assert values == [r.value for r in batch[1]]
    outcome(parse_header, buf)
    outcome(validate_batch, buf)
    outcome(lambda: list(iter_batches(buf)))
    outcome(lambda: list(decode_batches(buf, verify_crc=False)))


@PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_record_errors(buf: bytes) -> None:
    _every_decoder(buf)
    _every_decoder(recrc(bytearray(buf)))


@PROPERTY
@given(
    section=st.binary(max_size=200),
    count=st.integers(-2, 40),
    last_offset_delta=st.integers(-2, 40),
    codec=codec_st,
    attributes=st.integers(0, 0x3F),
)
def test_random_records_behind_a_valid_header_only_raise_record_errors(
    section: bytes, count: int, last_offset_delta: int, codec: Codec, attributes: int
) -> None:
    payload = compress(codec, section)
    covered = struct.pack(
        ">hiqqqhii", (attributes & ~7) | codec, last_offset_delta, TS, TS, -1, -1, -1, count
    )
    covered += payload
    buf = struct.pack(">qiibI", 0, 49 + len(payload), -1, 2, crc32c(covered)) + covered
    _every_decoder(buf)


def _mutate(buf: bytes, data: st.DataObject) -> bytearray:
    out = bytearray(buf)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["set", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "set" and out:
            out[at] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif out:
            del out[at : at + data.draw(st.integers(1, 4))]
    return out


@PROPERTY
@given(records=small_records_st, codec=codec_st, keep_length=st.booleans(), data=st.data())
def test_mutated_batches_only_raise_record_errors(
    records: list[NewRecord], codec: Codec, keep_length: bool, data: st.DataObject
) -> None:
    buf = encode_batch(records, codec=codec, timestamp=TS)
    damaged = _mutate(buf, data)
    if keep_length and len(damaged) >= RECORDS_OFFSET:
        struct.pack_into(">i", damaged, 8, len(damaged) - 12)
    _every_decoder(damaged)
    _every_decoder(recrc(damaged))


@PROPERTY
@given(values=uniform_values_st, data=st.data())
def test_uniform_fast_path_agrees_with_the_record_loop(
    values: list[bytes], data: st.DataObject
) -> None:
    buf = bytearray(encode_values(values, timestamp=TS))
    if data.draw(st.booleans()):  # damage the records but keep the batch well-formed
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(RECORDS_OFFSET, len(buf) - 1))
            buf[at] = data.draw(st.integers(0, 255))
        recrc(buf)
    header = parse_header(buf)
    loop = outcome(
        decode_records,
        bytes(buf[RECORDS_OFFSET:]),
        count=header.record_count,
        base_offset=header.base_offset,
        base_ts=header.base_timestamp,
        last_delta=header.last_offset_delta,
        append_time=None,
        position=0,
    )
    fast = outcome(lambda: decode_batch(buf)[1])
    assert fast == loop
    values_out = outcome(decode_values, buf)
    assert values_out == (loop if isinstance(loop, type) else [r.value for r in loop])


@PROPERTY
@given(
    codec=st.sampled_from(list(Codec)[1:]), blob=st.binary(max_size=300), limit=st.integers(0, 5000)
)
def test_decompress_of_garbage_only_raises_record_errors(
    codec: Codec, blob: bytes, limit: int
) -> None:
    result = outcome(decompress, codec, blob, limit)
    assert isinstance(result, type) or len(result) <= limit


@PROPERTY
@given(codec=st.sampled_from(COMPRESSED), text=st.binary(max_size=1000), data=st.data())
def test_decompress_of_damaged_streams_only_raises_record_errors(
    codec: Codec, text: bytes, data: st.DataObject
) -> None:
    damaged = _mutate(compress(codec, text * 3), data)
    limit = data.draw(st.integers(0, 20_000))
    result = outcome(decompress, codec, damaged, limit)
    assert isinstance(result, type) or len(result) <= limit


# ---------------------------------------------------------------------------- declared lengths

LENGTH_FIELDS = [
    "batchLength",
    "recordsCount",
    "record length",
    "key length",
    "value length",
    "header count",
    "header key length",
    "header value length",
]
PEAK_BOUND = 256 * 1024
"""Bytes tracemalloc may see at peak while a small batch is refused; a declared length is at
least 1 MiB, so allocating for it would show."""


def _varint(value: int) -> bytes:
    return encode_varint(value)


def _declaring(field: str, declared: int, codec: Codec, value: bytes) -> bytes:
    """A one-record batch (key, value, one header) whose ``field`` declares ``declared``."""

    def size(name: str, actual: int) -> bytes:
        return _varint(declared if name == field else actual)

    body = b"\x00\x00\x00" + size("key length", 1) + b"k" + size("value length", len(value))
    body += value + size("header count", 1) + size("header key length", 1) + b"h"
    body += size("header value length", 1) + b"x"
    section = compress(codec, size("record length", len(body)) + body)
    count = declared if field == "recordsCount" else 1
    covered = struct.pack(">hiqqqhii", codec, count - 1, TS, TS, -1, -1, -1, count) + section
    length = declared if field == "batchLength" else 49 + len(section)
    return struct.pack(">qiibI", 0, length, -1, 2, crc32c(covered)) + covered


@PROPERTY
@given(
    field=st.sampled_from(LENGTH_FIELDS),
    declared=st.integers(1 << 20, 2**31 - 1),
    codec=codec_st,
    value=st.binary(max_size=16),
)
def test_declared_lengths_past_the_buffer_are_refused_before_allocating(
    field: str, declared: int, codec: Codec, value: bytes
) -> None:
    buf = _declaring(field, declared, codec, value)
    assert declared > 1000 * len(buf)
    tracemalloc.start()
    try:
        for decoder in (decode_batch, decode_values, validate_produce_batch):
            result = outcome(decoder, buf)
            assert isinstance(result, type), f"{decoder.__name__} accepted {field} {declared}"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BOUND, f"{peak} bytes at peak refusing {field} = {declared}"
