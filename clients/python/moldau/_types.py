"""Value objects the client returns: record metadata, consumed records, topic descriptions.

Records that are built once per consumed record (``ConsumerRecord``, ``TopicPartition``) are
NamedTuples, because ``tuple.__new__`` costs a fraction of a dataclass ``__init__`` on the hot
path; everything else is a frozen dataclass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from engine.records import Header

__all__ = [
    "BatchMetadata",
    "ConsumerRecord",
    "Header",
    "HeadersLike",
    "PartitionInfo",
    "PartitionOffset",
    "RecordMetadata",
    "TopicDescription",
    "TopicPartition",
    "TopicSummary",
    "normalize_headers",
]

HeadersLike = Mapping[str, bytes | None] | Iterable[tuple[str, bytes | None] | Header]
"""Headers as a mapping, or pairs / Header objects when a key repeats."""


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class ConsumerRecord(NamedTuple):
    """One consumed record; ``timestamp`` is ms since the epoch (create or log-append time)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]


@dataclass(frozen=True, slots=True)
class RecordMetadata:
    """Where an acknowledged record was stored."""

    topic: str
    partition: int
    offset: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class BatchMetadata:
    """Where an acknowledged batch of ``send_many`` was stored: offsets base..base+count-1."""

    topic: str
    partition: int
    base_offset: int
    record_count: int
    timestamp: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.record_count - 1


@dataclass(frozen=True, slots=True)
class TopicSummary:
    name: str
    partition_count: int
    internal: bool
    overrides: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """A partition's offsets and size; ``read_only_reason`` is set when it refuses writes."""

    partition: int
    log_start_offset: int
    high_watermark: int
    log_end_offset: int
    size_bytes: int
    segment_count: int
    read_only_reason: str = ""


@dataclass(frozen=True, slots=True)
class TopicDescription:
    """A topic with its partitions, effective configs (defaults included) and overrides."""

    name: str
    partition_count: int
    internal: bool
    partitions: tuple[PartitionInfo, ...]
    configs: dict[str, str]
    overrides: dict[str, str]


@dataclass(frozen=True, slots=True)
class PartitionOffset:
    """The offset an earliest/latest/time lookup resolved to, with the partition's bounds."""

    partition: int
    offset: int
    log_start_offset: int
    high_watermark: int


def normalize_headers(headers: HeadersLike | None) -> tuple[Header, ...]:
    """Accept the header shapes users write and check them once, at send time.

    Raises:
        TypeError: a key is not str or a value is not bytes or None.
    """
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    result = []
    for item in items:
        header = item if isinstance(item, Header) else Header(item[0], item[1])
        if not isinstance(header.key, str):
            raise TypeError(f"header keys are str, got {type(header.key).__name__}")
        if header.value is not None and not isinstance(header.value, bytes):
            raise TypeError(f"header values are bytes or None, got {type(header.value).__name__}")
        result.append(header)
    return tuple(result)
