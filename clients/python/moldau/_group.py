"""Group membership, the I/O half: the GroupService.Subscribe stream and the offset calls.

:class:`GroupMembership` runs on the consumer's event loop (the caller's for the asyncio
consumer, the loop thread for the blocking one). It joins the group, heartbeats, and turns what
the broker pushes into :data:`GroupEvent` objects in :attr:`GroupMembership.events`; the
consuming side (:mod:`moldau._group_session`) applies them inside ``poll()``, on the
application's thread, because applying one may call the application's callbacks.

Holding: :attr:`GroupMembership.held` is every partition the broker counts as this member's:
the last update's ``assignment`` plus its ``revoke`` (still ours until released). The
consuming side calls :meth:`GroupMembership.release` once it has stopped and committed revoked
partitions; the next ack leaves them out, which hands them to their new owner. An ack carries
the latest generation seen and goes out after every handled update and at least every
heartbeat interval.

A stream that breaks (broker restart, network) or ends with ``fenced`` loses every partition:
the broker hands them to other members at once. The consuming side hears of it through a
:class:`Lost` event, and the stream is joined again after a backoff, until :meth:`leave`.

Thread-safety: everything here runs on the loop, except :attr:`events`, a deque the consuming
thread pops from (append and popleft are atomic), and ``notify``, which must be thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from moldau._feed import RequestFeed
from moldau._runtime import call, cancel_and_wait, connection_error
from moldau._types import TopicPartition
from moldau.errors import (
    GroupMembershipError,
    MoldauError,
    StaleGenerationError,
    error_from_rpc,
    error_from_status,
)
from moldau.v1 import groups_pb2, groups_pb2_grpc

__all__ = [
    "Assigned",
    "Failed",
    "GroupEvent",
    "GroupMembership",
    "GroupSettings",
    "Lost",
    "PositionsMoved",
]

log = logging.getLogger("moldau.consumer")

_S = grpc.StatusCode
#: Errors that end membership for good: the join itself is wrong, or the broker has no groups.
_FINAL = frozenset(
    {
        _S.INVALID_ARGUMENT,
        _S.FAILED_PRECONDITION,
        _S.UNIMPLEMENTED,
        _S.PERMISSION_DENIED,
        _S.UNAUTHENTICATED,
    }
)
_MAX_BACKOFF_S = 2.0
_pb = groups_pb2


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """What a member joins with (see :meth:`moldau.Consumer.subscribe`)."""

    group_id: str
    topics: tuple[str, ...]
    pattern: str | None
    assignor: str
    instance_id: str | None
    session_timeout_ms: int
    rebalance_timeout_ms: int


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Assigned:
    """An AssignmentUpdate: hold ``assignment``; stop, commit and release ``revoke``."""

    member_id: str
    generation: int
    assignment: frozenset[TopicPartition]
    revoke: frozenset[TopicPartition]


@dataclass(frozen=True, slots=True)
class PositionsMoved:
    """A live offset reset: seek to ``positions``; commits of older generations now fail."""

    member_id: str
    generation: int
    positions: Mapping[TopicPartition, int]


@dataclass(frozen=True, slots=True)
class Lost:
    """The membership ended without a leave; every partition is already someone else's."""

    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The group refused the join for good; ``poll()`` raises ``error``."""

    error: MoldauError


GroupEvent = Assigned | PositionsMoved | Lost | Failed


def _tp(message: Any) -> TopicPartition:
    return TopicPartition(message.topic, message.partition)


def _tp_messages(partitions: Iterable[TopicPartition]) -> list[groups_pb2.TopicPartition]:
    return [_pb.TopicPartition(topic=t, partition=p) for t, p in sorted(partitions)]


class GroupMembership:
    """One member's Subscribe stream, rejoined after failures, plus its offset RPCs.

    Args:
        server: The address, for error messages.
        channel: The consumer's channel (opened on this loop).
        settings: What to join with.
        notify: Called (from the loop) after an event was queued: wakes the poller.
        request_timeout_s: Deadline of commits and offset fetches.
    """

    def __init__(
        self,
        server: str,
        channel: grpc.aio.Channel,
        settings: GroupSettings,
        notify: Callable[[], None],
        *,
        request_timeout_s: float,
        retry_backoff_s: float = 0.1,
    ) -> None:
        self.server = server
        self.settings = settings
        self.events: deque[GroupEvent] = deque()
        self.member_id = ""
        self.generation = -1
        self.held: set[TopicPartition] = set()
        self._stub = groups_pb2_grpc.GroupServiceStub(channel)
        self._notify = notify
        self._timeout_s = request_timeout_s
        self._retry_backoff_s = retry_backoff_s
        self._heartbeat_s = settings.session_timeout_ms / 3000
        self._requests: asyncio.Queue[groups_pb2.GroupSubscribeRequest | None] | None = None
        self._leaving = False
        self._live = False  # joined, and no Lost sent since
        self._task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()

    def start(self) -> None:
        """Start joining (on the loop); events follow in :attr:`events`."""
        self._task = asyncio.create_task(self._run(), name=f"moldau-group-{self.settings.group_id}")

    def _emit(self, event: GroupEvent) -> None:
        self.events.append(event)
        self._notify()

    # ------------------------------------------------------------------ the stream

    async def _run(self) -> None:
        backoff = self._retry_backoff_s
        while True:
            joined, error = await self._stream_once()
            if self._leaving:  # the stream ended because we left
                return
            if joined:
                backoff = self._retry_backoff_s
                self._lose(error.message if error is not None else "the stream ended")
            if (
                error is not None
                and error.code in _FINAL
                and not isinstance(error, StaleGenerationError)
            ):
                if error.code == _S.FAILED_PRECONDITION:
                    error = GroupMembershipError(error.message, error.code)
                self._emit(Failed(connection_error(self.server, error)))
                return
            if error is not None and error.code == _S.NOT_FOUND:
                self.member_id = ""  # removed: join as a new member
            log.info(
                "group %s: membership ended (%s); joining again in %.1f s",
                self.settings.group_id,
                error.message if error else "ended",
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _lose(self, reason: str) -> None:
        """Everything held is gone; tell the consuming side once per joined stream."""
        if self._live:
            self._live = False
            self.held.clear()
            self.generation = -1
            self._emit(Lost(reason))

    async def _stream_once(self) -> tuple[bool, MoldauError | None]:
        """Join and serve one stream; (whether it joined, the error that ended it)."""
        requests: asyncio.Queue[groups_pb2.GroupSubscribeRequest | None] = asyncio.Queue()
        self._requests = requests
        feed = self._request_feed(requests)
        stream = self._stub.Subscribe(feed)
        joined = False
        try:
            async for response in stream:
                kind = response.WhichOneof("event")
                if kind == "joined":
                    joined = self._live = True
                    self.member_id = response.joined.member_id
                    self.generation = response.joined.generation
                    self._heartbeat_s = max(0.05, response.joined.heartbeat_interval_ms / 1000)
                elif kind == "assignment":
                    self._on_assignment(response.assignment)
                elif kind == "positions":
                    self._on_positions(response.positions)
                elif kind == "fenced":
                    reason = response.fenced.reason or "removed from the group"
                    self.member_id = ""
                    self._lose(reason)
            return joined, None
        except grpc.RpcError as exc:
            return joined, error_from_rpc(exc)
        except Exception as exc:  # a bug, or a library error that is no RpcError
            # rejoined like a broken stream: a task that ended here would leave the member
            # holding partitions the broker hands to others once the session times out
            log.warning("group %s: the membership stream failed unexpectedly; joining again",
                        self.settings.group_id, exc_info=True)
            return joined, error_from_status(_S.UNKNOWN, f"unexpected client error: {exc!r}")
        finally:
            self._requests = None
            feed.close()
            stream.cancel()

    def _request_feed(
        self, requests: asyncio.Queue[groups_pb2.GroupSubscribeRequest | None]
    ) -> RequestFeed[groups_pb2.GroupSubscribeRequest]:
        settings = self.settings
        join = _pb.GroupSubscribeRequest(
            join=_pb.JoinGroup(
                group=settings.group_id,
                topics=list(settings.topics),
                pattern=settings.pattern or "",
                assignor=settings.assignor,
                member_id=self.member_id,
                instance_id=settings.instance_id or "",
                session_timeout_ms=settings.session_timeout_ms,
                rebalance_timeout_ms=settings.rebalance_timeout_ms,
            )
        )
        return RequestFeed(
            requests, join, idle_s=lambda: self._heartbeat_s, idle=self._ack_message
        )

    def _ack_message(self) -> groups_pb2.GroupSubscribeRequest:
        return _pb.GroupSubscribeRequest(
            ack=_pb.GroupAck(generation=max(self.generation, 0), held=_tp_messages(self.held))
        )

    def _on_assignment(self, update: groups_pb2.AssignmentUpdate) -> None:
        assignment = frozenset(map(_tp, update.assignment))
        revoke = frozenset(map(_tp, update.revoke))
        self.generation = max(self.generation, update.generation)
        self.held = set(assignment | revoke)
        self._emit(Assigned(self.member_id, update.generation, assignment, revoke))

    def _on_positions(self, update: groups_pb2.PositionsUpdate) -> None:
        self.generation = max(self.generation, update.generation)
        positions = {_tp(p): p.offset for p in update.positions}
        self._emit(PositionsMoved(self.member_id, update.generation, positions))

    # ------------------------------------------------------------------ called by the session

    async def release(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop holding ``partitions`` and ack at once (also the ack after an update)."""
        self.held.difference_update(partitions)
        if self._requests is not None:
            self._requests.put_nowait(self._ack_message())

    async def commit(
        self, member_id: str, generation: int, offsets: Mapping[TopicPartition, int]
    ) -> None:
        """Store ``offsets`` for the group; one at a time, so they arrive in order.

        Raises:
            CommitFailedError: the member does not own them (any more) or was removed.
            StaleGenerationError: a live offset reset fenced ``generation``.
        """
        request = _pb.CommitOffsetsRequest(
            group=self.settings.group_id,
            member_id=member_id,
            generation=generation,
            offsets=[
                _pb.OffsetCommit(topic=t, partition=p, offset=o)
                for (t, p), o in sorted(offsets.items())
            ],
        )
        async with self._commit_lock:
            try:
                await call(self._stub.CommitOffsets, request, self._timeout_s)
            except MoldauError as exc:
                raise connection_error(self.server, exc) from None

    async def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offsets of those ``partitions`` that have one."""
        request = _pb.FetchOffsetsRequest(
            group=self.settings.group_id, partitions=_tp_messages(partitions)
        )
        try:
            reply = await call(self._stub.FetchOffsets, request, self._timeout_s)
        except MoldauError as exc:
            raise connection_error(self.server, exc) from None
        return {_tp(o): o.offset for o in reply.offsets}

    async def leave(self, timeout_s: float) -> None:
        """Send ``leave``, half-close, and wait (up to ``timeout_s``) for the broker's end."""
        self._leaving = True
        task, requests = self._task, self._requests
        if task is None:
            return
        if requests is not None:
            requests.put_nowait(_pb.GroupSubscribeRequest(leave=_pb.LeaveGroup()))
            requests.put_nowait(None)
            await asyncio.wait({task}, timeout=timeout_s)
        await self.close()

    async def close(self) -> None:
        """Stop at once without leaving (the broker counts the ended stream as a leave)."""
        self._leaving = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
