"""Consumer-group administration, mixed into :class:`~moldau.AsyncAdmin` and :class:`~moldau.Admin`.

Every method is one GroupService call. The methods live here rather than in ``admin.py`` so
that module stays about topics; the admin classes inherit them, so users see one ``Admin``.
:class:`AsyncGroupAdminMixin` needs its host to provide :meth:`_group_call` (the call with
the error translation of :func:`moldau._runtime.call`); :class:`GroupAdminMixin` needs
``_async`` (the async twin) and ``_thread`` (the loop thread that runs it).

Errors are those of :mod:`moldau.errors`: an unknown group is a ``NotFoundError``
(NOT_FOUND), a group with live members refusing a change (``delete_group``, an executed reset
without ``live``, a commit outside membership) arrives with code FAILED_PRECONDITION, and bad
arguments with INVALID_ARGUMENT as ``InvalidRequestError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from moldau._group_types import (
    ByDuration,
    CommittedOffset,
    FromRows,
    GroupDescription,
    GroupState,
    GroupSummary,
    MemberDescription,
    OffsetAndMetadata,
    PartitionLag,
    ResetPlan,
    ResetPlanRow,
    ResetSpec,
    ShiftBy,
    ToDatetime,
    ToEarliest,
    ToLatest,
    ToOffset,
)
from moldau._runtime import LoopThread
from moldau._types import TopicPartition
from moldau.v1 import groups_pb2

__all__ = ["AsyncGroupAdminMixin", "GroupAdminMixin", "reset_request"]

_STATES: dict[int, GroupState] = {
    groups_pb2.GROUP_STATE_EMPTY: GroupState.EMPTY,
    groups_pb2.GROUP_STATE_RECONCILING: GroupState.RECONCILING,
    groups_pb2.GROUP_STATE_STABLE: GroupState.STABLE,
}


def _state(value: int) -> GroupState:
    return _STATES.get(value, GroupState.UNKNOWN)


def _tps(messages: Iterable[groups_pb2.TopicPartition]) -> tuple[TopicPartition, ...]:
    return tuple(TopicPartition(m.topic, m.partition) for m in messages)


def _tp_messages(partitions: Iterable[tuple[str, int]] | None) -> list[groups_pb2.TopicPartition]:
    return [groups_pb2.TopicPartition(topic=t, partition=p) for t, p in partitions or ()]


def _committed(message: groups_pb2.CommittedOffset) -> CommittedOffset:
    return CommittedOffset(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        metadata=message.metadata,
        commit_timestamp_ms=message.commit_timestamp_ms,
        generation=message.generation,
    )


def _committed_map(
    messages: Iterable[groups_pb2.CommittedOffset],
) -> dict[TopicPartition, CommittedOffset]:
    offsets = sorted((_committed(m) for m in messages), key=lambda o: (o.topic, o.partition))
    return {TopicPartition(o.topic, o.partition): o for o in offsets}


def _member(message: groups_pb2.MemberInfo) -> MemberDescription:
    return MemberDescription(
        member_id=message.member_id,
        instance_id=message.instance_id,
        topics=tuple(message.topics),
        pattern=message.pattern,
        assignment=_tps(message.assignment),
        target=_tps(message.target),
        revoking=_tps(message.revoking),
        session_timeout_ms=message.session_timeout_ms,
        last_heartbeat_age_ms=message.last_heartbeat_age_ms,
        departed=message.departed,
    )


def _lag(message: groups_pb2.PartitionLag) -> PartitionLag:
    return PartitionLag(
        topic=message.topic,
        partition=message.partition,
        committed=message.committed if message.HasField("committed") else None,
        metadata=message.metadata,
        owner=message.owner,
        log_start_offset=message.log_start_offset,
        log_end_offset=message.log_end_offset,
        lag_records=message.lag_records if message.HasField("lag_records") else None,
        lag_ms=message.lag_ms if message.HasField("lag_ms") else None,
    )


def _description(message: groups_pb2.DescribeGroupResponse) -> GroupDescription:
    return GroupDescription(
        group=message.group,
        state=_state(message.state),
        generation=message.generation,
        assignor=message.assignor,
        members=tuple(_member(m) for m in message.members),
        partitions=tuple(_lag(p) for p in message.partitions),
    )


def _spec_fields(spec: ResetSpec) -> dict[str, Any]:
    """The ``spec`` oneof of a ResetOffsetsRequest, as constructor keywords."""
    if isinstance(spec, ToEarliest):
        return {"to_earliest": True}
    if isinstance(spec, ToLatest):
        return {"to_latest": True}
    if isinstance(spec, ToOffset):
        return {"to_offset": spec.offset}
    if isinstance(spec, ToDatetime):
        return {"to_timestamp_ms": spec.timestamp_ms}
    if isinstance(spec, ByDuration):
        return {"by_duration_ms": spec.duration_ms}
    if isinstance(spec, ShiftBy):
        return {"shift_by": spec.delta}
    if isinstance(spec, FromRows):
        rows = [
            groups_pb2.TopicPartitionOffset(topic=t, partition=p, offset=o)
            for (t, p), o in sorted(spec.offsets.items())
        ]
        return {"from_rows": groups_pb2.TopicPartitionOffsets(offsets=rows)}
    raise TypeError(f"not a reset spec: {spec!r}; use ToEarliest(), ToOffset(n), ...")


def reset_request(
    group: str,
    spec: ResetSpec,
    *,
    topics: Iterable[str] = (),
    partitions: Iterable[tuple[str, int]] = (),
    all_topics: bool = False,
    execute: bool = False,
    live: bool = False,
) -> groups_pb2.ResetOffsetsRequest:
    """The request for :meth:`AsyncGroupAdminMixin.reset_offsets`, checked before it is sent.

    Raises:
        ValueError: no targets (only ``FromRows`` may go without), ``all_topics`` together
            with named targets, or ``live`` without ``execute``.
        TypeError: ``spec`` is not one of the reset spec classes.
    """
    topic_list, partition_list = list(topics), list(partitions)
    if all_topics and (topic_list or partition_list):
        raise ValueError("all_topics=True excludes naming topics or partitions")
    if not (all_topics or topic_list or partition_list or isinstance(spec, FromRows)):
        raise ValueError("name the targets: topics=[...], partitions=[...] or all_topics=True")
    if live and not execute:
        raise ValueError("live=True only applies to an executed reset (execute=True)")
    return groups_pb2.ResetOffsetsRequest(
        group=group,
        all_topics=all_topics,
        topics=topic_list,
        partitions=_tp_messages(partition_list),
        execute=execute,
        live=live,
        **_spec_fields(spec),
    )


def _plan(group: str, reply: groups_pb2.ResetOffsetsResponse) -> ResetPlan:
    rows = tuple(
        ResetPlanRow(
            topic=r.topic,
            partition=r.partition,
            current=r.current if r.HasField("current") else None,
            new_offset=r.new_offset,
            clamped=r.clamped,
        )
        for r in reply.rows
    )
    fence = reply.fence_generation if reply.HasField("fence_generation") else None
    return ResetPlan(group, rows, reply.executed, fence)


class AsyncGroupAdminMixin:
    """The group half of :class:`~moldau.AsyncAdmin`."""

    async def _group_call(self, name: str, request: object) -> object:
        """Call GroupService method ``name``; the host class provides the channel."""
        raise NotImplementedError

    async def list_groups(self) -> list[GroupSummary]:
        """Every group with members or committed offsets, sorted by name."""
        reply = await self._group_call("ListGroups", groups_pb2.ListGroupsRequest())
        assert isinstance(reply, groups_pb2.ListGroupsResponse)
        return sorted(
            (GroupSummary(g.group, _state(g.state), g.members) for g in reply.groups),
            key=lambda g: g.group,
        )

    async def describe_group(self, group: str) -> GroupDescription:
        """State, generation, members and per-partition committed offsets and lag.

        Raises:
            NotFoundError: the group has neither members nor committed offsets.
        """
        reply = await self._group_call(
            "DescribeGroup", groups_pb2.DescribeGroupRequest(group=group)
        )
        assert isinstance(reply, groups_pb2.DescribeGroupResponse)
        return _description(reply)

    async def delete_group(self, group: str) -> None:
        """Delete a group without members, and its committed offsets.

        Raises:
            NotFoundError: no such group.
            MoldauError: code FAILED_PRECONDITION while the group has members (a static
                member waiting for its instance counts).
        """
        await self._group_call("DeleteGroup", groups_pb2.DeleteGroupRequest(group=group))

    async def delete_offsets(
        self, group: str, partitions: Iterable[tuple[str, int]] | None = None
    ) -> list[TopicPartition]:
        """Delete committed offsets (all of the group's when ``partitions`` is None).

        Refused (FAILED_PRECONDITION) for topics a live member subscribes to, because it
        would commit them again. Returns the partitions whose offsets were deleted.
        """
        request = groups_pb2.DeleteOffsetsRequest(group=group, partitions=_tp_messages(partitions))
        reply = await self._group_call("DeleteOffsets", request)
        assert isinstance(reply, groups_pb2.DeleteOffsetsResponse)
        return sorted(_tps(reply.deleted))

    async def fetch_offsets(
        self, group: str, partitions: Iterable[tuple[str, int]] | None = None
    ) -> dict[TopicPartition, CommittedOffset]:
        """The group's committed offsets: all, or those of ``partitions`` that have one."""
        request = groups_pb2.FetchOffsetsRequest(group=group, partitions=_tp_messages(partitions))
        reply = await self._group_call("FetchOffsets", request)
        assert isinstance(reply, groups_pb2.FetchOffsetsResponse)
        return _committed_map(reply.offsets)

    async def commit_offsets(
        self, group: str, offsets: Mapping[tuple[str, int], int | OffsetAndMetadata]
    ) -> dict[TopicPartition, CommittedOffset]:
        """Store offsets outside membership, as a tool or a manually assigned consumer does.

        Each offset is the next one to consume (last processed + 1); a value may be an
        :class:`OffsetAndMetadata` to store metadata text with it. Allowed only while the
        group has no members (FAILED_PRECONDITION otherwise): members commit through their
        own session, and a tool's commit would race theirs.
        """
        commits = []
        for (topic, partition), value in offsets.items():
            offset, metadata = value if isinstance(value, tuple) else (value, "")
            commits.append(
                groups_pb2.OffsetCommit(
                    topic=topic, partition=partition, offset=offset, metadata=metadata
                )
            )
        request = groups_pb2.CommitOffsetsRequest(
            group=group, member_id="", generation=-1, offsets=commits
        )
        reply = await self._group_call("CommitOffsets", request)
        assert isinstance(reply, groups_pb2.CommitOffsetsResponse)
        return _committed_map(reply.offsets)

    async def reset_offsets(
        self,
        group: str,
        spec: ResetSpec,
        *,
        topics: Iterable[str] = (),
        partitions: Iterable[tuple[str, int]] = (),
        all_topics: bool = False,
        execute: bool = False,
        live: bool = False,
    ) -> ResetPlan:
        """Plan a reset of the group's committed offsets and, with ``execute``, store it.

        Args:
            group: The group; one that does not exist yet gets these offsets as its start.
            spec: The new offsets: ``ToEarliest()``, ``ToLatest()``, ``ToOffset(n)``,
                ``ToDatetime(ms)``, ``ByDuration(ms)``, ``ShiftBy(n)`` or ``FromRows({...})``.
            topics: Every partition of these topics ...
            partitions: ... plus these ``(topic, partition)`` pairs ...
            all_topics: ... or instead every topic the group committed or subscribes to.
                ``FromRows`` needs no targets: its rows name the partitions.
            execute: False (the default) only plans: a dry run that writes nothing.
            live: With ``execute``, also reset a group that has live members: the broker
                fences them (commits of older generations fail) and moves their positions.

        Every new offset is clamped into [log start, log end]; such rows have ``clamped``.

        Raises:
            ValueError: missing or contradictory targets, ``live`` without ``execute``.
            MoldauError: code FAILED_PRECONDITION when executing without ``live`` while the
                group has members; NotFoundError for a target topic or partition that does
                not exist.
        """
        request = reset_request(
            group,
            spec,
            topics=topics,
            partitions=partitions,
            all_topics=all_topics,
            execute=execute,
            live=live,
        )
        reply = await self._group_call("ResetOffsets", request)
        assert isinstance(reply, groups_pb2.ResetOffsetsResponse)
        return _plan(group, reply)


class GroupAdminMixin:
    """The group half of :class:`~moldau.Admin`: the async methods run on its loop thread."""

    _async: AsyncGroupAdminMixin
    _thread: LoopThread

    def list_groups(self) -> list[GroupSummary]:
        return self._thread.run(self._async.list_groups())

    def describe_group(self, group: str) -> GroupDescription:
        return self._thread.run(self._async.describe_group(group))

    def delete_group(self, group: str) -> None:
        self._thread.run(self._async.delete_group(group))

    def delete_offsets(
        self, group: str, partitions: Iterable[tuple[str, int]] | None = None
    ) -> list[TopicPartition]:
        return self._thread.run(self._async.delete_offsets(group, partitions))

    def fetch_offsets(
        self, group: str, partitions: Iterable[tuple[str, int]] | None = None
    ) -> dict[TopicPartition, CommittedOffset]:
        return self._thread.run(self._async.fetch_offsets(group, partitions))

    def commit_offsets(
        self, group: str, offsets: Mapping[tuple[str, int], int | OffsetAndMetadata]
    ) -> dict[TopicPartition, CommittedOffset]:
        return self._thread.run(self._async.commit_offsets(group, offsets))

    def reset_offsets(
        self,
        group: str,
        spec: ResetSpec,
        *,
        topics: Iterable[str] = (),
        partitions: Iterable[tuple[str, int]] = (),
        all_topics: bool = False,
        execute: bool = False,
        live: bool = False,
    ) -> ResetPlan:
        return self._thread.run(
            self._async.reset_offsets(
                group,
                spec,
                topics=topics,
                partitions=partitions,
                all_topics=all_topics,
                execute=execute,
                live=live,
            )
        )
