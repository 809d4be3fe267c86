"""Moving records between batches without decoding and re-encoding their keys and values.

Routing copies records from exchange batches into destination batches. Only two fields of a
record depend on its batch, ``timestampDelta`` and ``offsetDelta`` (see
``engine.records.record`` for the layout)::

    length | attributes | timestampDelta | offsetDelta | keyLength key valueLength value | headers
                                                        `------------- body -------------'

so :func:`read_records` keeps each record's *body* as one bytes slice (plus its key and
headers, which routing reads) and :func:`encode_routed` writes a new batch around those slices.
Writing takes about a third of ``encode_batch``'s time for the same records, and reading no
more than ``decode_batch``; it is the largest share of the router's per-record cost.

Bytes are untrusted even after the read path's CRC check: every length is checked against the
record's declared end before slicing, and anything malformed raises ``InvalidBatchError`` (a
``RecordError``), as the generic decoder would.

Both per-record loops also exist in C (``_creframe.c``, built at install when a compiler is
there): about ten times faster, and the router's largest cost otherwise. The Python loops
below are the reference the C ones are tested against, and the fallback without a build.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from engine.records.batch import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    MAGIC,
    NO_PARTITION_LEADER_EPOCH,
    RECORD_BATCH_OVERHEAD,
    TIMESTAMP_TYPE_FLAG,
    BatchHeader,
    parse_header,
    verify_crc,
)
from engine.records.compression import Codec, decompress
from engine.records.crc import crc32c
from engine.records.errors import InvalidBatchError
from engine.records.record import Header
from engine.records.varint import (
    SMALL_VARINTS,
    decode_varint,
    decode_varlong,
    encode_varint,
    encode_varlong,
)

try:
    from engine.views.routing import _creframe

    NATIVE = True
except ImportError:  # not built (no compiler at install): the Python loops do the work
    NATIVE = False

__all__ = ["RoutedRecord", "encode_routed", "read_records"]

_PREFIX = struct.Struct(">qiibI")  # baseOffset, batchLength, partitionLeaderEpoch, magic, crc
_COVERED = struct.Struct(">hiqqqhii")  # attributes .. recordsCount
_CODEC_MASK = 0x07
_MIN_BATCH_LENGTH = RECORD_BATCH_OVERHEAD - 12
_HEADS = 4096
_SAME_TIME_HEADS = tuple(b"\x00\x00" + encode_varint(i) for i in range(_HEADS))
_NO_HEADERS = b"\x00"


class RoutedRecord(NamedTuple):
    """A record as routing moves it: the fields it reads, and the bytes it copies.

    Attributes:
        offset: in the exchange partition.
        timestamp: absolute, in ms.
        key: the record key (also inside ``body``).
        headers: the record headers, decoded.
        body: keyLength, key, valueLength and value exactly as stored.
        header_bytes: headerCount and the headers exactly as stored.
    """

    offset: int
    timestamp: int
    key: bytes | None
    headers: tuple[Header, ...]
    body: bytes
    header_bytes: bytes


def read_records(buf: bytes, position: int = 0) -> tuple[BatchHeader, list[RoutedRecord]]:
    """The header and records of the batch at ``position`` (CRC checked; any codec).

    Raises:
        RecordError: a bad header, CRC, compressed payload or record.
    """
    header = parse_header(buf, position, DEFAULT_MAX_BATCH_BYTES)
    verify_crc(buf, position, header)
    payload = buf[position + RECORD_BATCH_OVERHEAD : position + header.size]
    codec = header.attributes & _CODEC_MASK
    if codec:
        payload = decompress(Codec(codec), payload, DEFAULT_MAX_DECOMPRESSED_BYTES)
    append_time = header.max_timestamp if header.attributes & TIMESTAMP_TYPE_FLAG else None
    if not NATIVE:
        return header, _records(payload, header, append_time, position)
    return header, _c_records(payload, header, append_time, position)


def _c_records(
    data: bytes, header: BatchHeader, append_time: int | None, position: int
) -> list[RoutedRecord]:
    """:func:`_records` in C; raises the same errors (non-empty headers decode in Python)."""
    def headers(data: bytes, pos: int, end: int, index: int) -> tuple[Header, ...]:
        return _headers(data, pos, end, index, position)

    def bad(index: int, reason: str) -> InvalidBatchError:
        return _bad(index, reason, position)

    records: list[RoutedRecord] = _creframe.records(
        data, header.base_offset, header.base_timestamp, header.last_offset_delta, append_time,
        header.record_count, RoutedRecord, headers, bad, _NO_HEADERS)
    return records


def _records(
    data: bytes, header: BatchHeader, append_time: int | None, position: int
) -> list[RoutedRecord]:
    """The per-record loop, one long function on purpose (as ``decode_records``): one- and
    two-byte varints are decoded inline, since a helper call per field costs a third more."""
    out: list[RoutedRecord] = []
    append = out.append
    new = tuple.__new__
    varint, varlong = decode_varint, decode_varlong
    base_offset, base_ts, last_delta = header.base_offset, header.base_timestamp, \
        header.last_offset_delta
    pos = index = 0
    size = len(data)
    no_headers = b"\x00"
    try:
        for index in range(header.record_count):
            byte = data[pos]
            if byte < 0x80:
                length, pos = (byte >> 1) ^ -(byte & 1), pos + 1
            elif data[pos + 1] < 0x80:
                zigzag = (byte & 0x7F) | (data[pos + 1] << 7)
                length, pos = (zigzag >> 1) ^ -(zigzag & 1), pos + 2
            else:
                length, pos = varint(data, pos)
            end = pos + length
            if end > size or length < 6:
                raise _bad(index, f"length {length} does not fit", position)
            byte = data[pos + 1]
            if byte < 0x80:
                ts_delta, pos = (byte >> 1) ^ -(byte & 1), pos + 2
            else:
                ts_delta, pos = varlong(data, pos + 1)
            byte = data[pos]
            if byte < 0x80:
                delta, pos = (byte >> 1) ^ -(byte & 1), pos + 1
            elif data[pos + 1] < 0x80:
                zigzag = (byte & 0x7F) | (data[pos + 1] << 7)
                delta, pos = (zigzag >> 1) ^ -(zigzag & 1), pos + 2
            else:
                delta, pos = varint(data, pos)
            start = pos
            if data[pos] == 1:
                key, pos = None, pos + 1
            else:
                byte = data[pos]
                if byte < 0x80:
                    klen, pos = (byte >> 1) ^ -(byte & 1), pos + 1
                elif data[pos + 1] < 0x80:
                    zigzag = (byte & 0x7F) | (data[pos + 1] << 7)
                    klen, pos = (zigzag >> 1) ^ -(zigzag & 1), pos + 2
                else:
                    klen, pos = varint(data, pos)
                if not 0 <= klen <= end - pos:
                    raise _bad(index, f"key length {klen} is invalid", position)
                key, pos = data[pos : pos + klen], pos + klen
            byte = data[pos]
            if byte < 0x80:
                vlen, pos = (byte >> 1) ^ -(byte & 1), pos + 1
            elif data[pos + 1] < 0x80:
                zigzag = (byte & 0x7F) | (data[pos + 1] << 7)
                vlen, pos = (zigzag >> 1) ^ -(zigzag & 1), pos + 2
            else:
                vlen, pos = varint(data, pos)
            if not -1 <= vlen <= end - pos:
                raise _bad(index, f"value length {vlen} is invalid", position)
            if vlen > 0:
                pos += vlen
            body = data[start:pos]
            if data[pos] == 0 and pos + 1 == end:
                headers: tuple[Header, ...] = ()
                header_bytes = no_headers
            else:
                headers = _headers(data, pos, end, index, position)
                header_bytes = data[pos:end]
            if not 0 <= delta <= last_delta:
                raise _bad(index, f"offsetDelta {delta} is outside 0..{last_delta}", position)
            timestamp = base_ts + ts_delta if append_time is None else append_time
            append(new(RoutedRecord, (base_offset + delta, timestamp, key, headers, body,
                                      header_bytes)))
            pos = end
    except IndexError:
        raise _bad(index, "truncated", position) from None
    if pos != size:
        raise InvalidBatchError(f"{size - pos} bytes follow the last record", position)
    return out


def _headers(
    data: bytes, pos: int, end: int, index: int, position: int
) -> tuple[Header, ...]:
    count, pos = decode_varint(data, pos)
    if not 0 <= count <= (end - pos) // 2:
        raise _bad(index, f"header count {count} does not fit", position)
    headers = []
    for _ in range(count):
        klen, pos = decode_varint(data, pos)
        if not 0 <= klen <= end - pos:
            raise _bad(index, f"header key length {klen} is invalid", position)
        try:
            key = data[pos : pos + klen].decode()
        except UnicodeDecodeError:
            raise _bad(index, "a header key is not UTF-8", position) from None
        vlen, pos = decode_varint(data, pos + klen)
        if not -1 <= vlen <= end - pos:
            raise _bad(index, f"header value length {vlen} is invalid", position)
        value = None if vlen < 0 else data[pos : pos + vlen]
        pos += max(vlen, 0)
        headers.append(Header(key, value))
    if pos != end:
        raise _bad(index, "headers end before the record does", position)
    return tuple(headers)


def _bad(index: int, reason: str, position: int) -> InvalidBatchError:
    return InvalidBatchError(f"record {index}: {reason}", position)


def encode_headers(headers: Sequence[Header]) -> bytes:
    """headerCount and the headers, as a record stores them."""
    parts = [encode_varint(len(headers))]
    for header in headers:
        key = header.key.encode()
        parts += [encode_varint(len(key)), key]
        if header.value is None:
            parts.append(b"\x01")
        else:
            parts += [encode_varint(len(header.value)), header.value]
    return b"".join(parts)


def encode_routed(
    records: Sequence[RoutedRecord],
    *,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
) -> bytes:
    """One uncompressed CreateTime batch of ``records`` (offsets 0..n-1, base offset 0).

    The result is what ``encode_batch`` makes of the same keys, values, headers and
    timestamps: the bodies and headers are copied, only the deltas and lengths are new.
    """
    if not NATIVE:
        blob, max_ts = _records_section(records)
    else:
        blob, max_ts = _creframe.encode(records)
    base_ts = records[0].timestamp
    covered = _COVERED.pack(0, len(records) - 1, base_ts, max_ts, producer_id, producer_epoch,
                            base_sequence, len(records))
    crc = crc32c(blob, crc32c(covered))
    prefix = _PREFIX.pack(0, _MIN_BATCH_LENGTH + len(blob), NO_PARTITION_LEADER_EPOCH, MAGIC, crc)
    return b"".join((prefix, covered, blob))


def _records_section(records: Sequence[RoutedRecord]) -> tuple[bytes, int]:
    """The records of :func:`encode_routed` and their largest timestamp (the reference loop
    of ``_creframe.encode``)."""
    small = SMALL_VARINTS
    cached = len(small)
    heads = _SAME_TIME_HEADS
    base_ts = records[0].timestamp
    max_ts = base_ts
    parts: list[bytes] = []
    extend = parts.extend
    for index, record in enumerate(records):
        timestamp = record.timestamp
        if timestamp == base_ts and index < _HEADS:
            head = heads[index]  # attributes, timestampDelta 0, offsetDelta
        else:
            delta = timestamp - base_ts
            ts_bytes = small[delta] if 0 <= delta < cached else encode_varlong(delta)
            head = b"\x00" + ts_bytes + (small[index] if index < cached else encode_varint(index))
            max_ts = max(max_ts, timestamp)
        body, header_bytes = record.body, record.header_bytes
        length = len(head) + len(body) + len(header_bytes)
        extend((small[length] if length < cached else encode_varint(length), head, body,
                header_bytes))
    return b"".join(parts), max_ts
