"""Internal topics that hold a view's state (committed offsets, ACLs, bindings, checkpoints).

Each such view keeps its state as keyed records in a compacted internal topic and rebuilds it
at start by replaying them; these two helpers are that shared part, so every view creates its
topic and reads it back the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from engine.broker import Broker
from engine.errors import TopicExistsError
from engine.log.partition_log import PartitionLog
from engine.records.batch import decode_batch
from engine.records.record import Record

__all__ = ["ensure_internal_topic", "keyed_records"]

_READ_BYTES = 1 << 20


def ensure_internal_topic(
    broker: Broker, name: str, partitions: int, config: Mapping[str, str]
) -> None:
    """Create the internal topic ``name`` unless it exists (created concurrently: equivalent)."""
    if not broker.has_topic(name):
        with contextlib.suppress(TopicExistsError):
            broker.create_topic(name, partitions, config, allow_internal=True)


def keyed_records(partition_log: PartitionLog, read_bytes: int = _READ_BYTES) -> Iterator[Record]:
    """Every record with a key from the log start to the high watermark, in log order.

    Control batches are skipped; a record below the start (compaction left it in a batch that
    begins earlier) is not repeated. Decoding errors propagate: the caller decides whether a
    damaged state topic is fatal.
    """
    offset = partition_log.log_start_offset
    while offset < partition_log.high_watermark:
        data = partition_log.read(offset, read_bytes).data
        if not data:
            break
        position = 0
        while position < len(data):
            header, records = decode_batch(data, position)
            position += header.size
            if not header.is_control:
                for record in records:
                    if record.offset >= offset and record.key is not None:
                        yield record
            offset = max(offset, header.next_offset)
