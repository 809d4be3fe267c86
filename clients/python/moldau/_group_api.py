"""The consumer-group methods of :class:`~moldau.Consumer` and :class:`~moldau.AsyncConsumer`.

Kept apart from ``consumer.py`` so that module stays about reading records. The mixins reach the
consumer core through the :class:`_Host` protocol (mypy checks that the consumers satisfy it);
what they do is in :class:`~moldau._group_session.GroupSession` (applying assignments, commits)
and :class:`~moldau._group.GroupMembership` (the stream).

Callbacks (``on_assign``, ``on_revoke``, ``on_lost``) run inside ``poll()`` / ``poll_batches()``
(and ``close()`` / ``unsubscribe()``) on the application's thread, never on the consumer's
internal loop thread, so they may call :meth:`GroupConsumerMixin.commit`, ``seek`` or
``pause``. They get the partitions as a sorted list.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

from moldau._fetcher import ChunkBuffer, Fetcher
from moldau._group import GroupMembership, GroupSettings
from moldau._group_session import (
    AutoOffsetReset,
    GroupSession,
    PartitionReader,
    RebalanceCallback,
    await_steps,
    run_steps,
)
from moldau._runtime import LoopThread
from moldau._types import TopicPartition

__all__ = ["AsyncGroupConsumerMixin", "GroupConsumerMixin"]

TopicPartitionLike = TopicPartition | tuple[str, int]
_ASSIGNORS = ("range", "round-robin", "sticky")
_TIMEOUT_RANGES = {
    "session_timeout_ms": (1_000, 1_800_000),
    "rebalance_timeout_ms": (1_000, 3_600_000),
}


class _Host(PartitionReader, Protocol):
    """What the mixins use of the consumer core."""

    server: str
    auto_offset_reset: Literal["earliest", "latest"]
    _timeout_s: float
    _session: GroupSession | None
    _paused: set[TopicPartition]
    _fetcher: Fetcher
    _buffer: ChunkBuffer

    def _check_open(self) -> None: ...

    def _targets(
        self, partitions: Iterable[TopicPartitionLike] | None, *, positioned: bool = True
    ) -> list[TopicPartition]: ...

    async def _seek(self, tp: TopicPartition, offset: int) -> None: ...


class _SyncHost(_Host, Protocol):
    _thread: LoopThread


def _settings(
    topics: Sequence[str] | None,
    group_id: str,
    pattern: str | None,
    assignor: str,
    instance_id: str | None,
    session_timeout_ms: int,
    rebalance_timeout_ms: int,
    auto_offset_reset: str | None,
    auto_commit_interval_ms: float,
    callbacks: Iterable[RebalanceCallback | None],
    *,
    async_callbacks: bool,
) -> GroupSettings:
    """Check subscribe()'s arguments (ValueError / TypeError say what is wrong)."""
    if not isinstance(group_id, str) or not group_id:
        raise ValueError("group_id must be a non-empty string")
    if isinstance(topics, str):
        raise TypeError("topics is a sequence of names; for one topic write [topic]")
    if bool(topics) == (pattern is not None):
        raise ValueError("subscribe to topic names or to a pattern: exactly one of them")
    if assignor not in _ASSIGNORS:
        raise ValueError(f"assignor must be one of {', '.join(_ASSIGNORS)}, got {assignor!r}")
    for name, value in (
        ("session_timeout_ms", session_timeout_ms),
        ("rebalance_timeout_ms", rebalance_timeout_ms),
    ):
        low, high = _TIMEOUT_RANGES[name]
        if not low <= value <= high:
            raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    if auto_offset_reset not in (None, "earliest", "latest", "none"):
        raise ValueError("auto_offset_reset must be 'earliest', 'latest' or 'none'")
    if auto_commit_interval_ms <= 0:
        raise ValueError("auto_commit_interval_ms must be > 0")
    for callback in callbacks:
        if callback is not None and not callable(callback):
            raise TypeError(f"callbacks must be callable, got {callback!r}")
        if not async_callbacks and inspect.iscoroutinefunction(callback):
            raise TypeError(
                "Consumer callbacks must be plain functions; use AsyncConsumer "
                "for coroutine callbacks"
            )
    return GroupSettings(
        group_id,
        tuple(topics or ()),
        pattern,
        assignor,
        instance_id,
        session_timeout_ms,
        rebalance_timeout_ms,
    )


async def _start(host: _Host, settings: GroupSettings, options: dict[str, Any]) -> None:
    """Create the session and start joining (on the loop, where the channel lives)."""
    if host._session is not None:
        raise RuntimeError("already subscribed; call unsubscribe() first")
    if host._positions:
        raise RuntimeError("partitions were assigned by hand; assign([]) before subscribe()")
    reset: AutoOffsetReset = options.pop("auto_offset_reset") or host.auto_offset_reset
    membership = GroupMembership(
        host.server,
        host._fetcher.start(),
        settings,
        host._buffer.interrupt,
        request_timeout_s=host._timeout_s,
    )
    host._session = GroupSession(membership, auto_offset_reset=reset, **options)
    host._fetcher.auto_offset_reset = reset  # also what a position out of range resets to
    membership.start()


def _session(host: _Host) -> GroupSession:
    host._check_open()
    if host._session is None:
        raise RuntimeError("not subscribed to a group; call subscribe() first")
    return host._session


async def _pause(host: _Host, partitions: Iterable[TopicPartition]) -> None:
    """Paused partitions stop fetching (no per-record check) and keep their position."""
    for tp in partitions:
        if tp not in host._paused:
            host._paused.add(tp)
            await host._stop_reading([tp])


async def _resume(host: _Host, partitions: Iterable[TopicPartition]) -> None:
    for tp in partitions:
        if tp in host._paused:
            host._paused.discard(tp)
            if tp in host._positions:
                await host._seek(tp, host._positions[tp])


async def _end(host: _Host) -> None:
    host._session = None
    host._fetcher.auto_offset_reset = host.auto_offset_reset


class GroupConsumerMixin:
    """Consumer-group membership, commits and flow control for :class:`~moldau.Consumer`."""

    def subscribe(
        self: _SyncHost,
        topics: Sequence[str] | None = None,
        *,
        group_id: str,
        pattern: str | None = None,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
        assignor: str = "sticky",
        instance_id: str | None = None,
        session_timeout_ms: int = 45_000,
        rebalance_timeout_ms: int = 300_000,
        auto_offset_reset: AutoOffsetReset | None = None,
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: float = 5_000,
    ) -> None:
        """Join ``group_id``; the broker assigns partitions, which ``poll()`` then reads.

        Returns at once; the join, the assignment and every rebalance are applied inside
        ``poll()`` / ``poll_batches()``, which is also where the callbacks run (on this
        thread). Newly assigned partitions start at the group's committed offset, else where
        ``auto_offset_reset`` says. Rebalances are cooperative: only partitions that move are
        revoked, and the others are read on throughout.

        Args:
            topics: Topic names (topics created later are assigned once they exist) ...
            group_id: The group to join.
            pattern: ... or instead a regular expression matched against whole topic names.
            on_assign: Called with newly assigned partitions, after their positions are set
                (seek here to start elsewhere).
            on_revoke: Called with partitions being taken away, before they are released:
                their positions are still known, so a manual-commit application commits
                here. With auto-commit the consumer commits them right after the callback.
                Also called for everything held by :meth:`close` and :meth:`unsubscribe`.
            on_lost: Called when partitions were lost without a revoke (the member was
                removed: session timeout, broken connection); other members may already read
                them, so committing fails. Defaults to ``on_revoke``.
            assignor: "sticky" (moves as few partitions as possible), "range" or
                "round-robin"; every member of the group must use the same one.
            instance_id: Static membership: a stable id (host or pod name) that gets its
                partitions back after a quick restart without a rebalance.
            session_timeout_ms: Without a heartbeat for this long the member is removed.
            rebalance_timeout_ms: Time to release revoked partitions before being removed.
            auto_offset_reset: Where a partition without a committed offset starts:
                "earliest", "latest", or "none" (``poll()`` raises
                :class:`~moldau.errors.NoOffsetForPartitionError` until you seek). Default:
                the consumer's ``auto_offset_reset``.
            enable_auto_commit: Commit the positions every ``auto_commit_interval_ms`` from
                ``poll()``, for revoked partitions, and on close. A position counts as
                processed once a later ``poll()`` starts (at-least-once).
            auto_commit_interval_ms: How often auto-commit commits.

        Raises:
            RuntimeError: already subscribed, or partitions were assigned by hand.
            ValueError: an argument is out of range.
        """
        self._check_open()
        callbacks = (on_assign, on_revoke, on_lost)
        settings = _settings(
            topics,
            group_id,
            pattern,
            assignor,
            instance_id,
            session_timeout_ms,
            rebalance_timeout_ms,
            auto_offset_reset,
            auto_commit_interval_ms,
            callbacks,
            async_callbacks=False,
        )
        options = {
            "on_assign": on_assign,
            "on_revoke": on_revoke,
            "on_lost": on_lost,
            "auto_offset_reset": auto_offset_reset,
            "async_callbacks": False,
            "enable_auto_commit": enable_auto_commit,
            "auto_commit_interval_ms": auto_commit_interval_ms,
        }
        self._thread.run(_start(self, settings, options))

    def unsubscribe(self: _SyncHost) -> None:
        """Leave the group like :meth:`close` does (on_revoke, commit), but stay open."""
        session = _session(self)
        try:
            run_steps(self._thread, session.leave(self))
        finally:
            self._thread.run(_end(self))

    def commit(
        self: _SyncHost,
        offsets: Mapping[TopicPartitionLike, int] | None = None,
        *,
        asynchronous: bool = False,
    ) -> concurrent.futures.Future[None] | None:
        """Store the group's offsets: the next offset to read (last processed + 1).

        Args:
            offsets: Per partition; default: the current position of every partition read.
            asynchronous: Return a future at once instead of waiting for the broker.

        Raises:
            CommitFailedError: the member no longer owns a partition or left the group.
            StaleGenerationError: a live offset reset moved the group's offsets; ``poll()``
                applies the new positions, and the commit must not be repeated blindly.
        """
        session = _session(self)
        result: concurrent.futures.Future[None] | None = run_steps(
            self._thread, session.commit(self, offsets, asynchronous)
        )
        return result

    def committed(
        self: _SyncHost, partitions: Iterable[TopicPartitionLike]
    ) -> dict[TopicPartition, int | None]:
        """The group's committed offsets (None for partitions it never committed)."""
        return run_steps(self._thread, _session(self).committed(partitions))

    def pause(self: _SyncHost, partitions: Iterable[TopicPartitionLike]) -> None:
        """Stop returning records of ``partitions``; they stay assigned (and heartbeated)."""
        self._check_open()
        self._thread.run(_pause(self, self._targets(partitions, positioned=False)))

    def resume(self: _SyncHost, partitions: Iterable[TopicPartitionLike]) -> None:
        """Read paused partitions again from their positions."""
        self._check_open()
        self._thread.run(_resume(self, [TopicPartition(*tp) for tp in partitions]))

    def paused(self: _SyncHost) -> list[TopicPartition]:
        return sorted(self._paused)


class AsyncGroupConsumerMixin:
    """The asyncio twin of :class:`GroupConsumerMixin`; callbacks may be coroutines."""

    async def subscribe(
        self: _Host,
        topics: Sequence[str] | None = None,
        *,
        group_id: str,
        pattern: str | None = None,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
        assignor: str = "sticky",
        instance_id: str | None = None,
        session_timeout_ms: int = 45_000,
        rebalance_timeout_ms: int = 300_000,
        auto_offset_reset: AutoOffsetReset | None = None,
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: float = 5_000,
    ) -> None:
        """See :meth:`moldau.Consumer.subscribe`; callbacks run (or are awaited) in poll()."""
        self._check_open()
        callbacks = (on_assign, on_revoke, on_lost)
        settings = _settings(
            topics,
            group_id,
            pattern,
            assignor,
            instance_id,
            session_timeout_ms,
            rebalance_timeout_ms,
            auto_offset_reset,
            auto_commit_interval_ms,
            callbacks,
            async_callbacks=True,
        )
        options = {
            "on_assign": on_assign,
            "on_revoke": on_revoke,
            "on_lost": on_lost,
            "auto_offset_reset": auto_offset_reset,
            "async_callbacks": True,
            "enable_auto_commit": enable_auto_commit,
            "auto_commit_interval_ms": auto_commit_interval_ms,
        }
        await _start(self, settings, options)

    async def unsubscribe(self: _Host) -> None:
        session = _session(self)
        try:
            await await_steps(session.leave(self))
        finally:
            await _end(self)

    async def commit(
        self: _Host,
        offsets: Mapping[TopicPartitionLike, int] | None = None,
        *,
        asynchronous: bool = False,
    ) -> asyncio.Task[None] | None:
        """See :meth:`moldau.Consumer.commit`; ``asynchronous`` returns an asyncio task."""
        return await await_steps(_session(self).commit(self, offsets, asynchronous))

    async def committed(
        self: _Host, partitions: Iterable[TopicPartitionLike]
    ) -> dict[TopicPartition, int | None]:
        return await await_steps(_session(self).committed(partitions))

    async def pause(self: _Host, partitions: Iterable[TopicPartitionLike]) -> None:
        self._check_open()
        await _pause(self, self._targets(partitions, positioned=False))

    async def resume(self: _Host, partitions: Iterable[TopicPartitionLike]) -> None:
        self._check_open()
        await _resume(self, [TopicPartition(*tp) for tp in partitions])

    def paused(self: _Host) -> list[TopicPartition]:
        return sorted(self._paused)
