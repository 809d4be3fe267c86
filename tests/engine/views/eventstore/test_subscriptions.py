"""Subscriptions: catch-up then live, with no gap and no duplicate at the switch."""

from __future__ import annotations

import threading
import time

from engine.views.eventstore import ANY, EventStore, RecordedEvent

from .conftest import ev


def _drain(subscription: object, want: int, seen: list[RecordedEvent]) -> None:
    deadline = time.monotonic() + 30
    while len(seen) < want and time.monotonic() < deadline:
        seen.extend(subscription.next_batch(0.5, max_count=7))  # type: ignore[attr-defined]


def test_all_subscription_switches_to_live_under_concurrent_appends(store: EventStore) -> None:
    for n in range(100):
        store.append_to_stream("multi", f"order-{n % 5}", ANY, [ev(n)])
    total = 100 + 4 * 100
    seen: list[RecordedEvent] = []

    def writer(number: int) -> None:
        for n in range(100):
            event = ev(10_000 * (number + 1) + n)
            store.append_to_stream("multi", f"w{number}-{n % 3}", ANY, [event])

    with store.subscribe_to_all("multi") as subscription:
        writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for thread in writers:
            thread.start()
        _drain(subscription, total, seen)
        for thread in writers:
            thread.join()
        _drain(subscription, total, seen)
        assert subscription.next_batch(0.05) == []
    ids = [e.event_id for e in seen]
    assert len(ids) == total
    assert len(set(ids)) == total  # no duplicate
    for partition in range(3):  # log order within each partition
        offsets = [e.position.offset for e in seen if e.position.partition == partition]
        assert offsets == sorted(offsets)


def test_stream_subscription_from_a_version(store: EventStore) -> None:
    store.append_to_stream("orders", "order-1", ANY, [ev(n) for n in range(5)])
    seen: list[RecordedEvent] = []
    with store.subscribe_to_stream("orders", "order-1", from_version=2) as subscription:
        seen.extend(subscription.next_batch(0.1))

        def late() -> None:
            for n in range(5, 25):
                store.append_to_stream("orders", "order-1", n - 1, [ev(n)])
                store.append_to_stream("orders", "noise", ANY, [ev(1000 + n)])

        thread = threading.Thread(target=late)
        thread.start()
        _drain(subscription, 23, seen)
        thread.join()
        assert subscription.position == 25
    assert [e.version for e in seen] == list(range(2, 25))


def test_category_subscription_and_close_wakes_the_reader(store: EventStore) -> None:
    store.append_to_stream("orders", "order-1", ANY, [ev(1)])
    store.append_to_stream("orders", "user-1", ANY, [ev(2)])
    subscription = store.subscribe_to_all("orders", category="order")
    assert [e.stream for e in subscription.next_batch(0.1)] == ["order-1"]
    result: list[list[RecordedEvent]] = []
    thread = threading.Thread(target=lambda: result.append(subscription.next_batch(30)))
    thread.start()
    time.sleep(0.05)
    subscription.close()
    thread.join(5)
    assert result == [[]]
    assert subscription.closed
