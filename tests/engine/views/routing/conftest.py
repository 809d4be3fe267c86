"""Fixtures for the routing tests: a broker on tmp_path that can be reopened, record helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.broker import Broker
from engine.clock import ManualClock
from engine.records.batch import decode_batches, encode_batch
from engine.records.record import Header, NewRecord, Record
from engine.views.routing import ExchangeRegistry, Router

T0 = 1_700_000_000_000


class Stack:
    """A broker with its exchange registry and router, reopened as a restart would."""

    def __init__(self, data_dir: Path, clock: ManualClock) -> None:
        self.data_dir = data_dir
        self.clock = clock
        self.open()

    def open(self) -> None:
        self.broker = Broker.open(self.data_dir, background=False, clock=self.clock)
        self.registry = ExchangeRegistry.open(self.broker, clock=self.clock)
        self.router = Router.open(self.broker, self.registry, clock=self.clock,
                                  retry_interval_s=0.0)

    def close(self) -> None:
        self.router.close()
        self.broker.close()

    def reopen(self) -> None:
        """A restart: everything in memory is dropped, the log is recovered."""
        self.close()
        self.open()

    def drain(self, max_records: int = 1000, limit: int = 1000) -> int:
        """run_once until nothing is left; the records consumed."""
        total = 0
        for _ in range(limit):
            result = self.router.run_once(max_records)
            total += result.records
            if result.records == 0:
                return total
        raise AssertionError("routing did not finish")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(now_ms=T0)


@pytest.fixture
def stack(tmp_path: Path, clock: ManualClock) -> Iterator[Stack]:
    stack = Stack(tmp_path / "data", clock)
    yield stack
    stack.close()


def produce(
    broker: Broker,
    topic: str,
    keys: list[bytes | None],
    *,
    partition: int = 0,
    headers: tuple[Header, ...] = (),
    start: int = 0,
) -> None:
    """One batch of records with ``keys``; values are ``b"v<n>"`` from ``start`` on."""
    records = [
        NewRecord(b"v%d" % (start + i), key, headers, T0 + start + i) for i, key in enumerate(keys)
    ]
    broker.append(topic, partition, encode_batch(records))


def read_all(broker: Broker, topic: str) -> list[Record]:
    """Every record of every partition of ``topic``, partition by partition."""
    records: list[Record] = []
    for partition_log in broker.partitions(topic):
        offset = partition_log.log_start_offset
        while offset < partition_log.high_watermark:
            data = partition_log.read(offset, 1 << 20).data
            batch = [r for r in decode_batches(data) if r.offset >= offset]
            records.extend(batch)
            offset = batch[-1].offset + 1
    return records


def values(broker: Broker, topic: str) -> list[bytes | None]:
    return [r.value for r in read_all(broker, topic)]
