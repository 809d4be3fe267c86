"""Event store under concurrency over a real server: racing writers with expected versions,
subscriptions switching from catch-up to live while others append, pipelined AppendStream."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from moldau import (
    ANY,
    NO_STREAM,
    EventData,
    EventStore,
    InvalidRequestError,
    StreamNotFoundError,
    WrongExpectedVersionError,
)
from moldau.v1 import eventstore_pb2, eventstore_pb2_grpc

_names = itertools.count()
WRITERS = 6
TARGET_VERSION = 59


@pytest.fixture
def topic(address: str, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"esc-{request.node.name[5:35]}-{next(_names)}"
    with EventStore(address) as client:
        client.create_store_topic(name, 2)  # default durability: fsync before the ack
    return name


def test_racing_writers_one_winner_per_version(address: str, topic: str) -> None:
    wins: list[tuple[int, uuid.UUID]] = []
    losses: list[tuple[int, int | None]] = []
    lock = threading.Lock()
    start = threading.Barrier(WRITERS)

    def writer(number: int) -> None:
        with EventStore(address, topic=topic) as client:  # its own connection
            start.wait()
            known = -1
            while known < TARGET_VERSION:
                event = EventData.json("Bid", {"writer": number})
                expected = known if known >= 0 else NO_STREAM
                try:
                    result = client.append_to_stream("auction-1", expected, event)
                except WrongExpectedVersionError as exc:
                    with lock:
                        losses.append((known, exc.current_version))
                    if exc.current_version is None:  # checked below: never happens
                        return
                    known = exc.current_version
                    continue
                with lock:
                    wins.append((result.last_version, event.event_id))
                known = result.last_version

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with EventStore(address, topic=topic) as client:
        stored = client.read_stream("auction-1")
    versions = Counter(version for version, _ in wins)
    assert sorted(versions) == list(range(TARGET_VERSION + 1))
    assert set(versions.values()) == {1}  # exactly one winner per version
    assert [e.version for e in stored] == list(range(TARGET_VERSION + 1))  # no gap, no dup
    assert {e.event_id for e in stored} == {event_id for _, event_id in wins}
    assert losses, "the writers never collided; the test proves nothing"
    for expected, current in losses:
        assert current is not None
        assert current > expected


def test_stream_subscription_switches_to_live_without_gap(address: str, topic: str) -> None:
    total = 400
    with EventStore(address, topic=topic) as client:
        client.append_to_stream("feed-1", NO_STREAM, [EventData.json("Tick", {"n": n})
                                                      for n in range(100)])
        appending = threading.Thread(target=_append_ticks, args=(address, topic, 100, total))
        with client.subscribe_to_stream("feed-1") as subscription:
            appending.start()
            versions = []
            for event in subscription:
                versions.append(event.version)
                assert event.json()["n"] == event.version
                if len(versions) == total:
                    break
            assert subscription.position == total
        appending.join(60)
    assert versions == list(range(total))


def _append_ticks(address: str, topic: str, first: int, total: int) -> None:
    with EventStore(address, topic=topic) as client:
        for n in range(first, total, 10):
            client.append_to_stream("feed-1", n - 1, [EventData.json("Tick", {"n": m})
                                                      for m in range(n, min(n + 10, total))])


def test_category_subscription_under_concurrent_appends(address: str, topic: str) -> None:
    streams, per_stream = 8, 40
    with EventStore(address, topic=topic) as client:
        for s in range(streams):
            client.append_to_stream(f"cart-{s}", NO_STREAM, EventData.json("Add", {"n": 0}))
        client.append_to_stream("other-1", NO_STREAM, EventData.json("Noise", {}))
        subscription = client.subscribe_to_category("cart")

        def append(s: int) -> None:
            with EventStore(address, topic=topic) as writer:
                for n in range(1, per_stream):
                    writer.append_to_stream(f"cart-{s}", n - 1, EventData.json("Add", {"n": n}))

        writers = [threading.Thread(target=append, args=(s,)) for s in range(streams)]
        for thread in writers:
            thread.start()
        seen: list[tuple[str, int]] = []
        for event in subscription:
            seen.append((event.stream, event.version))
            if len(seen) == streams * per_stream:
                break
        for thread in writers:
            thread.join(60)
        assert subscription.next_batch(timeout_s=0.3) == []  # nothing more, no duplicate
        resume = subscription.position
        subscription.close()
        client.append_to_stream("cart-0", per_stream - 1, EventData.json("Add", {}))
        with client.subscribe_to_category("cart", resume) as resumed:
            assert next(resumed).version == per_stream  # resumes exactly after the last one
    assert len(set(seen)) == len(seen)
    for s in range(streams):
        assert [v for name, v in seen if name == f"cart-{s}"] == list(range(per_stream))


def test_pipelined_appends_keep_order_per_stream_and_fail_alone(address: str,
                                                                topic: str) -> None:
    with EventStore(address, topic=topic) as client:
        appends = []
        for n in range(300):
            stream = f"pipe-{n % 3}"
            version = n // 3
            appends.append((stream, version - 1 if version else NO_STREAM,
                            [EventData.json("Step", {"n": n})]))
        appends.insert(150, ("pipe-0", 0, [EventData.json("Stale", {})]))  # wrong version
        appends.insert(151, ("pipe-9", ANY, [EventData("$bad", b"")]))  # invalid type
        outcomes = client.append_many(appends)
        stale, invalid = outcomes[150], outcomes[151]
        assert isinstance(stale, WrongExpectedVersionError)
        assert stale.current_version == 49
        assert isinstance(invalid, InvalidRequestError)
        good = outcomes[:150] + outcomes[152:]
        assert not [o for o in good if isinstance(o, Exception)]
        for s in range(3):
            events = client.read_stream(f"pipe-{s}")
            assert [e.json()["n"] for e in events] == list(range(s, 300, 3))
        again = client.append_many(appends[:3])  # same event ids: answered as retries
        assert all(not isinstance(o, Exception) and o.duplicate for o in again)


def test_append_stream_answers_every_correlation_id(address: str, topic: str) -> None:
    pb = eventstore_pb2
    with grpc.insecure_channel(address) as channel:
        stub = eventstore_pb2_grpc.EventStoreServiceStub(channel)

        def requests() -> Iterator[eventstore_pb2.AppendStreamRequest]:
            for chunk in range(4):
                message = pb.AppendStreamRequest()
                for n in range(chunk * 25, chunk * 25 + 25):
                    item = message.appends.add(correlation_id=1000 + n)
                    item.append.topic = topic
                    item.append.stream = f"raw-{n % 5}"
                    item.append.special = pb.EXPECTED_VERSION_ANY
                    item.append.events.add(type="T", data=b"%d" % n, event_id=str(uuid.uuid4()))
                yield message
            bad = pb.AppendStreamRequest()
            bad.appends.add(correlation_id=7).append.topic = topic  # no stream, no expected
            yield bad

        answers = {}
        for response in stub.AppendStream(requests()):
            for outcome in response.outcomes:
                answers[outcome.correlation_id] = outcome
    assert sorted(answers) == [7, *range(1000, 1100)]
    assert answers[7].WhichOneof("outcome") == "error"
    assert answers[7].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    per_stream: dict[str, list[int]] = {}
    for correlation_id in range(1000, 1100):
        response = answers[correlation_id].response
        per_stream.setdefault(f"raw-{(correlation_id - 1000) % 5}", []).append(
            response.last_version)
    assert all(v == list(range(20)) for v in per_stream.values())


@pytest.mark.parametrize("window", [1, 5])
def test_a_small_window_still_answers_every_append_in_order(address: str, topic: str,
                                                            window: int) -> None:
    """The pipeline writes appends straight into its outgoing messages; with a window smaller
    than a burst, messages wait for room and none is sent past the window or lost."""
    with EventStore(address, topic=topic, max_in_flight=window) as client:
        appends = [(f"win-{n % 4}", n // 4 - 1 if n >= 4 else NO_STREAM,
                    [EventData.json("Step", {"n": n})]) for n in range(203)]
        outcomes = client.append_many(appends)
        assert not [o for o in outcomes if isinstance(o, Exception)]
        for s in range(4):
            assert [e.json()["n"] for e in client.read_stream(f"win-{s}")] == list(
                range(s, 203, 4))


def test_an_append_that_cannot_be_encoded_is_refused_before_it_is_queued(
        address: str, topic: str) -> None:
    with EventStore(address, topic=topic) as client:
        good = ("enc-1", NO_STREAM, [EventData.json("Fine", {})])
        with pytest.raises(ValueError, match="expected version -7"):
            client.append_many([good, ("enc-2", -7, [EventData.json("Bad", {})])])
        with pytest.raises(TypeError):
            client.append_many([("enc-3", ANY, [EventData("T", "not bytes")])])  # type: ignore[arg-type]
        for stream in ("enc-1", "enc-2", "enc-3"):  # nothing of a refused call was sent
            with pytest.raises(StreamNotFoundError):
                client.read_stream(stream)
        after = client.append_many([good, ("enc-1", 0, [EventData.json("Next", {})])])
        assert [o.first_version for o in after if not isinstance(o, Exception)] == [0, 1]
        assert [e.type for e in client.read_stream("enc-1")] == ["Fine", "Next"]
