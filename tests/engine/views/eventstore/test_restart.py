"""Index rebuild on open: from a checkpoint plus the tail, from the log alone, after damage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.broker import Broker
from engine.clock import ManualClock
from engine.views.eventstore import ANY, INDEX_TOPIC, NO_STREAM, EventStore, EventStoreSettings
from tests.faults.harness import data_end

from .conftest import ev, evs

Dump = list[dict[bytes, tuple[list[int], list[tuple[int, bool, int]]]]]


def dump(store: EventStore, topic: str) -> Dump:
    return [
        {key: (list(s.offsets), list(s.controls or ())) for key, s in p.index.streams.items()}
        for p in store.open_topic(topic)
    ]


def fill(store: EventStore, start: int, count: int) -> None:
    for n in range(start, start + count):
        store.append_to_stream("multi", f"order-{n % 11}", ANY, evs(10 * n, 1 + n % 3))
    store.truncate_stream("multi", "order-3", 1)
    store.delete_stream("multi", "order-4")


def reopen(data_dir: Path, clock: ManualClock, **kwargs: object) -> tuple[Broker, EventStore]:
    broker = Broker.open(data_dir, background=False, clock=clock)
    store = EventStore.open(broker, clock=clock, **kwargs)  # type: ignore[arg-type]
    return broker, store


def crash(broker: Broker) -> None:
    """Leave the data directory as kill -9 would: no clean-shutdown markers."""
    for info in broker.list_topics(include_internal=True):
        for partition in broker.partitions(info.name):
            partition.abandon()
    broker.close()


@pytest.mark.parametrize("mode", ["checkpoint", "no_checkpoint", "checkpoint_deleted", "crash"])
def test_rebuild_equals_state_before(
    store: EventStore, broker: Broker, data_dir: Path, clock: ManualClock, mode: str
) -> None:
    fill(store, 0, 60)
    store.checkpoint()
    fill(store, 60, 30)  # a tail after the checkpoint
    before = dump(store, "multi")
    streams = {f"order-{n}": store.stream_version("multi", f"order-{n}") for n in range(11)}
    if mode == "crash":
        crash(broker)
    else:
        broker.close()
    if mode == "checkpoint_deleted":
        with Broker.open(data_dir, background=False, clock=clock) as plain:
            plain.delete_topic(INDEX_TOPIC)
    second, reopened = reopen(data_dir, clock, use_checkpoints=mode != "no_checkpoint")
    try:
        assert dump(reopened, "multi") == before
        from_checkpoint = all(p.from_checkpoint for p in reopened.open_topic("multi"))
        assert from_checkpoint == (mode in ("checkpoint", "crash"))
        assert streams == {s: reopened.stream_version("multi", s) for s in streams}
        # appends continue at the right versions after the rebuild
        result = reopened.append_to_stream("multi", "order-1", streams["order-1"], [ev(9999)])
        assert result.first_version == streams["order-1"] + 1
    finally:
        second.close()


def test_retry_after_restart_is_recognised(
    store: EventStore, broker: Broker, data_dir: Path, clock: ManualClock
) -> None:
    batch = evs(0, 2)
    first = store.append_to_stream("orders", "s", ANY, batch)
    store.append_to_stream("orders", "t", ANY, evs(50, 3))
    store.close()
    broker.close()
    second, reopened = reopen(data_dir, clock)
    try:
        again = reopened.append_to_stream("orders", "s", ANY, batch)
        assert again.duplicate
        assert again.first_offset == first.first_offset
    finally:
        second.close()


def _last_segment(data_dir: Path, topic: str, partition: int) -> Path:
    directory = data_dir / f"{topic}-{partition}"
    return sorted(directory.glob("*.log"))[-1]


@pytest.mark.parametrize("cut_into_checkpoint", [False, True])
def test_torn_tail_rebuilds_what_survived(
    store: EventStore, broker: Broker, data_dir: Path, clock: ManualClock,
    cut_into_checkpoint: bool,
) -> None:
    for n in range(20):
        store.append_to_stream("orders", "order-1", n - 1, [ev(n)])
    if not cut_into_checkpoint:
        store.checkpoint()
    store.append_to_stream("orders", "order-1", 19, [ev(20), ev(21)])
    if cut_into_checkpoint:
        store.checkpoint()
    crash(broker)
    segment = _last_segment(data_dir, "orders", 0)
    size = data_end(segment)  # the file goes on with the zeros preallocation reserved
    os.truncate(segment, size - 5)  # the last batch (versions 20 and 21) is torn
    second, reopened = reopen(data_dir, clock)
    try:
        assert reopened.stream_version("orders", "order-1") == 19
        events = reopened.read_stream("orders", "order-1").events
        assert [e.version for e in events] == list(range(20))
        assert reopened.open_topic("orders")[0].from_checkpoint == (not cut_into_checkpoint)
        reopened.append_to_stream("orders", "order-1", 19, [ev(100)])
        assert reopened.stream_version("orders", "order-1") == 20
    finally:
        second.close()


def test_automatic_checkpoint_and_stale_chunks(
    broker: Broker, data_dir: Path, clock: ManualClock
) -> None:
    settings = EventStoreSettings(checkpoint_interval_events=50)
    store = EventStore.open(broker, clock=clock, settings=settings)
    store.create_store_topic("t")
    for n in range(120):
        store.append_to_stream("t", f"s-{n}", NO_STREAM, [ev(n)])
    before = dump(store, "t")
    broker.close()
    second, reopened = reopen(data_dir, clock)
    try:
        assert reopened.open_topic("t")[0].from_checkpoint
        assert dump(reopened, "t") == before
    finally:
        second.close()
