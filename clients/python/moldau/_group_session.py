"""Group membership, the consuming half: applying assignments inside ``poll()``.

A :class:`GroupSession` is the subscription as the application's thread sees it: the partitions
it reads, the member id and generation its commits carry, the callbacks, and the auto-commit
clock. :class:`~moldau._group.GroupMembership` queues events on the loop; the session applies
them when ``poll()`` asks (:meth:`GroupSession.tick`), because applying one calls the
application's ``on_assign`` / ``on_revoke``, which must run on the application's thread (a
blocking consumer's callback may call ``commit()``; on the loop thread that would deadlock).

Sans-I/O steps: every operation is a generator that *yields* the I/O it needs (a coroutine to
run on the loop, or a :class:`Spawn` to start without waiting) and receives the result. The
blocking consumer drives it with :func:`run_steps` (each coroutine via the loop thread), the
asyncio consumer with :func:`await_steps`; the logic exists once, and callbacks run wherever
the driver runs.

The commit generation is the one *applied* here, not the newest the stream has seen: after a
live offset reset, positions from before it must not be committed with the new generation,
so a commit carries the new generation only after ``poll()`` has sought to the new positions.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from moldau._group import Assigned, Failed, GroupMembership, Lost, PositionsMoved
from moldau._runtime import LoopThread
from moldau._types import TopicPartition
from moldau.errors import CommitFailedError, MoldauError, NoOffsetForPartitionError

__all__ = [
    "AutoOffsetReset",
    "GroupSession",
    "PartitionReader",
    "RebalanceCallback",
    "Spawn",
    "Steps",
    "await_steps",
    "run_steps",
]

log = logging.getLogger("moldau.consumer")

_T = TypeVar("_T")

AutoOffsetReset = Literal["earliest", "latest", "none"]
RebalanceCallback = Callable[[list[TopicPartition]], object]
"""``on_assign`` / ``on_revoke`` / ``on_lost``: called with the partitions, sorted; the asyncio
consumer awaits what they return if it is awaitable."""


@dataclass(frozen=True, slots=True)
class Spawn:
    """A step that starts ``coroutine`` on the loop and receives its future, not its result."""

    coroutine: Coroutine[Any, Any, Any]


Steps = Generator[Coroutine[Any, Any, Any] | Spawn, Any, _T]


class PartitionReader(Protocol):
    """What a session needs from the consumer core: positions, seeks, and stopping fetches."""

    _positions: dict[TopicPartition, int]

    async def _seek_all(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    async def _seek_spec(
        self, partitions: Sequence[TopicPartition], spec: Literal["earliest", "latest"]
    ) -> None: ...

    async def _stop_reading(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching, drop what was fetched and not handed out; keep the positions."""

    def _drop_partitions(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget positions and pause state (after :meth:`_stop_reading`)."""


def run_steps(thread: LoopThread, steps: Steps[_T]) -> _T:
    """Drive ``steps`` from the calling thread, running each coroutine on ``thread``."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            result: _T = stop.value
            return result
        value, error = None, None
        try:
            value = thread.spawn(step.coroutine) if isinstance(step, Spawn) else thread.run(step)
        except Exception as exc:  # handed to the generator, which decides
            error = exc


async def await_steps(steps: Steps[_T]) -> _T:
    """Drive ``steps`` on the running loop."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            result: _T = stop.value
            return result
        value, error = None, None
        try:
            if isinstance(step, Spawn):
                value = asyncio.ensure_future(step.coroutine)
            else:
                value = await step
        except Exception as exc:  # handed to the generator, which decides
            error = exc


async def _awaited(awaitable: Awaitable[object]) -> None:
    await awaitable


class GroupSession:
    """One subscription, seen from the consuming thread; see the module docstring.

    Args:
        membership: The loop half (started by the caller).
        async_callbacks: Whether callbacks may return awaitables (the asyncio consumer).
    """

    def __init__(
        self,
        membership: GroupMembership,
        *,
        on_assign: RebalanceCallback | None,
        on_revoke: RebalanceCallback | None,
        on_lost: RebalanceCallback | None,
        auto_offset_reset: AutoOffsetReset,
        enable_auto_commit: bool,
        auto_commit_interval_ms: float,
        async_callbacks: bool,
        leave_timeout_s: float = 5.0,
    ) -> None:
        self.membership = membership
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.on_lost = on_lost or on_revoke
        self.auto_offset_reset = auto_offset_reset
        self.auto_commit = enable_auto_commit
        self._interval_s = auto_commit_interval_ms / 1000.0
        self._async_callbacks = async_callbacks
        self._leave_timeout_s = leave_timeout_s
        self.member_id = ""
        self.generation = -1
        self.assigned: set[TopicPartition] = set()
        self.no_offset: set[TopicPartition] = set()
        self._committed: dict[TopicPartition, int] = {}  # last committed per partition
        self.next_commit_at = time.monotonic() + self._interval_s if self.auto_commit else math.inf
        self._callback_error: BaseException | None = None
        self.failed: MoldauError | None = None
        self._in_flight: set[Any] = set()  # auto-commits under way

    def due(self, now: float) -> bool:
        """Whether :meth:`tick` has something to do: events, an auto-commit, an error."""
        return (
            bool(self.membership.events)
            or now >= self.next_commit_at
            or bool(self.no_offset)
            or self.failed is not None
        )

    # ------------------------------------------------------------------ poll

    def tick(self, reader: PartitionReader) -> Steps[None]:
        """Apply queued events, auto-commit when due; raise what poll() must raise."""
        if self.failed is not None:
            raise self.failed
        events = self.membership.events
        while events:
            event = events.popleft()
            if isinstance(event, Assigned):
                if events and isinstance(events[0], Assigned | Lost):
                    continue  # each update lists the whole holding: a newer one supersedes it
                if not (yield from self._apply_assignment(reader, event)):
                    events.appendleft(event)  # the broker could not be asked: next poll
                    break
            elif isinstance(event, PositionsMoved):
                yield from self._apply_positions(reader, event)
            elif isinstance(event, Lost):
                yield from self._lose(reader, event.reason)
            elif isinstance(event, Failed):
                yield from self._lose(reader, event.error.message)
                self.failed = event.error
                raise event.error
        self._raise_callback_error()
        if time.monotonic() >= self.next_commit_at:
            self.next_commit_at = time.monotonic() + self._interval_s
            positions = reader._positions
            changed = {tp: o for tp, o in positions.items() if self._committed.get(tp) != o}
            if changed and self.member_id:
                self._committed.update(changed)
                future = yield Spawn(self._logged_commit(self.member_id, self.generation, changed))
                self._in_flight.add(future)  # a task nobody references may be collected
                future.add_done_callback(self._in_flight.discard)
        if self.no_offset:
            missing = sorted(self.no_offset)
            shown = ", ".join(f"{t}[{p}]" for t, p in missing[:10])
            raise NoOffsetForPartitionError(
                f"group {self.membership.settings.group_id!r} has no committed offset for "
                f"{shown} and auto_offset_reset is 'none'; seek() them (e.g. in on_assign)",
                missing,
            )

    def _apply_assignment(self, reader: PartitionReader, event: Assigned) -> Steps[bool]:
        self.member_id, self.generation = event.member_id, event.generation
        lost = sorted(self.assigned - event.assignment - event.revoke)
        if lost:  # released by the broker without a revoke: someone else may read them now
            yield from self._stop(reader, lost, self.on_lost, commit=False)
        revoke = sorted(self.assigned & event.revoke)
        if revoke:
            yield from self._stop(reader, revoke, self.on_revoke, commit=self.auto_commit)
        new = sorted(event.assignment - self.assigned)
        if new and not (yield from self._start(reader, new)):
            return False
        yield self.membership.release(event.revoke)  # the ack: handled, revoked ones released
        return True

    def _start(self, reader: PartitionReader, partitions: list[TopicPartition]) -> Steps[bool]:
        """Start reading newly assigned partitions at their committed offsets."""
        try:
            committed: dict[TopicPartition, int] = yield self.membership.committed(partitions)
            found = {tp: committed[tp] for tp in partitions if tp in committed}
            yield reader._seek_all(found)
            missing = [tp for tp in partitions if tp not in committed]
            if missing and self.auto_offset_reset != "none":
                yield reader._seek_spec(missing, self.auto_offset_reset)
        except MoldauError as exc:
            log.warning(
                "group %s: cannot start %s yet: %s",
                self.membership.settings.group_id,
                partitions,
                exc,
            )
            yield reader._stop_reading(partitions)
            reader._drop_partitions(partitions)
            return False
        if missing and self.auto_offset_reset == "none":
            self.no_offset.update(missing)
        self.assigned.update(partitions)
        self._committed.update(found)
        yield from self._callback(self.on_assign, partitions)
        return True

    def _stop(
        self,
        reader: PartitionReader,
        partitions: list[TopicPartition],
        callback: RebalanceCallback | None,
        *,
        commit: bool,
    ) -> Steps[None]:
        """Stop reading, call back, commit (revoke only), forget: before the release."""
        yield reader._stop_reading(partitions)
        yield from self._callback(callback, partitions)
        if commit and self.member_id:
            positions = reader._positions
            offsets = {tp: positions[tp] for tp in partitions if tp in positions}
            if offsets:
                try:
                    yield self.membership.commit(self.member_id, self.generation, offsets)
                except MoldauError as exc:
                    log.warning(
                        "group %s: commit of revoked %s failed: %s",
                        self.membership.settings.group_id,
                        sorted(offsets),
                        exc,
                    )
        reader._drop_partitions(partitions)
        for tp in partitions:
            self.assigned.discard(tp)
            self.no_offset.discard(tp)
            self._committed.pop(tp, None)

    def _apply_positions(self, reader: PartitionReader, event: PositionsMoved) -> Steps[None]:
        self.member_id, self.generation = event.member_id, event.generation
        moved = {tp: o for tp, o in event.positions.items() if tp in self.assigned}
        yield reader._seek_all(moved)
        self.no_offset.difference_update(moved)
        self._committed.update(moved)  # the reset stored them

    def _lose(self, reader: PartitionReader, reason: str) -> Steps[None]:
        partitions = sorted(self.assigned)
        if partitions:
            log.warning(
                "group %s: lost %s (%s)", self.membership.settings.group_id, partitions, reason
            )
            yield from self._stop(reader, partitions, self.on_lost, commit=False)
        self.member_id, self.generation = "", -1
        yield self.membership.release(())  # if a stream is open again, tell it what we hold

    def _callback(
        self, callback: RebalanceCallback | None, partitions: list[TopicPartition]
    ) -> Steps[None]:
        """Call back; an error is kept and raised after the rebalance step completes."""
        if callback is None:
            return
        try:
            result = callback(list(partitions))
            if inspect.isawaitable(result):
                if not self._async_callbacks:
                    if inspect.iscoroutine(result):
                        result.close()
                    raise TypeError(
                        "Consumer callbacks must be plain functions; "
                        "use AsyncConsumer for coroutines"
                    )
                yield _awaited(result)
        except Exception as exc:  # the rebalance goes on; poll() raises it afterwards
            if self._callback_error is None:
                self._callback_error = exc

    def _raise_callback_error(self) -> None:
        error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error

    # ------------------------------------------------------------------ offsets

    def commit(
        self, reader: PartitionReader, offsets: Mapping[Any, int] | None, asynchronous: bool
    ) -> Steps[Any]:
        """Commit ``offsets`` (default: every position) with the applied member/generation."""
        if offsets is None:
            chosen = dict(reader._positions)
        else:
            chosen = {TopicPartition(*tp): int(o) for tp, o in offsets.items()}
        if not chosen:
            return None
        if not self.member_id:
            raise CommitFailedError(
                f"not a member of group {self.membership.settings.group_id!r} right now "
                "(joining, or the membership was lost); nothing can be committed"
            )
        if asynchronous:
            self._committed.update(chosen)
            return (yield Spawn(self.membership.commit(self.member_id, self.generation, chosen)))
        yield self.membership.commit(self.member_id, self.generation, chosen)
        self._committed.update(chosen)
        return None

    async def _logged_commit(
        self, member_id: str, generation: int, offsets: Mapping[TopicPartition, int]
    ) -> None:
        """An auto-commit: failures are logged (the next one, or the revoke, commits again)."""
        try:
            await self.membership.commit(member_id, generation, offsets)
        except MoldauError as exc:
            log.warning("group %s: auto-commit failed: %s", self.membership.settings.group_id, exc)

    def committed(self, partitions: Iterable[Any]) -> Steps[dict[TopicPartition, int | None]]:
        """The group's committed offset per partition (None where it never committed)."""
        wanted = [TopicPartition(*tp) for tp in partitions]
        found: dict[TopicPartition, int] = yield self.membership.committed(wanted)
        return {tp: found.get(tp) for tp in wanted}

    # ------------------------------------------------------------------ the end

    def leave(self, reader: PartitionReader) -> Steps[None]:
        """Revoke everything (on_revoke, commit), leave the group and end the stream."""
        lost = any(isinstance(e, Lost | Failed) for e in self.membership.events)
        partitions = sorted(self.assigned)
        if partitions:
            callback = self.on_lost if lost else self.on_revoke
            yield from self._stop(
                reader, partitions, callback, commit=self.auto_commit and not lost
            )
        yield self.membership.leave(self._leave_timeout_s)
        self._raise_callback_error()
