"""The group coordinator: consumer-group membership and assignment run in the broker.

This is KIP-848's design on one node: a member joins with its subscription (topic names or a
regular expression) and the name of an assignor; the coordinator computes every member's
target assignment and reconciles each member towards it cooperatively: a partition that
changes owner is first revoked from the old owner, and given to the new one only after the old
owner acknowledged (heartbeated without it) or was removed (session timeout, revocation
overdue past its rebalance timeout, leave). Partitions that do not move are never revoked, so
a rebalance pauses only what moves.

Generations: the group's generation rises with every new target assignment and with every live
offset reset. A commit is accepted when its member exists, owns every committed partition,
and its generation is at most the group's and at least the last fencing generation (set by a
live reset). Ownership, not generation equality, guards ordinary rebalances: a member that
has not yet heard of a rebalance may still commit what it still owns.

Static membership: a member joining with an ``instance_id`` takes over the slot (target and
held partitions) of the previous member with that id without a rebalance, and the old member id
is fenced. A static member's leave is temporary: its partitions wait for it until its session
times out (use ``permanent=True`` to leave for good).

Push: :meth:`GroupCoordinator.watch` registers a callback for a member's events
(:class:`AssignmentChanged`, :class:`PositionsReset`, :class:`MemberFenced`). Callbacks run on
the thread that caused the change, after every coordinator lock is released, in the order the
changes happened; they must not block (an asyncio server hands them to its loop with
``loop.call_soon_threadsafe``). A watch with ``keepalive=True`` counts as a heartbeat while it
is registered: a server can treat an open stream as the member's liveness.

Driving time: call :meth:`expire_members` and :meth:`refresh_metadata` periodically (about once a
second). Timeouts use the clock's monotonic time; commit timestamps and lag use wall time.

Concurrency: ``_lock`` guards the group table only; each group has its own lock, held across
an offset commit's fsync so that a commit and a fencing reset or an ownership change of the
same group are ordered. Different groups proceed in parallel (their fsyncs group-commit).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping

from engine.broker import Broker
from engine.clock import Clock
from engine.errors import (
    GroupNotEmptyError,
    InconsistentAssignorError,
    InvalidGroupRequestError,
    NotPartitionOwnerError,
    StaleGenerationError,
    UnknownGroupError,
    UnknownMemberError,
)
from engine.groups.lag import lag_rows
from engine.groups.model import (
    AssignmentChanged,
    GroupDescription,
    GroupEvent,
    GroupListing,
    GroupState,
    HeartbeatResult,
    MemberFenced,
    Membership,
    PositionsReset,
)
from engine.groups.offsets import OffsetStore
from engine.groups.reset import (
    ALL_TOPICS,
    FromRows,
    ResetPlanRow,
    ResetResult,
    ResetSpec,
    ResetTargets,
    plan_rows,
    resolve_targets,
)
from engine.groups.state import (
    MAX_SESSION_TIMEOUT_MS,
    MIN_SESSION_TIMEOUT_MS,
    Group,
    Member,
    Watcher,
    validate_join,
)
from engine.groups.types import OffsetAndMetadata, TopicPartition, validate_group_id

__all__ = [
    "DEFAULT_ASSIGNOR",
    "DEFAULT_REBALANCE_TIMEOUT_MS",
    "DEFAULT_SESSION_TIMEOUT_MS",
    "MAX_SESSION_TIMEOUT_MS",
    "MIN_SESSION_TIMEOUT_MS",
    "GroupCoordinator",
]

log = logging.getLogger(__name__)

DEFAULT_ASSIGNOR = "sticky"
DEFAULT_SESSION_TIMEOUT_MS = 45_000
DEFAULT_REBALANCE_TIMEOUT_MS = 300_000


class GroupCoordinator:
    """Membership, assignment, committed offsets and offset resets of every consumer group.

    Create with :meth:`open` (which opens the offset store); any thread may call any method.
    """

    def __init__(self, broker: Broker, clock: Clock, offsets: OffsetStore) -> None:
        self._broker = broker
        self._clock = clock
        self.offsets = offsets
        self._lock = threading.Lock()
        self._groups: dict[str, Group] = {}
        self._outbox: collections.deque[tuple[Watcher, GroupEvent]] = collections.deque()
        self._dispatching = threading.Lock()

    @classmethod
    def open(cls, broker: Broker, clock: Clock, *, offsets_partitions: int = 8) -> GroupCoordinator:
        """A coordinator over ``broker`` whose committed offsets are replayed from the log."""
        return cls(broker, clock, OffsetStore.open(broker, clock, partitions=offsets_partitions))

    # ------------------------------------------------------------------ locking and events

    @contextlib.contextmanager
    def _locked(self, name: str, *, create: bool) -> Iterator[Group]:
        """Hold ``name``'s group lock; dispatch queued events once it is released."""
        try:
            while True:
                with self._lock:
                    group = self._groups.get(name)
                    if group is None:
                        if not create:
                            raise UnknownGroupError(name)
                        validate_group_id(name)
                        group = self._groups[name] = Group(name)
                with group.lock:
                    if group.deleted:
                        continue  # deleted while we waited; look it up again
                    try:
                        yield group
                    finally:
                        if not (group.members or group.deleted or self.offsets.has_group(name)):
                            self._forget(group)
                    return
        finally:
            self._dispatch()

    @contextlib.contextmanager
    def _member_locked(self, name: str, member_id: str) -> Iterator[tuple[Group, Member]]:
        """Like :meth:`_locked` for a member's own request: a missing group is a missing
        member (the cure is the same: join again)."""
        try:
            with self._locked(name, create=False) as state:
                yield state, state.member(member_id)
        except UnknownGroupError:
            raise UnknownMemberError(name, member_id) from None

    def _forget(self, group: Group) -> None:
        """Drop a group's in-memory state; the caller holds its lock."""
        group.deleted = True
        with self._lock:
            if self._groups.get(group.name) is group:
                del self._groups[group.name]

    def _emit(self, member: Member, event: GroupEvent) -> None:
        for watcher in member.watchers:
            self._outbox.append((watcher, event))

    def _dispatch(self) -> None:
        """Run queued callbacks in order; one thread at a time, none under a group lock.

        A thread that finds another dispatching leaves its events to it; the loop re-checks
        after releasing, so no event is stranded.
        """
        while self._outbox:
            if not self._dispatching.acquire(blocking=False):
                return
            try:
                while self._outbox:
                    watcher, event = self._outbox.popleft()
                    try:
                        watcher.callback(event)
                    except Exception:  # one broken watcher must not starve the others
                        log.exception("group watcher callback failed for %s", event)
            finally:
                self._dispatching.release()

    def _push(self, group: Group) -> None:
        """Deliver pending changes to every watched member whose view changed."""
        now = self._clock.monotonic()
        for member in list(group.members.values()):
            if not member.watchers:
                continue
            before = member.last_view
            delivery = group.reconcile(member, now)
            if member.last_view != before or delivery.assign:
                self._emit(member, AssignmentChanged(
                    group.name, member.member_id, group.generation, delivery.assignment,
                    delivery.assign, delivery.revoke,
                ))
            if member.positions:
                self._emit(member, PositionsReset(
                    group.name, member.member_id, group.generation, dict(member.positions)
                ))
                member.positions.clear()

    def _remove(self, group: Group, member: Member, reason: str) -> None:
        self._emit(member, MemberFenced(group.name, member.member_id, reason))
        member.watchers.clear()
        group.remove(member)

    # ------------------------------------------------------------------ membership

    def join(
        self,
        group: str,
        member_id: str | None = None,
        *,
        instance_id: str | None = None,
        topics: Collection[str] = (),
        pattern: str | None = None,
        assignor: str = DEFAULT_ASSIGNOR,
        session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
        rebalance_timeout_ms: int = DEFAULT_REBALANCE_TIMEOUT_MS,
    ) -> Membership:
        """Join (or rejoin, or change the subscription of) a member.

        Args:
            member_id: None for a new member (the coordinator picks an id), or the id this
                member was given (or chose) before.
            instance_id: a stable id for static membership (see the module docstring).
            topics: topic names; topics that do not exist yet are assigned once they do.
            pattern: instead of ``topics``, a regular expression matched in full against
                non-internal topic names (re-evaluated by :meth:`refresh_metadata`).

        Raises:
            InvalidGroupRequestError: bad group id, both or neither of topics and pattern, bad
                pattern, unknown assignor, timeouts out of range.
            InconsistentAssignorError: the group's members use another assignor.
        """
        compiled = validate_join(
            group, topics, pattern, assignor, session_timeout_ms, rebalance_timeout_ms
        )
        now = self._clock.monotonic()
        with self._locked(group, create=True) as state:
            if state.members and state.assignor != assignor:
                raise InconsistentAssignorError(group, assignor, state.assignor or "")
            state.assignor = assignor
            member, changed = self._admit(state, member_id, instance_id, now)
            subscription = (frozenset(topics), compiled)
            if (member.topics, member.pattern) != subscription:
                member.topics, member.pattern = subscription
                changed = True
            member.session_timeout_ms = session_timeout_ms
            member.rebalance_timeout_ms = rebalance_timeout_ms
            if changed:
                state.assign_targets(self._broker)
            delivery = state.reconcile(member, now)
            self._push(state)
            return Membership(
                group, member.member_id, state.generation, delivery.assignment,
                session_timeout_ms // 3, session_timeout_ms,
            )

    def _admit(
        self, state: Group, member_id: str | None, instance_id: str | None, now: float
    ) -> tuple[Member, bool]:
        """The joining member (existing, a static slot taken over, or new); True if new."""
        new_id = member_id or uuid.uuid4().hex
        static = state.instance(instance_id) if instance_id is not None else None
        if static is not None:
            if static.member_id != new_id:
                if new_id in state.members:
                    raise InvalidGroupRequestError(
                        f"member id {new_id!r} is taken by another member of {state.name!r}",
                        state.name,
                    )
                self._emit(static, MemberFenced(
                    state.name, static.member_id, f"instance {instance_id!r} joined again"
                ))
                static.watchers.clear()
                state.rename(static, new_id)
            static.departed = False
            static.last_seen = now
            return static, False
        member = state.members.get(new_id)
        if member is not None:
            member.last_seen = now
            member.departed = False
            return member, False
        member = Member(new_id, instance_id, frozenset(), None, 0, 0, now)
        state.members[new_id] = member
        return member, True

    def heartbeat(
        self,
        group: str,
        member_id: str,
        generation: int,
        acked_assignment: Collection[TopicPartition] | None = None,
    ) -> HeartbeatResult:
        """Keep the session alive, acknowledge revocations, and get the reconciled state.

        Args:
            acked_assignment: the partitions the member holds now; owned partitions missing
                from it are released (a revocation acknowledged). None changes nothing.
                Partitions it was never given are ignored.

        Raises:
            UnknownMemberError: the member (or the whole group) is gone; rejoin.
            StaleGenerationError: a generation the group has not issued yet.
        """
        now = self._clock.monotonic()
        with self._member_locked(group, member_id) as (state, member):
            if generation > state.generation:
                raise StaleGenerationError(
                    group, generation, state.generation, "the group never issued it"
                )
            member.last_seen = now
            member.departed = False
            if acked_assignment is not None:
                state.release(member, member.owned - set(acked_assignment))
            if state.metadata_changed(self._broker):
                state.assign_targets(self._broker)
            delivery = state.reconcile(member, now)
            positions = dict(member.positions)
            member.positions.clear()
            self._push(state)  # partitions released here may now go to waiting members
            return HeartbeatResult(
                state.generation, delivery.assignment, delivery.assign, delivery.revoke,
                positions, member.session_timeout_ms // 3,
            )

    def leave(self, group: str, member_id: str, *, permanent: bool = False) -> None:
        """Leave the group; its partitions move to the others at once.

        A static member's leave is temporary unless ``permanent``: its slot and partitions
        wait for the same instance id until the session times out.
        """
        now = self._clock.monotonic()
        with self._member_locked(group, member_id) as (state, member):
            member.watchers.clear()
            if member.instance_id is not None and not permanent:
                member.departed = True
                member.last_seen = now
                return
            state.remove(member)
            state.assign_targets(self._broker)
            self._push(state)

    def expire_members(self, now: float | None = None) -> list[tuple[str, str]]:
        """Remove members whose session timed out or whose revocation is overdue.

        Args:
            now: monotonic seconds; the clock's by default.

        Returns:
            (group, member_id) of every member removed.
        """
        now = self._clock.monotonic() if now is None else now
        expired: list[tuple[str, str]] = []
        for name in self._group_names():
            with contextlib.suppress(UnknownGroupError), self._locked(name, create=False) as state:
                removed = False
                for member in list(state.members.values()):
                    reason = member.expiry_reason(now)
                    if reason is not None:
                        self._remove(state, member, reason)
                        expired.append((name, member.member_id))
                        removed = True
                if removed:
                    state.assign_targets(self._broker)
                    self._push(state)
        return expired

    def refresh_metadata(self) -> list[str]:
        """Reassign groups whose topics appeared, vanished or grew; returns their names."""
        changed: list[str] = []
        for name in self._group_names():
            with contextlib.suppress(UnknownGroupError), self._locked(name, create=False) as state:
                if state.members and state.metadata_changed(self._broker):
                    state.assign_targets(self._broker)
                    self._push(state)
                    changed.append(name)
        return changed

    def watch(
        self,
        group: str,
        member_id: str,
        callback: Callable[[GroupEvent], None],
        *,
        keepalive: bool = False,
    ) -> Callable[[], None]:
        """Push the member's events to ``callback``; returns a function that stops it.

        Anything not yet delivered to the member is pushed at once. ``keepalive`` makes the
        registration count as a heartbeat until it is cancelled.

        Raises:
            UnknownMemberError: join first.
        """
        watcher = Watcher(callback, keepalive)
        with self._member_locked(group, member_id) as (state, member):
            member.watchers.append(watcher)
            self._push(state)

        def cancel() -> None:
            with contextlib.suppress(UnknownGroupError), self._locked(group, create=False) as g:
                for member in g.members.values():
                    if watcher in member.watchers:
                        member.watchers.remove(watcher)
                        member.last_seen = self._clock.monotonic()

        return cancel

    # ------------------------------------------------------------------ offsets

    def commit_offsets(
        self,
        group: str,
        generation: int,
        member_id: str,
        offsets: Mapping[TopicPartition, OffsetAndMetadata],
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Store offsets durably after checking the member may commit them.

        ``member_id=""`` with ``generation=-1`` commits outside membership (manual
        assignment, tools); only allowed while the group has no members.

        Raises:
            UnknownMemberError: the member is not in the group.
            StaleGenerationError: fenced by a live reset, or a generation never issued.
            NotPartitionOwnerError: partitions the member does not hold.
            GroupNotEmptyError: a commit outside membership while members are live.
            InvalidGroupRequestError: negative offsets, oversized metadata.
        """
        with self._locked(group, create=True) as state:
            if member_id == "" and generation == -1:
                if state.members:
                    raise GroupNotEmptyError(
                        group, len(state.members), "join the group to commit, or stop it first"
                    )
                for tp in offsets:
                    self._broker.partition(tp.topic, tp.partition)
            else:
                member = state.member(member_id)
                state.check_generation(generation)
                foreign = sorted(tp for tp in offsets if tp not in member.owned)
                if foreign:
                    raise NotPartitionOwnerError(group, member_id, [str(tp) for tp in foreign])
            return self.offsets.commit(group, offsets, generation=generation)

    def fetch_offsets(
        self, group: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Committed offsets (all of the group's, or those of ``partitions`` that exist)."""
        return self.offsets.fetch(group, partitions)

    def delete_offsets(
        self, group: str, partitions: Iterable[TopicPartition] | None = None
    ) -> list[TopicPartition]:
        """Delete committed offsets; refused for topics a live member subscribes to.

        Raises:
            UnknownGroupError: the group has neither members nor offsets.
            GroupNotEmptyError: all offsets while members are live, or a subscribed topic.
        """
        with self._locked(group, create=False) as state:
            if state.members:
                if partitions is None:
                    raise GroupNotEmptyError(
                        group, len(state.members), "stop its consumers before deleting offsets"
                    )
                partitions = list(partitions)
                busy = sorted({tp.topic for tp in partitions} & state.subscribed_topics())
                if busy:
                    raise GroupNotEmptyError(
                        group, len(state.members),
                        f"its members subscribe to {', '.join(busy)}; unsubscribe first",
                    )
            return self.offsets.delete(group, partitions)

    # ------------------------------------------------------------------ groups

    def _group_names(self) -> list[str]:
        with self._lock:
            return sorted(self._groups)

    def list_groups(self) -> list[GroupListing]:
        """Every group with members or committed offsets, sorted by name."""
        names = set(self._group_names()) | set(self.offsets.groups())
        listings: list[GroupListing] = []
        for name in sorted(names):
            with self._lock:
                group = self._groups.get(name)
            if group is None:
                listings.append(GroupListing(name, GroupState.EMPTY, 0))
                continue
            with group.lock:
                listings.append(GroupListing(name, group.state(), len(group.members)))
        return listings

    def describe(self, group: str) -> GroupDescription:
        """State, members, and per-partition committed offsets and lag.

        Partitions are those with a committed offset plus every partition of the topics the
        members subscribe to.

        Raises:
            UnknownGroupError: no members and no committed offsets.
        """
        committed = self.offsets.fetch(group)
        with self._lock:
            state = self._groups.get(group)
        if state is None:
            if not committed:
                raise UnknownGroupError(group)
            rows = lag_rows(self._broker, committed, (), {}, self._clock.now_ms())
            return GroupDescription(group, GroupState.EMPTY, 0, None, (), rows)
        with state.lock:
            now = self._clock.monotonic()
            members = tuple(m.describe(now) for m in state.members.values())
            topics = state.subscribed_topics()
            owners = dict(state.owners)
            head = (state.state(), state.generation, state.assignor)
        rows = lag_rows(self._broker, committed, topics, owners, self._clock.now_ms())
        return GroupDescription(group, *head, members, rows)

    def delete_group(self, group: str) -> None:
        """Delete an empty group and its committed offsets.

        Raises:
            UnknownGroupError: no members and no committed offsets.
            GroupNotEmptyError: the group has members (including departed static ones).
        """
        if not self.offsets.fetch(group) and group not in self._group_names():
            raise UnknownGroupError(group)
        with self._locked(group, create=True) as state:
            if state.members:
                raise GroupNotEmptyError(
                    group, len(state.members), "stop its consumers before deleting it"
                )
            self.offsets.delete(group)
            self._forget(state)

    # ------------------------------------------------------------------ offset reset

    def plan_reset(
        self, group: str, targets: ResetTargets, spec: ResetSpec
    ) -> list[ResetPlanRow]:
        """The dry run of a reset: one clamped row per target partition; nothing is written.

        Raises:
            InvalidGroupRequestError: bad group id or spec.
            UnknownTopicError, UnknownPartitionError: a target does not exist.
        """
        validate_group_id(group)
        committed = self.offsets.fetch(group)
        with self._lock:
            state = self._groups.get(group)
        subscribed: set[str] = set()
        if state is not None:
            with state.lock:
                subscribed = state.subscribed_topics()
        if isinstance(spec, FromRows) and targets is ALL_TOPICS:
            targets = list(spec.offsets)
        partitions = resolve_targets(self._broker, targets, committed, subscribed)
        return plan_rows(self._broker, group, partitions, committed, spec, self._clock.now_ms())

    def execute_reset(
        self, group: str, plan: Iterable[ResetPlanRow], *, live: bool = False
    ) -> ResetResult:
        """Commit a plan's offsets.

        Refused while the group has members unless ``live``: then the group is fenced (a new
        generation; commits from older generations are rejected), the offsets are stored, and
        each member is sent the new positions of the partitions it holds.

        Raises:
            GroupNotEmptyError: members are live and ``live`` is False.
        """
        rows = tuple(plan)
        for row in rows:
            self._broker.partition(row.topic, row.partition)
        offsets = {row.tp: OffsetAndMetadata(row.new, "reset") for row in rows}
        with self._locked(group, create=True) as state:
            fenced: int | None = None
            if state.members:
                if not live:
                    raise GroupNotEmptyError(
                        group, len(state.members),
                        "stop its consumers first, or execute with --live to fence them and "
                        "move their positions",
                    )
                state.generation += 1
                state.fence_generation = fenced = state.generation
            self.offsets.commit(group, offsets, generation=-1 if fenced is None else fenced)
            for member in state.members.values():
                member.positions.update(
                    {tp: o.offset for tp, o in offsets.items() if tp in member.owned}
                )
            self._push(state)
            return ResetResult(group, rows, fenced)
