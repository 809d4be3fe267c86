"""Committed offsets, stored as records in the compacted internal topic ``__consumer_offsets``.

Record layout (one record per (group, topic, partition); the latest per key wins, which is
exactly what compaction keeps)::

    key    version int16 = 1           big-endian, as Kafka's OffsetCommitKey
           group   int16 length + UTF-8
           topic   int16 length + UTF-8
           partition int32
    value  UTF-8 JSON, keys sorted: {"commit_timestamp_ms", "generation", "metadata",
           "offset", "v": 1}; a null value (tombstone) deletes the key

A group's records all go to partition ``murmur2(group) % partitions`` (Kafka's partitioner),
so one commit is one batch in one partition: it is stored atomically (up to
``MAX_RECORDS_PER_BATCH`` partitions) and its order against other commits of the group is the
log's order.

Invariants: the in-memory cache equals a replay of the topic. On open the store replays every
partition from its log start; afterwards a write is applied to the cache only once it is
durable (the topic is created with ``durability=fsync``, so an acknowledged commit survives
kill -9 and power loss), and only if its log offset is above the last one applied for that key,
so concurrent writers that finish out of order still leave the log's winner in the cache.

Concurrency: any thread may call any method. Appends are serialised by the partition log and
fsynced by group commit outside any lock of the store; ``_lock`` guards only the cache.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine.broker import Broker
from engine.clock import Clock
from engine.errors import InvalidGroupRequestError
from engine.groups.types import OffsetAndMetadata, TopicPartition, validate_group_id
from engine.internal_topics import ensure_internal_topic, keyed_records
from engine.log.partition_log import PartitionLog
from engine.partitioner import partition_for_key
from engine.records.batch import encode_batch
from engine.records.errors import RecordError
from engine.records.record import NewRecord

__all__ = [
    "DEFAULT_OFFSETS_PARTITIONS",
    "MAX_METADATA_BYTES",
    "MAX_RECORDS_PER_BATCH",
    "OFFSETS_TOPIC",
    "OffsetStore",
    "decode_key",
    "decode_value",
    "encode_key",
    "encode_value",
    "validate_offsets",
]

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"
DEFAULT_OFFSETS_PARTITIONS = 8
MAX_METADATA_BYTES = 4096  # Kafka's offset.metadata.max.bytes
MAX_RECORDS_PER_BATCH = 1000  # ~150 KB: far below max.message.bytes, still one fsync
_KEY_VERSION = 1
_VALUE_VERSION = 1
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "durability": "fsync",  # explicit: a broker-wide "async" default must not weaken commits
    "segment.bytes": str(64 * 1024 * 1024),
}


@dataclass(frozen=True, slots=True)
class _Key:
    group: str
    tp: TopicPartition


def _string(text: str) -> bytes:
    data = text.encode()
    return _INT16.pack(len(data)) + data


def encode_key(group: str, tp: TopicPartition) -> bytes:
    """The deterministic record key for one committed offset (see the module docstring)."""
    return b"".join(
        (_INT16.pack(_KEY_VERSION), _string(group), _string(tp.topic), _INT32.pack(tp.partition))
    )


def decode_key(data: bytes) -> tuple[str, TopicPartition]:
    """Inverse of :func:`encode_key`; raises ValueError for anything else."""
    (version,) = _INT16.unpack_from(data, 0)
    if version != _KEY_VERSION:
        raise ValueError(f"unknown offset key version {version}")
    position = 2
    texts: list[str] = []
    for _ in range(2):
        (length,) = _INT16.unpack_from(data, position)
        if length < 0 or position + 2 + length > len(data):
            raise ValueError("offset key string overruns the key")
        texts.append(data[position + 2 : position + 2 + length].decode())
        position += 2 + length
    if position + 4 != len(data):
        raise ValueError("offset key has the wrong length")
    (partition,) = _INT32.unpack_from(data, position)
    return texts[0], TopicPartition(texts[1], partition)


def encode_value(value: OffsetAndMetadata) -> bytes:
    """The JSON record value for one committed offset."""
    body = {
        "v": _VALUE_VERSION,
        "offset": value.offset,
        "metadata": value.metadata,
        "commit_timestamp_ms": value.commit_timestamp_ms,
        "generation": value.generation,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def decode_value(data: bytes) -> OffsetAndMetadata:
    """Inverse of :func:`encode_value`; raises ValueError for anything else."""
    body = json.loads(data)
    if not isinstance(body, dict) or body.get("v") != _VALUE_VERSION:
        raise ValueError("not a version-1 offset value")
    value = OffsetAndMetadata(
        int(body["offset"]),
        str(body["metadata"]),
        int(body["commit_timestamp_ms"]),
        int(body["generation"]),
    )
    if value.offset < 0:
        raise ValueError(f"negative committed offset {value.offset}")
    return value


def validate_offsets(group: str, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
    """Refuse negative offsets, negative partitions and oversized metadata.

    Raises:
        InvalidGroupRequestError: the message names the partition and the rule.
    """
    for tp, value in offsets.items():
        if tp.partition < 0 or value.offset < 0:
            raise InvalidGroupRequestError(
                f"cannot commit offset {value.offset} for {tp}: offsets and partitions must "
                "be >= 0",
                group,
            )
        size = len(value.metadata.encode())
        if size > MAX_METADATA_BYTES:
            raise InvalidGroupRequestError(
                f"metadata for {tp} is {size} bytes; the maximum is {MAX_METADATA_BYTES}",
                group,
            )


class OffsetStore:
    """Committed offsets of every group; create with :meth:`open`."""

    def __init__(self, broker: Broker, clock: Clock, partitions: int) -> None:
        self._broker = broker
        self._clock = clock
        self._partitions = partitions
        self._lock = threading.Lock()
        self._cache: dict[str, dict[TopicPartition, OffsetAndMetadata]] = {}
        self._applied: dict[_Key, int] = {}  # key -> log offset of the last record applied
        self.skipped_records = 0

    @classmethod
    def open(
        cls, broker: Broker, clock: Clock, *, partitions: int = DEFAULT_OFFSETS_PARTITIONS
    ) -> OffsetStore:
        """Create ``__consumer_offsets`` if missing (``partitions`` wide), then replay it.

        An existing topic keeps its partition count: a group's partition is derived from it.
        """
        ensure_internal_topic(broker, OFFSETS_TOPIC, partitions, _TOPIC_CONFIG)
        store = cls(broker, clock, broker.describe_topic(OFFSETS_TOPIC).partitions)
        for partition in range(store._partitions):
            store._replay(broker.partition(OFFSETS_TOPIC, partition))
        return store

    def _replay(self, partition_log: PartitionLog) -> None:
        for record in keyed_records(partition_log):
            assert record.key is not None  # keyed_records yields keyed records only
            self._apply_record(record.key, record.value, record.offset)

    def _apply_record(self, key: bytes, value: bytes | None, log_offset: int) -> None:
        try:
            group, tp = decode_key(key)
            decoded = None if value is None else decode_value(value)
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            self.skipped_records += 1
            log.warning("skipped unreadable %s record at %d: %s", OFFSETS_TOPIC, log_offset, exc)
            return
        self._apply(_Key(group, tp), decoded, log_offset)

    def _apply(self, key: _Key, value: OffsetAndMetadata | None, log_offset: int) -> None:
        """Install one record in the cache unless a later record for its key is already in."""
        if self._applied.get(key, -1) >= log_offset:
            return
        self._applied[key] = log_offset
        if value is not None:
            self._cache.setdefault(key.group, {})[key.tp] = value
            return
        offsets = self._cache.get(key.group)
        if offsets is not None:
            offsets.pop(key.tp, None)
            if not offsets:
                del self._cache[key.group]

    # ------------------------------------------------------------------ API

    @property
    def partitions(self) -> int:
        """Partitions of ``__consumer_offsets``."""
        return self._partitions

    def partition_for(self, group: str) -> int:
        """The ``__consumer_offsets`` partition holding ``group``'s records."""
        return partition_for_key(group.encode(), self._partitions)

    def commit(
        self,
        group: str,
        offsets: Mapping[TopicPartition, OffsetAndMetadata],
        *,
        generation: int = -1,
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Store ``offsets`` durably; returns them as stored (timestamp and generation set).

        The store checks values only; who may commit is the coordinator's decision.

        Raises:
            InvalidGroupRequestError: bad group id, negative offset, oversized metadata.
            StorageError: the append or its fsync failed; nothing is acknowledged.
        """
        validate_group_id(group)
        validate_offsets(group, offsets)
        now_ms = self._clock.now_ms()
        stored = {
            tp: OffsetAndMetadata(value.offset, value.metadata, now_ms, generation)
            for tp, value in sorted(offsets.items())
        }
        self._write(group, list(stored.items()), now_ms)
        return stored

    def fetch(
        self, group: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Committed offsets of ``group`` (all, or those of ``partitions`` that exist)."""
        with self._lock:
            offsets = dict(self._cache.get(group, {}))
        if partitions is None:
            return offsets
        return {tp: offsets[tp] for tp in partitions if tp in offsets}

    def delete(
        self, group: str, partitions: Iterable[TopicPartition] | None = None
    ) -> list[TopicPartition]:
        """Write tombstones for the group's offsets (all, or ``partitions``); returns them."""
        existing = self.fetch(group, partitions)
        doomed = sorted(existing)
        if doomed:
            self._write(group, [(tp, None) for tp in doomed], self._clock.now_ms())
        return doomed

    def has_group(self, group: str) -> bool:
        """True if ``group`` has at least one committed offset."""
        with self._lock:
            return group in self._cache

    def groups(self) -> list[str]:
        """Groups with at least one committed offset, sorted."""
        with self._lock:
            return sorted(self._cache)

    def _write(
        self,
        group: str,
        entries: list[tuple[TopicPartition, OffsetAndMetadata | None]],
        now_ms: int,
    ) -> None:
        partition_log = self._broker.partition(OFFSETS_TOPIC, self.partition_for(group))
        for start in range(0, len(entries), MAX_RECORDS_PER_BATCH):
            chunk = entries[start : start + MAX_RECORDS_PER_BATCH]
            records = [
                NewRecord(None if value is None else encode_value(value), encode_key(group, tp))
                for tp, value in chunk
            ]
            try:
                result = partition_log.append(encode_batch(records, timestamp=now_ms),
                                              wait_durable=False)
            except RecordError as exc:  # cannot happen for sizes below max.message.bytes
                raise InvalidGroupRequestError(f"offset commit refused: {exc}", group) from exc
            partition_log.wait_durable(result.last_offset + 1)
            with self._lock:
                for index, (tp, value) in enumerate(chunk):
                    self._apply(_Key(group, tp), value, result.base_offset + index)
