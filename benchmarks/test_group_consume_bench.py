"""Consumer groups through a real broker: group throughput and rebalance time.

A group of 3 consumers shares a 6-partition topic holding ``GROUP_RECORDS`` 100-byte records
(``MOLDAU_BENCH_GROUP_RECORDS`` overrides; the ``--benchmark-disable`` smoke run in ``make
test`` uses a small topic). One round reads the whole topic with ``poll_batches`` and
``values()``; ``extra_info["records_per_round"]`` turns the round time into records/s (for all
three members together). Members join before the round with their partitions paused, so a
round measures consuming, not joining.

The rebalance round measures the time from one member's ``close()`` (commit, leave) until
the two others hold all six partitions, as seen from their ``poll()``.

    .venv/bin/pytest benchmarks/test_group_consume_bench.py --benchmark-only \\
        --benchmark-columns=min,median,max,rounds
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

import moldau
from moldau import Consumer, TopicPartition
from moldau.testing import RunningBroker, broker

PARTITIONS = 6
MEMBERS = 3
RECORD_BYTES = 100
GROUP_RECORDS = int(os.environ.get("MOLDAU_BENCH_GROUP_RECORDS", "600000"))
SMOKE_RECORDS = 6_000
ROUNDS = 5

_groups = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with broker(data_dir=tmp_path_factory.mktemp("group-bench") / "data") as running:
        yield running


@pytest.fixture(scope="module")
def records(request: pytest.FixtureRequest) -> int:
    return SMOKE_RECORDS if request.config.getoption("benchmark_disable") else GROUP_RECORDS


@pytest.fixture(scope="module")
def filled_topic(server: RunningBroker, records: int) -> str:
    topic = "group-bench"
    with moldau.Admin(server.address) as admin:
        admin.create_topic(topic, PARTITIONS, {"durability": "async"})
    per_partition = records // PARTITIONS
    with moldau.Producer(server.address) as producer:
        for partition in range(PARTITIONS):
            values = [bytes([(partition + i) % 251]) * RECORD_BYTES for i in range(per_partition)]
            for start in range(0, per_partition, 50_000):
                producer.send_many(
                    topic, values[start : start + 50_000], partition=partition
                ).result(120)
    return topic


def _paused_group(address: str, topic: str, members: int = MEMBERS) -> list[Consumer]:
    """``members`` consumers of a new group, balanced, every partition paused at offset 0."""
    group = f"bench-{next(_groups)}"
    consumers = [Consumer(address) for _ in range(members)]
    for consumer in consumers:
        consumer.subscribe(
            [topic], group_id=group, auto_offset_reset="earliest", on_assign=consumer.pause
        )
    deadline = time.monotonic() + 30
    while sorted(tp for c in consumers for tp in c.assignment()) != [
        TopicPartition(topic, p) for p in range(PARTITIONS)
    ] or not all(c.assignment() for c in consumers):
        assert time.monotonic() < deadline, "the group did not balance"
        for consumer in consumers:
            assert consumer.poll(timeout_ms=10) == []
    return consumers


def _close(consumers: list[Consumer]) -> None:
    for consumer in consumers:
        consumer.close()


def test_group_consume_poll_batches_values(
    benchmark: Any, server: RunningBroker, filled_topic: str, records: int
) -> None:
    total = records // PARTITIONS * PARTITIONS
    groups: list[list[Consumer]] = []

    def setup() -> tuple[tuple[list[Consumer]], dict[str, Any]]:
        if groups:
            _close(groups.pop())
        groups.append(_paused_group(server.address, filled_topic))
        return (groups[-1],), {}

    def consume(consumers: list[Consumer]) -> None:
        for consumer in consumers:
            consumer.resume(consumer.assignment())
        seen = 0
        deadline = time.monotonic() + 120
        while seen < total:
            assert time.monotonic() < deadline
            for consumer in consumers:
                for batch in consumer.poll_batches(timeout_ms=5):
                    seen += len(batch.values())
        assert seen == total

    benchmark.extra_info["records_per_round"] = total
    try:
        benchmark.pedantic(consume, setup=setup, rounds=ROUNDS, iterations=1)
    finally:
        for consumers in groups:
            _close(consumers)


def test_group_rebalance_after_leave(
    benchmark: Any, server: RunningBroker, filled_topic: str
) -> None:
    groups: list[list[Consumer]] = []

    def setup() -> tuple[tuple[list[Consumer]], dict[str, Any]]:
        if groups:
            _close(groups.pop())
        groups.append(_paused_group(server.address, filled_topic))
        return (groups[-1],), {}

    def rebalance(consumers: list[Consumer]) -> None:
        consumers[-1].close()
        remaining = consumers[:-1]
        deadline = time.monotonic() + 30
        while sum(len(c.assignment()) for c in remaining) < PARTITIONS:
            assert time.monotonic() < deadline, "partitions did not move"
            for consumer in remaining:
                consumer.poll(timeout_ms=1)

    try:
        benchmark.pedantic(rebalance, setup=setup, rounds=ROUNDS, iterations=1)
    finally:
        for consumers in groups:
            _close(consumers)
