"""Fixtures for the consumer-group tests: a real broker on tmp_path, a manual clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.broker import Broker
from engine.clock import ManualClock
from engine.groups import GroupCoordinator, TopicPartition
from engine.records.batch import encode_batch
from engine.records.record import NewRecord

T0 = 1_700_000_000_000


def tps(topic: str, *partitions: int) -> set[TopicPartition]:
    return {TopicPartition(topic, p) for p in partitions}


def produce(broker: Broker, topic: str, partition: int, count: int, timestamp: int = T0) -> int:
    """Append ``count`` records stamped ``timestamp``; returns the new log end offset."""
    records = [NewRecord(b"v%d" % i, timestamp=timestamp) for i in range(count)]
    return broker.append(topic, partition, encode_batch(records)).last_offset + 1


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(now_ms=T0 + 3_600_000)


@pytest.fixture
def broker(tmp_path: Path, clock: ManualClock) -> Iterator[Broker]:
    broker = Broker.open(tmp_path / "data", background=False, clock=clock)
    broker.create_topic("orders", 6)
    broker.create_topic("payments", 2)
    yield broker
    broker.close()


@pytest.fixture
def coordinator(broker: Broker, clock: ManualClock) -> GroupCoordinator:
    return GroupCoordinator.open(broker, clock, offsets_partitions=4)
