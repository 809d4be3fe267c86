"""Value objects of group administration: descriptions, committed offsets, reset specs, plans.

Kept apart from :mod:`moldau._types` because they belong to one feature (GroupService) and
would double that module. All are frozen dataclasses: they are built once per admin call, so
the NamedTuple speed-up :mod:`moldau._types` uses on the consume path buys nothing here.

A reset is described by a *spec* (what offset each partition should get) and *targets*
(which partitions), mirroring Kafka's ``kafka-consumer-groups --reset-offsets`` flags::

    ToEarliest()                 the log start offset
    ToLatest()                   the log end offset (the high watermark)
    ToOffset(42)                 offset 42
    ToDatetime(timestamp_ms)     the first record at or after that time; ToDatetime.of(datetime)
    ByDuration(duration_ms)      the same for now - duration; ByDuration.of(timedelta)
    ShiftBy(-10)                 committed offset - 10 (from the log start where none)
    FromRows({tp: offset})       explicit offsets; only these partitions are reset
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from moldau._types import TopicPartition

__all__ = [
    "ByDuration",
    "CommittedOffset",
    "FromRows",
    "GroupDescription",
    "GroupState",
    "GroupSummary",
    "MemberDescription",
    "OffsetAndMetadata",
    "PartitionLag",
    "ResetPlan",
    "ResetPlanRow",
    "ResetSpec",
    "ShiftBy",
    "ToDatetime",
    "ToEarliest",
    "ToLatest",
    "ToOffset",
]


class GroupState(enum.StrEnum):
    """KIP-848's group states as the broker reports them (a str, so it prints and JSON-dumps)."""

    EMPTY = "empty"
    """No members; committed offsets may exist."""
    RECONCILING = "reconciling"
    """Some member still has to release or receive partitions."""
    STABLE = "stable"
    """Every member holds exactly its target assignment."""
    UNKNOWN = "unknown"
    """A state this client does not know (a newer broker)."""


class OffsetAndMetadata(NamedTuple):
    """An offset to commit with its metadata text (at most 4096 UTF-8 bytes)."""

    offset: int
    metadata: str = ""


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """One line of :meth:`~moldau.Admin.list_groups`."""

    group: str
    state: GroupState
    members: int


@dataclass(frozen=True, slots=True)
class MemberDescription:
    """One member of a group.

    Attributes:
        instance_id: The static member's stable id; "" for a dynamic member.
        pattern: The subscription regex; "" when the member lists ``topics``.
        assignment: Partitions the member holds, including those it is asked to revoke.
        target: What the assignor gave it; equal to ``assignment`` once reconciled.
        revoking: Partitions the member still has to commit and release.
        departed: A static member that left temporarily; its partitions wait for it.
    """

    member_id: str
    instance_id: str
    topics: tuple[str, ...]
    pattern: str
    assignment: tuple[TopicPartition, ...]
    target: tuple[TopicPartition, ...]
    revoking: tuple[TopicPartition, ...]
    session_timeout_ms: int
    last_heartbeat_age_ms: int
    departed: bool


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """The group's progress on one partition.

    Attributes:
        committed: The committed offset; None where the group never committed (then the lags
            are None too: where a consumer starts there depends on its reset policy).
        owner: Member id of the member holding the partition; "" for none.
        log_end_offset: The high watermark (what consumers can read).
        lag_records: ``log_end_offset - committed``, at least 0.
        lag_ms: Age of the oldest uncommitted record; 0 when caught up. Alert on this one:
            the same record lag is a second on a busy topic and a week on a quiet one.
    """

    topic: str
    partition: int
    committed: int | None
    metadata: str
    owner: str
    log_start_offset: int
    log_end_offset: int
    lag_records: int | None
    lag_ms: int | None


@dataclass(frozen=True, slots=True)
class GroupDescription:
    """A group's state, members and per-partition lag.

    Attributes:
        assignor: "range", "round-robin" or "sticky"; "" while the group has no members.
        partitions: Every partition the group committed or its members subscribe to.
    """

    group: str
    state: GroupState
    generation: int
    assignor: str
    members: tuple[MemberDescription, ...]
    partitions: tuple[PartitionLag, ...]


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    """A stored offset: the next offset to consume, with when and in which generation.

    Attributes:
        generation: The generation of the commit; -1 for commits outside membership (tools,
            manual assignment, resets of an empty group).
    """

    topic: str
    partition: int
    offset: int
    metadata: str
    commit_timestamp_ms: int
    generation: int


# ---------------------------------------------------------------------------- reset specs


@dataclass(frozen=True, slots=True)
class ToEarliest:
    """Reset to the log start offset (reprocess everything still stored)."""


@dataclass(frozen=True, slots=True)
class ToLatest:
    """Reset to the log end offset (skip everything stored so far)."""


@dataclass(frozen=True, slots=True)
class ToOffset:
    """Reset every target partition to ``offset`` (clamped into its range)."""

    offset: int


@dataclass(frozen=True, slots=True)
class ToDatetime:
    """Reset to the first record at or after ``timestamp_ms`` (ms since the epoch)."""

    timestamp_ms: int

    @classmethod
    def of(cls, moment: datetime) -> ToDatetime:
        """From a datetime; a naive one is local time, as :meth:`datetime.timestamp` has it."""
        return cls(round(moment.timestamp() * 1000))


@dataclass(frozen=True, slots=True)
class ByDuration:
    """Reset to the first record at or after now minus ``duration_ms``.

    Raises:
        ValueError: a negative duration (it would point into the future).
    """

    duration_ms: int

    def __post_init__(self) -> None:
        if self.duration_ms < 0:
            raise ValueError(f"a reset duration must not be negative, got {self.duration_ms} ms")

    @classmethod
    def of(cls, duration: timedelta) -> ByDuration:
        return cls(round(duration.total_seconds() * 1000))


@dataclass(frozen=True, slots=True)
class ShiftBy:
    """Move the committed offset by ``delta`` (may be negative); from the log start if none."""

    delta: int


@dataclass(frozen=True, slots=True)
class FromRows:
    """Explicit offsets per partition; only these partitions are reset."""

    offsets: Mapping[TopicPartition, int]


ResetSpec = ToEarliest | ToLatest | ToOffset | ToDatetime | ByDuration | ShiftBy | FromRows
"""What offset each target partition gets."""


@dataclass(frozen=True, slots=True)
class ResetPlanRow:
    """One partition of a reset plan.

    Attributes:
        current: The committed offset before the reset; None where the group had none.
        clamped: The requested offset was outside [log start, log end] and was moved to the
            nearer end; ``new_offset`` is where it landed.
    """

    topic: str
    partition: int
    current: int | None
    new_offset: int
    clamped: bool


@dataclass(frozen=True, slots=True)
class ResetPlan:
    """A planned (dry run) or executed reset.

    Attributes:
        executed: True when the rows were stored; False for a dry run.
        fence_generation: For a live reset, the generation that fenced older commits.
    """

    group: str
    rows: tuple[ResetPlanRow, ...]
    executed: bool
    fence_generation: int | None = None

    @property
    def clamped(self) -> tuple[ResetPlanRow, ...]:
        """The rows whose requested offset was out of range."""
        return tuple(row for row in self.rows if row.clamped)
