"""The event store's records: how events, stream deletions and snapshots look in the log.

Every record is a plain Kafka record (RecordBatch v2, see :mod:`engine.records`); a reader in
any language needs only the batch codec and these rules. Header keys are UTF-8; header values
below are ASCII unless said otherwise; numbers are ASCII decimal (``b"42"``).

Event record, in the store topic (partition ``murmur2(key) % partitions``, as Kafka's producer)::

    key      stream id, UTF-8 (1..1024 bytes)
    value    event data, opaque bytes (usually JSON); never null (empty data is b"")
    headers  in this order:
             es.version        stream version of the event, decimal, >= 0
             es.id             event id, canonical lowercase UUID text (36 bytes)
             es.type           event type, UTF-8, never starting with '$'
             es.type_version   schema version of the type, decimal, >= 0
             es.metadata       opaque bytes; present only when the metadata is not empty
    timestamp  the broker's clock when appended (CreateTime)

An append's events are consecutive records, with consecutive versions, of one batch, so the
log stores an append whole or not at all. A batch may hold several appends (a group commit of
pipelined appends, ``encode_event_group``), even to different streams: readers key every
record by its own key and version, never by the batch.

Stream-control records (store topic, same key and partition as the stream's events)::

    key      stream id
    value    null
    headers  es.type            "$deleted"   soft delete: the stream reads as not found
                                "$truncated" events below es.truncate_before are not returned
             es.truncate_before first version still readable, decimal

They take no stream version. The stream's state is a function of its records in log order:
its versions come from its events; ``truncate_before`` is the largest es.truncate_before seen;
it is deleted when its last record is a ``$deleted`` record (an event appended after a delete
recreates the stream; its versions continue where they stopped, the delete's
``es.truncate_before`` hides the old ones). Records without ``es.version`` or a ``$`` type
(written by a plain producer) are not events and are skipped.

Snapshot record, in ``<topic>.snapshots`` (one partition, ``cleanup.policy=compact``)::

    key      stream id
    value    the state, opaque bytes
    headers  es.version  the stream version the state includes, decimal

The index checkpoint records of ``__eventstore_index`` are described in ``checkpoint``.
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Sequence
from typing import NamedTuple

from engine.records.batch import (
    LOG_OVERHEAD,
    MAGIC,
    NO_PARTITION_LEADER_EPOCH,
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    NO_SEQUENCE,
    RECORD_BATCH_OVERHEAD,
    RECORDS_OFFSET,
    decode_batch,
    encode_batch,
    parse_header,
    verify_crc,
)
from engine.records.compression import Codec, decompress
from engine.records.crc import crc32c
from engine.records.errors import RecordError
from engine.records.record import Header, NewRecord, Record
from engine.records.varint import SMALL_VARINTS, decode_varint, decode_varlong, encode_varint
from engine.views.eventstore.packed import PackedEvents
from engine.views.eventstore.types import EventData, EventPosition, RecordedEvent

try:
    from engine.views.eventstore import _cevents

    NATIVE = True
except ImportError:  # not built (no compiler at install): PackedEvents go through the loop
    NATIVE = False

__all__ = [
    "DELETED_TYPE",
    "HEADER_EVENT_ID",
    "HEADER_METADATA",
    "HEADER_TRUNCATE_BEFORE",
    "HEADER_TYPE",
    "HEADER_TYPE_VERSION",
    "HEADER_VERSION",
    "KIND_DELETED",
    "KIND_TRUNCATED",
    "TRUNCATED_TYPE",
    "ScanEntry",
    "decode_event",
    "encode_control",
    "encode_event_group",
    "encode_events",
    "encode_snapshot",
    "scan_batches",
]

log = logging.getLogger(__name__)

HEADER_VERSION = "es.version"
HEADER_EVENT_ID = "es.id"
HEADER_TYPE = "es.type"
HEADER_TYPE_VERSION = "es.type_version"
HEADER_METADATA = "es.metadata"
HEADER_TRUNCATE_BEFORE = "es.truncate_before"
DELETED_TYPE = "$deleted"
TRUNCATED_TYPE = "$truncated"

KIND_DELETED = -1
"""``ScanEntry.version`` of a ``$deleted`` record."""
KIND_TRUNCATED = -2
"""``ScanEntry.version`` of a ``$truncated`` record."""

_B_VERSION = HEADER_VERSION.encode()
_B_EVENT_ID = HEADER_EVENT_ID.encode()
_B_TYPE = HEADER_TYPE.encode()
_B_TRUNCATE = HEADER_TRUNCATE_BEFORE.encode()
_B_DELETED = DELETED_TYPE.encode()
_B_TRUNCATED = TRUNCATED_TYPE.encode()
_MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024


def _header_key(name: str) -> bytes:
    return encode_varint(len(name)) + name.encode()


_H_VERSION = _header_key(HEADER_VERSION)
_H_EVENT_ID = _header_key(HEADER_EVENT_ID)
_H_TYPE = _header_key(HEADER_TYPE)
_H_TYPE_VERSION = _header_key(HEADER_TYPE_VERSION)
_H_METADATA = _header_key(HEADER_METADATA)
_PREFIX = struct.Struct(">qiibI")  # baseOffset, batchLength, partitionLeaderEpoch, magic, crc
_COVERED = struct.Struct(">hiqqqhii")  # attributes .. recordsCount (what the CRC covers)


class ScanEntry(NamedTuple):
    """What the index needs from one record, read without touching its value.

    ``version`` is the stream version of an event, or KIND_DELETED / KIND_TRUNCATED.
    """

    offset: int
    key: bytes
    version: int
    event_id: bytes
    truncate_before: int


def encode_events(
    stream_key: bytes, first_version: int, events: Sequence[EventData], timestamp_ms: int
) -> bytes:
    """One batch holding ``events`` as versions ``first_version``, ``first_version + 1``..."""
    return encode_batch(_event_records(stream_key, first_version, events),
                        timestamp=timestamp_ms)


def encode_event_group(
    appends: Sequence[tuple[bytes, int, Sequence[EventData], Sequence[bytes]]],
    timestamp_ms: int,
) -> bytes:
    """One batch holding several appends ``(stream key, first version, events, event ids as
    bytes)`` in order; byte for byte what ``encode_batch`` makes of the same records.

    This is the hot path of pipelined appends, so it writes the records (see ``record`` for
    their layout: length, attributes 0, timestampDelta 0, offsetDelta, key, value, headers)
    straight into one list of byte strings instead of building ``NewRecord`` and ``Header``
    objects, and the batch header (layout in ``engine.records.batch``) with two structs.
    :class:`PackedEvents` are written by ``_cevents.encode`` straight from the request bytes
    (the loop below is its reference).
    """
    parts: list[bytes] = []
    append = parts.append
    small = SMALL_VARINTS
    cached = len(small)
    delta = 0
    for stream_key, first_version, events, ids in appends:
        klen = len(stream_key)
        key_part = (small[klen] if klen < cached else encode_varint(klen)) + stream_key
        if NATIVE and type(events) is PackedEvents:
            append(_cevents.encode(events.raw, events.spans, events.ids, key_part,
                                   first_version, delta))
            delta += len(events)
            continue
        for number, event in enumerate(events):
            type_bytes = event.type.encode()
            version = b"%d" % (first_version + number)
            type_version = b"%d" % event.type_version
            metadata = event.metadata
            headers = b"".join((
                b"\x0a" if metadata else b"\x08",  # 5 or 4 headers, zig-zag
                _H_VERSION, small[len(version)], version,
                _H_EVENT_ID, small[len(ids[number])], ids[number],
                _H_TYPE, encode_varint(len(type_bytes)), type_bytes,
                _H_TYPE_VERSION, small[len(type_version)], type_version,
            ))
            if metadata:
                headers += _H_METADATA + encode_varint(len(metadata)) + metadata
            data = event.data
            head = b"\x00\x00" + (small[delta] if delta < cached else encode_varint(delta))
            value_length = encode_varint(len(data))
            size = len(head) + len(key_part) + len(value_length) + len(data) + len(headers)
            append(encode_varint(size))
            append(head)
            append(key_part)
            append(value_length)
            append(data)
            append(headers)
            delta += 1
    payload = b"".join(parts)
    if delta == 0:
        raise ValueError("an event group needs at least one event")
    covered = _COVERED.pack(0, delta - 1, timestamp_ms, timestamp_ms, NO_PRODUCER_ID,
                            NO_PRODUCER_EPOCH, NO_SEQUENCE, delta)
    crc = crc32c(payload, crc32c(covered))
    prefix = _PREFIX.pack(0, RECORD_BATCH_OVERHEAD - LOG_OVERHEAD + len(payload),
                          NO_PARTITION_LEADER_EPOCH, MAGIC, crc)
    return b"".join((prefix, covered, payload))


def _event_records(stream_key: bytes, first_version: int,
                   events: Sequence[EventData]) -> list[NewRecord]:
    records = []
    for index, event in enumerate(events):
        headers = [
            Header(HEADER_VERSION, b"%d" % (first_version + index)),
            Header(HEADER_EVENT_ID, str(event.event_id).encode()),
            Header(HEADER_TYPE, event.type.encode()),
            Header(HEADER_TYPE_VERSION, b"%d" % event.type_version),
        ]
        if event.metadata:
            headers.append(Header(HEADER_METADATA, event.metadata))
        records.append(NewRecord(event.data, stream_key, tuple(headers)))
    return records


def encode_control(
    stream_key: bytes, deleted: bool, truncate_before: int, timestamp_ms: int
) -> bytes:
    """One batch holding a ``$deleted`` or ``$truncated`` record."""
    headers = (
        Header(HEADER_TYPE, _B_DELETED if deleted else _B_TRUNCATED),
        Header(HEADER_TRUNCATE_BEFORE, b"%d" % truncate_before),
    )
    return encode_batch([NewRecord(None, stream_key, headers)], timestamp=timestamp_ms)


def encode_snapshot(stream_key: bytes, version: int, state: bytes, timestamp_ms: int) -> bytes:
    """One batch holding a snapshot record."""
    headers = (Header(HEADER_VERSION, b"%d" % version),)
    return encode_batch([NewRecord(state, stream_key, headers)], timestamp=timestamp_ms)


def decode_event(record: Record, partition: int) -> RecordedEvent | None:
    """The event a decoded record holds; None for control and foreign records."""
    if record.key is None:
        return None
    fields = {header.key: header.value for header in record.headers}
    version = fields.get(HEADER_VERSION)
    event_id = fields.get(HEADER_EVENT_ID)
    event_type = fields.get(HEADER_TYPE)
    if version is None or event_id is None or event_type is None:
        return None
    try:
        return RecordedEvent(
            stream=record.key.decode(),
            version=int(version),
            event_id=uuid.UUID(event_id.decode()),
            type=event_type.decode(),
            type_version=int(fields.get(HEADER_TYPE_VERSION) or b"1"),
            data=record.value or b"",
            metadata=fields.get(HEADER_METADATA) or b"",
            timestamp_ms=record.timestamp,
            position=EventPosition(partition, record.offset),
        )
    except (ValueError, UnicodeDecodeError):
        log.warning("skipped a malformed event record at offset %d", record.offset)
        return None


def decode_records(data: bytes, position: int, max_batch_bytes: int) -> tuple[int, list[Record]]:
    """The size and records of the batch at ``position``; a malformed batch has no records.

    A batch whose header and CRC are valid but whose records do not decode can only come from
    a foreign producer (the produce path does not decode records); it holds no events.
    """
    header = parse_header(data, position, max_batch_bytes)
    try:
        _, records = decode_batch(
            data, position, max_batch_bytes=max_batch_bytes,
            max_decompressed_bytes=_MAX_DECOMPRESSED_BYTES,
        )
    except RecordError as exc:
        log.warning("skipped an undecodable batch at offset %d: %s", header.base_offset, exc)
        return header.size, []
    return header.size, records


def scan_batches(data: bytes, from_offset: int, max_batch_bytes: int) -> list[ScanEntry]:
    """Index entries of every record at or after ``from_offset`` in whole stored ``data``.

    Only keys and headers are parsed: values are skipped by their length, so a rebuild costs
    the same whatever the size of the events. CRCs are checked (cheap, in C).
    """
    entries: list[ScanEntry] = []
    position = 0
    end = len(data)
    while position < end:
        header = parse_header(data, position, max_batch_bytes)
        verify_crc(data, position, header)
        if header.last_offset >= from_offset and not header.is_control:
            records = data[position + RECORDS_OFFSET : position + header.size]
            if header.codec != Codec.NONE:
                records = decompress(header.codec, records, _MAX_DECOMPRESSED_BYTES)
            try:
                _scan_records(records, header.base_offset, header.record_count, from_offset,
                              entries)
            except (IndexError, ValueError, RecordError) as exc:
                log.warning("skipped an unparsable batch at offset %d: %s", header.base_offset, exc)
        position += header.size
    return entries


def _scan_records(
    data: bytes, base_offset: int, count: int, from_offset: int, out: list[ScanEntry]
) -> None:
    """Append one ScanEntry per event or control record; a malformed record raises."""
    varint = decode_varint
    pos = 0
    size = len(data)
    for _ in range(count):
        length, pos = varint(data, pos)
        end = pos + length
        if length < 6 or end > size:
            raise ValueError(f"record length {length} overruns the batch")
        _, pos = decode_varlong(data, pos + 1)  # attributes, then timestampDelta
        delta, pos = varint(data, pos)
        klen, pos = varint(data, pos)
        key = data[pos : pos + klen] if klen > 0 else b""
        pos += max(klen, 0)
        vlen, pos = varint(data, pos)
        pos += max(vlen, 0)
        hcount, pos = varint(data, pos)
        version = event_type = event_id = truncate = None
        for _ in range(hcount):
            hklen, pos = varint(data, pos)
            hkey = data[pos : pos + hklen]
            hvlen, pos = varint(data, pos + hklen)
            hvalue = data[pos : pos + hvlen] if hvlen >= 0 else b""
            pos += max(hvlen, 0)
            if hkey == _B_VERSION:
                version = hvalue
            elif hkey == _B_EVENT_ID:
                event_id = hvalue
            elif hkey == _B_TYPE:
                event_type = hvalue
            elif hkey == _B_TRUNCATE:
                truncate = hvalue
        if pos > end:
            raise ValueError("record headers overrun the record")
        pos = end
        offset = base_offset + delta
        if offset < from_offset or not key or event_type is None:
            continue
        if event_type[:1] == b"$":
            if truncate is not None and event_type in (_B_DELETED, _B_TRUNCATED):
                kind = KIND_DELETED if event_type == _B_DELETED else KIND_TRUNCATED
                out.append(ScanEntry(offset, key, kind, b"", int(truncate)))
        elif version is not None and event_id is not None:
            out.append(ScanEntry(offset, key, int(version), event_id, 0))
