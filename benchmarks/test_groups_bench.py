"""Consumer groups: offset-commit throughput and join/rebalance time with 100 members.

Run with ``pytest benchmarks/test_groups_bench.py --benchmark-only``. Figures to read:

- ``test_commit_*``: one call commits ``PARTITIONS_PER_COMMIT`` offsets and waits for the fsync
  (``__consumer_offsets`` is ``durability=fsync``); offsets/s = PARTITIONS_PER_COMMIT / median.
  The threaded variant runs ``THREADS`` groups at once, so their fsyncs group-commit;
  offsets/s = THREADS * COMMITS_PER_THREAD * PARTITIONS_PER_COMMIT / median.
- ``test_join_100_members``: 100 members join one group (each join rebalances with the sticky
  assignor over 200 partitions) and heartbeat until stable.
- ``test_rebalance_one_member_leaves``: one of 100 settled members leaves; the remaining 99
  reconcile (the sticky assignor moves only the leaver's two partitions).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from engine.broker import Broker
from engine.clock import ManualClock
from engine.groups import GroupCoordinator, OffsetAndMetadata, TopicPartition

MEMBERS = 100
PARTITIONS = 200
PARTITIONS_PER_COMMIT = 8
THREADS = 8
COMMITS_PER_THREAD = 50
ROUNDS = 10


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[GroupCoordinator]:
    clock = ManualClock()
    broker = Broker.open(tmp_path, background=False, clock=clock)
    broker.create_topic("events", PARTITIONS)
    yield GroupCoordinator.open(broker, clock)
    broker.close()


def _offsets(value: int) -> dict[TopicPartition, OffsetAndMetadata]:
    return {
        TopicPartition("events", p): OffsetAndMetadata(value) for p in range(PARTITIONS_PER_COMMIT)
    }


def test_commit_one_group(benchmark: BenchmarkFixture, coordinator: GroupCoordinator) -> None:
    counter = iter(range(1 << 30))
    benchmark.pedantic(
        lambda: coordinator.commit_offsets("bench", -1, "", _offsets(next(counter))),
        rounds=ROUNDS * 20,
        iterations=1,
        warmup_rounds=5,
    )


def test_commit_threaded_groups(benchmark: BenchmarkFixture, coordinator: GroupCoordinator) -> None:
    def commit_loop(group: str) -> None:
        for value in range(COMMITS_PER_THREAD):
            coordinator.commit_offsets(group, -1, "", _offsets(value))

    def run() -> None:
        threads = [threading.Thread(target=commit_loop, args=(f"g{i}",)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def _settle(coordinator: GroupCoordinator, group: str, members: list[str]) -> None:
    held: dict[str, frozenset[TopicPartition]] = {}
    for _ in range(3):
        for member_id in members:
            result = coordinator.heartbeat(group, member_id, 0, held.get(member_id))
            held[member_id] = result.assignment


def test_join_100_members(benchmark: BenchmarkFixture, coordinator: GroupCoordinator) -> None:
    names = iter(range(1 << 30))

    def run() -> None:
        group = f"join-{next(names)}"
        members = [coordinator.join(group, topics=["events"]).member_id for _ in range(MEMBERS)]
        _settle(coordinator, group, members)

    benchmark.pedantic(run, rounds=ROUNDS // 2, iterations=1, warmup_rounds=1)


def test_rebalance_one_member_leaves(
    benchmark: BenchmarkFixture, coordinator: GroupCoordinator
) -> None:
    names = iter(range(1 << 30))

    def setup() -> tuple[tuple[str, list[str]], dict[str, object]]:
        group = f"leave-{next(names)}"
        members = [coordinator.join(group, topics=["events"]).member_id for _ in range(MEMBERS)]
        _settle(coordinator, group, members)
        return (group, members), {}

    def run(group: str, members: list[str]) -> None:
        coordinator.leave(group, members[0])
        _settle(coordinator, group, members[1:])

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
