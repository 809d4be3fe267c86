"""Errors raised by the engine.

Tree::

    EngineError                          root of storage, topic and producer errors
    +-- StorageError                     an OSError at the partition-log boundary (path, errno)
    |   +-- DiskFullError                ENOSPC / EDQUOT; retriable once space is freed
    |   +-- LogReadOnlyError             an fsync failed earlier; the partition refuses writes
    +-- OffsetOutOfRangeError            offset outside [log_start_offset, log_end_offset]
    +-- CorruptLogError                  stored bytes failed their CRC on read
    +-- ProducerError
    |   +-- OutOfOrderSequenceError      a sequence gap for an idempotent producer
    |   +-- ProducerFencedError          an epoch older than the one already seen
    +-- TopicError
    |   +-- UnknownTopicError
    |   +-- TopicExistsError
    |   +-- InvalidTopicError            bad name, reserved name, bad partition count
    |   +-- UnknownPartitionError
    +-- InvalidConfigError               unknown key or bad value

    RecordError (engine.records.errors)  bytes that are not a valid RecordBatch v2

``retriable`` tells a caller whether the same request may succeed later unchanged.
"""

from __future__ import annotations

from engine.records.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    RecordError,
    UnsupportedCodecError,
    UnsupportedMagicError,
)

__all__ = [
    "BatchTooLargeError",
    "CorruptBatchError",
    "CorruptLogError",
    "DiskFullError",
    "EngineError",
    "InvalidBatchError",
    "InvalidConfigError",
    "InvalidTopicError",
    "LogReadOnlyError",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "ProducerError",
    "ProducerFencedError",
    "RecordError",
    "StorageError",
    "TopicError",
    "TopicExistsError",
    "UnknownPartitionError",
    "UnknownTopicError",
    "UnsupportedCodecError",
    "UnsupportedMagicError",
]


class EngineError(Exception):
    """Root of the engine's own errors."""

    retriable = False


class StorageError(EngineError):
    """The file system refused an operation; the partition reports it instead of guessing."""

    def __init__(self, message: str, path: str = "", errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class DiskFullError(StorageError):
    """No space left; nothing partial was made visible."""

    retriable = True


class LogReadOnlyError(StorageError):
    """An fsync failed: what reached the disk is unknown, so the partition refuses writes."""


class OffsetOutOfRangeError(EngineError):
    """The requested offset is not stored (expired by retention, or not yet written)."""

    def __init__(self, offset: int, log_start_offset: int, log_end_offset: int) -> None:
        super().__init__(
            f"offset {offset} is out of range: the log holds [{log_start_offset}, {log_end_offset})"
        )
        self.offset = offset
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset


class CorruptLogError(EngineError):
    """A stored batch failed its CRC on read; it is never served as valid data."""

    def __init__(self, path: str, position: int, detail: str) -> None:
        super().__init__(f"corrupt data in {path} at byte {position}: {detail}")
        self.path = path
        self.position = position


class ProducerError(EngineError):
    """Idempotent-producer bookkeeping refused a batch."""


class OutOfOrderSequenceError(ProducerError):
    """A batch skipped sequence numbers; the producer must resend the missing ones first."""

    def __init__(self, producer_id: int, expected_sequence: int, sequence: int) -> None:
        super().__init__(
            f"producer {producer_id} sent sequence {sequence}, expected {expected_sequence}"
        )
        self.producer_id = producer_id
        self.expected_sequence = expected_sequence
        self.sequence = sequence


class ProducerFencedError(ProducerError):
    """An older epoch than the partition has seen: a newer instance of this producer exists."""

    def __init__(self, producer_id: int, epoch: int, current_epoch: int) -> None:
        super().__init__(
            f"producer {producer_id} epoch {epoch} is fenced by epoch {current_epoch}"
        )
        self.producer_id = producer_id
        self.epoch = epoch
        self.current_epoch = current_epoch


class TopicError(EngineError):
    """Topic-level request errors."""


class UnknownTopicError(TopicError):
    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} does not exist")
        self.topic = topic


class TopicExistsError(TopicError):
    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} already exists")
        self.topic = topic


class InvalidTopicError(TopicError):
    """Bad topic name or partition count; the message says what is allowed."""


class UnknownPartitionError(TopicError):
    def __init__(self, topic: str, partition: int, partitions: int) -> None:
        super().__init__(
            f"topic {topic!r} has partitions 0..{partitions - 1}; "
            f"partition {partition} does not exist"
        )
        self.topic = topic
        self.partition = partition


class InvalidConfigError(EngineError):
    """Unknown config key or a value outside its range."""
