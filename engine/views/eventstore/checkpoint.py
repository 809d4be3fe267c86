"""Index checkpoints in the compacted internal topic ``__eventstore_index`` (one partition).

A checkpoint of one store partition is the stream index as of every record below a log offset
``next_offset``. Opening the partition then reads only the records from ``next_offset`` on (keys
and headers only). The checkpoint is an optimisation: when it is missing, damaged, or does not
match the log, the index is rebuilt from the whole log, so deleting the topic loses nothing.

Records (all integers big-endian; ``<t>`` a topic name, ``<p>`` a partition number in decimal;
topic names cannot contain ``/``)::

    chunk     key   "c/<t>/<p>/<n>"        n = 0, 1, ... chunk number, decimal
              value version int8 = 1
                    generation 16 bytes     random; names the checkpoint the chunk belongs to
                    streams, back to back, until the end of the value:
                      key_length int16, key (the stream id, UTF-8)
                      count int32           versions 0..count-1 follow
                      controls int32
                      offsets count x int64 log offset of each version (-1: missing)
                      controls x (offset int64, is_delete int8, truncate_before int64)
    manifest  key   "m/<t>/<p>"
              value version int8 = 1, generation 16 bytes, next_offset int64,
                    anchor_crc int64 (CRC-32C of the stored batch holding next_offset - 1,
                    -1 when next_offset is 0), chunks int32, streams int64, events int64

A checkpoint is written as its chunks, then its manifest, then tombstones for chunk numbers the
previous checkpoint used beyond the new count; compaction keeps the latest record per key. A
reader trusts a manifest only if every chunk ``0..chunks-1`` carries its generation, and only if
the store partition still holds, at ``next_offset - 1``, a batch with ``anchor_crc``: a topic
deleted and created again under the same name, or a log cut by recovery, fails that check.
Chunks are written before their manifest and the topic is ``durability=fsync``, so a crash
mid-checkpoint leaves the previous manifest, whose chunks a reader then finds overwritten
(generation mismatch) or intact: either way it falls back safely.

Concurrency: :meth:`CheckpointStore.write` may run beside appends; it copies each stream's
prefix below ``next_offset`` without the partition lock (see ``index``). Writes of checkpoints
are serialised by ``_write_lock``.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import sys
import threading
import uuid
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

from engine.broker import Broker
from engine.errors import EngineError, TopicExistsError
from engine.log.partition_log import PartitionLog
from engine.records.batch import decode_batches, encode_batch
from engine.records.compression import Codec
from engine.records.errors import RecordError
from engine.records.record import NewRecord
from engine.views.eventstore.index import PartitionIndex, StreamState

__all__ = ["INDEX_TOPIC", "CheckpointStore", "Manifest", "batch_crc_at"]

log = logging.getLogger(__name__)

INDEX_TOPIC = "__eventstore_index"
_FORMAT_VERSION = 1
_CHUNK_BYTES = 1 << 20
_READ_BYTES = 4 << 20
_MANIFEST = struct.Struct(">b16sqqiqq")
_CHUNK_HEAD = struct.Struct(">b16s")
_ENTRY_HEAD = struct.Struct(">h")
_ENTRY_COUNTS = struct.Struct(">ii")
_CONTROL = struct.Struct(">qbq")
_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "durability": "fsync",
    "segment.bytes": str(64 * 1024 * 1024),
    "max.message.bytes": str(16 * 1024 * 1024),
}
_BIG_ENDIAN = sys.byteorder == "big"


@dataclass(frozen=True, slots=True)
class Manifest:
    generation: bytes
    next_offset: int
    anchor_crc: int
    chunks: int
    streams: int
    events: int


def batch_crc_at(partition_log: PartitionLog, offset: int) -> int:
    """CRC of the stored batch holding ``offset`` (-1 for offset -1 or when unreadable)."""
    if offset < 0:
        return -1
    try:
        data = partition_log.read(offset, 1).data
    except (EngineError, RecordError, ValueError) as exc:
        log.warning("cannot read the checkpoint anchor at %d: %s", offset, exc)
        return -1
    if len(data) < 21:
        return -1
    return int.from_bytes(data[17:21], "big")


class CheckpointStore:
    """Reads and writes index checkpoints; create with :meth:`open`."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._latest: dict[bytes, bytes] = {}

    @classmethod
    def open(cls, broker: Broker) -> CheckpointStore:
        """Create ``__eventstore_index`` if missing and replay it (latest record per key)."""
        if not broker.has_topic(INDEX_TOPIC):
            with contextlib.suppress(TopicExistsError):
                broker.create_topic(INDEX_TOPIC, 1, _TOPIC_CONFIG, allow_internal=True)
        store = cls(broker)
        partition_log = broker.partition(INDEX_TOPIC, 0)
        offset = partition_log.log_start_offset
        while offset < partition_log.high_watermark:
            data = partition_log.read(offset, _READ_BYTES).data
            if not data:
                break
            try:
                for record in decode_batches(data, max_batch_bytes=1 << 30,
                                             max_decompressed_bytes=1 << 30):
                    if record.offset >= offset and record.key is not None:
                        store._remember(record.key, record.value)
                    offset = max(offset, record.offset + 1)
            except RecordError as exc:
                log.warning("%s unreadable from offset %d (%s); checkpoints after it are "
                            "ignored and indexes rebuilt from the log", INDEX_TOPIC, offset, exc)
                break
        return store

    def _remember(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            self._latest.pop(key, None)
        else:
            self._latest[key] = value

    # ------------------------------------------------------------------ read

    def load(self, topic: str, partition: int, partition_log: PartitionLog,
             window: int) -> PartitionIndex | None:
        """The checkpointed index of one partition, or None when there is no usable one."""
        prefix = f"{topic}/{partition}"
        with self._lock:
            raw = self._latest.get(f"m/{prefix}".encode())
            manifest = _decode_manifest(raw) if raw is not None else None
            if manifest is None:
                return None
            chunks = [self._latest.get(f"c/{prefix}/{n}".encode()) for n in range(manifest.chunks)]
        if manifest.next_offset > partition_log.high_watermark:
            log.warning("checkpoint of %s is past its log end; rebuilding from the log", prefix)
            return None
        if batch_crc_at(partition_log, manifest.next_offset - 1) != manifest.anchor_crc:
            log.warning("checkpoint of %s does not match its log; rebuilding from the log", prefix)
            return None
        index = PartitionIndex(window)
        try:
            for chunk in chunks:
                if chunk is None:
                    raise ValueError("a chunk is missing")
                _decode_chunk(chunk, manifest.generation, index)
        except (ValueError, struct.error) as exc:
            log.warning("checkpoint of %s is unusable (%s); rebuilding from the log", prefix, exc)
            return None
        index.next_offset = manifest.next_offset
        index.events = manifest.events
        return index

    # ------------------------------------------------------------------ write

    def write(self, topic: str, partition: int, index: PartitionIndex, next_offset: int,
              partition_log: PartitionLog, timestamp_ms: int) -> Manifest:
        """Store the index as of every record below ``next_offset`` (which must be durable)."""
        prefix = f"{topic}/{partition}"
        generation = uuid.uuid4().bytes
        with self._write_lock:
            target = self._broker.partition(INDEX_TOPIC, 0)
            count = streams = events = 0
            written: list[tuple[bytes, bytes | None]] = []
            for chunk, chunk_streams, chunk_events in _encode_chunks(index, next_offset,
                                                                     generation):
                key = f"c/{prefix}/{count}".encode()
                self._append(target, [NewRecord(chunk, key)], timestamp_ms)
                written.append((key, chunk))
                count += 1
                streams += chunk_streams
                events += chunk_events
            anchor = batch_crc_at(partition_log, next_offset - 1)
            manifest = Manifest(generation, next_offset, anchor, count, streams, events)
            manifest_key = f"m/{prefix}".encode()
            manifest_value = _MANIFEST.pack(_FORMAT_VERSION, generation, next_offset, anchor,
                                            count, streams, events)
            tail = [NewRecord(manifest_value, manifest_key)]
            written.append((manifest_key, manifest_value))
            with self._lock:
                previous_raw = self._latest.get(manifest_key)
            previous = _decode_manifest(previous_raw) if previous_raw is not None else None
            for stale in range(count, previous.chunks if previous is not None else 0):
                key = f"c/{prefix}/{stale}".encode()
                tail.append(NewRecord(None, key))
                written.append((key, None))
            last = self._append(target, tail, timestamp_ms)
            target.wait_durable(last + 1)
            with self._lock:
                for key, value in written:
                    self._remember(key, value)
        return manifest

    @staticmethod
    def _append(target: PartitionLog, records: list[NewRecord], timestamp_ms: int) -> int:
        batch = encode_batch(records, codec=Codec.LZ4, timestamp=timestamp_ms)
        return target.append(batch, wait_durable=False).last_offset


def _encode_chunks(
    index: PartitionIndex, next_offset: int, generation: bytes
) -> Iterator[tuple[bytes, int, int]]:
    """Chunks of about 1 MiB: (value, streams in it, events in it)."""
    parts: list[bytes] = [_CHUNK_HEAD.pack(_FORMAT_VERSION, generation)]
    size = streams = events = 0
    for key, state in list(index.streams.items()):
        entry = _encode_stream(key, state, next_offset)
        if entry is None:
            continue
        parts.append(entry[0])
        size += len(entry[0])
        streams += 1
        events += entry[1]
        if size >= _CHUNK_BYTES:
            yield b"".join(parts), streams, events
            parts = [parts[0]]
            size = streams = events = 0
    if streams or len(parts) == 1:
        yield b"".join(parts), streams, events


def _encode_stream(key: bytes, state: StreamState, next_offset: int) -> tuple[bytes, int] | None:
    """One stream's entry restricted to records below ``next_offset``, or None if it has none."""
    offsets = state.offsets
    count = bisect_left(offsets, next_offset)
    stored = offsets[:count]
    controls = [c for c in (state.controls or ()) if c[0] < next_offset]
    if not count and not controls:
        return None
    if not _BIG_ENDIAN:
        stored.byteswap()
    body = [_ENTRY_HEAD.pack(len(key)), key, _ENTRY_COUNTS.pack(count, len(controls)),
            stored.tobytes()]
    body.extend(_CONTROL.pack(offset, int(is_delete), before) for offset, is_delete, before
                in controls)
    return b"".join(body), count


def _decode_manifest(value: bytes) -> Manifest | None:
    if len(value) != _MANIFEST.size or value[0] != _FORMAT_VERSION:
        log.warning("ignored an index manifest of an unknown format")
        return None
    _, generation, next_offset, anchor, chunks, streams, events = _MANIFEST.unpack(value)
    return Manifest(generation, next_offset, anchor, chunks, streams, events)


def _decode_chunk(value: bytes, generation: bytes, index: PartitionIndex) -> None:
    """Add the streams of one chunk to ``index``; ValueError when it is not of ``generation``."""
    version, chunk_generation = _CHUNK_HEAD.unpack_from(value, 0)
    if version != _FORMAT_VERSION or chunk_generation != generation:
        raise ValueError("a chunk belongs to another checkpoint")
    position = _CHUNK_HEAD.size
    end = len(value)
    while position < end:
        (key_length,) = _ENTRY_HEAD.unpack_from(value, position)
        position += _ENTRY_HEAD.size
        key = value[position : position + key_length]
        position += key_length
        count, controls = _ENTRY_COUNTS.unpack_from(value, position)
        position += _ENTRY_COUNTS.size
        if count < 0 or controls < 0 or position + 8 * count > end:
            raise ValueError("a chunk entry overruns the chunk")
        state = StreamState()
        state.offsets.frombytes(value[position : position + 8 * count])
        if not _BIG_ENDIAN:
            state.offsets.byteswap()
        position += 8 * count
        for _ in range(controls):
            offset, is_delete, before = _CONTROL.unpack_from(value, position)
            position += _CONTROL.size
            state.add_control(offset, bool(is_delete), before)
        index.streams[key] = state
