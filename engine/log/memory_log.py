"""In-memory twins of the partition log and the broker, for fast tests of views.

:class:`MemoryLog` keeps each appended batch as bytes in a list, patched with its base offset
exactly as :class:`~engine.log.partition_log.PartitionLog` does, so a view reads the same
RecordBatch v2 bytes from either. Everything is durable the moment it is appended (there is no
disk), so ``high_watermark == log_end_offset``. It neither compacts nor applies retention;
:meth:`MemoryLog.truncate_front` moves the log start forward to imitate retention.

:class:`MemoryTopics` is a :class:`~engine.log.log_protocol.TopicCatalog` of MemoryLogs.

Invariants: batches are stored in offset order without overlap; ``_bases[i]`` is the base
offset of ``_batches[i]``.

Concurrency: one lock per log guards appends and the batch list; readers copy the slice they
return under it. Listeners run in the appending thread after the lock is released.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from engine.errors import (
    OffsetOutOfRangeError,
    TopicExistsError,
    UnknownPartitionError,
    UnknownTopicError,
)
from engine.log.log_protocol import Log
from engine.log.partition_log import AppendResult, ReadResult
from engine.records.batch import (
    DEFAULT_MAX_BATCH_BYTES,
    patch_base_offset,
    validate_produce_batch,
)

__all__ = ["MemoryLog", "MemoryTopicInfo", "MemoryTopics"]


class MemoryLog:
    """A partition log held in memory; conforms to :class:`~engine.log.log_protocol.Log`."""

    def __init__(self, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> None:
        self._max_batch_bytes = max_batch_bytes
        self._lock = threading.Lock()
        self._data_arrived = threading.Condition(self._lock)
        self._batches: list[bytes] = []
        self._bases: list[int] = []
        self._next_offset = 0
        self._log_start_offset = 0
        self._listeners: list[Callable[[], None]] = []

    @property
    def log_start_offset(self) -> int:
        return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._next_offset

    @property
    def high_watermark(self) -> int:
        return self._next_offset

    def append(
        self, batch: bytes | bytearray | memoryview, *, wait_durable: bool = True
    ) -> AppendResult:
        """Validate the batch as the produce path does and store it with the next offsets."""
        header = validate_produce_batch(batch, self._max_batch_bytes)
        data = bytearray(batch)
        with self._lock:
            base = self._next_offset
            patch_base_offset(data, 0, base)
            self._batches.append(bytes(data))
            self._bases.append(base)
            self._next_offset = base + header.last_offset_delta + 1
            self._data_arrived.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            listener()
        return AppendResult(base, self._next_offset - 1, -1)

    def wait_durable(self, end_offset: int) -> None:
        """Memory is as durable as it gets: returns at once."""

    def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Whole batches from the one containing ``offset``; at least one if any."""
        with self._lock:
            start, end = self._log_start_offset, self._next_offset
            if offset < start or offset > end:
                raise OffsetOutOfRangeError(offset, start, end)
            index = max(0, bisect.bisect_right(self._bases, offset) - 1)
            parts: list[bytes] = []
            size = 0
            for batch in self._batches[index:]:
                if parts and size + len(batch) > max_bytes:
                    break
                parts.append(batch)
                size += len(batch)
        return ReadResult(b"".join(parts), end, start)

    def wait_for_data(self, offset: int, timeout_s: float) -> bool:
        with self._data_arrived:
            return self._data_arrived.wait_for(lambda: self._next_offset > offset, timeout_s)

    def add_listener(self, listener: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def truncate_front(self, offset: int) -> None:
        """Drop whole batches below ``offset`` and move the log start, as retention would."""
        with self._lock:
            keep = max(0, bisect.bisect_right(self._bases, offset) - 1)
            self._batches = self._batches[keep:]
            self._bases = self._bases[keep:]
            self._log_start_offset = max(self._log_start_offset, min(offset, self._next_offset))


@dataclass(frozen=True, slots=True)
class MemoryTopicInfo:
    """Name, partition count and the config overrides a memory topic was created with."""

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


class MemoryTopics:
    """A :class:`~engine.log.log_protocol.TopicCatalog` of :class:`MemoryLog` partitions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topics: dict[str, tuple[MemoryTopicInfo, list[MemoryLog]]] = {}

    def has_topic(self, name: str) -> bool:
        return name in self._topics

    def describe_topic(self, name: str) -> MemoryTopicInfo:
        entry = self._topics.get(name)
        if entry is None:
            raise UnknownTopicError(name)
        return entry[0]

    def create_topic(
        self,
        name: str,
        partitions: int,
        config: Mapping[str, str] | None = None,
        *,
        allow_internal: bool = False,
    ) -> MemoryTopicInfo:
        """Create ``name`` with ``partitions`` empty logs (names are not validated here)."""
        with self._lock:
            if name in self._topics:
                raise TopicExistsError(name)
            info = MemoryTopicInfo(name, partitions, dict(config or {}))
            self._topics[name] = (info, [MemoryLog() for _ in range(partitions)])
            return info

    def partition(self, topic: str, partition: int) -> Log:
        return self.memory_partition(topic, partition)

    def memory_partition(self, topic: str, partition: int) -> MemoryLog:
        """Like :meth:`partition`, typed as the concrete MemoryLog (for tests)."""
        entry = self._topics.get(topic)
        if entry is None:
            raise UnknownTopicError(topic)
        logs = entry[1]
        if not 0 <= partition < len(logs):
            raise UnknownPartitionError(topic, partition, len(logs))
        return logs[partition]
