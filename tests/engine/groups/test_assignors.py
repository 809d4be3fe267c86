"""Assignor properties: exactly-once coverage, balance, and sticky minimal movement."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.groups import (
    ASSIGNORS,
    MemberSubscription,
    TopicPartition,
    range_assign,
    round_robin_assign,
    sticky_assign,
)

TOPICS = ["a", "b", "c", "d"]

partition_counts = st.dictionaries(st.sampled_from(TOPICS), st.integers(0, 12), min_size=1)
member_ids = st.lists(st.text("mnxyz", min_size=1, max_size=4), min_size=1, max_size=9, unique=True)


@st.composite
def groups(draw: st.DrawFn) -> tuple[dict[str, MemberSubscription], dict[str, int]]:
    counts = draw(partition_counts)
    topics = st.frozensets(st.sampled_from([*TOPICS, "missing"]), min_size=1)
    members = {m: MemberSubscription(draw(topics)) for m in draw(member_ids)}
    return members, counts


@st.composite
def identical_groups(draw: st.DrawFn) -> tuple[dict[str, MemberSubscription], dict[str, int]]:
    counts = draw(partition_counts)
    topics = frozenset(draw(st.sets(st.sampled_from(TOPICS), min_size=1)))
    return {m: MemberSubscription(topics) for m in draw(member_ids)}, counts


def _expected(
    members: dict[str, MemberSubscription], counts: dict[str, int]
) -> set[TopicPartition]:
    wanted = set().union(*(m.topics for m in members.values()))
    return {TopicPartition(t, p) for t, n in counts.items() if t in wanted for p in range(n)}


@settings(max_examples=150, deadline=None)
@given(groups())
def test_every_subscribed_partition_is_assigned_once_to_a_subscriber(
    case: tuple[dict[str, MemberSubscription], dict[str, int]],
) -> None:
    members, counts = case
    for name, assignor in ASSIGNORS.items():
        result = assignor(members, counts)
        assert set(result) == set(members), name
        owners = Counter(tp for assigned in result.values() for tp in assigned)
        assert set(owners) == _expected(members, counts), name
        assert all(n == 1 for n in owners.values()), name
        for member_id, assigned in result.items():
            assert all(tp.topic in members[member_id].topics for tp in assigned), name


@settings(max_examples=150, deadline=None)
@given(identical_groups())
def test_identical_subscriptions_are_balanced_within_one(
    case: tuple[dict[str, MemberSubscription], dict[str, int]],
) -> None:
    members, counts = case
    for assignor in (round_robin_assign, sticky_assign):
        loads = [len(a) for a in assignor(members, counts).values()]
        assert max(loads) - min(loads) <= 1
    by_range = range_assign(members, counts)
    for topic in counts:  # range balances per topic (and keeps co-partitioned topics together)
        loads = [sum(tp.topic == topic for tp in a) for a in by_range.values()]
        assert max(loads) - min(loads) <= 1


def _minimum_moves(previous: dict[str, int], total: int) -> int:
    """Fewest partitions kept by members that must move so the result is balanced."""
    ordered = sorted(previous.values(), reverse=True)
    per, extra = divmod(total, len(ordered))
    return sum(max(0, held - (per + (1 if i < extra else 0))) for i, held in enumerate(ordered))


def _moved(before: dict[str, set[TopicPartition]], after: dict[str, set[TopicPartition]]) -> int:
    return sum(len(held - after.get(m, set())) for m, held in before.items() if m in after)


@settings(max_examples=150, deadline=None)
@given(identical_groups(), st.booleans(), st.data())
def test_sticky_moves_the_minimum_when_a_member_joins_or_leaves(
    case: tuple[dict[str, MemberSubscription], dict[str, int]], joining: bool, data: st.DataObject
) -> None:
    members, counts = case
    topics = next(iter(members.values())).topics
    start = sticky_assign(members, counts)
    survivors = dict(start)
    if joining:
        survivors["new-member"] = set()
    elif len(members) > 1:
        survivors.pop(data.draw(st.sampled_from(sorted(members))))
    subscriptions = {m: MemberSubscription(topics, frozenset(a)) for m, a in survivors.items()}
    after = sticky_assign(subscriptions, counts)
    total = sum(len(a) for a in start.values())
    kept = {m: len(a) for m, a in survivors.items()}
    assert _moved(survivors, after) == _minimum_moves(kept, total)
    loads = [len(a) for a in after.values()]
    assert max(loads) - min(loads) <= 1


def test_sticky_keeps_a_balanced_assignment_unchanged() -> None:
    topics = frozenset({"a"})
    previous = {
        "m1": {TopicPartition("a", p) for p in (0, 3, 5)},
        "m2": {TopicPartition("a", p) for p in (1, 2, 4)},
    }
    members = {m: MemberSubscription(topics, frozenset(a)) for m, a in previous.items()}
    assert sticky_assign(members, {"a": 6}) == previous


def test_sticky_drops_partitions_of_unsubscribed_or_shrunk_topics() -> None:
    previous = frozenset({TopicPartition("a", 0), TopicPartition("a", 9), TopicPartition("b", 0)})
    result = sticky_assign({"m": MemberSubscription(frozenset({"a"}), previous)}, {"a": 2, "b": 1})
    assert result == {"m": {TopicPartition("a", 0), TopicPartition("a", 1)}}


def test_range_matches_kafkas_example() -> None:
    topics = frozenset({"t0", "t1"})
    members = {"c0": MemberSubscription(topics), "c1": MemberSubscription(topics)}
    result = range_assign(members, {"t0": 3, "t1": 3})
    expected_c0 = {TopicPartition(t, p) for t in ("t0", "t1") for p in (0, 1)}
    assert result["c0"] == expected_c0
    assert result["c1"] == {TopicPartition("t0", 2), TopicPartition("t1", 2)}


def test_round_robin_skips_members_not_subscribed() -> None:
    members = {
        "m1": MemberSubscription(frozenset({"a"})),
        "m2": MemberSubscription(frozenset({"a", "b"})),
    }
    result = round_robin_assign(members, {"a": 2, "b": 2})
    assert result["m1"] == {TopicPartition("a", 0)}
    assert result["m2"] == {TopicPartition("a", 1), TopicPartition("b", 0), TopicPartition("b", 1)}


def test_members_without_existing_topics_get_empty_assignments() -> None:
    members = {"m": MemberSubscription(frozenset({"missing"}))}
    for assignor in ASSIGNORS.values():
        assert assignor(members, {"a": 3}) == {"m": set()}
