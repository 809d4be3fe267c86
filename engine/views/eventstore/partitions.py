"""One partition of a store topic as the event store holds it: log, index and write lock.

Opening a partition builds its index: from the latest valid checkpoint plus the records after
it, or, without one, from the whole log (keys and headers only in both cases). With a
checkpoint, the id window is refilled from the ``idempotency_window`` records just before it,
so retries recognised before a restart are still recognised after it.
"""

from __future__ import annotations

import threading

from engine.log.partition_log import PartitionLog
from engine.views.eventstore.checkpoint import CheckpointStore
from engine.views.eventstore.index import PartitionIndex
from engine.views.eventstore.reader import scan_range
from engine.views.eventstore.types import EventStoreSettings

__all__ = ["StorePartition", "open_partition"]


class StorePartition:
    """A store partition. ``lock`` serialises every check-and-append on it.

    ``from_checkpoint`` tells how the index was built on open (for tests and metrics).
    """

    def __init__(self, topic: str, number: int, log: PartitionLog, index: PartitionIndex,
                 from_checkpoint: bool) -> None:
        self.topic = topic
        self.number = number
        self.log = log
        self.index = index
        self.from_checkpoint = from_checkpoint
        self.lock = threading.Lock()
        self.checkpointing = threading.Lock()
        self.since_checkpoint = 0
        #: The largest event timestamp written: new stamps never go below it (under ``lock``).
        self.last_timestamp_ms = log.largest_timestamp

    def stamp(self, now_ms: int) -> int:
        """The timestamp for the next append (under ``lock``): the clock, held at the last
        stamp while a wall clock set back catches up, so event times never decrease within a
        partition (``ReadAll`` by time and ``moldau replay --to-time`` rely on it)."""
        self.last_timestamp_ms = max(now_ms, self.last_timestamp_ms)
        return self.last_timestamp_ms


def open_partition(topic: str, number: int, log: PartitionLog,
                   checkpoints: CheckpointStore | None,
                   settings: EventStoreSettings) -> StorePartition:
    """Build the partition's index (see the module docstring)."""
    window = settings.idempotency_window
    index = checkpoints.load(topic, number, log, window) if checkpoints is not None else None
    from_checkpoint = index is not None
    if index is None:
        index = PartitionIndex(window)
        index.next_offset = log.log_start_offset
    elif window > 0 and index.next_offset > log.log_start_offset:
        start = max(log.log_start_offset, index.next_offset - window)
        scan_range(log, start, index.next_offset, settings.read_bytes, index.remember_all)
    start = index.next_offset
    index.next_offset = scan_range(log, start, log.high_watermark, settings.read_bytes,
                                   index.apply)
    return StorePartition(topic, number, log, index, from_checkpoint)
