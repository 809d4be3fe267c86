"""Kafka RecordBatch v2 (magic 2): the bytes producers send, the log stores and fetches serve.

Batch layout (all integers big-endian; byte offsets from the start of the batch)::

     0  baseOffset            int64   offset of the first record; the broker writes it
     8  batchLength           int32   bytes after this field: batch size = batchLength + 12
    12  partitionLeaderEpoch  int32
    16  magic                 int8    2
    17  crc                   uint32  CRC-32C of bytes 21..end
    21  attributes            int16   bits 0-2 codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd)
                                      bit 3 timestamp type (0 create, 1 log append)
                                      bit 4 transactional, bit 5 control
    23  lastOffsetDelta       int32   offset of the last record minus baseOffset
    27  baseTimestamp         int64   timestamp of the first record
    35  maxTimestamp          int64   largest record timestamp (the broker's clock for log
                                      append time)
    43  producerId            int64   -1 when not idempotent
    51  producerEpoch         int16   -1
    53  baseSequence          int32   -1
    57  recordsCount          int32
    61  records               the records back to back; with a codec, one compressed blob of
                              them (see ``compression``)

Records: see ``record`` for the layout of each record in the records section.

The CRC does not cover baseOffset, batchLength, partitionLeaderEpoch or magic, so the broker can
assign offsets (and leaders their epoch) by patching bytes in place without re-checksumming.
Everything read from a buffer is untrusted: decoding raises only ``RecordError`` subclasses and
checks every length against the bytes that remain before it slices or allocates.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from engine.records.compression import Codec, compress, decompress
from engine.records.crc import BytesLike, crc32c
from engine.records.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    UnsupportedCodecError,
    UnsupportedMagicError,
)
from engine.records.record import (
    UNIFORM_MIN_RECORDS,
    Header,
    NewRecord,
    Record,
    check_records,
    decode_record_values,
    decode_records,
    encode_plain,
    encode_records,
    encode_uniform,
    uniform_records,
    uniform_values,
)
from engine.records.varint import INT16_MAX, INT16_MIN, INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN

__all__ = [
    "ATTRIBUTES_OFFSET",
    "BASE_OFFSET_OFFSET",
    "BASE_SEQUENCE_OFFSET",
    "BASE_TIMESTAMP_OFFSET",
    "CONTROL_FLAG",
    "CRC_OFFSET",
    "CREATE_TIME",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_DECOMPRESSED_BYTES",
    "LAST_OFFSET_DELTA_OFFSET",
    "LENGTH_OFFSET",
    "LOG_APPEND_TIME",
    "LOG_OVERHEAD",
    "MAGIC",
    "MAGIC_OFFSET",
    "MAX_TIMESTAMP_OFFSET",
    "NO_PARTITION_LEADER_EPOCH",
    "NO_PRODUCER_EPOCH",
    "NO_PRODUCER_ID",
    "NO_SEQUENCE",
    "PARTITION_LEADER_EPOCH_OFFSET",
    "PRODUCER_EPOCH_OFFSET",
    "PRODUCER_ID_OFFSET",
    "RECORDS_COUNT_OFFSET",
    "RECORDS_OFFSET",
    "RECORD_BATCH_OVERHEAD",
    "TIMESTAMP_TYPE_FLAG",
    "TRANSACTIONAL_FLAG",
    "BatchHeader",
    "Codec",
    "Header",
    "NewRecord",
    "Record",
    "decode_batch",
    "decode_batches",
    "decode_values",
    "encode_batch",
    "encode_values",
    "iter_batches",
    "parse_header",
    "patch_base_offset",
    "set_log_append_time",
    "validate_batch",
    "validate_produce_batch",
    "verify_crc",
]

LOG_OVERHEAD = 12
RECORD_BATCH_OVERHEAD = 61
BASE_OFFSET_OFFSET = 0
LENGTH_OFFSET = 8
PARTITION_LEADER_EPOCH_OFFSET = 12
MAGIC_OFFSET = 16
CRC_OFFSET = 17
ATTRIBUTES_OFFSET = 21
LAST_OFFSET_DELTA_OFFSET = 23
BASE_TIMESTAMP_OFFSET = 27
MAX_TIMESTAMP_OFFSET = 35
PRODUCER_ID_OFFSET = 43
PRODUCER_EPOCH_OFFSET = 51
BASE_SEQUENCE_OFFSET = 53
RECORDS_COUNT_OFFSET = 57
RECORDS_OFFSET = 61
MIN_BATCH_LENGTH = RECORD_BATCH_OVERHEAD - LOG_OVERHEAD

MAGIC = 2
NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
NO_PARTITION_LEADER_EPOCH = -1
CREATE_TIME = 0
LOG_APPEND_TIME = 1
CODEC_MASK = 0x07
TIMESTAMP_TYPE_FLAG = 0x08
TRANSACTIONAL_FLAG = 0x10
CONTROL_FLAG = 0x20

DEFAULT_MAX_BATCH_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_DECOMPRESSED_BYTES = 8 * DEFAULT_MAX_BATCH_BYTES
"""Compressed batches expand; 8x covers text-like payloads while a bomb stays bounded."""

_HEADER = struct.Struct(">qiibIhiqqqhii")
_PREFIX = struct.Struct(">qiibI")  # baseOffset..crc, bytes 0-20
_COVERED = struct.Struct(">hiqqqhii")  # attributes..recordsCount, bytes 21-60
_INT16 = struct.Struct(">h")
_INT64 = struct.Struct(">q")
_UINT32 = struct.Struct(">I")
_NO_LIMIT = INT32_MAX + LOG_OVERHEAD


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The 61 fixed bytes of a batch, as parsed; records are not touched."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        """Bytes the whole batch occupies, including baseOffset and batchLength."""
        return LOG_OVERHEAD + self.batch_length

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def codec(self) -> Codec:
        """Compression codec; UnsupportedCodecError for bits 5-7 (a header nobody checked)."""
        bits = self.attributes & CODEC_MASK
        if bits > Codec.ZSTD:
            raise UnsupportedCodecError(bits)
        return Codec(bits)

    @property
    def timestamp_type(self) -> int:
        """``CREATE_TIME`` (0) or ``LOG_APPEND_TIME`` (1)."""
        return (self.attributes & TIMESTAMP_TYPE_FLAG) >> 3

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_FLAG)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_FLAG)

    @property
    def last_sequence(self) -> int:
        """Sequence of the last record; wraps past int32 max to 0 as Kafka's does."""
        base = self.base_sequence
        if base == NO_SEQUENCE:
            return NO_SEQUENCE
        delta = self.last_offset_delta
        if base > INT32_MAX - delta:
            return delta - (INT32_MAX - base) - 1
        return base + delta


# ---------------------------------------------------------------------------- header checks


def parse_header(
    buf: BytesLike, position: int = 0, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
) -> BatchHeader:
    """Parse and sanity-check the batch header at ``position``, without CRC or records.

    Raises:
        UnsupportedMagicError: magic is not 2.
        InvalidBatchError: fewer than 61 bytes, batchLength < 49, batch past the buffer's end,
            negative counts, or more records than offsets (``UnsupportedCodecError`` for codec
            bits 5-7).
        BatchTooLargeError: the batch is larger than ``max_batch_bytes``.
    """
    available = len(buf) - position
    if position < 0 or available < RECORD_BATCH_OVERHEAD:
        if position >= 0 and available > MAGIC_OFFSET and buf[position + MAGIC_OFFSET] != MAGIC:
            raise UnsupportedMagicError(buf[position + MAGIC_OFFSET], position)
        raise InvalidBatchError(
            f"a batch header needs {RECORD_BATCH_OVERHEAD} bytes, only {max(available, 0)} remain",
            position,
        )
    fields = _HEADER.unpack_from(buf, position)
    batch_length, magic, attributes = fields[1], fields[3], fields[5]
    last_offset_delta, record_count = fields[6], fields[12]
    if magic != MAGIC:
        raise UnsupportedMagicError(magic, position)
    if batch_length < MIN_BATCH_LENGTH:
        raise InvalidBatchError(
            f"batchLength {batch_length} is below the minimum of {MIN_BATCH_LENGTH}", position
        )
    size = batch_length + LOG_OVERHEAD
    if size > max_batch_bytes:
        raise BatchTooLargeError(f"record batch at byte {position}", size, max_batch_bytes)
    if size > available:
        raise InvalidBatchError(
            f"batch of {size} bytes is truncated: only {available} bytes remain", position
        )
    if attributes & CODEC_MASK > Codec.ZSTD:
        raise UnsupportedCodecError(attributes & CODEC_MASK, position)
    if record_count < 0:
        raise InvalidBatchError(f"recordsCount {record_count} is negative", position)
    if last_offset_delta < 0:
        raise InvalidBatchError(f"lastOffsetDelta {last_offset_delta} is negative", position)
    if record_count > last_offset_delta + 1:
        raise InvalidBatchError(
            f"recordsCount {record_count} exceeds lastOffsetDelta + 1 = {last_offset_delta + 1}",
            position,
        )
    return BatchHeader(*fields)


def verify_crc(buf: BytesLike, position: int, header: BatchHeader) -> None:
    """Check the stored CRC-32C against bytes 21..end; CorruptBatchError when they differ."""
    end = position + header.size
    if position < 0 or end > len(buf):
        raise InvalidBatchError(
            f"batch of {header.size} bytes does not fit in a {len(buf)}-byte buffer", position
        )
    computed = crc32c(memoryview(buf)[position + ATTRIBUTES_OFFSET : end])
    if computed != header.crc:
        raise CorruptBatchError(position, header.crc, computed)


def validate_batch(
    buf: BytesLike, position: int = 0, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
) -> BatchHeader:
    """:func:`parse_header` plus :func:`verify_crc`: everything short of decoding records."""
    header = parse_header(buf, position, max_batch_bytes)
    verify_crc(buf, position, header)
    return header


def validate_produce_batch(
    buf: BytesLike,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
) -> BatchHeader:
    """The broker's produce-path check: Kafka's ``LogValidator`` for one v2 batch.

    Requires exactly one batch filling ``buf``, at least one record, offsets without gaps
    (``lastOffsetDelta == recordsCount - 1``, as producers write them), no control flag (only
    the broker writes control batches), no transactional flag (Moldau has no transactions, so
    nothing would ever commit or abort it), a baseSequence >= 0 when a producer id is set, a
    valid CRC, and records that decode: the payload is decompressed (at most
    ``max_decompressed_bytes``) and every record is read, as Kafka reads them, so a stored
    batch can never fail a consumer's decode or the log cleaner (``check_records`` says what
    that costs per layout).
    """
    header = parse_header(buf, 0, max_batch_bytes)
    if header.size != len(buf):
        raise InvalidBatchError(
            f"a produce request carries exactly one batch: the batch is {header.size} bytes, "
            f"the request {len(buf)}"
        )
    if header.record_count < 1:
        raise InvalidBatchError("a produced batch needs at least one record")
    if header.last_offset_delta != header.record_count - 1:
        raise InvalidBatchError(
            f"lastOffsetDelta {header.last_offset_delta} does not match recordsCount "
            f"{header.record_count} (a produced batch has no offset gaps)"
        )
    if header.is_control:
        raise InvalidBatchError("producers may not send control batches")
    if header.is_transactional:
        raise InvalidBatchError(
            "transactional batches are not supported (Moldau has no transactions to commit "
            "or abort them); clear attributes bit 4"
        )
    if header.producer_id >= 0 and header.base_sequence < 0:
        raise InvalidBatchError(
            f"producerId {header.producer_id} is set but baseSequence {header.base_sequence} "
            "is negative; an idempotent batch starts at sequence 0 (or send producerId -1)"
        )
    verify_crc(buf, 0, header)
    codec = header.attributes & CODEC_MASK
    data: BytesLike
    if codec == Codec.NONE:  # checked in place: no copy of the payload on the produce path
        data = memoryview(buf)[RECORDS_OFFSET : header.size]
    else:
        data = _decompressed(buf, 0, header, max_decompressed_bytes)
    check_records(
        data, count=header.record_count, last_delta=header.last_offset_delta, position=0
    )
    return header


def iter_batches(
    buf: BytesLike, position: int = 0, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
) -> Iterator[tuple[int, BatchHeader]]:
    """Yield ``(position, header)`` of consecutive CRC-checked batches up to the buffer's end.

    A partial batch at the end is an error (InvalidBatchError), not silently dropped: the
    engine's reads return whole batches, so a cut batch means damage.
    """
    end = len(buf)
    while position < end:
        header = validate_batch(buf, position, max_batch_bytes)
        yield position, header
        position += header.size


def patch_base_offset(buf: bytearray | memoryview, position: int, base_offset: int) -> None:
    """Write ``base_offset`` into bytes 0-7; the CRC does not cover them, so it stays valid."""
    _check_range("base_offset", base_offset, INT64_MIN, INT64_MAX)
    if position < 0 or position + LOG_OVERHEAD > len(buf):
        raise InvalidBatchError(f"no batch at byte {position} of a {len(buf)}-byte buffer")
    _INT64.pack_into(buf, position + BASE_OFFSET_OFFSET, base_offset)


def set_log_append_time(buf: bytearray | memoryview, position: int, timestamp_ms: int) -> None:
    """Mark the batch LogAppendTime with ``timestamp_ms`` as maxTimestamp; rewrite the CRC.

    Attributes and maxTimestamp are CRC-covered, so the CRC is recomputed. The stored CRC is
    verified first, so that patching can never turn a damaged batch into a "valid" one.
    """
    _check_range("timestamp_ms", timestamp_ms, INT64_MIN, INT64_MAX)
    header = validate_batch(buf, position, _NO_LIMIT)
    _INT16.pack_into(buf, position + ATTRIBUTES_OFFSET, header.attributes | TIMESTAMP_TYPE_FLAG)
    _INT64.pack_into(buf, position + MAX_TIMESTAMP_OFFSET, timestamp_ms)
    covered = memoryview(buf)[position + ATTRIBUTES_OFFSET : position + header.size]
    _UINT32.pack_into(buf, position + CRC_OFFSET, crc32c(covered))


# ---------------------------------------------------------------------------- encoding


def encode_batch(
    records: Sequence[NewRecord],
    *,
    base_offset: int = 0,
    codec: Codec = Codec.NONE,
    timestamp: int | None = None,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    base_sequence: int = NO_SEQUENCE,
    partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH,
    is_transactional: bool = False,
) -> bytes:
    """Encode ``records`` as one batch with consecutive offsets (offsetDelta = index).

    ``timestamp`` (default: now, in ms) stands in for records whose timestamp is None;
    baseTimestamp is the first record's. Raises ValueError for no records or a field outside
    its wire range, TypeError for keys or values that are not bytes.
    """
    count = len(records)
    _check_range("number of records", count, 1, INT32_MAX)
    default_ts = _now_ms() if timestamp is None else timestamp
    first = records[0].timestamp
    base_ts = default_ts if first is None else first
    blob, max_ts = encode_records(records, base_ts, default_ts)
    attributes = int(codec) | (TRANSACTIONAL_FLAG if is_transactional else 0)
    fields = (attributes, count - 1, base_ts, max_ts, producer_id, producer_epoch, base_sequence)
    return _assemble(
        blob,
        codec,
        fields=fields,
        count=count,
        base_offset=base_offset,
        partition_leader_epoch=partition_leader_epoch,
    )


def encode_values(
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
    *,
    base_offset: int = 0,
    codec: Codec = Codec.NONE,
    timestamp: int | None = None,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    base_sequence: int = NO_SEQUENCE,
    partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH,
    is_transactional: bool = False,
) -> bytes:
    """Fast path of :func:`encode_batch` for header-less records sharing one timestamp.

    Produces exactly the bytes ``encode_batch([NewRecord(v, k) ...], same arguments)`` does.
    Without keys and with equal-length values the records are laid out with numpy (one copy
    of the values, no per-record Python work); otherwise a specialised loop runs.
    """
    count = len(values)
    _check_range("number of records", count, 1, INT32_MAX)
    if keys is not None and len(keys) != count:
        raise ValueError(f"{len(keys)} keys for {count} values")
    ts = _now_ms() if timestamp is None else timestamp
    blob: BytesLike | None = None
    if keys is None and count >= UNIFORM_MIN_RECORDS:
        blob = encode_uniform(values)
    if blob is None:
        blob = encode_plain(values, keys)
    attributes = int(codec) | (TRANSACTIONAL_FLAG if is_transactional else 0)
    fields = (attributes, count - 1, ts, ts, producer_id, producer_epoch, base_sequence)
    return _assemble(
        blob,
        codec,
        fields=fields,
        count=count,
        base_offset=base_offset,
        partition_leader_epoch=partition_leader_epoch,
    )


def _assemble(
    blob: BytesLike,
    codec: Codec,
    *,
    fields: tuple[int, int, int, int, int, int, int],
    count: int,
    base_offset: int,
    partition_leader_epoch: int,
) -> bytes:
    """Prefix the records with the 61-byte header; CRC over header tail + payload."""
    _, _, base_ts, max_ts, producer_id, producer_epoch, base_sequence = fields
    _check_range("baseTimestamp", base_ts, INT64_MIN, INT64_MAX)
    _check_range("maxTimestamp", max_ts, INT64_MIN, INT64_MAX)
    _check_range("producer_id", producer_id, INT64_MIN, INT64_MAX)
    _check_range("producer_epoch", producer_epoch, INT16_MIN, INT16_MAX)
    _check_range("base_sequence", base_sequence, INT32_MIN, INT32_MAX)
    _check_range("base_offset", base_offset, INT64_MIN, INT64_MAX)
    _check_range("partition_leader_epoch", partition_leader_epoch, INT32_MIN, INT32_MAX)
    if codec not in _CODECS:
        raise UnsupportedCodecError(int(codec))
    payload = blob if codec == Codec.NONE else compress(codec, blob)
    batch_length = MIN_BATCH_LENGTH + len(payload)
    _check_range("batchLength", batch_length, MIN_BATCH_LENGTH, INT32_MAX)
    covered = _COVERED.pack(*fields, count)
    crc = crc32c(payload, crc32c(covered))
    prefix = _PREFIX.pack(base_offset, batch_length, partition_leader_epoch, MAGIC, crc)
    return b"".join((prefix, covered, payload))


# ---------------------------------------------------------------------------- decoding


def decode_batch(
    buf: BytesLike,
    position: int = 0,
    *,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
    verify_crc: bool = True,
    wanted: Container[int] | None = None,
) -> tuple[BatchHeader, list[Record]]:
    """Decode the batch at ``position`` into its header and records (with ``wanted``, only
    the records at those offsets, though all are checked).

    Checks the header, the CRC (unless ``verify_crc`` is False), that exactly recordsCount
    records were decoded and that they end exactly where the batch (or its decompressed
    payload) ends. LogAppendTime batches give every record the batch's maxTimestamp, as Kafka.
    """
    header, data = _records_data(buf, position, max_batch_bytes, max_decompressed_bytes, verify_crc)
    append_time = header.max_timestamp if header.attributes & TIMESTAMP_TYPE_FLAG else None
    values = uniform_values(data, header.record_count, header.last_offset_delta)
    if values is not None:
        timestamp = header.base_timestamp if append_time is None else append_time
        records = uniform_records(values, header.base_offset, timestamp)
        return header, records if wanted is None else [r for r in records if r[0] in wanted]
    records = decode_records(
        data,
        count=header.record_count,
        base_offset=header.base_offset,
        base_ts=header.base_timestamp,
        last_delta=header.last_offset_delta,
        append_time=append_time,
        position=position,
        wanted=wanted,
    )
    return header, records


def decode_values(
    buf: BytesLike,
    position: int = 0,
    *,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
    verify_crc: bool = True,
) -> list[bytes | None]:
    """Only the values of the batch at ``position``, with the checks of :func:`decode_batch`.

    For consumers that want payloads: no Record objects and no offset or timestamp arithmetic.
    """
    header, data = _records_data(buf, position, max_batch_bytes, max_decompressed_bytes, verify_crc)
    values = uniform_values(data, header.record_count, header.last_offset_delta)
    if values is not None:
        return cast("list[bytes | None]", values)
    return decode_record_values(
        data, count=header.record_count, last_delta=header.last_offset_delta, position=position
    )


def decode_batches(
    buf: BytesLike,
    position: int = 0,
    *,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
    verify_crc: bool = True,
) -> Iterator[Record]:
    """Every record of every batch in ``buf`` from ``position`` on, in order."""
    end = len(buf)
    while position < end:
        header, records = decode_batch(
            buf,
            position,
            max_batch_bytes=max_batch_bytes,
            max_decompressed_bytes=max_decompressed_bytes,
            verify_crc=verify_crc,
        )
        yield from records
        position += header.size


def _records_data(
    buf: BytesLike, position: int, max_batch_bytes: int, max_decompressed: int, check: bool
) -> tuple[BatchHeader, bytes]:
    """Header and the (decompressed) records bytes of the batch at ``position``."""
    header = parse_header(buf, position, max_batch_bytes)
    if check:
        verify_crc(buf, position, header)
    if header.attributes & CODEC_MASK == Codec.NONE:
        return header, bytes(buf[position + RECORDS_OFFSET : position + header.size])
    return header, _decompressed(buf, position, header, max_decompressed)


def _decompressed(buf: BytesLike, position: int, header: BatchHeader, max_bytes: int) -> bytes:
    """The records of a compressed batch, at most ``max_bytes`` of them."""
    payload = memoryview(buf)[position + RECORDS_OFFSET : position + header.size]
    try:
        return decompress(Codec(header.attributes & CODEC_MASK), payload, max_bytes)
    except InvalidBatchError as exc:
        raise InvalidBatchError(f"records payload: {exc.reason}", position) from exc


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is outside {low}..{high}")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_CODECS = frozenset(Codec)
