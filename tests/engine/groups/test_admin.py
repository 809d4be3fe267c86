"""describe (with lag in records and time), list, delete group, delete offsets, the API."""

from __future__ import annotations

import pytest

import engine.groups as groups_pkg
from engine.broker import Broker
from engine.clock import ManualClock
from engine.errors import GroupNotEmptyError, UnknownGroupError
from engine.groups import (
    GroupCoordinator,
    GroupListing,
    GroupState,
    OffsetAndMetadata,
    TopicPartition,
)

from .conftest import T0, produce

P0 = TopicPartition("payments", 0)
P1 = TopicPartition("payments", 1)


def test_describe_reports_lag_in_records_and_time(
    coordinator: GroupCoordinator, broker: Broker, clock: ManualClock
) -> None:
    produce(broker, "payments", 0, 5, timestamp=T0)
    produce(broker, "payments", 0, 5, timestamp=T0 + 60_000)
    produce(broker, "payments", 1, 3, timestamp=T0)
    member = coordinator.join("g", topics=["payments"])
    coordinator.commit_offsets(
        "g",
        1,
        member.member_id,
        {
            P0: OffsetAndMetadata(5, "half"),
            P1: OffsetAndMetadata(3),
        },
    )
    description = coordinator.describe("g")
    assert description.state is GroupState.STABLE
    assert description.assignor == "sticky"
    assert [m.member_id for m in description.members] == [member.member_id]
    first, second = description.partitions
    assert (first.committed, first.metadata, first.log_end_offset) == (5, "half", 10)
    assert first.lag_records == 5
    assert first.lag_ms == clock.now_ms() - (T0 + 60_000)
    assert first.owner == member.member_id
    assert (second.lag_records, second.lag_ms) == (0, 0)


def test_describe_without_commits_and_for_unknown_groups(coordinator: GroupCoordinator) -> None:
    coordinator.join("g", topics=["payments"])
    rows = coordinator.describe("g").partitions
    assert [(r.partition, r.committed, r.lag_records, r.lag_ms) for r in rows] == [
        (0, None, None, None),
        (1, None, None, None),
    ]
    with pytest.raises(UnknownGroupError):
        coordinator.describe("nope")


def test_describe_an_empty_group_with_offsets(coordinator: GroupCoordinator) -> None:
    coordinator.commit_offsets("idle", -1, "", {P0: OffsetAndMetadata(0)})
    description = coordinator.describe("idle")
    assert description.state is GroupState.EMPTY
    assert description.members == ()
    assert [p.partition for p in description.partitions] == [0]


def test_list_groups(coordinator: GroupCoordinator) -> None:
    coordinator.join("live", topics=["payments"])
    coordinator.commit_offsets("idle", -1, "", {P0: OffsetAndMetadata(0)})
    assert coordinator.list_groups() == [
        GroupListing("idle", GroupState.EMPTY, 0),
        GroupListing("live", GroupState.STABLE, 1),
    ]


def test_delete_group_rules(coordinator: GroupCoordinator) -> None:
    member = coordinator.join("g", topics=["payments"])
    coordinator.commit_offsets("g", 1, member.member_id, {P0: OffsetAndMetadata(1)})
    with pytest.raises(GroupNotEmptyError, match="stop its consumers"):
        coordinator.delete_group("g")
    coordinator.leave("g", member.member_id)
    coordinator.delete_group("g")
    assert coordinator.fetch_offsets("g") == {}
    assert coordinator.list_groups() == []
    with pytest.raises(UnknownGroupError):
        coordinator.delete_group("g")


def test_delete_offsets_rules(coordinator: GroupCoordinator) -> None:
    member = coordinator.join("g", topics=["payments"])
    coordinator.commit_offsets("g", 1, member.member_id, {P0: OffsetAndMetadata(1)})
    coordinator.commit_offsets("other", -1, "", {TopicPartition("orders", 0): OffsetAndMetadata(1)})
    with pytest.raises(GroupNotEmptyError, match="subscribe to payments"):
        coordinator.delete_offsets("g", [P0])
    with pytest.raises(GroupNotEmptyError):
        coordinator.delete_offsets("g")
    assert coordinator.delete_offsets("other", [TopicPartition("orders", 0)]) == [
        TopicPartition("orders", 0)
    ]
    with pytest.raises(UnknownGroupError):
        coordinator.delete_offsets("other")


def test_package_exports_exactly_its_all() -> None:
    public = {n for n in dir(groups_pkg) if not n.startswith("_")}
    modules = {"assignors", "coordinator", "lag", "model", "offsets", "reset", "state", "types"}
    assert public - modules == set(groups_pkg.__all__)
    assert len(set(groups_pkg.__all__)) == len(groups_pkg.__all__)
    assert groups_pkg.__all__ == sorted(groups_pkg.__all__, key=lambda n: (not n.isupper(), n))
