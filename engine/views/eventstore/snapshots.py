"""Snapshots of stream state in the compacted topic ``<topic>.snapshots`` (one partition).

Record layout: see ``codec``. The latest record per stream wins, which is what compaction
keeps, so the topic never grows past one snapshot per stream (plus what compaction has not yet
cleaned). The store keeps only stream -> (version, log offset) in memory, rebuilt on first use
by replaying the topic; states are read from the log when asked for.

Concurrency: ``_lock`` guards the map; appends are the partition log's business.
"""

from __future__ import annotations

import contextlib
import threading

from engine.broker import Broker
from engine.errors import TopicExistsError
from engine.log.partition_log import PartitionLog
from engine.records.batch import decode_batch, decode_batches
from engine.records.record import Header
from engine.topic_names import is_internal
from engine.views.eventstore.codec import HEADER_VERSION, encode_snapshot

__all__ = ["SNAPSHOT_TOPIC_SUFFIX", "SnapshotStore"]

SNAPSHOT_TOPIC_SUFFIX = ".snapshots"
_READ_BYTES = 1 << 20
_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "durability": "fsync",
    "max.message.bytes": str(64 * 1024 * 1024),
}


class SnapshotStore:
    """Snapshots of the streams of one store topic; create with :meth:`open`."""

    def __init__(self, partition_log: PartitionLog) -> None:
        self._log = partition_log
        self._lock = threading.Lock()
        self._latest: dict[bytes, tuple[int, int]] = {}

    @classmethod
    def open(cls, broker: Broker, topic: str) -> SnapshotStore:
        """Create ``<topic>.snapshots`` if missing and replay it."""
        name = topic + SNAPSHOT_TOPIC_SUFFIX
        if not broker.has_topic(name):
            with contextlib.suppress(TopicExistsError):
                broker.create_topic(name, 1, _TOPIC_CONFIG, allow_internal=is_internal(topic))
        store = cls(broker.partition(name, 0))
        store._replay()
        return store

    def _replay(self) -> None:
        partition_log = self._log
        offset = partition_log.log_start_offset
        limit = partition_log.config.max_message_bytes + 12
        while offset < partition_log.high_watermark:
            data = partition_log.read(offset, _READ_BYTES).data
            if not data:
                break
            for record in decode_batches(data, max_batch_bytes=limit):
                if record.offset >= offset and record.key is not None:
                    self._apply(record.key, record.value, record.headers, record.offset)
                offset = max(offset, record.offset + 1)

    def _apply(self, key: bytes, value: bytes | None, headers: tuple[Header, ...],
               offset: int) -> None:
        version = next((h.value for h in headers if h.key == HEADER_VERSION), None)
        if value is None or version is None:
            self._latest.pop(key, None)
            return
        self._latest[key] = (int(version), offset)

    def save(self, key: bytes, version: int, state: bytes, timestamp_ms: int) -> None:
        """Append a snapshot and wait until it is durable."""
        appended = self._log.append(encode_snapshot(key, version, state, timestamp_ms))
        with self._lock:
            current = self._latest.get(key)
            if current is None or current[1] < appended.base_offset:
                self._latest[key] = (version, appended.base_offset)

    def load(self, key: bytes) -> tuple[int, bytes] | None:
        """(version, state) of the latest snapshot of ``key``, or None."""
        with self._lock:
            entry = self._latest.get(key)
        if entry is None:
            return None
        version, offset = entry
        data = self._log.read(offset, 1).data
        _, records = decode_batch(data, 0, max_batch_bytes=len(data))
        for record in records:
            if record.offset == offset and record.value is not None:
                return version, record.value
        return None
