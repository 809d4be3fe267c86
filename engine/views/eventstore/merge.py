"""Reading a whole store topic: every partition from its cursor, merged into one slice.

Within a partition the order is the log's. Across partitions there is no stored order, so the
slice is merged by append time, ties broken by partition number; each partition's own order is
kept even when its timestamps go backwards (a clock step), because the merge never reorders
one input. The returned cursor moves each partition past exactly the records examined there,
so resuming from it neither repeats nor skips an event, whatever the merge order was.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import islice

from engine.log.partition_log import PartitionLog
from engine.views.eventstore.reader import read_range
from engine.views.eventstore.types import AllPosition, RecordedEvent

__all__ = ["read_merged"]


def _merge_key(event: RecordedEvent) -> tuple[int, int, int]:
    return event.timestamp_ms, event.position.partition, event.position.offset


def read_merged(
    logs: list[PartitionLog],
    position: AllPosition,
    max_count: int,
    read_bytes: int,
    key_filter: Callable[[bytes], bool] | None,
) -> tuple[list[RecordedEvent], AllPosition]:
    """Up to ``max_count`` events after ``position`` and the cursor after them."""
    per_partition = [
        read_range(log, position.offsets[number], max_count, number, read_bytes, key_filter)
        for number, log in enumerate(logs)
    ]
    if len(per_partition) == 1:
        events, after = per_partition[0]
        return events, AllPosition((after,))
    merged = heapq.merge(*(events for events, _ in per_partition), key=_merge_key)
    taken = list(islice(merged, max_count))
    counts = [0] * len(logs)
    last_taken = list(position.offsets)
    for event in taken:
        counts[event.position.partition] += 1
        last_taken[event.position.partition] = event.position.offset + 1
    offsets = tuple(
        after if counts[number] == len(events) else last_taken[number]
        for number, (events, after) in enumerate(per_partition)
    )
    return taken, AllPosition(offsets)
