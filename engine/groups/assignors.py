"""Partition assignors: pure functions from members and partition counts to an assignment.

Every assignor gives each partition of a subscribed topic to exactly one member subscribed to
that topic, and returns an entry (possibly empty) for every member. They differ in what else
they promise:

- ``range`` (Kafka's RangeAssignor): per topic, members sorted by id take consecutive ranges,
  the first ``partitions % members`` one extra. Balanced within one per topic, and the same
  partition numbers of co-partitioned topics land on the same member (joins stay local); over
  several topics the low member ids carry the extras, so totals may differ by the topic count.
- ``round-robin``: all partitions sorted by (topic, partition) dealt to members in id order,
  skipping members not subscribed to the topic. Balanced within one in total when every
  member subscribes to the same topics.
- ``sticky``: keeps every previous ownership it can, gives unowned partitions to the least
  loaded eligible member, then moves partitions from the most to the least loaded member
  until no eligible pair differs by more than one. With identical subscriptions the result is
  balanced within one and moves the fewest partitions any balanced assignment could.

The coordinator rebalances cooperatively whichever assignor a group uses (only partitions that
change owner are revoked), so stickiness decides how much work a rebalance does, not whether
consumption stops. Assignors see member ids only; they are deterministic (no dict-order or
hash dependence) so a restart computes the same assignment from the same input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from engine.groups.types import TopicPartition

__all__ = [
    "ASSIGNORS",
    "Assignor",
    "MemberSubscription",
    "range_assign",
    "round_robin_assign",
    "sticky_assign",
]


@dataclass(frozen=True, slots=True)
class MemberSubscription:
    """What one member asks for: its topics and what it owned before (for stickiness)."""

    topics: frozenset[str]
    previous_assignment: frozenset[TopicPartition] = frozenset()


Assignment = dict[str, set[TopicPartition]]
Assignor = Callable[[Mapping[str, MemberSubscription], Mapping[str, int]], Assignment]


def _subscribers(
    members: Mapping[str, MemberSubscription], partitions_per_topic: Mapping[str, int]
) -> dict[str, list[str]]:
    """Topic -> sorted ids of the members subscribed to it, for topics that exist."""
    result: dict[str, list[str]] = {}
    for member_id in sorted(members):
        for topic in members[member_id].topics:
            if partitions_per_topic.get(topic, 0) > 0:
                result.setdefault(topic, []).append(member_id)
    return result


def range_assign(
    members: Mapping[str, MemberSubscription], partitions_per_topic: Mapping[str, int]
) -> Assignment:
    """Kafka's range assignor (see the module docstring)."""
    result: Assignment = {member_id: set() for member_id in members}
    for topic, subscribed in sorted(_subscribers(members, partitions_per_topic).items()):
        per_member, extra = divmod(partitions_per_topic[topic], len(subscribed))
        start = 0
        for index, member_id in enumerate(subscribed):
            count = per_member + (1 if index < extra else 0)
            result[member_id].update(TopicPartition(topic, p) for p in range(start, start + count))
            start += count
    return result


def round_robin_assign(
    members: Mapping[str, MemberSubscription], partitions_per_topic: Mapping[str, int]
) -> Assignment:
    """Deal sorted partitions to sorted members in turn (see the module docstring)."""
    result: Assignment = {member_id: set() for member_id in members}
    ordered = sorted(members)
    subscribers = _subscribers(members, partitions_per_topic)
    turn = 0
    for topic in sorted(subscribers):
        for partition in range(partitions_per_topic[topic]):
            for step in range(len(ordered)):
                member_id = ordered[(turn + step) % len(ordered)]
                if topic in members[member_id].topics:
                    result[member_id].add(TopicPartition(topic, partition))
                    turn = (turn + step + 1) % len(ordered)
                    break
    return result


def sticky_assign(
    members: Mapping[str, MemberSubscription], partitions_per_topic: Mapping[str, int]
) -> Assignment:
    """Keep what can be kept, fill the least loaded, then level (see the module docstring)."""
    result: Assignment = {member_id: set() for member_id in members}
    subscribers = _subscribers(members, partitions_per_topic)
    owner: dict[TopicPartition, str] = {}
    for member_id in sorted(members):  # 1. keep valid previous ownerships; first claim wins
        subscription = members[member_id]
        for tp in sorted(subscription.previous_assignment):
            valid = (
                tp.topic in subscription.topics
                and 0 <= tp.partition < partitions_per_topic.get(tp.topic, 0)
            )
            if valid and tp not in owner:
                owner[tp] = member_id
                result[member_id].add(tp)
    for topic in sorted(subscribers):  # 2. unowned partitions to the least loaded
        for partition in range(partitions_per_topic[topic]):
            tp = TopicPartition(topic, partition)
            if tp not in owner:
                target = _least_loaded(subscribers[topic], result)
                owner[tp] = target
                result[target].add(tp)
    _level(result, subscribers)  # 3. move from the most loaded while a pair differs by > 1
    return result


def _least_loaded(candidates: list[str], result: Assignment) -> str:
    return min(candidates, key=lambda member_id: (len(result[member_id]), member_id))


def _level(result: Assignment, subscribers: Mapping[str, list[str]]) -> None:
    """Move partitions, one at a time, from the most loaded member that can give one away to
    the least loaded eligible member, while they differ by more than one.

    Always taking from the current maximum is what makes the movement minimal: the members
    that keep the extra partition of an uneven split are the ones that held the most, and a
    member that receives (it was the minimum) never becomes a donor. Each move lowers the sum
    of squared loads, so the loop ends.
    """
    while _move_one(result, subscribers):
        pass


def _move_one(result: Assignment, subscribers: Mapping[str, list[str]]) -> bool:
    for donor in sorted(result, key=lambda member_id: (-len(result[member_id]), member_id)):
        for tp in sorted(result[donor]):
            target = _least_loaded(subscribers[tp.topic], result)
            if len(result[donor]) - len(result[target]) > 1:
                result[donor].discard(tp)
                result[target].add(tp)
                return True
    return False


ASSIGNORS: Mapping[str, Assignor] = {
    "range": range_assign,
    "round-robin": round_robin_assign,
    "sticky": sticky_assign,
}
"""Assignor name (as a member asks for it when joining) -> function."""
