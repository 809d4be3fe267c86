"""The seam between views and storage: what a view may ask of a partition log and of a broker.

Views (queues, routing, the event store, projections) depend on these protocols only, never on
segment files, so they run the same over the file-backed :class:`~engine.log.partition_log.
PartitionLog` under :class:`~engine.broker.Broker`, over the in-memory twin in
:mod:`engine.log.memory_log`, and later over a remote log backend (ARCHITECTURE section 7).

The surface is deliberately narrow: append one encoded RecordBatch v2, wait for durability,
read whole batches from an offset, learn the offsets, wait for new data. Everything else
(retention, compaction, recovery) belongs to the log's owner.

Contract every implementation keeps:

- ``append`` assigns consecutive offsets and, with ``wait_durable=True``, returns only once the
  batch is durable by the topic's durability setting; with ``wait_durable=False`` the caller
  calls ``wait_durable(last_offset + 1)`` before acknowledging anything that depends on it.
- ``read`` returns whole batches starting with the one that contains ``offset`` (so records
  below ``offset`` may be included and must be skipped by the reader), at least one batch when
  one exists below the high watermark, and ``b""`` when ``offset`` equals the high watermark.
- Offsets may have gaps (compaction, control batches); a reader advances to the returned
  batches' next offset, never to ``offset + 1``.
- Thread-safety: every method may be called from any thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from engine.log.partition_log import AppendResult, ReadResult

__all__ = ["AppendResult", "Log", "ReadResult", "TopicCatalog", "TopicShape"]


class Log(Protocol):
    """One partition's log as views see it (``PartitionLog`` and ``MemoryLog`` conform)."""

    @property
    def log_start_offset(self) -> int:
        """The first offset still stored (retention moves it forward)."""
        ...

    @property
    def log_end_offset(self) -> int:
        """The offset the next append will get."""
        ...

    @property
    def high_watermark(self) -> int:
        """Everything below is durable and readable."""
        ...

    def append(
        self, batch: bytes | bytearray | memoryview, *, wait_durable: bool = True
    ) -> AppendResult:
        """Store one encoded batch; see the module contract for ``wait_durable``."""
        ...

    def wait_durable(self, end_offset: int) -> None:
        """Return once every offset below ``end_offset`` is durable."""
        ...

    def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Whole batches from the one containing ``offset`` (see the module contract)."""
        ...

    def wait_for_data(self, offset: int, timeout_s: float) -> bool:
        """Block until the high watermark passes ``offset``; False on timeout."""
        ...

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` from the appending thread whenever the high watermark moves."""
        ...

    def remove_listener(self, listener: Callable[[], None]) -> None:
        """Forget a listener added with :meth:`add_listener` (absent ones are ignored)."""
        ...


class TopicShape(Protocol):
    """What a view needs to know about a topic: its name and partition count."""

    @property
    def name(self) -> str: ...

    @property
    def partitions(self) -> int: ...


class TopicCatalog(Protocol):
    """Topics of partition logs (``Broker`` and ``MemoryTopics`` conform)."""

    def has_topic(self, name: str) -> bool:
        """True if ``name`` exists."""
        ...

    def describe_topic(self, name: str) -> TopicShape:
        """Name and partition count; raises ``UnknownTopicError`` if missing."""
        ...

    def create_topic(
        self,
        name: str,
        partitions: int,
        config: Mapping[str, str] | None = None,
        *,
        allow_internal: bool = False,
    ) -> TopicShape:
        """Create a topic; raises ``TopicExistsError`` if it exists."""
        ...

    def partition(self, topic: str, partition: int) -> Log:
        """The log of one partition; raises ``UnknownTopicError``/``UnknownPartitionError``."""
        ...
