"""GroupService over a real server: the membership stream, offsets, reset and administration.

These drive the generated stubs directly (no client library), so they pin the wire protocol
that clients in any language implement.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from grpc_api.testing import ServerProcess
from moldau.v1 import common_pb2, groups_pb2, groups_pb2_grpc, produce_pb2
from tests.integration.support import StartServer, Stubs

pb = groups_pb2
TP = tuple[str, int]


@pytest.fixture(scope="module")
def groups(server: ServerProcess) -> Iterator[groups_pb2_grpc.GroupServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield groups_pb2_grpc.GroupServiceStub(channel)


_group_names = iter(range(1_000_000))


@pytest.fixture
def group(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name[:40]}-{next(_group_names)}"


def _tps(messages: Any) -> set[TP]:
    return {(m.topic, m.partition) for m in messages}


class Member:
    """One membership stream driven from a test: requests in, responses collected."""

    def __init__(self, stub: groups_pb2_grpc.GroupServiceStub, join: groups_pb2.JoinGroup) -> None:
        self._requests: queue.Queue[groups_pb2.GroupSubscribeRequest | None] = queue.Queue()
        self._requests.put(pb.GroupSubscribeRequest(join=join))
        self.responses: queue.Queue[groups_pb2.GroupSubscribeResponse] = queue.Queue()
        self.call = stub.Subscribe(iter(self._requests.get, None))
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self.assignment: set[TP] = set()
        self.revoke: set[TP] = set()
        self.generation = 0
        self.positions: dict[TP, int] = {}
        self.fenced = ""
        threading.Thread(target=self._read, daemon=True).start()
        joined = self.next("joined")
        self.member_id = joined.joined.member_id
        self.generation = joined.joined.generation
        self.next("assignment")

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError as exc:
            self.error = exc
        self.ended.set()

    def next(self, kind: str, timeout_s: float = 10.0) -> groups_pb2.GroupSubscribeResponse:
        """The next response, which must be of ``kind``; applied to the tracked state."""
        response = self.responses.get(timeout=timeout_s)
        assert response.WhichOneof("event") == kind, response
        self._apply(response)
        return response

    def _apply(self, response: groups_pb2.GroupSubscribeResponse) -> None:
        kind = response.WhichOneof("event")
        if kind == "assignment":
            update = response.assignment
            self.generation = update.generation
            self.assignment = _tps(update.assignment)
            self.revoke = _tps(update.revoke)
        elif kind == "positions":
            self.positions.update(
                {(p.topic, p.partition): p.offset for p in response.positions.positions}
            )
        elif kind == "fenced":
            self.fenced = response.fenced.reason

    def drain(self, until: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Apply responses until ``until()`` holds."""
        deadline = time.monotonic() + timeout_s
        while not until():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; assignment={self.assignment} revoke={self.revoke}"
            try:
                self._apply(self.responses.get(timeout=remaining))
            except queue.Empty:
                continue

    def ack(self, held: set[TP] | None = None) -> None:
        held = self.assignment if held is None else held
        self._requests.put(pb.GroupSubscribeRequest(ack=pb.GroupAck(
            generation=self.generation,
            held=[pb.TopicPartition(topic=t, partition=p) for t, p in sorted(held)],
        )))

    def release_revoked(self) -> None:
        """Drop what was revoked, as a consumer does after committing it."""
        self.ack(self.assignment - self.revoke)
        self.revoke = set()

    def leave(self, permanent: bool = False) -> None:
        self._requests.put(pb.GroupSubscribeRequest(leave=pb.LeaveGroup(permanent=permanent)))
        self._requests.put(None)
        assert self.ended.wait(10)

    def kill(self) -> None:
        """End the stream abruptly, like a consumer process dying."""
        self.call.cancel()
        self._requests.put(None)
        assert self.ended.wait(10)


def _join(group: str, topics: list[str], **fields: Any) -> groups_pb2.JoinGroup:
    return pb.JoinGroup(group=group, topics=topics, **fields)


def _produce(stubs: Stubs, topic: str, partition: int, count: int) -> None:
    stubs.produce.Produce(produce_pb2.ProduceRequest(
        topic=topic, partition=partition,
        records=produce_pb2.RecordList(
            records=[common_pb2.Record(value=b"v%d" % i) for i in range(count)]
        ),
    ))


def _commit(
    groups: groups_pb2_grpc.GroupServiceStub, group: str, member: Member | None,
    offsets: dict[TP, int], generation: int | None = None,
) -> groups_pb2.CommitOffsetsResponse:
    return groups.CommitOffsets(pb.CommitOffsetsRequest(
        group=group,
        member_id=member.member_id if member else "",
        generation=(member.generation if member else -1) if generation is None else generation,
        offsets=[pb.OffsetCommit(topic=t, partition=p, offset=o) for (t, p), o in offsets.items()],
    ))


def _fetch(groups: groups_pb2_grpc.GroupServiceStub, group: str) -> dict[TP, int]:
    reply = groups.FetchOffsets(pb.FetchOffsetsRequest(group=group))
    return {(o.topic, o.partition): o.offset for o in reply.offsets}


# ---------------------------------------------------------------------- membership


def test_members_share_partitions_cooperatively(
    groups: groups_pb2_grpc.GroupServiceStub, new_topic: Callable[..., str], group: str
) -> None:
    topic = new_topic(6)
    everything = {(topic, p) for p in range(6)}
    first = Member(groups, _join(group, [topic]))
    assert first.assignment == everything

    second = Member(groups, _join(group, [topic]))
    assert second.assignment == set()  # nothing is free until the first releases
    first.drain(lambda: bool(first.revoke))
    moving = set(first.revoke)
    assert len(moving) == 3
    assert first.assignment == everything - moving

    third = Member(groups, _join(group, [topic]))
    first.release_revoked()  # the new owners get them only now
    second.drain(lambda: len(second.assignment) >= 2)
    first.drain(lambda: bool(first.revoke))
    first.release_revoked()
    third.drain(lambda: len(third.assignment) == 2)
    second.drain(lambda: len(second.assignment) == 2)
    first.drain(lambda: len(first.assignment) == 2)
    owned = [first.assignment, second.assignment, third.assignment]
    assert set().union(*owned) == everything
    assert sum(map(len, owned)) == 6  # no partition twice

    described = groups.DescribeGroup(pb.DescribeGroupRequest(group=group))
    assert described.state == pb.GROUP_STATE_STABLE
    assert described.assignor == "sticky"
    assert {m.member_id for m in described.members} == {
        first.member_id, second.member_id, third.member_id
    }
    for m in (first, second, third):
        m.leave()
    assert groups.DescribeGroup(pb.DescribeGroupRequest(group=group)).state == (
        pb.GROUP_STATE_EMPTY
    ) if _fetch(groups, group) else True


def test_a_dead_stream_gives_its_partitions_to_the_others_at_once(
    groups: groups_pb2_grpc.GroupServiceStub, new_topic: Callable[..., str], group: str
) -> None:
    topic = new_topic(4)
    first = Member(groups, _join(group, [topic], session_timeout_ms=60_000))
    second = Member(groups, _join(group, [topic], session_timeout_ms=60_000))
    first.drain(lambda: bool(first.revoke))
    first.release_revoked()
    second.drain(lambda: len(second.assignment) == 2)

    started = time.monotonic()
    second.kill()
    first.drain(lambda: len(first.assignment) == 4, timeout_s=5)
    assert time.monotonic() - started < 5  # not the 60 s session timeout
    first.leave()


def test_a_static_member_gets_its_partitions_back_without_a_rebalance(
    groups: groups_pb2_grpc.GroupServiceStub, new_topic: Callable[..., str], group: str
) -> None:
    topic = new_topic(4)
    stay = Member(groups, _join(group, [topic], instance_id="host-a"))
    bounce = Member(groups, _join(group, [topic], instance_id="host-b"))
    stay.drain(lambda: bool(stay.revoke))
    stay.release_revoked()
    bounce.drain(lambda: len(bounce.assignment) == 2)
    held = set(bounce.assignment)
    time.sleep(0.2)
    stay.drain(stay.responses.empty)  # the answer to its release

    bounce.kill()  # a quick restart: the slot waits for the same instance id
    time.sleep(0.6)  # longer than a maintenance round
    assert len(stay.assignment) == 2
    assert stay.responses.empty()
    again = Member(groups, _join(group, [topic], instance_id="host-b"))
    assert again.assignment == held
    assert again.member_id != bounce.member_id
    again.leave(permanent=True)
    stay.drain(lambda: len(stay.assignment) == 4)
    stay.leave()


def test_session_timeout_removes_a_static_member_that_does_not_return(
    groups: groups_pb2_grpc.GroupServiceStub, new_topic: Callable[..., str], group: str
) -> None:
    topic = new_topic(2)
    stay = Member(groups, _join(group, [topic]))
    gone = Member(groups, _join(group, [topic], instance_id="x", session_timeout_ms=1000))
    stay.drain(lambda: bool(stay.revoke))
    stay.release_revoked()
    gone.drain(lambda: len(gone.assignment) == 1)
    gone.kill()
    stay.drain(lambda: len(stay.assignment) == 2, timeout_s=5)
    stay.leave()


def test_join_errors(
    groups: groups_pb2_grpc.GroupServiceStub, new_topic: Callable[..., str], group: str
) -> None:
    topic = new_topic(1)
    cases = [
        (pb.GroupSubscribeRequest(ack=pb.GroupAck()), grpc.StatusCode.INVALID_ARGUMENT, "join"),
        (pb.GroupSubscribeRequest(join=_join(group, [topic], assignor="fastest")),
         grpc.StatusCode.INVALID_ARGUMENT, "unknown assignor"),
        (pb.GroupSubscribeRequest(join=pb.JoinGroup(group=group)),
         grpc.StatusCode.INVALID_ARGUMENT, "either topic names or a pattern"),
        (pb.GroupSubscribeRequest(join=_join("", [topic])),
         grpc.StatusCode.INVALID_ARGUMENT, "group id"),
        (pb.GroupSubscribeRequest(join=_join(group, [topic], session_timeout_ms=10)),
         grpc.StatusCode.INVALID_ARGUMENT, "session_timeout_ms"),
        (pb.GroupSubscribeRequest(join=pb.JoinGroup(group=group, pattern="(")),
         grpc.StatusCode.INVALID_ARGUMENT, "pattern"),
    ]
    for request, code, text in cases:
        with pytest.raises(grpc.RpcError) as caught:
            list(groups.Subscribe(iter([request])))
        assert caught.value.code() == code, request
        assert text in caught.value.details(), caught.value.details()

    member = Member(groups, _join(group, [topic], assignor="range"))
    with pytest.raises(grpc.RpcError) as caught:
        list(groups.Subscribe(iter([pb.GroupSubscribeRequest(join=_join(group, [topic]))])))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'range' assignor" in caught.value.details()
    member.leave()


def test_a_pattern_subscription_picks_up_new_topics(
    groups: groups_pb2_grpc.GroupServiceStub, new_topic: Callable[..., str], group: str,
    stubs: Stubs,
) -> None:
    first = new_topic(1)
    prefix = first.rsplit("-", 1)[0]
    member = Member(groups, pb.JoinGroup(group=group, pattern=f"{prefix}-.*"))
    assert member.assignment == {(first, 0)}
    second = new_topic(2)
    member.drain(lambda: member.assignment == {(first, 0), (second, 0), (second, 1)})
    member.leave()


# ---------------------------------------------------------------------- offsets


def test_commit_rules_ownership_and_generations(
    groups: groups_pb2_grpc.GroupServiceStub, new_topic: Callable[..., str], group: str,
    stubs: Stubs,
) -> None:
    topic = new_topic(2)
    _produce(stubs, topic, 0, 10)
    member = Member(groups, _join(group, [topic]))
    stored = _commit(groups, group, member, {(topic, 0): 5})
    assert [(o.offset, o.generation) for o in stored.offsets] == [(5, member.generation)]
    assert _fetch(groups, group) == {(topic, 0): 5}

    with pytest.raises(grpc.RpcError) as caught:
        _commit(groups, group, member, {(topic, 0): 6}, generation=member.generation + 5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    with pytest.raises(grpc.RpcError) as caught:
        _commit(groups, group, None, {(topic, 0): 6})  # outside membership, members live
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    intruder = Member(groups, _join(group, [topic]))
    member.drain(lambda: bool(member.revoke))
    with pytest.raises(grpc.RpcError) as caught:
        _commit(groups, group, intruder, {(topic, 0): 7})
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not own" in caught.value.details()

    with pytest.raises(grpc.RpcError) as caught:
        groups.CommitOffsets(pb.CommitOffsetsRequest(group=group, member_id="nobody",
                                                     generation=1, offsets=[
            pb.OffsetCommit(topic=topic, partition=0, offset=1)]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.RpcError) as caught:
        _commit(groups, group, member, {})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        _commit(groups, group, member, {(topic, 0): -1})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _fetch(groups, group) == {(topic, 0): 5}  # nothing of the refused commits stored
    member.leave()
    intruder.leave()


def test_committed_offsets_survive_kill_9(start_server: StartServer) -> None:
    server = start_server()
    with grpc.insecure_channel(server.address) as channel:
        from tests.integration.support import make_stubs

        stubs = make_stubs(channel)
        stub = groups_pb2_grpc.GroupServiceStub(channel)
        stubs.admin.CreateTopic(__import__("moldau.v1.admin_pb2", fromlist=["x"])
                                .CreateTopicRequest(name="orders", partitions=3))
        for p in range(3):
            _produce(stubs, "orders", p, 20)
        member = Member(stub, _join("billing", ["orders"]))
        expected = {("orders", p): 3 + p * 5 for p in range(3)}
        _commit(stub, "billing", member, expected)
    server.kill()
    server.start()
    with grpc.insecure_channel(server.address) as channel:
        stub = groups_pb2_grpc.GroupServiceStub(channel)
        assert _fetch(stub, "billing") == expected
        listed = stub.ListGroups(pb.ListGroupsRequest())
        assert [(g.group, g.state) for g in listed.groups] == [
            ("billing", pb.GROUP_STATE_EMPTY)
        ]


# ---------------------------------------------------------------------- reset and admin


def test_reset_plans_then_executes_and_refuses_live_groups(
    groups: groups_pb2_grpc.GroupServiceStub, new_topic: Callable[..., str], group: str,
    stubs: Stubs,
) -> None:
    topic = new_topic(2)
    _produce(stubs, topic, 0, 10)
    _produce(stubs, topic, 1, 4)
    _commit(groups, group, None, {(topic, 0): 8, (topic, 1): 4})

    plan = groups.ResetOffsets(pb.ResetOffsetsRequest(group=group, topics=[topic], shift_by=-5))
    rows = [(r.partition, r.current, r.new_offset, r.clamped) for r in plan.rows]
    assert rows == [(0, 8, 3, False), (1, 4, 0, True)]
    assert not plan.executed
    assert _fetch(groups, group) == {(topic, 0): 8, (topic, 1): 4}  # a dry run writes nothing

    done = groups.ResetOffsets(pb.ResetOffsetsRequest(
        group=group, all_topics=True, to_offset=99, execute=True
    ))
    assert done.executed
    assert not done.HasField("fence_generation")
    assert _fetch(groups, group) == {(topic, 0): 10, (topic, 1): 4}  # clamped to the ends

    rows_only = pb.TopicPartitionOffsets(offsets=[
        pb.TopicPartitionOffset(topic=topic, partition=1, offset=2)
    ])
    groups.ResetOffsets(pb.ResetOffsetsRequest(group=group, from_rows=rows_only, execute=True))
    assert _fetch(groups, group) == {(topic, 0): 10, (topic, 1): 2}

    member = Member(groups, _join(group, [topic]))
    with pytest.raises(grpc.RpcError) as caught:
        groups.ResetOffsets(pb.ResetOffsetsRequest(group=group, topics=[topic], to_earliest=True,
                                                   execute=True))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--live" in caught.value.details()
    old_generation = member.generation
    live = groups.ResetOffsets(pb.ResetOffsetsRequest(
        group=group, topics=[topic], to_earliest=True, execute=True, live=True
    ))
    assert live.executed
    assert live.fence_generation > old_generation
    member.drain(lambda: member.positions == {(topic, 0): 0, (topic, 1): 0})
    with pytest.raises(grpc.RpcError) as caught:  # the late commit cannot undo the reset
        _commit(groups, group, member, {(topic, 0): 9}, generation=old_generation)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stale" in caught.value.details()
    assert _fetch(groups, group) == {(topic, 0): 0, (topic, 1): 0}
    member.ack()
    member.drain(lambda: member.generation >= live.fence_generation)
    _commit(groups, group, member, {(topic, 0): 1})  # the new generation commits fine
    member.leave()


def test_reset_request_errors(
    groups: groups_pb2_grpc.GroupServiceStub, new_topic: Callable[..., str], group: str
) -> None:
    topic = new_topic(1)
    cases = [
        (pb.ResetOffsetsRequest(group=group, topics=[topic]), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ResetOffsetsRequest(group=group, to_earliest=True), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ResetOffsetsRequest(group=group, all_topics=True, topics=[topic], to_latest=True),
         grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ResetOffsetsRequest(group=group, topics=[topic], to_latest=True, live=True),
         grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ResetOffsetsRequest(group=group, topics=["no-such-topic"], to_latest=True),
         grpc.StatusCode.NOT_FOUND),
        (pb.ResetOffsetsRequest(group=group, partitions=[pb.TopicPartition(topic=topic,
                                                                           partition=7)],
                                to_latest=True), grpc.StatusCode.NOT_FOUND),
        (pb.ResetOffsetsRequest(group=group, topics=[topic], by_duration_ms=-1),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as caught:
            groups.ResetOffsets(request)
        assert caught.value.code() == code, (request, caught.value.details())
    assert not _fetch(groups, group)


def test_describe_reports_lag_and_delete_needs_an_empty_group(
    groups: groups_pb2_grpc.GroupServiceStub, new_topic: Callable[..., str], group: str,
    stubs: Stubs,
) -> None:
    topic = new_topic(2)
    _produce(stubs, topic, 0, 10)
    _commit(groups, group, None, {(topic, 0): 4})
    member = Member(groups, _join(group, [topic]))
    described = groups.DescribeGroup(pb.DescribeGroupRequest(group=group))
    rows = {r.partition: r for r in described.partitions}
    assert rows[0].committed == 4
    assert rows[0].log_end_offset == 10
    assert rows[0].lag_records == 6
    assert rows[0].lag_ms >= 0
    assert rows[0].owner == member.member_id
    assert not rows[1].HasField("committed")
    assert not rows[1].HasField("lag_records")
    assert any(g.group == group and g.members == 1
               for g in groups.ListGroups(pb.ListGroupsRequest()).groups)

    with pytest.raises(grpc.RpcError) as caught:
        groups.DeleteGroup(pb.DeleteGroupRequest(group=group))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as caught:
        groups.DeleteOffsets(pb.DeleteOffsetsRequest(group=group))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    member.leave()

    deleted = groups.DeleteOffsets(pb.DeleteOffsetsRequest(
        group=group, partitions=[pb.TopicPartition(topic=topic, partition=0)]
    ))
    assert _tps(deleted.deleted) == {(topic, 0)}
    _commit(groups, group, None, {(topic, 1): 1})
    groups.DeleteGroup(pb.DeleteGroupRequest(group=group))
    with pytest.raises(grpc.RpcError) as caught:
        groups.DescribeGroup(pb.DescribeGroupRequest(group=group))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert ("moldau-error", "UnknownGroupError") in caught.value.trailing_metadata()
    assert not _fetch(groups, group)


def test_shutdown_ends_membership_streams(start_server: StartServer) -> None:
    server = start_server()
    with grpc.insecure_channel(server.address) as channel:
        stub = groups_pb2_grpc.GroupServiceStub(channel)
        member = Member(stub, _join("g", ["later"]))
        started = time.monotonic()
        assert server.stop() == 0
        assert member.ended.wait(10)
        assert member.error is not None
        assert member.error.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 10
