"""Keyed JSON records in a compacted internal topic: the storage of routing's state.

Both the exchange definitions (``__exchanges``) and the router's checkpoints
(``__exchange_checkpoints``) are such topics: one partition (the state is small and one
partition gives one total order, so a replay is a plain scan), ``cleanup.policy=compact`` (the
latest record per key is the state) and ``durability=fsync`` (a change is acknowledged only
once it survives power loss).

Record layout: key = compact JSON array (``["exchange","orders"]``), value = compact JSON
object with ``"v": 1`` or null (a tombstone deletes the key). The keys are canonical (sorted
fields, no spaces), so equal state always has equal keys and compaction can merge them.

Atomicity: :func:`write_records` writes one batch, and a batch is stored whole or not at all
(recovery truncates a torn batch), so records written together become visible together.

Concurrency: the callers serialise their writes; reads of the partition need no lock.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from engine.broker import Broker
from engine.errors import TopicExistsError
from engine.log.partition_log import PartitionLog
from engine.records.batch import decode_batch, encode_batch
from engine.records.record import NewRecord

__all__ = ["KeyedRecord", "decode_json", "encode_json", "ensure_topic", "replay", "write_records"]

KeyedRecord = tuple[bytes, bytes | None]  # (key, value or None for a tombstone)

_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "durability": "fsync",  # explicit: a broker-wide "async" default must not weaken it
    "segment.bytes": str(64 * 1024 * 1024),
}
_READ_BYTES = 1 << 20
_MAX_RECORDS_PER_BATCH = 1000


def encode_json(value: object) -> bytes:
    """Canonical compact JSON (sorted keys), so equal values give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode_json(data: bytes) -> Any:
    """Parse JSON (untyped until the caller validates it); raises ValueError otherwise."""
    return json.loads(data)


def ensure_topic(broker: Broker, name: str) -> PartitionLog:
    """Create the one-partition compacted topic ``name`` if missing; its partition log."""
    if not broker.has_topic(name):
        with contextlib.suppress(TopicExistsError):  # created concurrently: equivalent
            broker.create_topic(name, 1, _TOPIC_CONFIG, allow_internal=True)
    return broker.partition(name, 0)


def replay(partition_log: PartitionLog) -> Iterator[tuple[int, bytes, bytes | None]]:
    """``(offset, key, value)`` of every keyed record from the log start, in log order."""
    offset = partition_log.log_start_offset
    while offset < partition_log.high_watermark:
        data = partition_log.read(offset, _READ_BYTES).data
        if not data:
            break
        position = 0
        while position < len(data):
            header, records = decode_batch(data, position)
            position += header.size
            if not header.is_control:
                for record in records:
                    if record.offset >= offset and record.key is not None:
                        yield record.offset, record.key, record.value
            offset = max(offset, header.next_offset)


def write_records(
    partition_log: PartitionLog,
    records: Sequence[KeyedRecord],
    now_ms: int,
    *,
    atomic: bool = False,
) -> int:
    """Append ``records`` durably; the last offset written.

    With ``atomic`` they go in one batch, whatever their number (the caller keeps them below
    ``max.message.bytes``); otherwise in batches of up to 1000, in order, so a crash can
    leave a prefix of them written.

    Raises:
        StorageError: the append or its fsync failed; nothing is acknowledged.
    """
    last = -1
    size = len(records) if atomic else _MAX_RECORDS_PER_BATCH
    for start in range(0, len(records), max(1, size)):
        chunk = records[start : start + size]
        batch = encode_batch([NewRecord(value, key) for key, value in chunk], timestamp=now_ms)
        last = partition_log.append(batch, wait_durable=False).last_offset
    partition_log.wait_durable(last + 1)
    return last
