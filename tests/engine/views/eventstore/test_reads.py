"""Reads by stream, of all, of a category; soft delete and truncate; snapshots; upcasters."""

from __future__ import annotations

import dataclasses

import pytest

from engine.broker import Broker
from engine.clock import ManualClock
from engine.errors import (
    InvalidEventStoreRequestError,
    StreamNotFoundError,
    WrongExpectedVersionError,
)
from engine.views.eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AllPosition,
    Direction,
    EventData,
    EventStore,
    RecordedEvent,
)

from .conftest import T0, ev, evs


def test_read_stream_forwards_backwards_and_max(store: EventStore) -> None:
    for n in range(10):
        store.append_to_stream("orders", "order-1", n - 1, [ev(n, metadata=b"m%d" % n)])
        store.append_to_stream("orders", "other", ANY, [ev(100 + n)])
    forwards = store.read_stream("orders", "order-1", 3, max_count=4)
    assert [e.version for e in forwards.events] == [3, 4, 5, 6]
    assert not forwards.end_of_stream
    assert forwards.last_version == 9
    event = forwards.events[0]
    assert (event.stream, event.type, event.data, event.metadata, event.type_version) == (
        "order-1", "Happened", b'{"n": 3}', b"m3", 1,
    )
    assert event.event_id == ev(3).event_id
    tail = store.read_stream("orders", "order-1", 8)
    assert [e.version for e in tail.events] == [8, 9]
    assert tail.end_of_stream
    backwards = store.read_stream("orders", "order-1", direction=Direction.BACKWARDS, max_count=3)
    assert [e.version for e in backwards.events] == [9, 8, 7]
    from_five = store.read_stream("orders", "order-1", 5, Direction.BACKWARDS, 100)
    assert [e.version for e in from_five.events] == [5, 4, 3, 2, 1, 0]
    assert from_five.end_of_stream
    assert store.read_stream("orders", "order-1", 50).events == ()
    with pytest.raises(InvalidEventStoreRequestError):
        store.read_stream("orders", "order-1", max_count=0)


def test_read_all_and_category_in_log_order(store: EventStore) -> None:
    streams = ["order-1", "user-1", "order-2", "order-1", "user-2", "order-2"]
    for n, stream in enumerate(streams):
        store.append_to_stream("orders", stream, ANY, [ev(n)])
    every = store.read_all("orders")
    assert [e.stream for e in every.events] == streams
    assert [e.position.offset for e in every.events] == list(range(6))
    first = store.read_all("orders", max_count=4)
    rest = store.read_all("orders", first.next_position)
    assert [e.position.offset for e in first.events + rest.events] == list(range(6))
    orders = store.read_category("orders", "order")
    assert [(e.stream, e.version) for e in orders.events] == [
        ("order-1", 0), ("order-2", 0), ("order-1", 1), ("order-2", 1),
    ]
    page = store.read_category("orders", "order-*", max_count=1)
    page2 = store.read_category("orders", "order-*", page.next_position, max_count=2)
    assert [e.position.offset for e in page.events + page2.events] == [0, 2, 3]


def test_read_all_over_partitions_resumes_exactly(store: EventStore, clock: ManualClock) -> None:
    expected = []
    for n in range(40):
        clock.advance(1)
        result = store.append_to_stream("multi", f"order-{n % 7}", ANY, [ev(n)])
        expected.append((result.partition, result.first_offset))
    seen: list[RecordedEvent] = []
    position = AllPosition.start(3)
    while True:
        page = store.read_all("multi", position, max_count=6)
        if not page.events:
            break
        seen.extend(page.events)
        position = page.next_position
    assert [(e.position.partition, e.position.offset) for e in seen] == expected
    assert position == store.head_position("multi")


def test_soft_delete_and_recreate(store: EventStore) -> None:
    store.append_to_stream("orders", "order-1", NO_STREAM, evs(0, 3))
    with pytest.raises(WrongExpectedVersionError):
        store.delete_stream("orders", "order-1", expected_version=1)
    store.delete_stream("orders", "order-1", expected_version=2)
    with pytest.raises(StreamNotFoundError) as info:
        store.read_stream("orders", "order-1")
    assert info.value.deleted
    assert store.stream_version("orders", "order-1") == -1
    with pytest.raises(StreamNotFoundError):
        store.delete_stream("orders", "order-1")
    with pytest.raises(WrongExpectedVersionError):
        store.append_to_stream("orders", "order-1", STREAM_EXISTS, [ev(10)])
    recreated = store.append_to_stream("orders", "order-1", NO_STREAM, [ev(10)])
    assert recreated.first_version == 3  # versions continue; the old ones stay hidden
    assert [e.version for e in store.read_stream("orders", "order-1").events] == [3]
    assert len(store.read_all("orders").events) == 4  # the log keeps everything


def test_truncate_before(store: EventStore) -> None:
    store.append_to_stream("orders", "order-1", NO_STREAM, evs(0, 5))
    store.truncate_stream("orders", "order-1", 3)
    assert [e.version for e in store.read_stream("orders", "order-1").events] == [3, 4]
    assert [e.version for e in store.read_stream("orders", "order-1", 0).events] == [3, 4]
    backwards = store.read_stream("orders", "order-1", direction=Direction.BACKWARDS)
    assert [e.version for e in backwards.events] == [4, 3]
    store.truncate_stream("orders", "order-1", 1)  # never moves back
    assert [e.version for e in store.read_stream("orders", "order-1").events] == [3, 4]
    store.truncate_stream("orders", "order-1", 5)
    assert store.read_stream("orders", "order-1").events == ()
    assert store.stream_version("orders", "order-1") == 4
    with pytest.raises(InvalidEventStoreRequestError):
        store.truncate_stream("orders", "order-1", 7)


def test_snapshots(store: EventStore) -> None:
    assert store.load_snapshot("orders", "order-1") is None
    store.append_to_stream("orders", "order-1", NO_STREAM, evs(0, 5))
    store.save_snapshot("orders", "order-1", 2, b"state@2")
    store.save_snapshot("orders", "order-1", 4, b"state@4")
    snapshot = store.load_snapshot("orders", "order-1")
    assert snapshot is not None
    assert (snapshot.version, snapshot.state) == (4, b"state@4")
    store.append_to_stream("orders", "order-1", 4, evs(5, 2))
    tail = store.read_stream("orders", "order-1", snapshot.version + 1).events
    assert [e.version for e in tail] == [5, 6]
    with pytest.raises(InvalidEventStoreRequestError):
        store.save_snapshot("orders", "order-1", 9, b"future")
    store.truncate_stream("orders", "order-1", 6)
    assert store.load_snapshot("orders", "order-1") is None  # version 5 is hidden now
    store.delete_stream("orders", "order-1")
    assert store.load_snapshot("orders", "order-1") is None


def test_snapshot_plus_tail_equals_full_replay(store: EventStore) -> None:
    store.append_to_stream("orders", "acc-1", NO_STREAM, [ev(n) for n in range(1, 21)])

    def fold(state: int, events: tuple[RecordedEvent, ...]) -> int:
        for event in events:
            state = state * 3 + int(event.data[6:-1]) % 1000003
        return state

    full = fold(0, store.read_stream("orders", "acc-1").events)
    partial = fold(0, store.read_stream("orders", "acc-1", max_count=12).events)
    store.save_snapshot("orders", "acc-1", 11, str(partial).encode())
    snapshot = store.load_snapshot("orders", "acc-1")
    assert snapshot is not None
    tail = store.read_stream("orders", "acc-1", snapshot.version + 1).events
    assert fold(int(snapshot.state), tail) == full


def test_upcasters_apply_on_request(store: EventStore) -> None:
    def v1_to_v2(event: RecordedEvent) -> RecordedEvent:
        return dataclasses.replace(event, data=event.data + b"+v2", type_version=2)

    def v2_to_v3(event: RecordedEvent) -> RecordedEvent:
        return dataclasses.replace(event, data=event.data + b"+v3", type_version=3)

    store.upcasters.register("Happened", 1, v1_to_v2)
    store.upcasters.register("Happened", 2, v2_to_v3)
    with pytest.raises(InvalidEventStoreRequestError):
        store.upcasters.register("Happened", 1, v1_to_v2)
    store.append_to_stream("orders", "s", ANY, [EventData("Happened", b"x"),
                                               EventData("Happened", b"y", type_version=3)])
    raw = store.read_stream("orders", "s").events
    assert [(e.data, e.type_version) for e in raw] == [(b"x", 1), (b"y", 3)]
    upcast = store.read_stream("orders", "s", upcast=True).events
    assert [(e.data, e.type_version) for e in upcast] == [(b"x+v2+v3", 3), (b"y", 3)]
    assert store.read_all("orders", upcast=True).events == upcast

    store.upcasters.register("Loop", 1, lambda event: event)
    store.append_to_stream("orders", "loop", ANY, [EventData("Loop", b"")])
    with pytest.raises(InvalidEventStoreRequestError):
        store.read_stream("orders", "loop", upcast=True)


def test_event_times_never_decrease_when_the_wall_clock_is_set_back(
    store: EventStore, clock: ManualClock, broker: Broker
) -> None:
    """Found by the clock-jump fault test: an hour back on the wall clock stamped the next
    events an hour before the ones already stored."""
    store.append_to_stream("orders", "order-1", ANY, evs(0, 2))
    clock.set_wall(T0 - 3_600_000)
    store.append_to_stream("orders", "order-2", ANY, evs(2, 2))
    store.append_group("orders", 0, [("order-3", ANY, evs(4, 1))])
    clock.set_wall(T0 + 5)
    store.append_to_stream("orders", "order-1", ANY, evs(5, 1))
    times = [e.timestamp_ms for e in store.read_all("orders").events]
    assert times == sorted(times)
    assert times == [T0, T0, T0, T0, T0, T0 + 5]
    store.close()  # the floor also holds across a restart, from the segments' largest time
    clock.set_wall(T0 - 7_200_000)
    reopened = EventStore.open(broker, clock=clock)
    reopened.append_to_stream("orders", "order-4", ANY, evs(6, 1))
    assert reopened.read_all("orders").events[-1].timestamp_ms == T0 + 5
