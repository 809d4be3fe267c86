"""Consumer groups from the client: subscribe, assignments, commits, pause, auto-commit, async."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Literal

import grpc
import pytest

from moldau import AsyncConsumer, Consumer, Producer, TopicPartition
from moldau._group import GroupMembership, GroupSettings
from moldau.errors import (
    CommitFailedError,
    GroupMembershipError,
    NoOffsetForPartitionError,
    StaleGenerationError,
    error_from_status,
)
from tests.client.lending import poll_until_lent
from tests.client.lost_cancel import swallows_one_cancel

_groups = itertools.count()


@pytest.fixture
def group(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name.split('[')[0].removeprefix('test_')[:40]}-{next(_groups)}"


def fill(address: str, topic: str, partitions: int, per_partition: int) -> None:
    """``per_partition`` records in each partition, valued ``"<partition>:<i>"``."""
    with Producer(address) as producer:
        for p in range(partitions):
            for i in range(per_partition):
                producer.send(topic, f"{p}:{i}".encode(), partition=p)
        producer.flush()


def poll_until(
    consumers: list[Consumer],
    done: Callable[[], bool],
    timeout_s: float = 10.0,
    sink: list[bytes | None] | None = None,
) -> None:
    """Poll every consumer in turn until ``done()``; records' values go to ``sink``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        for consumer in consumers:
            records = consumer.poll(timeout_ms=50, max_records=10_000)
            if sink is not None:
                sink.extend(r.value for r in records)


def tps(topic: str, count: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(count)]


def test_subscribe_reads_every_partition_and_commits(
    address: str, new_topic: Callable[..., str], group: str
) -> None:
    topic = new_topic(3)
    fill(address, topic, 3, 20)
    assigned: list[list[TopicPartition]] = []
    values: list[bytes | None] = []
    with Consumer(address) as consumer:
        consumer.subscribe(
            [topic],
            group_id=group,
            on_assign=assigned.append,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        poll_until([consumer], lambda: len(values) >= 60, sink=values)
        assert sorted(values) == sorted(f"{p}:{i}".encode() for p in range(3) for i in range(20))
        assert assigned == [tps(topic, 3)]
        assert consumer.assignment() == tps(topic, 3)
        assert consumer.committed(tps(topic, 3)) == dict.fromkeys(tps(topic, 3))
        consumer.commit()
        assert consumer.committed(tps(topic, 3)) == dict.fromkeys(tps(topic, 3), 20)
        consumer.commit({(topic, 1): 5})
        assert consumer.committed([(topic, 1)]) == {TopicPartition(topic, 1): 5}
        future = consumer.commit({(topic, 1): 7}, asynchronous=True)
        assert future is not None
        future.result(10)
        assert consumer.committed([(topic, 1)]) == {TopicPartition(topic, 1): 7}


def test_close_commits_and_leaves(address: str, new_topic: Callable[..., str], group: str) -> None:
    topic = new_topic(2)
    fill(address, topic, 2, 10)
    revoked: list[list[TopicPartition]] = []
    first = Consumer(address)
    first.subscribe([topic], group_id=group, auto_offset_reset="earliest", on_revoke=revoked.append)
    seen: list[bytes | None] = []
    poll_until([first], lambda: len(seen) >= 20, sink=seen)
    first.close()  # auto-commit on close, then leave
    assert revoked == [tps(topic, 2)]
    fill(address, topic, 2, 1)
    with Consumer(address) as second:
        second.subscribe([topic], group_id=group, auto_offset_reset="earliest")
        later: list[bytes | None] = []
        # the leave freed the partitions at once: no session timeout to wait for
        poll_until([second], lambda: len(later) >= 2, timeout_s=5, sink=later)
        assert sorted(later) == [b"0:0", b"1:0"]  # only the records after the commit


def test_auto_commit_every_interval(
    address: str, new_topic: Callable[..., str], group: str
) -> None:
    topic = new_topic(1)
    fill(address, topic, 1, 30)
    tp = TopicPartition(topic, 0)
    with Consumer(address) as consumer:
        consumer.subscribe(
            [topic], group_id=group, auto_offset_reset="earliest", auto_commit_interval_ms=100
        )
        seen: list[bytes | None] = []
        poll_until([consumer], lambda: len(seen) >= 30, sink=seen)
        poll_until([consumer], lambda: consumer.committed([tp])[tp] == 30, timeout_s=5)


@pytest.mark.parametrize("reset", ["earliest", "latest"])
def test_auto_offset_reset(
    address: str, new_topic: Callable[..., str], group: str, reset: Literal["earliest", "latest"]
) -> None:
    topic = new_topic(1)
    fill(address, topic, 1, 5)
    tp = TopicPartition(topic, 0)
    with Consumer(address) as consumer:
        starts: list[int] = []
        consumer.subscribe(
            [topic],
            group_id=group,
            auto_offset_reset=reset,
            on_assign=lambda partitions: starts.append(consumer.position(tp)),
        )
        poll_until([consumer], lambda: bool(consumer.assignment()))
        assert starts == [0 if reset == "earliest" else 5]


def test_auto_offset_reset_none(address: str, new_topic: Callable[..., str], group: str) -> None:
    topic = new_topic(1)
    fill(address, topic, 1, 5)
    tp = TopicPartition(topic, 0)
    with Consumer(address) as consumer:
        consumer.subscribe([topic], group_id=group, auto_offset_reset="none")
        with pytest.raises(NoOffsetForPartitionError, match="no committed offset") as info:
            poll_until([consumer], lambda: False)
        assert info.value.partitions == [tp]
        assert consumer.assignment() == [tp]
        consumer.seek(tp, 3)
        records: list[bytes | None] = []
        poll_until([consumer], lambda: len(records) >= 2, sink=records)
        assert records == [b"0:3", b"0:4"]


def test_auto_offset_reset_none_seek_in_on_assign(
    address: str, new_topic: Callable[..., str], group: str
) -> None:
    topic = new_topic(1)
    fill(address, topic, 1, 5)
    with Consumer(address) as consumer:

        def on_assign(partitions: list[TopicPartition]) -> None:
            for tp in partitions:
                consumer.seek(tp, 4)  # callbacks run on this thread: the consumer is usable

        consumer.subscribe([topic], group_id=group, auto_offset_reset="none", on_assign=on_assign)
        records: list[bytes | None] = []
        poll_until([consumer], lambda: len(records) >= 1, sink=records)
        assert records == [b"0:4"]


def test_committed_offsets_are_where_members_start(
    address: str, new_topic: Callable[..., str], group: str
) -> None:
    topic = new_topic(2)
    fill(address, topic, 2, 10)
    with Consumer(address) as consumer:
        consumer.subscribe(
            [topic], group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
        )
        poll_until([consumer], lambda: bool(consumer.assignment()))
        consumer.commit({(topic, 0): 4, (topic, 1): 8})
    with Consumer(address) as consumer:
        starts: list[int] = []

        def on_assign(partitions: list[TopicPartition]) -> None:
            starts.extend(consumer.position(tp) for tp in partitions)

        consumer.subscribe(
            [topic], group_id=group, auto_offset_reset="earliest", on_assign=on_assign
        )
        poll_until([consumer], lambda: bool(consumer.assignment()))
        assert starts == [4, 8]


def test_pause_and_resume(address: str, new_topic: Callable[..., str], group: str) -> None:
    topic = new_topic(2)
    fill(address, topic, 2, 10)
    with Consumer(address) as consumer:
        consumer.subscribe(
            [topic],
            group_id=group,
            auto_offset_reset="earliest",
            on_assign=lambda partitions: consumer.pause([(topic, 1)]),
        )
        seen: list[bytes | None] = []
        poll_until([consumer], lambda: bool(consumer.assignment()), sink=seen)
        assert consumer.paused() == [TopicPartition(topic, 1)]
        poll_until([consumer], lambda: len(seen) >= 10, sink=seen)
        time.sleep(0.2)
        seen.extend(r.value for r in consumer.poll(timeout_ms=100))
        assert sorted(seen) == sorted(f"0:{i}".encode() for i in range(10))
        assert consumer.assignment() == tps(topic, 2)  # paused, still assigned
        consumer.resume([(topic, 1)])
        assert consumer.paused() == []
        poll_until([consumer], lambda: len(seen) >= 20, sink=seen)
        assert sorted(seen[10:]) == sorted(f"1:{i}".encode() for i in range(10))


def test_rebalance_commits_revoked_in_on_revoke(
    address: str, new_topic: Callable[..., str], group: str
) -> None:
    """Manual commit: on_revoke is where the application commits what it processed."""
    topic = new_topic(4)
    fill(address, topic, 4, 5)
    first, second = Consumer(address), Consumer(address)
    try:
        revoked: list[TopicPartition] = []

        def on_revoke(partitions: list[TopicPartition]) -> None:
            revoked.extend(partitions)
            first.commit({tp: first.position(tp) for tp in partitions})

        first.subscribe(
            [topic],
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            on_revoke=on_revoke,
        )
        seen: list[bytes | None] = []
        poll_until([first], lambda: len(seen) >= 20, sink=seen)
        second.subscribe(
            [topic], group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
        )
        poll_until([first, second], lambda: len(second.assignment()) == 2, sink=seen)
        assert len(seen) == 20  # the second member started at the first one's commits
        assert sorted(revoked) == second.assignment()
        assert sorted(first.assignment() + second.assignment()) == tps(topic, 4)
        assert second.committed(revoked) == dict.fromkeys(revoked, 5)
    finally:
        first.close()
        second.close()


def test_misuse_is_refused(address: str, topic: str, group: str) -> None:
    with Consumer(address) as consumer:
        with pytest.raises(RuntimeError, match="subscribe"):
            consumer.commit()
        with pytest.raises(ValueError, match="exactly one"):
            consumer.subscribe(group_id=group)
        with pytest.raises(ValueError, match="session_timeout_ms"):
            consumer.subscribe([topic], group_id=group, session_timeout_ms=10)
        with pytest.raises(TypeError, match="AsyncConsumer"):
            consumer.subscribe([topic], group_id=group, on_assign=_async_callback)
        consumer.assign([(topic, 0)])
        with pytest.raises(RuntimeError, match="by hand"):
            consumer.subscribe([topic], group_id=group)
        consumer.assign([])
        consumer.subscribe([topic], group_id=group)
        with pytest.raises(RuntimeError, match="already subscribed"):
            consumer.subscribe([topic], group_id=group)
        with pytest.raises(RuntimeError, match="unsubscribe"):
            consumer.assign([(topic, 0)])
        consumer.unsubscribe()
        assert consumer.assignment() == []
        consumer.assign([(topic, 0)])


async def _async_callback(partitions: list[TopicPartition]) -> None:
    pass


def test_another_assignor_is_refused(address: str, topic: str, group: str) -> None:
    with Consumer(address) as first, Consumer(address) as second:
        first.subscribe([topic], group_id=group, assignor="range")
        poll_until([first], lambda: bool(first.assignment()))
        second.subscribe([topic], group_id=group, assignor="sticky")
        with pytest.raises(GroupMembershipError, match="assignor"):
            poll_until([second], lambda: False, timeout_s=5)


def test_callback_errors_surface_from_poll(address: str, topic: str, group: str) -> None:
    def on_assign(partitions: list[TopicPartition]) -> None:
        raise KeyError("boom")

    with Consumer(address) as consumer:
        consumer.subscribe([topic], group_id=group, on_assign=on_assign)
        with pytest.raises(KeyError, match="boom"):
            poll_until([consumer], lambda: False, timeout_s=5)
        assert consumer.assignment() == [TopicPartition(topic, 0)]  # the rebalance completed


def test_group_errors_from_status() -> None:
    stale = error_from_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "generation 3 of group 'g' is stale (an offset reset fenced generations below 5); ...",
    )
    assert isinstance(stale, StaleGenerationError)
    assert isinstance(stale, CommitFailedError)
    assert not stale.retriable
    owner = error_from_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "member 'm' of group 'g' does not own t[0]; commit only ...",
    )
    assert type(owner) is CommitFailedError
    gone = error_from_status(grpc.StatusCode.NOT_FOUND, "member 'm' is not in group 'g' (...)")
    assert type(gone) is CommitFailedError


def test_async_consumer_group(address: str, new_topic: Callable[..., str], group: str) -> None:
    topic = new_topic(2)
    fill(address, topic, 2, 10)

    async def main() -> None:
        assigned: list[TopicPartition] = []
        revoked: list[TopicPartition] = []

        async def on_assign(partitions: list[TopicPartition]) -> None:
            await asyncio.sleep(0)
            assigned.extend(partitions)

        async with AsyncConsumer(address) as consumer:
            await consumer.subscribe(
                [topic],
                group_id=group,
                auto_offset_reset="earliest",
                on_assign=on_assign,
                on_revoke=revoked.extend,
                enable_auto_commit=False,
            )
            seen: list[bytes | None] = []
            deadline = time.monotonic() + 10
            while len(seen) < 20:
                assert time.monotonic() < deadline
                for batch in await consumer.poll_batches(timeout_ms=100):
                    seen.extend(batch.values())
            assert assigned == tps(topic, 2)
            await consumer.commit()
            assert await consumer.committed(tps(topic, 2)) == dict.fromkeys(tps(topic, 2), 10)
            task = await consumer.commit({(topic, 0): 3}, asynchronous=True)
            assert task is not None
            await task
            assert await consumer.committed([(topic, 0)]) == {TopicPartition(topic, 0): 3}
            await consumer.pause([(topic, 0)])
            assert consumer.paused() == [TopicPartition(topic, 0)]
            await consumer.resume([(topic, 0)])
            await consumer.unsubscribe()
            assert revoked == tps(topic, 2)
            assert consumer.assignment() == []

    asyncio.run(main())


def test_lost_membership_calls_on_lost_and_recovers(
    address: str, new_topic: Callable[..., str], group: str
) -> None:
    """What a broken stream or a fence does, simulated from inside: the consumer drops its
    partitions without committing, calls on_lost, and gets them back through the group."""
    topic = new_topic(2)
    fill(address, topic, 2, 5)
    lost: list[list[TopicPartition]] = []
    assigned: list[list[TopicPartition]] = []
    with Consumer(address) as consumer:
        consumer.subscribe(
            [topic],
            group_id=group,
            auto_offset_reset="earliest",
            on_assign=assigned.append,
            on_lost=lost.append,
        )
        seen: list[bytes | None] = []
        poll_until([consumer], lambda: len(seen) >= 10, sink=seen)
        consumer.commit()
        session = consumer._session
        assert session is not None
        consumer._thread.run(_lose(session.membership))
        poll_until([consumer], lambda: len(assigned) == 2)
        assert lost == [tps(topic, 2)]
        assert assigned == [tps(topic, 2), tps(topic, 2)]
        assert consumer.position((topic, 0)) == 5  # restarted from the committed offset


async def _lose(membership: GroupMembership) -> None:
    membership._lose("simulated")


def test_an_unexpected_membership_failure_rejoins(
    address: str, new_topic: Callable[..., str], group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception that is no RpcError inside the membership stream ended its task: no more
    heartbeats or rejoins, while the consumer kept partitions the group gave to others."""
    topic = new_topic(2)
    fill(address, topic, 2, 5)
    original = GroupMembership._on_assignment
    failures = [RuntimeError("a library bug")]

    def flaky(self: GroupMembership, update: object) -> None:
        if failures:
            raise failures.pop()
        original(self, update)  # type: ignore[arg-type]

    monkeypatch.setattr(GroupMembership, "_on_assignment", flaky)
    seen: list[bytes | None] = []
    with Consumer(address) as consumer:
        consumer.subscribe([topic], group_id=group, auto_offset_reset="earliest")
        poll_until([consumer], lambda: len(seen) >= 10, sink=seen)
        assert sorted(seen) == sorted(f"{p}:{i}".encode() for p in range(2) for i in range(5))
        session = consumer._session
        assert session is not None
        task = session.membership._task
        assert task is not None
        assert not task.done()
    assert not failures


def test_closing_ends_a_membership_task_that_lost_its_cancel() -> None:
    """The membership task awaits the Subscribe call the same way the fetch streams do; a
    cancel lost in the call's preparation must not hang close() (or a consumer's close)."""

    async def scenario() -> bool:
        channel = grpc.aio.insecure_channel("127.0.0.1:1")
        settings = GroupSettings("g", ("t",), None, "sticky", None, 10_000, 60_000)
        membership = GroupMembership("127.0.0.1:1", channel, settings, lambda: None,
                                     request_timeout_s=1)
        task = membership._task = asyncio.get_running_loop().create_task(swallows_one_cancel())
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(membership.close())
        ended, _ = await asyncio.wait({closing}, timeout=5)  # no cancel from outside
        task.cancel()
        await channel.close()
        return bool(ended) and task.cancelled()

    assert asyncio.run(scenario())


def test_membership_holds_while_the_application_is_busy(
    address: str, new_topic: Callable[..., str], group: str
) -> None:
    """The blocking consumer lends its loop to poll() and leaves it parked while the
    application is busy: the membership (its open stream is the heartbeat) must hold through a
    pause of several sessions, and what was produced meanwhile arrives at the next poll."""
    topic = new_topic(2)
    fill(address, topic, 2, 5)
    lost: list[list[TopicPartition]] = []
    revoked: list[list[TopicPartition]] = []
    with Consumer(address) as consumer:
        consumer.subscribe(
            [topic],
            group_id=group,
            auto_offset_reset="earliest",
            session_timeout_ms=1_000,
            on_lost=lost.append,
            on_revoke=revoked.append,
        )
        seen: list[bytes | None] = []
        poll_until([consumer], lambda: len(seen) >= 10, sink=seen)
        session = consumer._session
        assert session is not None
        generation = session.generation
        poll_until_lent(consumer, poll_timeout_ms=50)
        time.sleep(2.5)  # the application busy for 2.5 sessions, not polling
        fill(address, topic, 2, 1)
        poll_until([consumer], lambda: len(seen) >= 12, sink=seen)
        assert lost == []
        assert revoked == []
        assert session.generation == generation
        assert consumer.assignment() == tps(topic, 2)
