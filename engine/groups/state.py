"""The mutable state of one group and its members: the coordinator's internals.

Ownership model (KIP-848's reconciliation):

- ``target``: what the assignor last gave a member; recomputed (and the generation bumped) when
  membership, subscriptions or partition counts change.
- ``owned``: what the member holds as far as the coordinator knows. A partition enters
  ``owned`` when the member is told about it (join or heartbeat answer, or a pushed event), and
  leaves only when the member acknowledges the revocation (heartbeats without it), leaves or
  is expired.
- A partition of a member's target is handed over only while no other member owns it, so two
  members never hold one partition: the cooperative rule.

Invariant: ``owners[tp] == member_id`` exactly when ``tp in members[member_id].owned``.

Concurrency: none here; the coordinator holds ``_Group.lock`` around every use.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from engine.broker import Broker
from engine.errors import (
    InvalidGroupRequestError,
    StaleGenerationError,
    UnknownMemberError,
    UnknownTopicError,
)
from engine.groups.assignors import ASSIGNORS, MemberSubscription
from engine.groups.model import GroupEvent, GroupState, MemberDescription
from engine.groups.types import TopicPartition, validate_group_id
from engine.topic_names import is_internal

__all__ = ["MAX_SESSION_TIMEOUT_MS", "MIN_SESSION_TIMEOUT_MS", "validate_join"]

MIN_SESSION_TIMEOUT_MS = 1_000
MAX_SESSION_TIMEOUT_MS = 1_800_000  # Kafka's group.max.session.timeout.ms
_MAX_REBALANCE_TIMEOUT_MS = 3_600_000
_MAX_PATTERN_LENGTH = 1_000


@dataclass(eq=False, slots=True)
class Watcher:
    """One registered callback; compared by identity so the same function may watch twice."""

    callback: Callable[[GroupEvent], None]
    keepalive: bool


@dataclass(slots=True)
class Member:
    member_id: str
    instance_id: str | None
    topics: frozenset[str]
    pattern: re.Pattern[str] | None
    session_timeout_ms: int
    rebalance_timeout_ms: int
    last_seen: float
    owned: set[TopicPartition] = field(default_factory=set)
    target: frozenset[TopicPartition] = frozenset()
    generation: int = 0
    revoke_since: float | None = None
    departed: bool = False
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    watchers: list[Watcher] = field(default_factory=list)
    last_view: tuple[int, frozenset[TopicPartition], frozenset[TopicPartition]] | None = None

    def keepalive(self) -> bool:
        return any(w.keepalive for w in self.watchers)

    def revoking(self) -> frozenset[TopicPartition]:
        return frozenset(self.owned - self.target)

    def expiry_reason(self, now: float) -> str | None:
        """Why the member must be removed at monotonic time ``now``, or None."""
        if not self.keepalive() and now - self.last_seen > self.session_timeout_ms / 1000:
            return f"no heartbeat for {self.session_timeout_ms} ms (session timeout)"
        overdue = self.revoke_since is not None and (
            now - self.revoke_since > self.rebalance_timeout_ms / 1000
        )
        if overdue:
            return f"partitions not released within {self.rebalance_timeout_ms} ms"
        return None

    def describe(self, now: float) -> MemberDescription:
        return MemberDescription(
            self.member_id,
            self.instance_id,
            self.topics,
            None if self.pattern is None else self.pattern.pattern,
            frozenset(self.owned),
            self.target,
            self.revoking(),
            self.session_timeout_ms,
            int((now - self.last_seen) * 1000),
            self.departed,
        )


@dataclass(slots=True)
class Delivery:
    """What one reconciliation handed to a member."""

    assign: frozenset[TopicPartition]
    revoke: frozenset[TopicPartition]
    assignment: frozenset[TopicPartition]


class Group:
    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.RLock()
        self.generation = 0
        self.fence_generation = 0  # commits below this generation are rejected
        self.assignor: str | None = None
        self.members: dict[str, Member] = {}
        self.owners: dict[TopicPartition, str] = {}
        self.snapshot: tuple[dict[str, frozenset[str]], dict[str, int]] = ({}, {})
        self.deleted = False

    # ------------------------------------------------------------------ queries

    def state(self) -> GroupState:
        if not self.members:
            return GroupState.EMPTY
        for member in self.members.values():
            if member.owned != member.target:
                return GroupState.RECONCILING
        return GroupState.STABLE

    def member(self, member_id: str) -> Member:
        member = self.members.get(member_id)
        if member is None:
            raise UnknownMemberError(self.name, member_id)
        return member

    def check_generation(self, generation: int) -> None:
        """Accept a commit's generation: issued, and not below the last fence."""
        if generation > self.generation:
            raise StaleGenerationError(
                self.name, generation, self.generation, "the group never issued it"
            )
        if generation < self.fence_generation:
            raise StaleGenerationError(
                self.name,
                generation,
                self.generation,
                f"an offset reset fenced generations below {self.fence_generation}",
            )

    def instance(self, instance_id: str) -> Member | None:
        for member in self.members.values():
            if member.instance_id == instance_id:
                return member
        return None

    def subscribed_topics(self) -> set[str]:
        """Topics the members currently resolve to (as of the last assignment)."""
        return set().union(*self.snapshot[0].values()) if self.snapshot[0] else set()

    def metadata(self, broker: Broker) -> tuple[dict[str, frozenset[str]], dict[str, int]]:
        """Each member's resolved topics and the partition count of each existing topic."""
        all_topics: list[str] | None = None
        resolved: dict[str, frozenset[str]] = {}
        for member_id, member in self.members.items():
            if member.pattern is None:
                resolved[member_id] = member.topics
                continue
            if all_topics is None:
                all_topics = [t.name for t in broker.list_topics()]
            pattern = member.pattern
            resolved[member_id] = frozenset(
                t for t in all_topics if pattern.fullmatch(t) and not is_internal(t)
            )
        counts: dict[str, int] = {}
        for topic in set().union(*resolved.values()) if resolved else set():
            try:
                counts[topic] = broker.describe_topic(topic).partitions
            except UnknownTopicError:
                continue
        return resolved, counts

    # ------------------------------------------------------------------ changes

    def assign_targets(self, broker: Broker) -> None:
        """Run the assignor over the current members and bump the generation."""
        resolved, counts = self.metadata(broker)
        self.snapshot = (resolved, counts)
        self.generation += 1
        if not self.members:
            return
        assignor = ASSIGNORS[self.assignor or "sticky"]
        subscriptions = {
            member_id: MemberSubscription(resolved[member_id], member.target)
            for member_id, member in self.members.items()
        }
        result = assignor(subscriptions, counts)
        for member_id, member in self.members.items():
            member.target = frozenset(result.get(member_id, ()))

    def metadata_changed(self, broker: Broker) -> bool:
        return self.metadata(broker) != self.snapshot

    def release(self, member: Member, partitions: set[TopicPartition]) -> None:
        for tp in partitions & member.owned:
            member.owned.discard(tp)
            self.owners.pop(tp, None)
        if not member.revoking():
            member.revoke_since = None

    def remove(self, member: Member) -> None:
        self.release(member, set(member.owned))
        del self.members[member.member_id]

    def rename(self, member: Member, new_id: str) -> None:
        """A static member's new incarnation takes over the slot (and the partitions)."""
        del self.members[member.member_id]
        member.member_id = new_id
        self.members[new_id] = member
        for tp in member.owned:
            self.owners[tp] = new_id

    def reconcile(self, member: Member, now: float) -> Delivery:
        """Hand the member its free target partitions and tell it what to revoke."""
        revoke = member.revoking()
        assign = frozenset(
            tp for tp in member.target if tp not in member.owned and tp not in self.owners
        )
        for tp in assign:
            member.owned.add(tp)
            self.owners[tp] = member.member_id
        if revoke and member.revoke_since is None:
            member.revoke_since = now
        member.generation = self.generation
        assignment = frozenset(member.owned - revoke)
        member.last_view = (self.generation, assignment, revoke)
        return Delivery(assign, revoke, assignment)


def validate_join(
    group: str,
    topics: Collection[str],
    pattern: str | None,
    assignor: str,
    session_timeout_ms: int,
    rebalance_timeout_ms: int,
) -> re.Pattern[str] | None:
    """Check a join's arguments; returns the compiled pattern, if any.

    Raises:
        InvalidGroupRequestError: the message names the argument and what is allowed.
    """
    validate_group_id(group)
    if isinstance(topics, str):
        raise InvalidGroupRequestError("topics must be a collection of names, not a str", group)
    if bool(topics) == (pattern is not None):
        raise InvalidGroupRequestError(
            "subscribe with either topic names or a pattern (exactly one of them)", group
        )
    if assignor not in ASSIGNORS:
        raise InvalidGroupRequestError(
            f"unknown assignor {assignor!r}; choose one of {', '.join(sorted(ASSIGNORS))}", group
        )
    for name, value, maximum in (
        ("session_timeout_ms", session_timeout_ms, MAX_SESSION_TIMEOUT_MS),
        ("rebalance_timeout_ms", rebalance_timeout_ms, _MAX_REBALANCE_TIMEOUT_MS),
    ):
        if not MIN_SESSION_TIMEOUT_MS <= value <= maximum:
            raise InvalidGroupRequestError(
                f"{name}={value} is out of range [{MIN_SESSION_TIMEOUT_MS}, {maximum}]", group
            )
    if pattern is None:
        return None
    if len(pattern) > _MAX_PATTERN_LENGTH:
        raise InvalidGroupRequestError(
            f"a pattern may have at most {_MAX_PATTERN_LENGTH} characters", group
        )
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidGroupRequestError(f"pattern {pattern!r} is invalid: {exc}", group) from exc
