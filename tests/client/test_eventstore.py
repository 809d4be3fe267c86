"""EventStore client over a real server: appends, reads, errors, snapshots, upcasting, lists."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import uuid
from collections.abc import Callable, Iterator

import pytest

from moldau import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AllPosition,
    AsyncEventStore,
    DuplicateEventIdError,
    EventData,
    EventStore,
    InvalidRequestError,
    RecordedEvent,
    StreamNotFoundError,
    TopicExistsError,
    WrongExpectedVersionError,
)

_names = itertools.count()


@pytest.fixture
def store(address: str) -> Iterator[EventStore]:
    with EventStore(address) as client:
        yield client


@pytest.fixture
def new_store_topic(store: EventStore, request: pytest.FixtureRequest) -> Callable[..., str]:
    def create(partitions: int = 1) -> str:
        name = f"es-{request.node.name[5:35]}-{next(_names)}"
        store.create_store_topic(name, partitions, {"durability": "async"})
        return name

    return create


@pytest.fixture
def topic(new_store_topic: Callable[..., str]) -> str:
    return new_store_topic(2)


def _event(n: int, **fields: object) -> EventData:
    return EventData.json("Counted", {"n": n, **fields})


def test_expected_versions_and_current_version(store: EventStore, topic: str) -> None:
    first = store.append_to_stream("order-1", NO_STREAM, [_event(0), _event(1)], topic=topic)
    assert (first.first_version, first.last_version, first.duplicate) == (0, 1, False)
    with pytest.raises(WrongExpectedVersionError) as wrong:
        store.append_to_stream("order-1", 0, _event(2), topic=topic)
    assert wrong.value.current_version == 1  # machine-readable, not parsed from the text
    with pytest.raises(WrongExpectedVersionError) as exists:
        store.append_to_stream("order-1", NO_STREAM, _event(2), topic=topic)
    assert exists.value.current_version == 1
    with pytest.raises(WrongExpectedVersionError) as missing:
        store.append_to_stream("order-2", STREAM_EXISTS, _event(0), topic=topic)
    assert missing.value.current_version == -1
    assert store.append_to_stream("order-1", 1, _event(2), topic=topic).last_version == 2
    assert store.append_to_stream("order-1", ANY, _event(3), topic=topic).last_version == 3
    assert [e.json()["n"] for e in store.read_stream("order-1", topic=topic)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="expected version -3"):
        store.append_to_stream("order-1", -3, _event(4), topic=topic)


def test_retry_with_the_same_event_ids_is_idempotent(
        store: EventStore, new_store_topic: Callable[..., str]) -> None:
    topic = new_store_topic(1)  # ids are recognised per partition
    events = [_event(0), _event(1)]
    original = store.append_to_stream("pay-1", NO_STREAM, events, topic=topic)
    again = store.append_to_stream("pay-1", NO_STREAM, events, topic=topic)
    assert again.duplicate
    assert (again.first_version, again.last_version) == (0, 1)
    assert again.first_offset == original.first_offset
    assert len(store.read_stream("pay-1", topic=topic)) == 2
    reused = EventData("Counted", b"{}", event_id=events[0].event_id)
    with pytest.raises(DuplicateEventIdError):  # the same id in another stream is no retry
        store.append_to_stream("pay-2", ANY, [reused], topic=topic)
    assert EventData("T", b"", event_id=str(events[0].event_id)).event_id == events[0].event_id


def test_read_your_writes_and_directions(store: EventStore, topic: str) -> None:
    for n in range(10):
        result = store.append_to_stream("cart-7", n - 1 if n else NO_STREAM, _event(n),
                                        topic=topic)
        assert store.read_stream("cart-7", topic=topic).last_version == result.last_version
        assert store.stream_version("cart-7", topic=topic) == n
    backwards = store.read_stream("cart-7", backwards=True, max_count=3, topic=topic)
    assert [e.version for e in backwards] == [9, 8, 7]
    assert not backwards.end_of_stream
    page = store.read_stream("cart-7", 4, max_count=2, topic=topic)
    assert [e.version for e in page] == [4, 5]
    assert store.stream_version("cart-none", topic=topic) == -1


def test_reading_a_long_stream_pages_through_everything(store: EventStore, topic: str) -> None:
    for start in range(0, 5000, 1000):
        store.append_to_stream("big-1", ANY, [_event(n) for n in range(start, start + 1000)],
                               topic=topic)
    events = store.read_stream("big-1", topic=topic)
    assert [e.version for e in events] == list(range(5000))
    assert events.end_of_stream


def test_read_all_and_category_resume_without_gaps(store: EventStore, topic: str) -> None:
    written = []
    for n in range(30):
        stream = f"{'order' if n % 3 else 'user'}-{n % 5}"
        store.append_to_stream(stream, ANY, _event(n), topic=topic)
        written.append((stream, n))
    seen: list[RecordedEvent] = []
    position: AllPosition | None = None
    while True:
        page = store.read_all(position, max_count=7, topic=topic)
        seen.extend(page)
        if not page.events:
            break
        position = page.next_position
    assert sorted((e.stream, e.json()["n"]) for e in seen) == sorted(written)
    category = store.read_category("order-*", topic=topic)
    assert {e.stream for e in category} <= {f"order-{i}" for i in range(5)}
    assert len(category) == sum(1 for s, _ in written if s.startswith("order-"))
    with pytest.raises(ValueError, match="empty"):
        store.read_category("*", topic=topic)


def test_delete_truncate_and_list(store: EventStore, topic: str) -> None:
    for name in ("order-1", "order-2", "user-1"):
        store.append_to_stream(name, NO_STREAM, [_event(0), _event(1), _event(2)], topic=topic)
    store.truncate_stream("order-2", 2, topic=topic)
    assert [e.version for e in store.read_stream("order-2", topic=topic)] == [2]
    with pytest.raises(WrongExpectedVersionError) as wrong:
        store.delete_stream("order-1", 0, topic=topic)
    assert wrong.value.current_version == 2
    store.delete_stream("order-1", 2, topic=topic)
    with pytest.raises(StreamNotFoundError) as gone:
        store.read_stream("order-1", topic=topic)
    assert gone.value.deleted
    assert [s.stream for s in store.list_streams(topic=topic)] == ["order-2", "user-1"]
    listed = store.list_streams("order", include_deleted=True, topic=topic)
    assert [(s.stream, s.deleted, s.last_version) for s in listed] == [
        ("order-1", True, 2), ("order-2", False, 2)]
    assert listed[1].truncate_before == 2
    restarted = store.append_to_stream("order-1", NO_STREAM, _event(9), topic=topic)
    assert restarted.first_version == 3  # versions continue; the old ones stay hidden
    assert [e.version for e in store.read_stream("order-1", topic=topic)] == [3]


def test_snapshots(store: EventStore, topic: str) -> None:
    assert store.load_snapshot("acct-1", topic=topic) is None
    store.append_to_stream("acct-1", NO_STREAM, [_event(n) for n in range(5)], topic=topic)
    store.save_snapshot("acct-1", 3, b'{"total": 6}', topic=topic)
    snapshot = store.load_snapshot("acct-1", topic=topic)
    assert snapshot is not None
    assert (snapshot.version, snapshot.state) == (3, b'{"total": 6}')
    tail = store.read_stream("acct-1", snapshot.version + 1, topic=topic)
    assert [e.version for e in tail] == [4]
    with pytest.raises(InvalidRequestError):
        store.save_snapshot("acct-1", 9, b"{}", topic=topic)


def test_upcasters_apply_on_every_read(address: str, topic: str) -> None:
    with EventStore(address, topic=topic) as writer:
        writer.append_to_stream("temp-1", NO_STREAM, [
            EventData.json("Measured", {"celsius": 20}, type_version=1),
            EventData.json("Measured", {"kelvin": 300.0}, type_version=2),
        ])
    with EventStore(address, topic=topic) as reader:

        @reader.upcasters.upcaster("Measured", 1)
        def to_kelvin(event: RecordedEvent) -> RecordedEvent:
            data = json.dumps({"kelvin": event.json()["celsius"] + 273.15}).encode()
            return dataclasses.replace(event, data=data, type_version=2)

        by_stream = [e.json() for e in reader.read_stream("temp-1")]
        by_all = [e.json() for e in reader.read_all()]
        with reader.subscribe_to_stream("temp-1") as subscription:
            live = [next(subscription).json(), next(subscription).json()]
    expected = [{"kelvin": 293.15}, {"kelvin": 300.0}]
    assert by_stream == by_all == live == expected
    with pytest.raises(ValueError, match="already registered"):
        reader.upcasters.register("Measured", 1, to_kelvin)


def test_errors_name_the_problem(store: EventStore, topic: str) -> None:
    with pytest.raises(TopicExistsError):
        store.create_store_topic(topic)
    with pytest.raises(StreamNotFoundError):
        store.read_stream("nobody-1", topic=topic)
    with pytest.raises(InvalidRequestError, match="event type"):
        store.append_to_stream("x-1", ANY, EventData("$system", b""), topic=topic)
    with pytest.raises(ValueError, match="store topic"):
        store.read_stream("x-1")


def test_async_client_reads_and_subscribes(address: str, topic: str) -> None:
    async def scenario() -> list[int]:
        async with AsyncEventStore(address, topic=topic) as client:
            await client.append_to_stream("job-1", NO_STREAM, [_event(0), _event(1)])
            subscription = client.subscribe_to_stream("job-1")
            got = []
            async for event in subscription:
                got.append(event.version)
                if event.version == 1:
                    await client.append_to_stream("job-1", 1, _event(2))
                if event.version == 2:
                    break
            assert subscription.position == 3
            await subscription.close()
            futures = client.append_many_async(
                [("job-2", NO_STREAM if n == 0 else n - 1, [_event(n)]) for n in range(50)])
            results = await asyncio.gather(*futures)
            assert [r.last_version for r in results] == list(range(50))
            return got

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_event_ids_are_fixed_when_the_event_is_made() -> None:
    event = EventData.json("T", {"a": 1})
    assert isinstance(event.event_id, uuid.UUID)
    assert event.event_id != EventData.json("T", {"a": 1}).event_id
    assert event.data == b'{"a":1}'
