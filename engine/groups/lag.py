"""Consumer lag of one partition, in records and in time.

Lag in time is the age of the oldest record the group has not committed: the timestamp of the
record at the committed offset, read from the log (one batch), against the wall clock. It
answers "how far behind is this group" in the unit alerts are written in, which the record
count cannot (a thousand records is a second on one topic and a week on another).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

from engine.broker import Broker
from engine.errors import EngineError
from engine.groups.model import PartitionLag
from engine.groups.types import OffsetAndMetadata, TopicPartition
from engine.records.batch import decode_batch
from engine.records.errors import RecordError

__all__ = ["lag_rows", "partition_lag"]


def lag_rows(
    broker: Broker,
    committed: Mapping[TopicPartition, OffsetAndMetadata],
    topics: Iterable[str],
    owners: Mapping[TopicPartition, str],
    now_ms: int,
) -> tuple[PartitionLag, ...]:
    """Rows for every committed partition and every partition of ``topics``, sorted."""
    partitions = set(committed)
    for topic in topics:
        with contextlib.suppress(EngineError):
            count = broker.describe_topic(topic).partitions
            partitions.update(TopicPartition(topic, p) for p in range(count))
    return tuple(
        partition_lag(broker, tp, committed.get(tp), owners.get(tp), now_ms)
        for tp in sorted(partitions)
    )


def partition_lag(
    broker: Broker,
    tp: TopicPartition,
    committed: OffsetAndMetadata | None,
    owner: str | None,
    now_ms: int,
) -> PartitionLag:
    """The lag row of ``tp``; log bounds are -1 if the partition no longer exists."""
    try:
        partition_log = broker.partition(tp.topic, tp.partition)
    except EngineError:
        offset = None if committed is None else committed.offset
        metadata = "" if committed is None else committed.metadata
        return PartitionLag(tp.topic, tp.partition, offset, metadata, owner, -1, -1, None, None)
    start, end = partition_log.log_start_offset, partition_log.high_watermark
    if committed is None:
        return PartitionLag(tp.topic, tp.partition, None, "", owner, start, end, None, None)
    first_unconsumed = max(committed.offset, start)
    lag_records = max(0, end - first_unconsumed)
    lag_ms: int | None = 0
    if lag_records:
        timestamp = _timestamp_at(broker, tp, first_unconsumed)
        lag_ms = None if timestamp is None else max(0, now_ms - timestamp)
    return PartitionLag(
        tp.topic, tp.partition, committed.offset, committed.metadata, owner, start, end,
        lag_records, lag_ms,
    )


def _timestamp_at(broker: Broker, tp: TopicPartition, offset: int) -> int | None:
    """Timestamp of the first record at or after ``offset``; None if it cannot be read."""
    try:
        data = broker.read(tp.topic, tp.partition, offset, 1).data
        position = 0
        while position < len(data):
            header, records = decode_batch(data, position)
            for record in records:
                if record.offset >= offset:
                    return record.timestamp
            position += header.size
    except (EngineError, RecordError):
        return None  # expired or damaged meanwhile: lag in time is unknown, not an error
    return None
