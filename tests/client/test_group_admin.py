"""Group administration through Admin and AsyncAdmin against a real broker.

A live member is made with a raw GroupService.Subscribe stream (:class:`LiveMember`), so these
tests do not depend on the group consumer.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

import moldau
from moldau import Admin, AsyncAdmin, Producer
from moldau._group_admin import reset_request
from moldau._group_types import (
    ByDuration,
    FromRows,
    GroupState,
    OffsetAndMetadata,
    ShiftBy,
    ToDatetime,
    ToEarliest,
    ToLatest,
    ToOffset,
)
from moldau._types import TopicPartition
from moldau.v1 import groups_pb2, groups_pb2_grpc

_groups = itertools.count()


class LiveMember:
    """A group member held open by a raw Subscribe stream; responses collect in a queue."""

    def __init__(self, address: str, group: str, topics: list[str]) -> None:
        self._channel = grpc.insecure_channel(address)
        self._requests: queue.Queue[groups_pb2.GroupSubscribeRequest | None] = queue.Queue()
        self.responses: queue.Queue[groups_pb2.GroupSubscribeResponse | None] = queue.Queue()
        join = groups_pb2.JoinGroup(group=group, topics=topics)
        self._requests.put(groups_pb2.GroupSubscribeRequest(join=join))
        stub = groups_pb2_grpc.GroupServiceStub(self._channel)
        self._call = stub.Subscribe(iter(self._requests.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        joined = self.next_event("joined")
        self.member_id = joined.joined.member_id
        assignment = self.next_event("assignment").assignment
        self.held = list(assignment.assignment)
        ack = groups_pb2.GroupAck(generation=assignment.generation, held=self.held)
        self._requests.put(groups_pb2.GroupSubscribeRequest(ack=ack))

    def _read(self) -> None:
        try:
            for response in self._call:
                self.responses.put(response)
        except grpc.RpcError:
            pass
        self.responses.put(None)

    def next_event(self, kind: str, timeout_s: float = 10.0) -> Any:
        """The next response of ``kind`` (others are skipped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            response = self.responses.get(timeout=max(0.01, deadline - time.monotonic()))
            assert response is not None, f"the stream ended before a {kind!r} event"
            if response.WhichOneof("event") == kind:
                return response

    def close(self) -> None:
        self._requests.put(groups_pb2.GroupSubscribeRequest(leave=groups_pb2.LeaveGroup()))
        self._requests.put(None)
        self._reader.join(10)
        self._channel.close()


@pytest.fixture
def group() -> str:
    return f"admin-group-{next(_groups)}"


@pytest.fixture
def filled_topic(address: str, new_topic: Callable[..., str]) -> str:
    """Two partitions with records 0..9 each, timestamps 1_000 + offset (one batch each)."""
    name = new_topic(2)
    with Producer(address) as producer:
        for offset in range(10):
            for partition in (0, 1):
                producer.send(name, b"x", partition=partition, timestamp=1_000 + offset)
            producer.flush()
    return name


@pytest.fixture
def live_member(address: str) -> Iterator[Callable[[str, list[str]], LiveMember]]:
    members: list[LiveMember] = []

    def join(group: str, topics: list[str]) -> LiveMember:
        members.append(LiveMember(address, group, topics))
        return members[-1]

    yield join
    for member in members:
        member.close()


def test_commit_fetch_list_describe(address: str, filled_topic: str, group: str) -> None:
    with Admin(address) as admin:
        committed = admin.commit_offsets(
            group, {(filled_topic, 0): 4, (filled_topic, 1): OffsetAndMetadata(9, "note")}
        )
        assert [(tp, o.offset, o.metadata, o.generation) for tp, o in committed.items()] == [
            (TopicPartition(filled_topic, 0), 4, "", -1),
            (TopicPartition(filled_topic, 1), 9, "note", -1),
        ]
        fetched = admin.fetch_offsets(group)
        assert {tp: o.offset for tp, o in fetched.items()} == {
            (filled_topic, 0): 4,
            (filled_topic, 1): 9,
        }
        assert list(admin.fetch_offsets(group, [(filled_topic, 1)])) == [(filled_topic, 1)]
        assert fetched[TopicPartition(filled_topic, 0)].commit_timestamp_ms > 0
        listed = {g.group: g for g in admin.list_groups()}
        assert listed[group].state is GroupState.EMPTY
        assert listed[group].members == 0
        described = admin.describe_group(group)
        assert (described.state, described.assignor, described.members) == (
            GroupState.EMPTY,
            "",
            (),
        )
        lags = {p.partition: p for p in described.partitions}
        assert (lags[0].committed, lags[0].log_end_offset, lags[0].lag_records) == (4, 10, 6)
        assert lags[0].lag_ms is not None
        assert lags[0].lag_ms > 0
        assert (lags[1].committed, lags[1].lag_records, lags[1].lag_ms) == (9, 1, lags[1].lag_ms)
        assert lags[1].metadata == "note"
        assert lags[0].owner == ""


def test_delete_offsets_then_group(address: str, filled_topic: str, group: str) -> None:
    with Admin(address) as admin:
        admin.commit_offsets(group, {(filled_topic, 0): 1, (filled_topic, 1): 2})
        assert admin.delete_offsets(group, [(filled_topic, 0)]) == [(filled_topic, 0)]
        assert list(admin.fetch_offsets(group)) == [(filled_topic, 1)]
        admin.delete_group(group)
        assert group not in [g.group for g in admin.list_groups()]
        with pytest.raises(moldau.NotFoundError) as unknown:
            admin.describe_group(group)
        assert unknown.value.code.name == "NOT_FOUND"
        assert group in unknown.value.message
        with pytest.raises(moldau.NotFoundError):
            admin.delete_group(group)


def test_delete_all_offsets(address: str, filled_topic: str, group: str) -> None:
    with Admin(address) as admin:
        admin.commit_offsets(group, {(filled_topic, 0): 1, (filled_topic, 1): 2})
        assert admin.delete_offsets(group) == [(filled_topic, 0), (filled_topic, 1)]
        assert admin.fetch_offsets(group) == {}


def _offsets(admin: Admin, group: str) -> dict[int, int]:
    return {tp.partition: o.offset for tp, o in admin.fetch_offsets(group).items()}


def test_reset_every_mode(address: str, filled_topic: str, group: str) -> None:
    with Admin(address) as admin:
        admin.commit_offsets(group, {(filled_topic, 0): 5})
        topics = [filled_topic]

        def plan(spec: Any, **targets: Any) -> list[tuple[int, int | None, int, bool]]:
            result = admin.reset_offsets(group, spec, **({"topics": topics} | targets))
            assert not result.executed
            return [(r.partition, r.current, r.new_offset, r.clamped) for r in result.rows]

        assert plan(ToEarliest()) == [(0, 5, 0, False), (1, None, 0, False)]
        assert plan(ToLatest()) == [(0, 5, 10, False), (1, None, 10, False)]
        assert plan(ToOffset(7)) == [(0, 5, 7, False), (1, None, 7, False)]
        assert plan(ToOffset(99)) == [(0, 5, 10, True), (1, None, 10, True)]
        assert plan(ToDatetime(1_004)) == [(0, 5, 4, False), (1, None, 4, False)]
        assert plan(ToDatetime(999_999)) == [(0, 5, 10, False), (1, None, 10, False)]
        assert plan(ShiftBy(-2)) == [(0, 5, 3, False), (1, None, 0, True)]
        assert plan(ShiftBy(3), topics=[], partitions=[(filled_topic, 1)]) == [(1, None, 3, False)]
        rows = FromRows({TopicPartition(filled_topic, 1): 6})
        assert plan(rows, topics=[]) == [(1, None, 6, False)]
        assert _offsets(admin, group) == {0: 5}  # dry runs wrote nothing

        done = admin.reset_offsets(group, ToOffset(8), all_topics=True, execute=True)
        assert done.executed
        assert done.fence_generation is None
        # all topics: every partition of the topics the group committed, not just those
        assert [(r.partition, r.new_offset) for r in done.rows] == [(0, 8), (1, 8)]
        assert _offsets(admin, group) == {0: 8, 1: 8}
        done = admin.reset_offsets(group, ToLatest(), topics=topics, execute=True)
        assert _offsets(admin, group) == {0: 10, 1: 10}
        assert done.clamped == ()


def test_reset_by_duration(address: str, new_topic: Callable[..., str], group: str) -> None:
    name = new_topic()
    now_ms = int(time.time() * 1000)
    ages_ms = [3 * 3_600_000, 2 * 3_600_000, 1_800_000, 600_000]
    with Producer(address) as producer:
        for age in ages_ms:
            producer.send(name, b"x", timestamp=now_ms - age).result(10)
    with Admin(address) as admin:
        result = admin.reset_offsets(group, ByDuration(3_600_000), topics=[name], execute=True)
        assert [(r.new_offset, r.clamped) for r in result.rows] == [(2, False)]
        assert _offsets(admin, group) == {0: 2}
        result = admin.reset_offsets(group, ByDuration(0), topics=[name])
        assert [r.new_offset for r in result.rows] == [4]


def test_reset_request_checks_arguments() -> None:
    with pytest.raises(ValueError, match="name the targets"):
        reset_request("g", ToEarliest())
    with pytest.raises(ValueError, match="all_topics"):
        reset_request("g", ToEarliest(), topics=["t"], all_topics=True)
    with pytest.raises(ValueError, match="live"):
        reset_request("g", ToEarliest(), topics=["t"], live=True)
    with pytest.raises(TypeError, match="reset spec"):
        reset_request("g", "earliest", topics=["t"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        ByDuration(-1)
    request = reset_request("g", FromRows({TopicPartition("t", 1): 4}))
    assert request.WhichOneof("spec") == "from_rows"
    new_year = datetime(2026, 1, 1, tzinfo=UTC)
    assert ToDatetime.of(new_year) == ToDatetime(1_767_225_600_000)
    assert ByDuration.of(timedelta(minutes=2)) == ByDuration(120_000)


def test_reset_refused_while_live_then_live(
    address: str,
    filled_topic: str,
    group: str,
    live_member: Callable[[str, list[str]], LiveMember],
) -> None:
    with Admin(address) as admin:
        admin.commit_offsets(group, {(filled_topic, 0): 3, (filled_topic, 1): 3})
        member = live_member(group, [filled_topic])
        described = admin.describe_group(group)
        assert [m.member_id for m in described.members] == [member.member_id]
        assert described.members[0].topics == (filled_topic,)
        assert set(described.members[0].assignment) == {(filled_topic, 0), (filled_topic, 1)}
        assert {p.owner for p in described.partitions} == {member.member_id}
        assert described.assignor
        assert described.generation >= 1

        plan = admin.reset_offsets(group, ToEarliest(), topics=[filled_topic])  # dry run: ok
        assert [r.new_offset for r in plan.rows] == [0, 0]
        with pytest.raises(moldau.MoldauError) as refused:
            admin.reset_offsets(group, ToEarliest(), topics=[filled_topic], execute=True)
        assert refused.value.code.name == "FAILED_PRECONDITION"
        assert "live member" in refused.value.message
        with pytest.raises(moldau.MoldauError) as busy:
            admin.delete_group(group)
        assert busy.value.code.name == "FAILED_PRECONDITION"
        with pytest.raises(moldau.MoldauError):
            admin.commit_offsets(group, {(filled_topic, 0): 1})
        assert _offsets(admin, group) == {0: 3, 1: 3}

        done = admin.reset_offsets(
            group, ToEarliest(), topics=[filled_topic], execute=True, live=True
        )
        assert done.executed
        assert done.fence_generation is not None
        assert _offsets(admin, group) == {0: 0, 1: 0}
        positions = member.next_event("positions").positions
        assert positions.generation == done.fence_generation
        assert {(p.partition, p.offset) for p in positions.positions} == {(0, 0), (1, 0)}


def test_async_admin_groups(address: str, filled_topic: str, group: str) -> None:
    async def scenario() -> None:
        async with AsyncAdmin(address) as admin:
            await admin.commit_offsets(group, {(filled_topic, 1): 2})
            assert [g.group for g in await admin.list_groups() if g.group == group] == [group]
            plan = await admin.reset_offsets(
                group, ShiftBy(1), partitions=[(filled_topic, 1)], execute=True
            )
            assert [(r.current, r.new_offset) for r in plan.rows] == [(2, 3)]
            fetched = await admin.fetch_offsets(group)
            assert fetched[TopicPartition(filled_topic, 1)].offset == 3
            description = await admin.describe_group(group)
            assert [p.committed for p in description.partitions] == [3]
            assert await admin.delete_offsets(group) == [(filled_topic, 1)]

    asyncio.run(scenario())
