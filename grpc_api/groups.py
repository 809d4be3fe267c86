"""GroupService: the membership stream, committed offsets and group administration.

The engine's :class:`~engine.groups.GroupCoordinator` does the work; this module converts
messages and runs the membership stream.

Membership stream: one call per member. After the join, the coordinator's watch (with
``keepalive``, so the open stream is the heartbeat) reports changes from whichever thread made
them; the callback only hands them to the event loop. Every response is produced by the call's
own coroutine, one at a time: an assignment event is taken as "something changed" and the
member's current view is read with a heartbeat, so the responses reflect the coordinator's
state in order even when a pushed event and an ack's answer race. Positions from a live reset
are one-shot and forwarded as they come. A stream that ends without ``leave`` is a leave (for a
static member a temporary one).

Blocking coordinator calls (commits fsync; describing reads record timestamps from the log;
every call may wait for a group lock held across another commit's fsync) run on worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc

from engine.errors import UnknownGroupError, UnknownMemberError
from engine.groups import (
    ALL_TOPICS,
    DEFAULT_ASSIGNOR,
    DEFAULT_REBALANCE_TIMEOUT_MS,
    DEFAULT_SESSION_TIMEOUT_MS,
    AssignmentChanged,
    ByDuration,
    FromRows,
    GroupCoordinator,
    GroupDescription,
    GroupEvent,
    GroupState,
    HeartbeatResult,
    MemberFenced,
    OffsetAndMetadata,
    PositionsReset,
    ResetSpec,
    ResetTargets,
    ShiftBy,
    ToDatetime,
    ToEarliest,
    ToLatest,
    ToOffset,
    TopicPartition,
)
from grpc_api.errors import InvalidRequestError, NotReadyError, stream_errors, unary_errors
from grpc_api.runtime import Runtime
from moldau.v1 import groups_pb2, groups_pb2_grpc

__all__ = ["GroupServicer", "run_group_maintenance"]

log = logging.getLogger(__name__)

_pb = groups_pb2
_STATES = {
    GroupState.EMPTY: _pb.GROUP_STATE_EMPTY,
    GroupState.RECONCILING: _pb.GROUP_STATE_RECONCILING,
    GroupState.STABLE: _pb.GROUP_STATE_STABLE,
}
#: How often the server drives session timeouts and topic-metadata changes of every group.
MAINTENANCE_INTERVAL_S = 0.5

_View = tuple[int, frozenset[TopicPartition], frozenset[TopicPartition]]


def _tps(messages: Iterable[groups_pb2.TopicPartition]) -> list[TopicPartition]:
    return [TopicPartition(m.topic, m.partition) for m in messages]


def _tp_messages(partitions: Iterable[TopicPartition]) -> list[groups_pb2.TopicPartition]:
    return [_pb.TopicPartition(topic=tp.topic, partition=tp.partition) for tp in sorted(partitions)]


def _committed(offsets: dict[TopicPartition, OffsetAndMetadata]) -> list[Any]:
    return [
        _pb.CommittedOffset(
            topic=tp.topic, partition=tp.partition, offset=value.offset, metadata=value.metadata,
            commit_timestamp_ms=value.commit_timestamp_ms, generation=value.generation,
        )
        for tp, value in sorted(offsets.items())
    ]


async def run_group_maintenance(runtime: Runtime, coordinator: GroupCoordinator) -> None:
    """Expire silent members and follow topic changes until cancelled."""
    while not runtime.closing:
        try:
            await runtime.run(coordinator.expire_members)
            await runtime.run(coordinator.refresh_metadata)
        except RuntimeError:  # the executor shut down under us
            return
        except Exception:  # a bad group must not stop maintenance of the others
            log.exception("group maintenance failed; retrying")
        await asyncio.sleep(MAINTENANCE_INTERVAL_S)


class _Member:
    """One membership stream: the joined member, its inbox, and what it was last sent."""

    def __init__(self, runtime: Runtime, group: str) -> None:
        self.runtime = runtime
        self.coordinator = runtime.coordinator()
        self.group = group
        self.member_id = ""
        self.generation = 0
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.sent: _View | None = None
        self.left = False
        self.cancel_watch: Callable[[], None] | None = None

    def on_event(self, loop: asyncio.AbstractEventLoop, event: GroupEvent) -> None:
        """Coordinator thread: hand the event to the stream's coroutine."""
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(self.inbox.put_nowait, ("event", event))

    async def read_requests(
        self, requests: AsyncIterator[groups_pb2.GroupSubscribeRequest]
    ) -> None:
        """Forward the client's acks and leave; note the end of its side."""
        try:
            async for request in requests:
                kind = request.WhichOneof("request")
                if kind == "join" or kind is None:
                    raise InvalidRequestError("after `join`, send only `ack` or `leave`")
                self.inbox.put_nowait((kind, getattr(request, kind)))
                if kind == "leave":
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # surfaced by the response side, which owns the status
            self.inbox.put_nowait(("error", exc))
            return
        self.inbox.put_nowait(("eof", None))

    def update(
        self, result: HeartbeatResult | AssignmentChanged
    ) -> groups_pb2.GroupSubscribeResponse | None:
        """The assignment response for a reconciled view, None if the member has it already."""
        view: _View = (result.generation, result.assignment, result.revoke)
        if view == self.sent and not result.assign:
            return None
        self.sent = view
        self.generation = result.generation
        return _pb.GroupSubscribeResponse(assignment=_pb.AssignmentUpdate(
            generation=result.generation,
            assignment=_tp_messages(result.assignment),
            assigned=_tp_messages(result.assign),
            revoke=_tp_messages(result.revoke),
        ))

    async def heartbeat(
        self, generation: int, held: list[TopicPartition] | None
    ) -> HeartbeatResult:
        return await self.runtime.run(
            self.coordinator.heartbeat, self.group, self.member_id, generation, held
        )

    def finish(self) -> None:
        """Stop the watch and, unless the member left or was removed, leave for it."""
        cancel, self.cancel_watch = self.cancel_watch, None
        if cancel is None:
            return
        left, group, member_id = self.left, self.group, self.member_id

        def run() -> None:
            cancel()
            if not left:
                with contextlib.suppress(UnknownMemberError, UnknownGroupError):
                    self.coordinator.leave(group, member_id)

        try:
            self.runtime.executor.submit(run)
        except RuntimeError:  # the executor is shutting down: the group state goes with it
            run()


def _positions(generation: int, positions: dict[TopicPartition, int]) -> Any:
    return _pb.GroupSubscribeResponse(positions=_pb.PositionsUpdate(
        generation=generation,
        positions=[
            _pb.TopicPartitionOffset(topic=tp.topic, partition=tp.partition, offset=offset)
            for tp, offset in sorted(positions.items())
        ],
    ))


def _reset_spec(request: groups_pb2.ResetOffsetsRequest) -> ResetSpec:
    kind = request.WhichOneof("spec")
    match kind:
        case "to_earliest":
            return ToEarliest()
        case "to_latest":
            return ToLatest()
        case "to_offset":
            return ToOffset(request.to_offset)
        case "to_timestamp_ms":
            return ToDatetime(request.to_timestamp_ms)
        case "by_duration_ms":
            return ByDuration(request.by_duration_ms)
        case "shift_by":
            return ShiftBy(request.shift_by)
        case "from_rows":
            rows: dict[TopicPartition, int] = {}
            for row in request.from_rows.offsets:
                tp = TopicPartition(row.topic, row.partition)
                if tp in rows:
                    raise InvalidRequestError(f"from_rows lists {tp} twice; list it once")
                rows[tp] = row.offset
            if not rows:
                raise InvalidRequestError("from_rows is empty; list at least one partition")
            return FromRows(rows)
    raise InvalidRequestError(
        "say where to reset to: to_earliest, to_latest, to_offset, to_timestamp_ms, "
        "by_duration_ms, shift_by or from_rows"
    )


def _reset_targets(request: groups_pb2.ResetOffsetsRequest, spec: ResetSpec) -> ResetTargets:
    named: list[TopicPartition | str] = [*request.topics, *_tps(request.partitions)]
    if request.all_topics:
        if named:
            raise InvalidRequestError("give either all_topics or topics/partitions, not both")
        return ALL_TOPICS
    if named:
        return named
    if isinstance(spec, FromRows):
        return ALL_TOPICS  # the rows name the partitions
    raise InvalidRequestError(
        "say which partitions to reset: topics, partitions, or all_topics"
    )


def _description(description: GroupDescription) -> groups_pb2.DescribeGroupResponse:
    response = _pb.DescribeGroupResponse(
        group=description.group,
        state=_STATES[description.state],
        generation=description.generation,
        assignor=description.assignor or "",
    )
    for member in description.members:
        response.members.add(
            member_id=member.member_id,
            instance_id=member.instance_id or "",
            topics=sorted(member.topics),
            pattern=member.pattern or "",
            assignment=_tp_messages(member.assignment),
            target=_tp_messages(member.target),
            revoking=_tp_messages(member.revoking),
            session_timeout_ms=member.session_timeout_ms,
            last_heartbeat_age_ms=member.last_heartbeat_age_ms,
            departed=member.departed,
        )
    for row in description.partitions:
        lag = response.partitions.add(
            topic=row.topic, partition=row.partition, metadata=row.metadata,
            owner=row.owner or "", log_start_offset=row.log_start_offset,
            log_end_offset=row.log_end_offset,
        )
        if row.committed is not None:
            lag.committed = row.committed
        if row.lag_records is not None:
            lag.lag_records = row.lag_records
        if row.lag_ms is not None:
            lag.lag_ms = row.lag_ms
    return response


class GroupServicer(groups_pb2_grpc.GroupServiceServicer):
    """Translates GroupService calls into GroupCoordinator calls."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    # ------------------------------------------------------------------ membership

    @stream_errors
    async def Subscribe(  # noqa: N802  (the RPC name from the proto)
        self,
        request_iterator: AsyncIterator[groups_pb2.GroupSubscribeRequest],
        context: Any,
    ) -> AsyncIterator[groups_pb2.GroupSubscribeResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if first.WhichOneof("request") != "join":
            raise InvalidRequestError("the first GroupService.Subscribe message must be `join`")
        join = first.join
        member = _Member(self._runtime, join.group)
        membership = await self._runtime.run(lambda: member.coordinator.join(
            join.group,
            join.member_id or None,
            instance_id=join.instance_id or None,
            topics=list(join.topics),
            pattern=join.pattern or None,
            assignor=join.assignor or DEFAULT_ASSIGNOR,
            session_timeout_ms=join.session_timeout_ms or DEFAULT_SESSION_TIMEOUT_MS,
            rebalance_timeout_ms=join.rebalance_timeout_ms or DEFAULT_REBALANCE_TIMEOUT_MS,
        ))
        member.member_id = membership.member_id
        member.generation = membership.generation
        member.sent = (membership.generation, membership.assignment, frozenset())
        loop = asyncio.get_running_loop()
        on_shutdown = lambda: member.inbox.put_nowait(("shutdown", None))  # noqa: E731
        self._runtime.shutdown_callbacks.add(on_shutdown)
        reader: asyncio.Task[None] | None = None
        try:
            member.cancel_watch = await self._runtime.run(lambda: member.coordinator.watch(
                member.group, member.member_id,
                lambda event: member.on_event(loop, event), keepalive=True,
            ))
            yield _pb.GroupSubscribeResponse(joined=_pb.GroupJoined(
                member_id=membership.member_id,
                generation=membership.generation,
                heartbeat_interval_ms=membership.heartbeat_interval_ms,
                session_timeout_ms=membership.session_timeout_ms,
            ))
            yield _pb.GroupSubscribeResponse(assignment=_pb.AssignmentUpdate(
                generation=membership.generation,
                assignment=_tp_messages(membership.assignment),
                assigned=_tp_messages(membership.assignment),
            ))
            reader = asyncio.create_task(member.read_requests(request_iterator))
            async for response in self._serve_member(member, context):
                yield response
        finally:
            self._runtime.shutdown_callbacks.discard(on_shutdown)
            if reader is not None:
                reader.cancel()
            member.finish()

    async def _serve_member(
        self, member: _Member, context: Any
    ) -> AsyncIterator[groups_pb2.GroupSubscribeResponse]:
        """Turn the member's inbox into responses until it leaves, ends or is removed."""
        while True:
            kind, item = await member.inbox.get()
            if kind == "shutdown" or self._runtime.closing:
                raise NotReadyError("the server is shutting down; join again after the restart")
            if kind == "error":
                raise item
            if kind == "eof":
                return
            if kind == "leave":
                member.left = True
                if member.cancel_watch is not None:
                    await self._runtime.run(member.cancel_watch)
                    member.cancel_watch = None
                await self._runtime.run(functools.partial(
                    member.coordinator.leave, member.group, member.member_id,
                    permanent=item.permanent,
                ))
                return
            if kind == "ack":
                result = await member.heartbeat(item.generation, _tps(item.held))
                response = member.update(result)
                if response is not None:
                    yield response
                if result.positions:
                    yield _positions(result.generation, dict(result.positions))
            elif isinstance(item, MemberFenced):
                member.left = True  # removed already: nothing to leave
                yield _pb.GroupSubscribeResponse(fenced=_pb.MemberFenced(reason=item.reason))
                await context.abort(grpc.StatusCode.ABORTED, f"removed from the group: "
                                    f"{item.reason}; join again")
            elif isinstance(item, PositionsReset):
                yield _positions(item.generation, dict(item.positions))
            elif isinstance(item, AssignmentChanged):
                # read the current view rather than forwarding the event: see the module doc
                result = await member.heartbeat(min(member.generation, item.generation), None)
                response = member.update(result)
                if response is not None:
                    yield response
                if result.positions:
                    yield _positions(result.generation, dict(result.positions))

    # ------------------------------------------------------------------ offsets

    @unary_errors
    async def CommitOffsets(  # noqa: N802  (the RPC name from the proto)
        self, request: groups_pb2.CommitOffsetsRequest, context: Any
    ) -> groups_pb2.CommitOffsetsResponse:
        coordinator = self._runtime.coordinator()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for commit in request.offsets:
            tp = TopicPartition(commit.topic, commit.partition)
            if tp in offsets:
                raise InvalidRequestError(f"the request commits {tp} twice; commit it once")
            offsets[tp] = OffsetAndMetadata(commit.offset, commit.metadata)
        if not offsets:
            raise InvalidRequestError("the request commits no offsets; list at least one")
        stored = await self._runtime.run(
            coordinator.commit_offsets, request.group, request.generation, request.member_id,
            offsets,
        )
        return _pb.CommitOffsetsResponse(offsets=_committed(stored))

    @unary_errors
    async def FetchOffsets(  # noqa: N802  (the RPC name from the proto)
        self, request: groups_pb2.FetchOffsetsRequest, context: Any
    ) -> groups_pb2.FetchOffsetsResponse:
        coordinator = self._runtime.coordinator()
        partitions = _tps(request.partitions) or None
        offsets = await self._runtime.run(coordinator.fetch_offsets, request.group, partitions)
        return _pb.FetchOffsetsResponse(offsets=_committed(offsets))

    # ------------------------------------------------------------------ administration

    @unary_errors
    async def ListGroups(  # noqa: N802  (the RPC name from the proto)
        self, request: groups_pb2.ListGroupsRequest, context: Any
    ) -> groups_pb2.ListGroupsResponse:
        listings = await self._runtime.run(self._runtime.coordinator().list_groups)
        return _pb.ListGroupsResponse(groups=[
            _pb.GroupSummary(group=g.group, state=_STATES[g.state], members=g.members)
            for g in listings
        ])

    @unary_errors
    async def DescribeGroup(  # noqa: N802  (the RPC name from the proto)
        self, request: groups_pb2.DescribeGroupRequest, context: Any
    ) -> groups_pb2.DescribeGroupResponse:
        coordinator = self._runtime.coordinator()
        description = await self._runtime.run(coordinator.describe, request.group)
        return _description(description)

    @unary_errors
    async def DeleteGroup(  # noqa: N802  (the RPC name from the proto)
        self, request: groups_pb2.DeleteGroupRequest, context: Any
    ) -> groups_pb2.DeleteGroupResponse:
        coordinator = self._runtime.coordinator()
        await self._runtime.run(coordinator.delete_group, request.group)
        return _pb.DeleteGroupResponse()

    @unary_errors
    async def DeleteOffsets(  # noqa: N802  (the RPC name from the proto)
        self, request: groups_pb2.DeleteOffsetsRequest, context: Any
    ) -> groups_pb2.DeleteOffsetsResponse:
        coordinator = self._runtime.coordinator()
        partitions = _tps(request.partitions) or None
        deleted = await self._runtime.run(coordinator.delete_offsets, request.group, partitions)
        return _pb.DeleteOffsetsResponse(deleted=_tp_messages(deleted))

    @unary_errors
    async def ResetOffsets(  # noqa: N802  (the RPC name from the proto)
        self, request: groups_pb2.ResetOffsetsRequest, context: Any
    ) -> groups_pb2.ResetOffsetsResponse:
        coordinator = self._runtime.coordinator()
        spec = _reset_spec(request)
        targets = _reset_targets(request, spec)
        if request.live and not request.execute:
            raise InvalidRequestError("live applies to an executed reset; set execute as well")
        plan = await self._runtime.run(coordinator.plan_reset, request.group, targets, spec)
        response = _pb.ResetOffsetsResponse()
        for row in plan:
            added = response.rows.add(
                topic=row.topic, partition=row.partition, new_offset=row.new, clamped=row.clamped
            )
            if row.current is not None:
                added.current = row.current
        if request.execute and plan:
            result = await self._runtime.run(
                lambda: coordinator.execute_reset(request.group, plan, live=request.live)
            )
            response.executed = True
            if result.generation is not None:
                response.fence_generation = result.generation
        return response
