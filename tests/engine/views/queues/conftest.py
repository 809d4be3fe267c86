"""Fixtures for the queue tests: a real broker on tmp_path (reopenable) and a manual clock."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from engine.broker import Broker
from engine.clock import ManualClock
from engine.log.log_protocol import TopicCatalog
from engine.records.batch import encode_batch
from engine.records.record import Header, NewRecord
from engine.views.queues import QueueConfig, QueueManager

T0 = 1_700_000_000_000


def produce(
    catalog: TopicCatalog,
    topic: str,
    partition: int,
    values: Sequence[bytes],
    *,
    key: bytes | None = None,
    headers: tuple[Header, ...] = (),
    timestamp: int | None = None,
) -> list[int]:
    """Append one batch; returns the offsets."""
    records = [NewRecord(v, key, headers, timestamp) for v in values]
    result = catalog.partition(topic, partition).append(encode_batch(records))
    return list(range(result.base_offset, result.last_offset + 1))


class Env:
    """A broker plus a queue manager that a test can restart."""

    def __init__(self, path: Path, clock: ManualClock) -> None:
        self.path = path
        self.clock = clock
        self.broker = Broker.open(path, background=False, clock=clock)
        self.manager = QueueManager.open(self.broker, clock, state_partitions=2,
                                         rng=random.Random(7))

    def restart(self) -> None:
        self.manager.close()
        self.broker.close()
        self.broker = Broker.open(self.path, background=False, clock=self.clock)
        self.manager = QueueManager.open(self.broker, self.clock, state_partitions=2,
                                         rng=random.Random(7))

    def close(self) -> None:
        self.manager.close()
        self.broker.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(now_ms=T0)


@pytest.fixture
def env(tmp_path: Path, clock: ManualClock) -> Iterator[Env]:
    env = Env(tmp_path / "data", clock)
    env.broker.create_topic("jobs", 3)
    yield env
    env.close()


def declare(env: Env, **overrides: object) -> QueueConfig:
    fields: dict[str, object] = {"name": "work", "topic": "jobs", "lease_ms": 1000}
    fields.update(overrides)
    config = QueueConfig(**fields)  # type: ignore[arg-type]
    env.manager.declare(config)
    return config
