"""Consumer groups: membership, partition assignment, committed offsets and offset resets.

Modules: ``types`` (TopicPartition, OffsetAndMetadata), ``assignors`` (range, round-robin,
sticky), ``offsets`` (the ``__consumer_offsets`` store), ``model`` (results and pushed
events), ``reset`` (reset specs and planning), ``lag``, ``state`` (internal), and
``coordinator`` (the entry point). See docs/consumer-groups.md.
"""

from engine.groups.assignors import (
    ASSIGNORS,
    Assignor,
    MemberSubscription,
    range_assign,
    round_robin_assign,
    sticky_assign,
)
from engine.groups.coordinator import (
    DEFAULT_ASSIGNOR,
    DEFAULT_REBALANCE_TIMEOUT_MS,
    DEFAULT_SESSION_TIMEOUT_MS,
    MAX_SESSION_TIMEOUT_MS,
    MIN_SESSION_TIMEOUT_MS,
    GroupCoordinator,
)
from engine.groups.model import (
    AssignmentChanged,
    GroupDescription,
    GroupEvent,
    GroupListing,
    GroupState,
    HeartbeatResult,
    MemberDescription,
    MemberFenced,
    Membership,
    PartitionLag,
    PositionsReset,
)
from engine.groups.offsets import (
    MAX_METADATA_BYTES,
    OFFSETS_TOPIC,
    OffsetStore,
)
from engine.groups.reset import (
    ALL_TOPICS,
    AllTopics,
    ByDuration,
    FromRows,
    ResetPlanRow,
    ResetResult,
    ResetSpec,
    ResetTargets,
    ShiftBy,
    ToDatetime,
    ToEarliest,
    ToLatest,
    ToOffset,
)
from engine.groups.types import OffsetAndMetadata, TopicPartition

__all__ = [
    "ALL_TOPICS",
    "ASSIGNORS",
    "DEFAULT_ASSIGNOR",
    "DEFAULT_REBALANCE_TIMEOUT_MS",
    "DEFAULT_SESSION_TIMEOUT_MS",
    "MAX_METADATA_BYTES",
    "MAX_SESSION_TIMEOUT_MS",
    "MIN_SESSION_TIMEOUT_MS",
    "OFFSETS_TOPIC",
    "AllTopics",
    "AssignmentChanged",
    "Assignor",
    "ByDuration",
    "FromRows",
    "GroupCoordinator",
    "GroupDescription",
    "GroupEvent",
    "GroupListing",
    "GroupState",
    "HeartbeatResult",
    "MemberDescription",
    "MemberFenced",
    "MemberSubscription",
    "Membership",
    "OffsetAndMetadata",
    "OffsetStore",
    "PartitionLag",
    "PositionsReset",
    "ResetPlanRow",
    "ResetResult",
    "ResetSpec",
    "ResetTargets",
    "ShiftBy",
    "ToDatetime",
    "ToEarliest",
    "ToLatest",
    "ToOffset",
    "TopicPartition",
    "range_assign",
    "round_robin_assign",
    "sticky_assign",
]
