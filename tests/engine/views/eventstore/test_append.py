"""Appends: the expected-version matrix, atomicity under concurrent writers, idempotent retries."""

from __future__ import annotations

import threading
import uuid

import pytest

from engine.errors import (
    DuplicateEventIdError,
    InvalidEventStoreRequestError,
    StreamNotFoundError,
    WrongExpectedVersionError,
)
from engine.views.eventstore import ANY, NO_STREAM, STREAM_EXISTS, EventData, EventStore

from .conftest import ev, evs


def _log_end(store: EventStore, topic: str, stream: str) -> int:
    return store.open_topic(topic)[store.partition_for(topic, stream)].log.log_end_offset


@pytest.mark.parametrize(
    ("existing", "expected", "ok", "current"),
    [
        (0, ANY, True, -1),
        (2, ANY, True, 1),
        (0, NO_STREAM, True, -1),
        (2, NO_STREAM, False, 1),
        (0, STREAM_EXISTS, False, -1),
        (2, STREAM_EXISTS, True, 1),
        (2, 1, True, 1),
        (2, 0, False, 1),
        (2, 2, False, 1),
        (0, 0, False, -1),
    ],
)
def test_expected_version_matrix(
    store: EventStore, existing: int, expected: int, ok: bool, current: int
) -> None:
    if existing:
        store.append_to_stream("orders", "order-1", NO_STREAM, evs(100, existing))
    end = _log_end(store, "orders", "order-1")
    if ok:
        result = store.append_to_stream("orders", "order-1", expected, [ev(1), ev(2)])
        assert (result.first_version, result.last_version) == (existing, existing + 1)
        assert store.stream_version("orders", "order-1") == existing + 1
        assert len(result.positions) == 2
    else:
        with pytest.raises(WrongExpectedVersionError) as info:
            store.append_to_stream("orders", "order-1", expected, [ev(1), ev(2)])
        assert (info.value.stream, info.value.expected, info.value.current) == (
            "order-1", expected, current,
        )
        assert _log_end(store, "orders", "order-1") == end  # nothing written
        assert store.stream_version("orders", "order-1") == current


def test_bad_requests_are_refused(store: EventStore) -> None:
    with pytest.raises(InvalidEventStoreRequestError):
        store.append_to_stream("orders", "s", ANY, [])
    with pytest.raises(InvalidEventStoreRequestError):
        store.append_to_stream("orders", "s", -3, [ev(1)])
    with pytest.raises(InvalidEventStoreRequestError):
        store.append_to_stream("orders", "", ANY, [ev(1)])
    with pytest.raises(InvalidEventStoreRequestError):
        store.append_to_stream("orders", "s", ANY, [EventData("$deleted", b"")])
    with pytest.raises(InvalidEventStoreRequestError):
        store.append_to_stream("orders", "s", ANY, [ev(1), ev(1)])
    with pytest.raises(StreamNotFoundError):
        store.read_stream("orders", "s")


def test_concurrent_writers_one_winner_per_version(store: EventStore) -> None:
    threads, per_thread = 8, 200
    wins: list[tuple[int, int]] = []
    failures: list[tuple[int, int]] = []
    lock = threading.Lock()

    def writer(number: int) -> None:
        for attempt in range(per_thread):
            event = EventData("E", b"%d:%d" % (number, attempt), event_id=uuid.uuid4())
            expected = store.stream_version("orders", "hot")
            try:
                result = store.append_to_stream("orders", "hot", expected, [event])
            except WrongExpectedVersionError as exc:
                failures.append((exc.expected, exc.current))
                continue
            with lock:
                wins.append((result.first_version, number))

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert all(current > expected for expected, current in failures)  # losers see the winner
    versions = sorted(version for version, _ in wins)
    assert versions == list(range(len(versions)))  # one success per version, no gaps
    stored = store.read_stream("orders", "hot", max_count=100_000).events
    assert [e.version for e in stored] == versions
    assert len({e.event_id for e in stored}) == len(stored)


def test_concurrent_streams_in_one_partition(store: EventStore) -> None:
    def writer(number: int) -> None:
        for version in range(50):
            stream = f"s-{number}"
            store.append_to_stream("orders", stream, version - 1, [ev(version + 1000 * number)])

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for number in range(4):
        events = store.read_stream("orders", f"s-{number}").events
        assert [e.version for e in events] == list(range(50))


@pytest.mark.parametrize("expected", [ANY, NO_STREAM, -99])
def test_resend_returns_the_original_result(store: EventStore, expected: int) -> None:
    expected = -1 if expected == -99 else expected
    batch = evs(0, 3)
    first = store.append_to_stream("orders", "order-9", expected, batch)
    store.append_to_stream("orders", "order-9", ANY, evs(10, 1))
    again = store.append_to_stream("orders", "order-9", expected, batch)
    assert again.duplicate
    assert (again.first_version, again.last_version, again.first_offset, again.last_offset) == (
        first.first_version, first.last_version, first.first_offset, first.last_offset,
    )
    assert store.stream_version("orders", "order-9") == 3
    # a suffix of the same append is the same events at the same versions
    assert store.append_to_stream("orders", "order-9", ANY, batch[1:]).first_version == 1


def test_exact_retry_is_recognised_beyond_the_window(broker: object, clock: object) -> None:
    from engine.views.eventstore import EventStoreSettings

    store = EventStore.open(broker, clock=clock,  # type: ignore[arg-type]
                            settings=EventStoreSettings(idempotency_window=0))
    store.create_store_topic("t")
    batch = evs(0, 2)
    store.append_to_stream("t", "s", NO_STREAM, batch)
    store.append_to_stream("t", "s", 1, evs(5, 2))
    assert store.append_to_stream("t", "s", NO_STREAM, batch).duplicate
    with pytest.raises(WrongExpectedVersionError):
        store.append_to_stream("t", "s", 0, [ev(7), ev(8)])


def test_reused_event_id_elsewhere_is_refused(store: EventStore) -> None:
    store.append_to_stream("orders", "a", ANY, [ev(1)])
    with pytest.raises(DuplicateEventIdError) as info:
        store.append_to_stream("orders", "b", ANY, [ev(1)])
    assert (info.value.stored_stream, info.value.stored_version) == ("a", 0)
    with pytest.raises(DuplicateEventIdError):
        store.append_to_stream("orders", "a", ANY, [ev(2), ev(1)])


def test_failed_fsync_rolls_the_claim_back(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.errors import LogReadOnlyError

    store.append_to_stream("orders", "s", NO_STREAM, [ev(1)])
    part = store.open_topic("orders")[0]

    def fail(end_offset: int) -> None:
        part.log._fail_read_only("injected")
        raise LogReadOnlyError("injected", "")

    monkeypatch.setattr(part.log, "wait_durable", fail)
    with pytest.raises(LogReadOnlyError):
        store.append_to_stream("orders", "s", 0, [ev(2)])
    assert store.stream_version("orders", "s") == 0  # the unacknowledged version is not claimed
    assert part.index.ids.get(str(ev(2).event_id).encode()) is None
    with pytest.raises(LogReadOnlyError):
        store.append_to_stream("orders", "s", 0, [ev(3)])
