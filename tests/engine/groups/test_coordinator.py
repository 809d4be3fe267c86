"""Membership, cooperative rebalancing, expiry, static members, commits and pushed events."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engine.broker import Broker
from engine.clock import ManualClock
from engine.errors import (
    GroupNotEmptyError,
    InconsistentAssignorError,
    InvalidGroupRequestError,
    NotPartitionOwnerError,
    StaleGenerationError,
    UnknownGroupError,
    UnknownMemberError,
    UnknownPartitionError,
)
from engine.groups import (
    AssignmentChanged,
    GroupCoordinator,
    GroupEvent,
    GroupState,
    MemberFenced,
    OffsetAndMetadata,
    TopicPartition,
)

from .conftest import tps

ALL_ORDERS = tps("orders", *range(6))


def test_first_member_gets_every_partition(coordinator: GroupCoordinator) -> None:
    membership = coordinator.join("g", topics=["orders"])
    assert membership.assignment == ALL_ORDERS
    assert membership.generation == 1
    assert membership.heartbeat_interval_ms == membership.session_timeout_ms // 3
    assert coordinator.describe("g").state is GroupState.STABLE


def test_cooperative_rebalance_revokes_only_moved_partitions(
    coordinator: GroupCoordinator,
) -> None:
    first = coordinator.join("g", topics=["orders"])
    second = coordinator.join("g", topics=["orders"])
    assert second.generation == 2
    assert second.assignment == frozenset()  # still held by the first member
    result = coordinator.heartbeat("g", first.member_id, first.generation)
    assert len(result.revoke) == 3
    assert result.assignment == ALL_ORDERS - result.revoke
    assert coordinator.describe("g").state is GroupState.RECONCILING
    # nothing moves to the newcomer before the old owner lets go
    assert coordinator.heartbeat("g", second.member_id, 2).assignment == frozenset()
    coordinator.heartbeat("g", first.member_id, 2, result.assignment)
    handed = coordinator.heartbeat("g", second.member_id, 2)
    assert handed.assign == result.revoke
    assert handed.assignment == result.revoke
    assert coordinator.describe("g").state is GroupState.STABLE


def _settle(
    coordinator: GroupCoordinator, group: str, members: list[str]
) -> dict[str, frozenset[TopicPartition]]:
    """Heartbeat every member, acknowledging revocations, until nothing changes."""
    held: dict[str, frozenset[TopicPartition]] = {}
    for _ in range(4):
        for member_id in members:
            result = coordinator.heartbeat(group, member_id, 0, held.get(member_id))
            held[member_id] = result.assignment
    return held


def test_session_expiry_moves_partitions(coordinator: GroupCoordinator, clock: ManualClock) -> None:
    a = coordinator.join("g", topics=["orders"], session_timeout_ms=10_000)
    b = coordinator.join("g", topics=["orders"], session_timeout_ms=10_000)
    _settle(coordinator, "g", [a.member_id, b.member_id])
    clock.advance(6_000)
    coordinator.heartbeat("g", b.member_id, 2)
    assert coordinator.expire_members() == []
    clock.advance(6_000)
    assert coordinator.expire_members() == [("g", a.member_id)]
    assert coordinator.heartbeat("g", b.member_id, 3).assignment == ALL_ORDERS
    with pytest.raises(UnknownMemberError, match="join the group again"):
        coordinator.heartbeat("g", a.member_id, 2)


def test_overdue_revocation_fences_the_old_owner(
    coordinator: GroupCoordinator, clock: ManualClock
) -> None:
    a = coordinator.join("g", topics=["orders"], rebalance_timeout_ms=5_000)
    b = coordinator.join("g", topics=["orders"])
    revoke = coordinator.heartbeat("g", a.member_id, 1).revoke
    for _ in range(3):  # a keeps heartbeating but never releases
        clock.advance(2_000)
        coordinator.heartbeat("g", a.member_id, 2)
        coordinator.expire_members()
    assert a.member_id not in {m.member_id for m in coordinator.describe("g").members}
    assert revoke <= coordinator.heartbeat("g", b.member_id, 2).assignment


def test_leave_moves_partitions_at_once(coordinator: GroupCoordinator) -> None:
    a = coordinator.join("g", topics=["orders"])
    b = coordinator.join("g", topics=["orders"])
    _settle(coordinator, "g", [a.member_id, b.member_id])
    coordinator.leave("g", a.member_id)
    assert coordinator.heartbeat("g", b.member_id, 3).assignment == ALL_ORDERS
    coordinator.leave("g", b.member_id)
    with pytest.raises(UnknownGroupError):
        coordinator.describe("g")  # no members, no offsets: the group is gone


def test_static_member_keeps_its_assignment_across_a_quick_rejoin(
    coordinator: GroupCoordinator, clock: ManualClock
) -> None:
    a = coordinator.join("g", instance_id="host-a", topics=["orders"], session_timeout_ms=10_000)
    b = coordinator.join("g", topics=["orders"])
    held = _settle(coordinator, "g", [a.member_id, b.member_id])
    generation = coordinator.describe("g").generation
    coordinator.leave("g", a.member_id)  # temporary for a static member
    clock.advance(5_000)
    coordinator.expire_members()
    again = coordinator.join(
        "g", instance_id="host-a", topics=["orders"], session_timeout_ms=10_000
    )
    assert again.member_id != a.member_id
    assert again.assignment == held[a.member_id]
    assert again.generation == generation  # no rebalance
    with pytest.raises(UnknownMemberError):
        coordinator.heartbeat("g", a.member_id, generation)


def test_departed_static_member_expires_after_its_session(
    coordinator: GroupCoordinator, clock: ManualClock
) -> None:
    a = coordinator.join("g", instance_id="host-a", topics=["orders"], session_timeout_ms=10_000)
    b = coordinator.join("g", topics=["orders"], session_timeout_ms=60_000)
    _settle(coordinator, "g", [a.member_id, b.member_id])
    coordinator.leave("g", a.member_id)
    assert [
        m.departed for m in coordinator.describe("g").members if m.member_id == a.member_id
    ] == [True]
    clock.advance(11_000)
    assert coordinator.expire_members() == [("g", a.member_id)]
    assert coordinator.heartbeat("g", b.member_id, 3).assignment == ALL_ORDERS


def test_static_restart_fences_the_previous_incarnation(coordinator: GroupCoordinator) -> None:
    events: list[GroupEvent] = []
    old = coordinator.join("g", instance_id="host-a", topics=["orders"])
    coordinator.watch("g", old.member_id, events.append)
    new = coordinator.join("g", instance_id="host-a", topics=["orders"])
    assert new.assignment == ALL_ORDERS
    assert isinstance(events[-1], MemberFenced)
    assert "joined again" in events[-1].reason
    with pytest.raises(UnknownMemberError):
        coordinator.commit_offsets(
            "g", 1, old.member_id, {TopicPartition("orders", 0): OffsetAndMetadata(1)}
        )


def test_commit_rules(coordinator: GroupCoordinator) -> None:
    a = coordinator.join("g", topics=["orders"])
    b = coordinator.join("g", topics=["orders"])
    held = _settle(coordinator, "g", [a.member_id, b.member_id])
    mine = sorted(held[a.member_id])[0]
    theirs = sorted(held[b.member_id])[0]
    stored = coordinator.commit_offsets("g", 2, a.member_id, {mine: OffsetAndMetadata(4, "ok")})
    assert stored[mine].generation == 2
    assert coordinator.fetch_offsets("g") == stored
    with pytest.raises(NotPartitionOwnerError, match=str(theirs)):
        coordinator.commit_offsets("g", 2, a.member_id, {theirs: OffsetAndMetadata(1)})
    with pytest.raises(StaleGenerationError, match="never issued"):
        coordinator.commit_offsets("g", 9, a.member_id, {mine: OffsetAndMetadata(1)})
    with pytest.raises(UnknownMemberError):
        coordinator.commit_offsets("g", 2, "nobody", {mine: OffsetAndMetadata(1)})
    with pytest.raises(GroupNotEmptyError):
        coordinator.commit_offsets("g", -1, "", {mine: OffsetAndMetadata(1)})
    # a member that has not heard of a rebalance yet may still commit what it holds
    coordinator.join("g", topics=["orders"])
    coordinator.commit_offsets("g", 2, a.member_id, {mine: OffsetAndMetadata(5)})


def test_commit_outside_membership_when_the_group_is_empty(coordinator: GroupCoordinator) -> None:
    tp = TopicPartition("orders", 1)
    coordinator.commit_offsets("tool", -1, "", {tp: OffsetAndMetadata(7)})
    assert coordinator.fetch_offsets("tool")[tp].offset == 7
    with pytest.raises(UnknownPartitionError):
        coordinator.commit_offsets(
            "tool", -1, "", {TopicPartition("orders", 99): OffsetAndMetadata(1)}
        )


def test_pattern_subscription_follows_new_topics(
    coordinator: GroupCoordinator, broker: Broker
) -> None:
    a = coordinator.join("g", pattern=r"ord.*|new-.*")
    assert a.assignment == ALL_ORDERS
    broker.create_topic("new-topic", 2)
    assert coordinator.refresh_metadata() == ["g"]
    assert coordinator.refresh_metadata() == []
    result = coordinator.heartbeat("g", a.member_id, 2)
    assert result.assign == tps("new-topic", 0, 1)


def test_topic_created_after_join_is_picked_up_on_heartbeat(
    coordinator: GroupCoordinator, broker: Broker
) -> None:
    a = coordinator.join("g", topics=["later"])
    assert a.assignment == frozenset()
    broker.create_topic("later", 1)
    assert coordinator.heartbeat("g", a.member_id, 1).assign == tps("later", 0)


def test_subscription_change_on_rejoin(coordinator: GroupCoordinator) -> None:
    a = coordinator.join("g", topics=["orders"])
    again = coordinator.join("g", a.member_id, topics=["payments"])
    assert again.generation == 2
    result = coordinator.heartbeat("g", a.member_id, 2)
    assert result.revoke == ALL_ORDERS
    done = coordinator.heartbeat("g", a.member_id, 2, result.assignment)
    assert done.assignment == tps("payments", 0, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"topics": ["orders"], "pattern": "o.*"}, "exactly one"),
        ({"topics": "orders"}, "not a str"),
        ({"pattern": "("}, "invalid"),
        ({"topics": ["orders"], "assignor": "magic"}, "round-robin"),
        ({"topics": ["orders"], "session_timeout_ms": 10}, "out of range"),
        ({"topics": ["orders"], "rebalance_timeout_ms": 10**9}, "out of range"),
    ],
)
def test_invalid_joins(
    coordinator: GroupCoordinator, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidGroupRequestError, match=match):
        coordinator.join("g", **kwargs)  # type: ignore[arg-type]


def test_members_must_agree_on_the_assignor(coordinator: GroupCoordinator) -> None:
    coordinator.join("g", topics=["orders"], assignor="range")
    with pytest.raises(InconsistentAssignorError, match="range"):
        coordinator.join("g", topics=["orders"], assignor="sticky")


def test_watch_pushes_changes_in_order_and_callbacks_may_reenter(
    coordinator: GroupCoordinator,
) -> None:
    a = coordinator.join("g", topics=["orders"])
    b = coordinator.join("g", topics=["orders"])
    b_events: list[GroupEvent] = []
    a_events: list[GroupEvent] = []

    def on_a(event: GroupEvent) -> None:  # acknowledges from inside the callback
        a_events.append(event)
        if isinstance(event, AssignmentChanged) and event.revoke:
            coordinator.heartbeat("g", a.member_id, event.generation, event.assignment)

    coordinator.watch("g", b.member_id, b_events.append)
    cancel = coordinator.watch("g", a.member_id, on_a)
    assert isinstance(a_events[0], AssignmentChanged)
    assert len(a_events[0].revoke) == 3
    handed = [e for e in b_events if isinstance(e, AssignmentChanged) and e.assign]
    assert handed
    assert handed[0].assign == a_events[0].revoke
    cancel()
    coordinator.join("g", topics=["orders"])
    assert len(a_events) == 1  # cancelled watchers hear nothing


def test_keepalive_watch_counts_as_heartbeat(
    coordinator: GroupCoordinator, clock: ManualClock
) -> None:
    a = coordinator.join("g", topics=["orders"], session_timeout_ms=5_000)
    cancel = coordinator.watch("g", a.member_id, lambda event: None, keepalive=True)
    clock.advance(60_000)
    assert coordinator.expire_members() == []
    cancel()
    clock.advance(4_000)
    assert coordinator.expire_members() == []
    clock.advance(2_000)
    assert coordinator.expire_members() == [("g", a.member_id)]


def test_failing_callback_does_not_block_others(coordinator: GroupCoordinator) -> None:
    a = coordinator.join("g", topics=["orders"])
    seen: list[GroupEvent] = []

    def broken(event: GroupEvent) -> None:
        raise RuntimeError("stream closed")

    coordinator.watch("g", a.member_id, broken)
    coordinator.watch("g", a.member_id, seen.append)
    coordinator.join("g", topics=["orders"])
    assert seen


def test_concurrent_commits_from_many_threads(coordinator: GroupCoordinator) -> None:
    members = [coordinator.join("g", topics=["orders"]).member_id for _ in range(3)]
    held = _settle(coordinator, "g", members)
    generation = coordinator.describe("g").generation
    errors: list[BaseException] = []

    def run(member_id: str) -> None:
        try:
            for offset in range(1, 21):
                offsets = {tp: OffsetAndMetadata(offset) for tp in held[member_id]}
                coordinator.commit_offsets("g", generation, member_id, offsets)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert {o.offset for o in coordinator.fetch_offsets("g").values()} == {20}


def test_committed_offsets_survive_a_coordinator_restart(
    tmp_path: Path, clock: ManualClock
) -> None:
    tp = TopicPartition("orders", 0)
    with Broker.open(tmp_path, background=False, clock=clock) as broker:
        broker.create_topic("orders", 1)
        coordinator = GroupCoordinator.open(broker, clock)
        member = coordinator.join("g", topics=["orders"])
        coordinator.commit_offsets("g", 1, member.member_id, {tp: OffsetAndMetadata(12)})
    with Broker.open(tmp_path, background=False, clock=clock) as broker:
        coordinator = GroupCoordinator.open(broker, clock)
        assert coordinator.fetch_offsets("g")[tp].offset == 12
        assert coordinator.describe("g").state is GroupState.EMPTY
        with pytest.raises(UnknownMemberError):
            coordinator.heartbeat("g", member.member_id, 1)
