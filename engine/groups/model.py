"""What the coordinator returns and pushes: frozen value objects, ready for a servicer.

Events go to watchers (see :meth:`GroupCoordinator.watch`); a member applies them in order:
stop fetching and commit the partitions in ``revoke``, then acknowledge by heartbeating with
its new holding; start ``assign`` from their committed offsets; seek to ``positions``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from engine.groups.types import TopicPartition

__all__ = [
    "AssignmentChanged",
    "GroupDescription",
    "GroupEvent",
    "GroupListing",
    "GroupState",
    "HeartbeatResult",
    "MemberDescription",
    "MemberFenced",
    "Membership",
    "PartitionLag",
    "PositionsReset",
]


class GroupState(enum.Enum):
    """KIP-848's group states, minus the ones a single broker does not need."""

    EMPTY = "empty"  # no members; committed offsets may exist
    RECONCILING = "reconciling"  # some member holds partitions it must give up, or awaits some
    STABLE = "stable"  # every member holds exactly its target assignment


@dataclass(frozen=True, slots=True)
class Membership:
    """The answer to a join.

    Attributes:
        assignment: partitions the member may consume now; partitions of its target still
            held by other members arrive later (heartbeat or watch event).
        heartbeat_interval_ms: how often to heartbeat (a third of the session timeout).
    """

    group: str
    member_id: str
    generation: int
    assignment: frozenset[TopicPartition]
    heartbeat_interval_ms: int
    session_timeout_ms: int


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    """The member's reconciled state after a heartbeat.

    Attributes:
        generation: the group's generation; commit with it.
        assignment: what the member should hold now (``revoke`` already removed).
        assign: partitions newly given to the member by this heartbeat.
        revoke: partitions to stop, commit and release by heartbeating without them.
        positions: offsets to seek to (an offset reset while the member was live).
    """

    generation: int
    assignment: frozenset[TopicPartition]
    assign: frozenset[TopicPartition]
    revoke: frozenset[TopicPartition]
    positions: Mapping[TopicPartition, int]
    heartbeat_interval_ms: int


@dataclass(frozen=True, slots=True)
class AssignmentChanged:
    """Pushed when a member's holding changes; same fields as :class:`HeartbeatResult`."""

    group: str
    member_id: str
    generation: int
    assignment: frozenset[TopicPartition]
    assign: frozenset[TopicPartition]
    revoke: frozenset[TopicPartition]


@dataclass(frozen=True, slots=True)
class PositionsReset:
    """Pushed by a live offset reset: seek to ``positions``; older generations are fenced."""

    group: str
    member_id: str
    generation: int
    positions: Mapping[TopicPartition, int]


@dataclass(frozen=True, slots=True)
class MemberFenced:
    """Pushed when the member is removed (expired, replaced, revocation overdue); the last."""

    group: str
    member_id: str
    reason: str


GroupEvent = AssignmentChanged | PositionsReset | MemberFenced


@dataclass(frozen=True, slots=True)
class MemberDescription:
    """One member as :meth:`GroupCoordinator.describe` reports it.

    Attributes:
        assignment: partitions the member holds (including those it is asked to revoke).
        target: what the assignor gave it; equal to ``assignment`` once reconciled.
        departed: a static member that left temporarily; its partitions wait for it.
    """

    member_id: str
    instance_id: str | None
    topics: frozenset[str]
    pattern: str | None
    assignment: frozenset[TopicPartition]
    target: frozenset[TopicPartition]
    revoking: frozenset[TopicPartition]
    session_timeout_ms: int
    last_heartbeat_age_ms: int
    departed: bool


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """Progress of the group on one partition.

    Attributes:
        committed: the committed offset, or None if the group never committed here (then the
            lags are None too: where the consumer starts depends on its reset policy).
        log_end_offset: the high watermark (what consumers can read).
        lag_records: ``log_end_offset - committed``, at least 0.
        lag_ms: age of the oldest uncommitted record (now minus its timestamp), 0 when caught
            up, None when unknown.
    """

    topic: str
    partition: int
    committed: int | None
    metadata: str
    owner: str | None
    log_start_offset: int
    log_end_offset: int
    lag_records: int | None
    lag_ms: int | None


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group: str
    state: GroupState
    generation: int
    assignor: str | None
    members: tuple[MemberDescription, ...]
    partitions: tuple[PartitionLag, ...]


@dataclass(frozen=True, slots=True)
class GroupListing:
    group: str
    state: GroupState
    members: int
