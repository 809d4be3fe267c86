"""Consumer groups end to end: real broker processes, several client consumers.

Sharing and coverage, a member killed with SIGKILL, exactly-once counting across rebalances
when members commit on revoke, committed offsets across a broker ``kill -9``, and a live offset
reset under running consumers.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from grpc_api.testing import ServerProcess
from moldau import Admin, Consumer, Producer, TopicPartition
from moldau.errors import StaleGenerationError
from moldau.v1 import groups_pb2, groups_pb2_grpc
from tests.integration.support import StartServer

_groups = itertools.count()
SESSION_TIMEOUT_MS = 3_000


@pytest.fixture
def group(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name.removeprefix('test_')[:40]}-{next(_groups)}"


@pytest.fixture
def group_stub(server: ServerProcess) -> Iterator[groups_pb2_grpc.GroupServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield groups_pb2_grpc.GroupServiceStub(channel)


def produce(address: str, topic: str, count: int, partitions: int) -> None:
    """``count`` records valued ``b"0"`` .. ``b"<count-1>"``, keyed, spread over partitions."""
    with Producer(address) as producer:
        for i in range(count):
            producer.send(topic, str(i).encode(), key=str(i).encode(), partition=i % partitions)
        producer.flush()


def member(address: str, topic: str, group: str, **options: Any) -> Consumer:
    consumer = Consumer(address)
    consumer.subscribe(
        [topic],
        group_id=group,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        **options,
    )
    return consumer


def poll_all(
    consumers: list[Consumer],
    done: Callable[[], bool],
    timeout_s: float,
    counts: Counter[bytes | None] | None = None,
    max_records: int = 500,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        for consumer in consumers:
            records = consumer.poll(timeout_ms=20, max_records=max_records)
            if counts is not None:
                counts.update(r.value for r in records)


def balanced(consumers: list[Consumer], partitions: int) -> bool:
    held = [tp for c in consumers for tp in c.assignment()]
    return len(held) == partitions == len(set(held)) and all(c.assignment() for c in consumers)


def test_three_members_share_six_partitions(
    server: ServerProcess, new_topic: Callable[..., str], group: str
) -> None:
    topic = new_topic(6)
    consumers = [member(server.address, topic, group) for _ in range(3)]
    try:
        poll_all(consumers, lambda: balanced(consumers, 6), timeout_s=10)
        assignments = [set(c.assignment()) for c in consumers]
        assert [len(a) for a in assignments] == [2, 2, 2]
        assert set().union(*assignments) == {TopicPartition(topic, p) for p in range(6)}
    finally:
        for consumer in consumers:
            consumer.close()


_CHILD = textwrap.dedent("""
    import sys, time
    from moldau import Consumer
    address, topic, group, instance_id = sys.argv[1:5]
    consumer = Consumer(address)
    consumer.subscribe([topic], group_id=group, session_timeout_ms=3000,
                       instance_id=instance_id or None)
    reported = None
    while True:
        consumer.poll(timeout_ms=50)
        if consumer.assignment() != reported:
            reported = consumer.assignment()
            print(len(reported), flush=True)
""")


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_killed_member_partitions_move(
    server: ServerProcess, new_topic: Callable[..., str], group: str, static: bool
) -> None:
    """SIGKILL one of three members: a dynamic member's partitions move as soon as its stream
    breaks; a static member's wait for it until its session times out."""
    topic = new_topic(6)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, server.address, topic, group, "pod-1" if static else ""],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    consumers: list[Consumer] = []
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() not in ("", "0")  # the child joined
        consumers = [member(server.address, topic, group) for _ in range(2)]
        poll_all(consumers, lambda: sum(len(c.assignment()) for c in consumers) == 4, timeout_s=10)
        child.kill()
        child.wait(10)
        killed_at = time.monotonic()
        poll_all(consumers, lambda: balanced(consumers, 6), timeout_s=SESSION_TIMEOUT_MS / 1000 + 2)
        moved_after_s = time.monotonic() - killed_at
        if static:
            assert SESSION_TIMEOUT_MS / 1000 - 0.5 < moved_after_s < SESSION_TIMEOUT_MS / 1000 + 1
        else:
            assert moved_after_s < 1
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
        for consumer in consumers:
            consumer.close()


def test_no_record_lost_or_duplicated_across_rebalances(
    server: ServerProcess, new_topic: Callable[..., str], group: str
) -> None:
    """Members commit on revoke (auto-commit on): a late joiner and a leaver move partitions
    mid-stream, and every record is still processed exactly once."""
    topic, total = new_topic(6), 6_000
    produce(server.address, topic, total, 6)
    counts: Counter[bytes | None] = Counter()
    first = member(server.address, topic, group)
    second = member(server.address, topic, group)
    third: Consumer | None = None
    try:
        poll_all([first, second], lambda: sum(counts.values()) >= total // 3, 15, counts, 50)
        third = member(server.address, topic, group)  # joins late: partitions move to it
        poll_all(
            [first, second, third], lambda: sum(counts.values()) >= 2 * total // 3, 15, counts, 50
        )
        assert third.assignment(), "the late member got no partitions"
        second.close()  # leaves: its partitions move to the others
        poll_all([first, third], lambda: sum(counts.values()) >= total, 15, counts, 50)
        poll_all([first, third], lambda: True, 1, counts)
        time.sleep(0.2)
        for consumer in (first, third):
            counts.update(r.value for r in consumer.poll(timeout_ms=100))
        assert sum(counts.values()) == total
        assert set(counts) == {str(i).encode() for i in range(total)}
        assert max(counts.values()) == 1
    finally:
        for consumer in (first, second, third):
            if consumer is not None:
                consumer.close()


def test_committed_offsets_survive_kill_9(start_server: StartServer, group: str) -> None:
    process = start_server()
    with Admin(process.address) as admin:
        admin.create_topic("orders", 2)
    produce(process.address, "orders", 10, 2)
    with Consumer(process.address) as consumer:
        consumer.subscribe(
            ["orders"], group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
        )
        poll_all([consumer], lambda: bool(consumer.assignment()), 10)
        consumer.commit({("orders", 0): 3, ("orders", 1): 4})
        process.kill()  # the commit was acknowledged: it is on disk
    restarted = ServerProcess(process.data_dir, env=process.env)
    restarted.start()
    try:
        with Consumer(restarted.address) as consumer:
            starts: dict[TopicPartition, int] = {}

            def on_assign(partitions: list[TopicPartition]) -> None:
                starts.update((tp, consumer.position(tp)) for tp in partitions)

            consumer.subscribe(["orders"], group_id=group, on_assign=on_assign)
            poll_all([consumer], lambda: len(starts) == 2, 10)
            assert starts == {TopicPartition("orders", 0): 3, TopicPartition("orders", 1): 4}
    finally:
        restarted.stop()


def test_live_reset_moves_running_consumers(
    server: ServerProcess,
    new_topic: Callable[..., str],
    group: str,
    group_stub: groups_pb2_grpc.GroupServiceStub,
) -> None:
    topic = new_topic(2)
    produce(server.address, topic, 100, 2)
    consumers = [member(server.address, topic, group, enable_auto_commit=False) for _ in range(2)]
    try:
        counts: Counter[bytes | None] = Counter()
        poll_all(
            consumers, lambda: sum(counts.values()) >= 100 and balanced(consumers, 2), 10, counts
        )
        for consumer in consumers:
            consumer.commit()
        reply = group_stub.ResetOffsets(
            groups_pb2.ResetOffsetsRequest(
                group=group,
                topics=[topic],
                to_offset=40,
                execute=True,
                live=True,
            )
        )
        assert reply.executed
        assert reply.HasField("fence_generation")
        # not polled since the reset: the commit still carries the fenced generation
        with pytest.raises(StaleGenerationError, match="stale"):
            consumers[0].commit()
        counts.clear()
        poll_all(consumers, lambda: sum(counts.values()) >= 20, 10, counts)
        assert set(counts) == {str(i).encode() for i in range(80, 100)}  # from offset 40 on
        for consumer in consumers:
            consumer.commit()  # after poll applied the reset: the new generation
        committed = consumers[0].committed([(topic, 0), (topic, 1)])
        assert committed == {TopicPartition(topic, 0): 50, TopicPartition(topic, 1): 50}
    finally:
        for consumer in consumers:
            consumer.close()
