"""Work queues: receive+ack throughput, engine only (no gRPC), over a real broker.

Run with ``pytest benchmarks/test_queue_bench.py --benchmark-only``. Figures to read:

- ``test_receive_ack_4_consumers``: ``CONSUMERS`` threads each loop ``receive(BATCH)`` then one
  ``ack`` of the whole batch (durable: ``__queue_state`` is ``durability=fsync``, so concurrent
  acks group-commit) until the queue is empty; records/s = RECORDS / median.
- ``test_receive_ack_1_consumer``: the same with one thread (no group commit across threads).
- ``test_nack_retry``: one thread nacks every record once (durable retry state) and acks its
  redelivery; records/s = NACK_RECORDS / median.

Each round declares a fresh queue over the same pre-filled topic, so it consumes every record.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from engine.broker import Broker
from engine.clock import ManualClock
from engine.records.batch import encode_batch
from engine.records.record import NewRecord
from engine.views.queues import BackoffPolicy, QueueConfig, QueueManager

PARTITIONS = 4
RECORDS = 40_000
NACK_RECORDS = 5_000
CONSUMERS = 4
BATCH = 250
ROUNDS = 5
_names = itertools.count()


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueManager]:
    path: Path = tmp_path_factory.mktemp("queue-bench")
    clock = ManualClock()
    broker = Broker.open(path, background=False, clock=clock)
    broker.create_topic("jobs", PARTITIONS)
    value = b"x" * 100
    for partition in range(PARTITIONS):
        for _ in range(RECORDS // PARTITIONS // 1000):
            broker.append("jobs", partition, encode_batch([NewRecord(value)] * 1000))
    yield QueueManager.open(broker, clock)
    broker.close()


def _declare(manager: QueueManager, **extra: object) -> tuple[tuple[str], dict[str, object]]:
    name = f"q{next(_names)}"
    manager.declare(QueueConfig(name, "jobs", lease_ms=600_000, **extra))  # type: ignore[arg-type]
    return (name,), {}


def _drain(manager: QueueManager, queue: str, counts: list[int]) -> None:
    done = 0
    while got := manager.receive(queue, BATCH):
        manager.ack(queue, [d.lease for d in got])
        done += len(got)
    counts.append(done)


def _run(manager: QueueManager, queue: str, consumers: int) -> None:
    counts: list[int] = []
    threads = [threading.Thread(target=_drain, args=(manager, queue, counts))
               for _ in range(consumers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == RECORDS


def test_receive_ack_4_consumers(benchmark: BenchmarkFixture, manager: QueueManager) -> None:
    benchmark.pedantic(lambda queue: _run(manager, queue, CONSUMERS),
                       setup=lambda: _declare(manager), rounds=ROUNDS, iterations=1)


def test_receive_ack_1_consumer(benchmark: BenchmarkFixture, manager: QueueManager) -> None:
    benchmark.pedantic(lambda queue: _run(manager, queue, 1),
                       setup=lambda: _declare(manager), rounds=ROUNDS, iterations=1)


def test_nack_retry(benchmark: BenchmarkFixture, manager: QueueManager) -> None:
    def run(queue: str) -> None:
        handled = 0
        while handled < NACK_RECORDS:
            got = manager.receive(queue, BATCH)
            manager.nack_many(queue, [d.lease for d in got], error="transient")
            again = manager.receive(queue, BATCH)
            manager.ack(queue, [d.lease for d in again])
            handled += len(again)

    benchmark.pedantic(run, setup=lambda: _declare(manager, backoff=BackoffPolicy(0, 1.0, 0)),
                       rounds=ROUNDS, iterations=1)
