"""Offset reset planning: the engine half of ``moldau groups reset-offsets``.

A reset is planned first (a dry run: nothing is written) and executed from the plan, so what
the operator approved is exactly what is committed. Every new offset is clamped into
``[log_start_offset, high_watermark]`` of its partition, and the row says when it was.

Specs mirror Kafka's flags: ``ToEarliest``, ``ToLatest``, ``ToOffset(n)``,
``ToDatetime(timestamp_ms)`` (first offset with a timestamp at or after it, the high watermark
if none), ``ByDuration(ms)`` (the same, for ``now - ms``), ``ShiftBy(n)`` (from the committed
offset; from the log start where none is committed) and ``FromRows`` (explicit offsets, e.g.
from a CSV file). Targets are partitions, topic names (all their partitions) or
``ALL_TOPICS``: every partition of every topic the group has offsets for or subscribes to.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from engine.broker import Broker
from engine.errors import InvalidGroupRequestError
from engine.groups.types import OffsetAndMetadata, TopicPartition

__all__ = [
    "ALL_TOPICS",
    "AllTopics",
    "ByDuration",
    "FromRows",
    "ResetPlanRow",
    "ResetResult",
    "ResetSpec",
    "ResetTargets",
    "ShiftBy",
    "ToDatetime",
    "ToEarliest",
    "ToLatest",
    "ToOffset",
    "plan_rows",
    "resolve_targets",
]


@dataclass(frozen=True, slots=True)
class ToEarliest:
    """The log start offset."""


@dataclass(frozen=True, slots=True)
class ToLatest:
    """The high watermark: skip everything stored so far."""


@dataclass(frozen=True, slots=True)
class ToOffset:
    offset: int


@dataclass(frozen=True, slots=True)
class ToDatetime:
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class ByDuration:
    """Records newer than ``duration_ms`` before now are consumed again."""

    duration_ms: int


@dataclass(frozen=True, slots=True)
class ShiftBy:
    delta: int


@dataclass(frozen=True, slots=True)
class FromRows:
    """Explicit offsets; only these partitions are planned."""

    offsets: Mapping[TopicPartition, int]


ResetSpec = ToEarliest | ToLatest | ToOffset | ToDatetime | ByDuration | ShiftBy | FromRows


class AllTopics(enum.Enum):
    ALL = "all"


ALL_TOPICS = AllTopics.ALL
ResetTargets = Iterable[TopicPartition | str] | AllTopics


@dataclass(frozen=True, slots=True)
class ResetPlanRow:
    """One partition of a plan: ``current`` is None where nothing was committed."""

    topic: str
    partition: int
    current: int | None
    new: int
    clamped: bool

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class ResetResult:
    """What an executed reset stored; ``generation`` is the fencing generation if live."""

    group: str
    rows: tuple[ResetPlanRow, ...]
    generation: int | None


def resolve_targets(
    broker: Broker,
    targets: ResetTargets,
    committed: Collection[TopicPartition],
    subscribed_topics: Collection[str],
) -> list[TopicPartition]:
    """Expand targets into existing partitions, sorted and without duplicates.

    Raises:
        UnknownTopicError, UnknownPartitionError: a named topic or partition does not exist.
    """
    result: set[TopicPartition] = set()
    if isinstance(targets, AllTopics):
        topics = {tp.topic for tp in committed} | set(subscribed_topics)
        for topic in topics:
            if broker.has_topic(topic):
                count = broker.describe_topic(topic).partitions
                result.update(TopicPartition(topic, p) for p in range(count))
        return sorted(result)
    for target in targets:
        if isinstance(target, str):
            count = broker.describe_topic(target).partitions
            result.update(TopicPartition(target, p) for p in range(count))
        else:
            broker.partition(target.topic, target.partition)  # raises if it does not exist
            result.add(target)
    return sorted(result)


def plan_rows(
    broker: Broker,
    group: str,
    partitions: Iterable[TopicPartition],
    committed: Mapping[TopicPartition, OffsetAndMetadata],
    spec: ResetSpec,
    now_ms: int,
) -> list[ResetPlanRow]:
    """One clamped row per partition (for ``FromRows``, per listed partition among them)."""
    if isinstance(spec, ByDuration) and spec.duration_ms < 0:
        raise InvalidGroupRequestError(
            f"a duration must be >= 0 ms, got {spec.duration_ms}", group
        )
    rows: list[ResetPlanRow] = []
    for tp in sorted(partitions):
        if isinstance(spec, FromRows) and tp not in spec.offsets:
            continue
        partition_log = broker.partition(tp.topic, tp.partition)
        start, end = partition_log.log_start_offset, partition_log.high_watermark
        current = committed[tp].offset if tp in committed else None
        wanted = _wanted(broker, tp, spec, current, start, end, now_ms)
        new = min(max(wanted, start), end)
        rows.append(ResetPlanRow(tp.topic, tp.partition, current, new, new != wanted))
    return rows


def _wanted(
    broker: Broker,
    tp: TopicPartition,
    spec: ResetSpec,
    current: int | None,
    start: int,
    end: int,
    now_ms: int,
) -> int:
    """The offset ``spec`` asks for, before clamping."""
    match spec:
        case ToEarliest():
            return start
        case ToLatest():
            return end
        case ToOffset(offset):
            return offset
        case ToDatetime(timestamp_ms):
            return broker.offset_for_time(tp.topic, tp.partition, timestamp_ms)
        case ByDuration(duration_ms):
            return broker.offset_for_time(tp.topic, tp.partition, now_ms - duration_ms)
        case ShiftBy(delta):
            return (start if current is None else current) + delta
        case FromRows(offsets):
            return offsets[tp]
