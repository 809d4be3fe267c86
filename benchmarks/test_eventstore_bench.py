"""Event store: appends with expected versions, stream reads, index rebuild with and without a
checkpoint.

Run with ``pytest benchmarks/test_eventstore_bench.py --benchmark-only``. Figures to read:

- ``test_append_single_stream``: one call appends one event with an exact expected version and
  waits for its fsync; events/s = 1 / median.
- ``test_append_batch_single_stream``: one call appends ``BATCH`` events; events/s = BATCH /
  median.
- ``test_append_threaded_streams``: ``THREADS`` threads each append ``APPENDS_PER_THREAD``
  single events to their own streams of one partition (exact expected versions), so their
  fsyncs group-commit; events/s = THREADS * APPENDS_PER_THREAD / median.
- ``test_read_stream``: reads ``READ_EVENTS`` events of one stream (interleaved with another
  stream's events in the same partition); events/s = READ_EVENTS / median.
- ``test_rebuild_*``: builds the index of one partition holding ``REBUILD_EVENTS`` events
  (10,000 streams of 100 events, one append each) from the whole log, or from a checkpoint
  plus a tail of 1% more events.

With ``--benchmark-disable`` (the smoke run of ``make test``) every size is cut to a few
hundred events.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from engine.broker import Broker
from engine.views.eventstore import ANY, EventData, EventStore
from engine.views.eventstore.partitions import open_partition

THREADS = 4
APPENDS_PER_THREAD = 250
BATCH = 1000
READ_EVENTS = 10_000
REBUILD_EVENTS = 1_000_000
ROUNDS = 5


def _event(n: int) -> EventData:
    return EventData("OrderPlaced", b'{"order": %d, "amount": 1999}' % n, event_id=uuid.uuid4())


def _scale(benchmark: BenchmarkFixture, full: int, smoke: int) -> int:
    return smoke if benchmark.disabled else full


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    broker = Broker.open(tmp_path, background=False)
    store = EventStore.open(broker)
    store.create_store_topic("events", 1)
    yield store
    broker.close()


def test_append_single_stream(benchmark: BenchmarkFixture, store: EventStore) -> None:
    version = iter(range(-1, 1 << 30))
    benchmark.pedantic(
        lambda: store.append_to_stream("events", "order-1", next(version), [_event(0)]),
        rounds=_scale(benchmark, 2000, 5), iterations=1, warmup_rounds=0,
    )


def test_append_batch_single_stream(benchmark: BenchmarkFixture, store: EventStore) -> None:
    size = _scale(benchmark, BATCH, 10)
    version = iter(range(-1, 1 << 40, size))
    benchmark.pedantic(
        lambda: store.append_to_stream("events", "order-1", next(version),
                                       [_event(n) for n in range(size)]),
        rounds=_scale(benchmark, 50, 2), iterations=1, warmup_rounds=0,
    )


def test_append_threaded_streams(benchmark: BenchmarkFixture, store: EventStore) -> None:
    appends = _scale(benchmark, APPENDS_PER_THREAD, 5)
    round_number = iter(range(1 << 30))

    def loop(stream: str) -> None:
        for version in range(appends):
            store.append_to_stream("events", stream, version - 1, [_event(version)])

    def run() -> None:
        prefix = next(round_number)
        threads = [threading.Thread(target=loop, args=(f"order-{prefix}-{n}",))
                   for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)


def test_read_stream(benchmark: BenchmarkFixture, store: EventStore) -> None:
    count = _scale(benchmark, READ_EVENTS, 200)
    for start in range(0, count, 500):
        size = min(500, count - start)
        store.append_to_stream("events", "order-1", start - 1, [_event(n) for n in range(size)])
        store.append_to_stream("events", "noise", ANY, [_event(n) for n in range(size)])

    def read() -> None:
        events = store.read_stream("events", "order-1", max_count=count).events
        assert len(events) == count

    benchmark.pedantic(read, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def _fill(tmp_path: Path, events: int) -> tuple[Broker, EventStore]:
    broker = Broker.open(tmp_path, background=False)
    store = EventStore.open(broker)
    store.create_store_topic("events", 1, {"durability": "async"})
    per_append = 100 if events >= 10_000 else 10
    for start in range(0, events, per_append):
        stream = f"order-{start // per_append}"
        store.append_to_stream("events", stream, ANY,
                               [_event(n) for n in range(min(per_append, events - start))])
    return broker, store


@pytest.mark.parametrize("checkpoint", [False, True])
def test_rebuild(benchmark: BenchmarkFixture, tmp_path: Path, checkpoint: bool) -> None:
    events = _scale(benchmark, REBUILD_EVENTS, 300)
    broker, store = _fill(tmp_path, events)
    try:
        if checkpoint:
            tail = max(1, events // 100)
            store.checkpoint()
            store.append_to_stream("events", "tail", ANY, [_event(n) for n in range(tail)])
        partition_log = broker.partition("events", 0)
        checkpoints = store._checkpoints if checkpoint else None

        def rebuild() -> None:
            part = open_partition("events", 0, partition_log, checkpoints, store.settings)
            assert part.from_checkpoint == checkpoint
            assert part.index.next_offset == partition_log.high_watermark

        benchmark.pedantic(rebuild, rounds=3, iterations=1, warmup_rounds=0)
    finally:
        broker.close()
