"""Offset reset: every spec, clamping, dry runs, refusal with live members, live fencing."""

from __future__ import annotations

import pytest

from engine.broker import Broker
from engine.clock import ManualClock
from engine.errors import (
    GroupNotEmptyError,
    InvalidGroupRequestError,
    StaleGenerationError,
    UnknownTopicError,
)
from engine.groups import (
    ALL_TOPICS,
    ByDuration,
    FromRows,
    GroupCoordinator,
    GroupEvent,
    OffsetAndMetadata,
    PositionsReset,
    ResetPlanRow,
    ResetSpec,
    ShiftBy,
    ToDatetime,
    ToEarliest,
    ToLatest,
    ToOffset,
    TopicPartition,
)

from .conftest import T0, produce

P0 = TopicPartition("payments", 0)
P1 = TopicPartition("payments", 1)


@pytest.fixture
def filled(coordinator: GroupCoordinator, broker: Broker) -> GroupCoordinator:
    """payments-0: offsets 0-9 stamped T0 and 10-19 stamped T0+60s; payments-1: 0-4 at T0."""
    produce(broker, "payments", 0, 10, timestamp=T0)
    produce(broker, "payments", 0, 10, timestamp=T0 + 60_000)
    produce(broker, "payments", 1, 5, timestamp=T0)
    coordinator.commit_offsets("g", -1, "", {P0: OffsetAndMetadata(8), P1: OffsetAndMetadata(2)})
    return coordinator


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (ToEarliest(), [(0, False), (0, False)]),
        (ToLatest(), [(20, False), (5, False)]),
        (ToOffset(3), [(3, False), (3, False)]),
        (ToOffset(7), [(7, False), (5, True)]),
        (ToOffset(-4), [(0, True), (0, True)]),
        (ToDatetime(T0 + 1), [(10, False), (5, False)]),
        (ToDatetime(T0), [(0, False), (0, False)]),
        (ShiftBy(5), [(13, False), (5, True)]),
        (ShiftBy(-3), [(5, False), (0, True)]),
    ],
)
def test_plan_every_spec(
    filled: GroupCoordinator, spec: ResetSpec, expected: list[tuple[int, bool]]
) -> None:
    plan = filled.plan_reset("g", ["payments"], spec)
    assert [(r.partition, r.current) for r in plan] == [(0, 8), (1, 2)]
    assert [(r.new, r.clamped) for r in plan] == expected
    assert filled.fetch_offsets("g")[P0].offset == 8  # a plan writes nothing


def test_by_duration_counts_back_from_now(filled: GroupCoordinator, clock: ManualClock) -> None:
    clock.set_wall(T0 + 90_000)
    plan = filled.plan_reset("g", [P0], ByDuration(60_000))  # records since T0 + 30 s
    assert [(r.new, r.clamped) for r in plan] == [(10, False)]
    with pytest.raises(InvalidGroupRequestError, match=">= 0"):
        filled.plan_reset("g", [P0], ByDuration(-1))


def test_from_rows_plans_only_listed_partitions(filled: GroupCoordinator) -> None:
    rows = FromRows({P1: 4, TopicPartition("orders", 2): 9})
    plan = filled.plan_reset("g", ALL_TOPICS, rows)
    assert plan == [
        ResetPlanRow("orders", 2, None, 0, True),
        ResetPlanRow("payments", 1, 2, 4, False),
    ]
    assert filled.plan_reset("g", [P0], rows) == []


def test_targets_all_topics_and_shift_without_a_commit(
    filled: GroupCoordinator, broker: Broker
) -> None:
    filled.commit_offsets("g", -1, "", {TopicPartition("orders", 5): OffsetAndMetadata(0)})
    plan = filled.plan_reset("g", ALL_TOPICS, ToEarliest())
    assert {r.topic for r in plan} == {"orders", "payments"}
    assert len(plan) == 6 + 2
    fresh = filled.plan_reset("new-group", [TopicPartition("payments", 1)], ShiftBy(2))
    assert fresh == [ResetPlanRow("payments", 1, None, 2, False)]
    with pytest.raises(UnknownTopicError):
        filled.plan_reset("g", ["missing"], ToEarliest())


def test_clamping_to_a_log_start_above_zero(coordinator: GroupCoordinator, broker: Broker) -> None:
    broker.create_topic("short", 1, {"segment.bytes": "1024", "retention.bytes": "0"})
    for _ in range(30):  # about 100 bytes a batch: several 1 KiB segments
        produce(broker, "short", 0, 10)
    broker.run_maintenance(force_retention=True)
    start = broker.partition("short", 0).log_start_offset
    assert start > 0
    plan = coordinator.plan_reset("g", ["short"], ToOffset(0))
    assert [(r.new, r.clamped) for r in plan] == [(start, True)]


def test_execute_stores_the_plan(filled: GroupCoordinator) -> None:
    plan = filled.plan_reset("g", ["payments"], ToEarliest())
    result = filled.execute_reset("g", plan)
    assert result.generation is None
    assert result.rows == tuple(plan)
    committed = filled.fetch_offsets("g")
    assert (committed[P0].offset, committed[P1].offset) == (0, 0)
    assert committed[P0].metadata == "reset"


def test_execute_is_refused_while_members_are_live(filled: GroupCoordinator) -> None:
    filled.join("g", topics=["payments"])
    plan = filled.plan_reset("g", ["payments"], ToLatest())
    with pytest.raises(GroupNotEmptyError, match="--live"):
        filled.execute_reset("g", plan)
    assert filled.fetch_offsets("g")[P0].offset == 8


def test_live_reset_fences_the_group_and_pushes_positions(filled: GroupCoordinator) -> None:
    watched = filled.join("g", topics=["payments"])
    polling = filled.join("g", topics=["payments"])
    held: dict[str, frozenset[TopicPartition]] = {}
    for _ in range(3):
        for member in (watched, polling):
            beat = filled.heartbeat("g", member.member_id, 2, held.get(member.member_id))
            held[member.member_id] = beat.assignment
    events: list[GroupEvent] = []
    filled.watch("g", watched.member_id, events.append)
    plan = filled.plan_reset("g", ["payments"], ToOffset(1))
    result = filled.execute_reset("g", plan, live=True)
    assert result.generation == 3
    pushed = [e for e in events if isinstance(e, PositionsReset)]
    assert pushed == [
        PositionsReset("g", watched.member_id, 3, dict.fromkeys(held[watched.member_id], 1))
    ]
    beat = filled.heartbeat("g", polling.member_id, 2)
    assert beat.generation == 3
    assert beat.positions == dict.fromkeys(held[polling.member_id], 1)
    assert filled.heartbeat("g", polling.member_id, 3).positions == {}
    tp = next(iter(held[watched.member_id]))
    with pytest.raises(StaleGenerationError, match="reset fenced"):
        filled.commit_offsets("g", 2, watched.member_id, {tp: OffsetAndMetadata(15)})
    assert filled.fetch_offsets("g")[tp].offset == 1
    filled.commit_offsets("g", 3, watched.member_id, {tp: OffsetAndMetadata(2)})
    assert filled.fetch_offsets("g")[tp].generation == 3


def test_reset_creates_offsets_for_a_new_group(filled: GroupCoordinator) -> None:
    filled.execute_reset("brand-new", filled.plan_reset("brand-new", [P1], ToLatest()))
    assert filled.fetch_offsets("brand-new") == {P1: filled.fetch_offsets("brand-new")[P1]}
    assert filled.fetch_offsets("brand-new")[P1].offset == 5
