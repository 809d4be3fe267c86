"""Event-store records decoded straight from fetched batches: the replay and projection hot path.

The event store keeps each event as a plain Kafka record (see ``docs/event-store.md``)::

    key      stream id (UTF-8)
    value    event data
    headers  es.version (decimal), es.id (UUID text), es.type, es.type_version (decimal),
             es.metadata (only when not empty)

Replaying history reads millions of such records, so this module decodes them from the raw
batch bytes the consumer fetched, in one loop per batch, without building the generic
``Record``/``Header`` objects first (they cost about three quarters of the time). Varints of
one or two bytes are decoded inline; header keys are looked up in a dict of the five known
keys; repeated stream ids and event types are decoded once per batch. Records that are not
events (no ``es.version``/``es.type``, control records such as ``$deleted``) are counted and
skipped.

The batch CRC is not checked here: the consumer checks it when a chunk arrives.

The loop also exists in C (``_creplay.c``, built at install when a compiler is there), several
times faster; :func:`_decode` below is the reference it is tested against and the fallback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from engine.records import RECORDS_OFFSET, BatchHeader, Codec, RecordError, decompress
from engine.records import decode_varint as _varint
from engine.records import decode_varlong as _varlong
from moldau.errors import CorruptRecordError

try:
    from moldau import _creplay

    NATIVE = True
except ImportError:  # not built (no compiler at install): the Python loop decodes
    NATIVE = False

__all__ = ["StoredEvent", "decode_events", "stream_matcher"]

_MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
_HEADER_SLOTS = {b"es.version": 0, b"es.id": 1, b"es.type": 2, b"es.type_version": 3,
                 b"es.metadata": 4}
_VARINT = rb"(?:[\x00-\x7f]|[\x80-\xff]{1,4}[\x00-\x7f])"
# The headers exactly as the event store writes them (count, then each key length, key, value
# length, value; see the module docstring), matched in C by one call. The key lengths are
# literal bytes (zig-zag: "es.version" is 10 -> 0x14). The header count and every value's
# declared length are checked after the match, so the fast path takes exactly the records
# the slow path (:func:`_headers`) reads the same way; any other record takes the slow path.
_ES_HEADERS = re.compile(
    rb"([\x08\x0a])\x14es\.version([\x02-\x28])(\d{1,19})\x0aes\.id\x48([0-9a-f-]{36})"
    rb"\x0ees\.type([\x02-\x7e]|[\x80-\xff][\x00-\x7f])(.+?)"
    rb"\x1ees\.type_version([\x02-\x14])(\d{1,9})"
    rb"(?:\x16es\.metadata" + _VARINT + rb"(.*))?",
    re.DOTALL,
)


class StoredEvent(NamedTuple):
    """One event as stored in a store topic, with where it is stored.

    A NamedTuple because it is built once per replayed event (``tuple.__new__`` is several
    times cheaper than a dataclass ``__init__``). ``event_id`` is the UUID's text form.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    stream: str
    version: int
    type: str
    type_version: int
    event_id: str
    data: bytes
    metadata: bytes


Matcher = Callable[[str], bool]


def stream_matcher(stream: str | None, category: str | None) -> Matcher | None:
    """A predicate on stream ids for ``--stream`` / ``--category`` (None: every stream)."""
    if stream is not None:
        return stream.__eq__
    if category is not None:
        prefix = category.removesuffix("*").removesuffix("-") + "-"
        return lambda s: s.startswith(prefix)
    return None


def decode_events(
    data: bytes,
    position: int,
    header: BatchHeader,
    topic: str,
    partition: int,
    first_offset: int,
    out: list[StoredEvent],
    matcher: Matcher | None = None,
) -> int:
    """Append the events of the batch at ``position`` with offset >= ``first_offset`` to
    ``out``; returns how many records were skipped (not events, or not matching).

    Raises:
        CorruptRecordError: the records section does not parse (a batch whose header and CRC
            were valid, so only a foreign producer can have written it).
    """
    size = header.size
    codec = header.attributes & 0x07
    if codec:
        try:
            buf = decompress(Codec(codec), data[position + RECORDS_OFFSET : position + size],
                             _MAX_DECOMPRESSED_BYTES)
        except RecordError as exc:
            raise CorruptRecordError(f"{topic}[{partition}]: {exc}") from None
        pos, limit = 0, len(buf)
    else:
        buf, pos, limit = data, position + RECORDS_OFFSET, position + size
    append_time = header.max_timestamp if header.attributes & 0x08 else None
    try:
        if NATIVE:
            skipped: int = _creplay.decode(
                buf, pos, limit, header.record_count, header.base_offset,
                header.base_timestamp, append_time, topic, partition, first_offset, out,
                matcher, StoredEvent)
            return skipped
        return _decode(buf, pos, limit, header.record_count, header.base_offset,
                       header.base_timestamp, append_time, topic, partition, first_offset,
                       out, matcher)
    except (IndexError, ValueError, UnicodeDecodeError, RecordError) as exc:
        raise CorruptRecordError(
            f"{topic}[{partition}]: the batch at offset {header.base_offset} does not parse "
            f"as records ({type(exc).__name__}: {exc})"
        ) from None


def _decode(
    buf: bytes,
    pos: int,
    limit: int,
    count: int,
    base_offset: int,
    base_ts: int,
    append_time: int | None,
    topic: str,
    partition: int,
    first_offset: int,
    out: list[StoredEvent],
    matcher: Matcher | None,
) -> int:
    """The record loop; one long function on purpose (a call per field costs ~30%)."""
    new, event_type, append = tuple.__new__, StoredEvent, out.append
    match_headers = _ES_HEADERS.fullmatch
    names: dict[bytes, str] = {}
    last_key, last_stream, last_match = b"", "", True
    skipped = 0
    for _ in range(count):
        byte = buf[pos]
        if byte < 0x80:
            length, pos = byte >> 1, pos + 1
        elif buf[pos + 1] < 0x80:
            length, pos = ((byte & 0x7F) | (buf[pos + 1] << 7)) >> 1, pos + 2
        else:
            length, pos = _varint(buf, pos)
        end = pos + length
        if end > limit or length < 6:
            raise ValueError(f"record length {length} overruns the batch")
        byte = buf[pos + 1]  # pos: attributes, unused
        if byte < 0x80:
            ts_delta, pos = (byte >> 1) ^ -(byte & 1), pos + 2
        else:
            ts_delta, pos = _varlong(buf, pos + 1)
        byte = buf[pos]
        if byte < 0x80:
            offset, pos = base_offset + (byte >> 1), pos + 1
        elif buf[pos + 1] < 0x80:
            offset, pos = base_offset + (((byte & 0x7F) | (buf[pos + 1] << 7)) >> 1), pos + 2
        else:
            delta, pos = _varint(buf, pos)
            offset = base_offset + delta
        if offset < first_offset:
            pos = end
            continue
        byte = buf[pos]
        if byte < 0x80:
            klen, pos = (byte >> 1) ^ -(byte & 1), pos + 1
        else:
            klen, pos = _varint(buf, pos)
        if klen > 0:
            key = buf[pos : pos + klen]
            pos += klen
        else:
            key = b""
        byte = buf[pos]
        if byte < 0x80:
            vlen, pos = (byte >> 1) ^ -(byte & 1), pos + 1
        elif buf[pos + 1] < 0x80:
            vlen, pos = ((byte & 0x7F) | (buf[pos + 1] << 7)) >> 1, pos + 2
        else:
            vlen, pos = _varint(buf, pos)
        if vlen < 0 or not key:  # null value: a stream-control record ($deleted, $truncated)
            skipped += 1
            pos = end
            continue
        value = buf[pos : pos + vlen]
        pos += vlen
        found = match_headers(buf, pos, end)
        if found is not None:
            (count_byte, version_length, version, event_id, type_length, type_bytes,
             type_version_length, type_version, metadata) = found.groups()
            byte = type_length[0]
            zigzag = byte if byte < 0x80 else (byte & 0x7F) | (type_length[1] << 7)
            byte, tv_byte = version_length[0], type_version_length[0]
            if (len(type_bytes) != (zigzag >> 1) ^ -(zigzag & 1)
                    or len(version) != (byte >> 1) ^ -(byte & 1)
                    or len(type_version) != (tv_byte >> 1) ^ -(tv_byte & 1)
                    or (count_byte == b"\x0a") != (metadata is not None)
                    or type_bytes[:1] == b"$"
                    or (metadata is not None
                        and not _metadata_fits(buf, found.start(9), end))):
                found = None
        if found is None:
            fields = _headers(buf, pos, end)
            if fields is None:
                skipped += 1
                pos = end
                continue
            version, event_id, type_bytes, type_version, metadata = fields
        pos = end
        if key != last_key:
            last_key, last_stream = key, key.decode()
            last_match = matcher is None or matcher(last_stream)
        if not last_match:
            skipped += 1
            continue
        name = names.get(type_bytes)
        if name is None:
            name = names[type_bytes] = type_bytes.decode()
        append(new(event_type, (
            topic, partition, offset,
            base_ts + ts_delta if append_time is None else append_time,
            last_stream, int(version), name,
            int(type_version) if type_version else 1,
            event_id.decode("ascii"), value, metadata or b"",
        )))
    if pos != limit:
        raise ValueError("the records do not fill the batch exactly")
    return skipped


def _metadata_fits(buf: bytes, start: int, end: int) -> bool:
    """Whether the metadata header's declared length is what the fast match took."""
    position = buf.rfind(b"es.metadata", 0, start) + 11
    length, after = _varint(buf, position)
    return after == start and start + length == end


_Fields = tuple[bytes, bytes, bytes, bytes | None, bytes | None]


def _headers(buf: bytes, pos: int, end: int) -> _Fields | None:
    """The event headers of a record in any order (the slow path); None if not an event."""
    count, pos = _varint(buf, pos)
    slots: list[bytes | None] = [None, None, None, None, None]
    for _ in range(count):
        klen, pos = _varint(buf, pos)
        slot = _HEADER_SLOTS.get(buf[pos : pos + klen])
        hlen, pos = _varint(buf, pos + klen)
        if slot is not None:
            slots[slot] = buf[pos : pos + hlen] if hlen >= 0 else b""
        pos += max(hlen, 0)
    if pos != end:
        raise ValueError("a record's headers do not end where its length says")
    version, event_id, type_bytes, type_version, metadata = slots
    if version is None or event_id is None or type_bytes is None or type_bytes[:1] == b"$":
        return None
    return version, event_id, type_bytes, type_version, metadata
