"""EventStoreService over a real server: expected versions, reads, snapshots, subscriptions."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from grpc_api.testing import ServerProcess
from moldau.v1 import eventstore_pb2, eventstore_pb2_grpc
from tests.integration.support import StartServer

pb = eventstore_pb2
ANY = pb.EXPECTED_VERSION_ANY
NO_STREAM = pb.EXPECTED_VERSION_NO_STREAM


@pytest.fixture(scope="module")
def store(server: ServerProcess) -> Iterator[eventstore_pb2_grpc.EventStoreServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield eventstore_pb2_grpc.EventStoreServiceStub(channel)


_names = iter(range(1_000_000))


@pytest.fixture
def topic(store: eventstore_pb2_grpc.EventStoreServiceStub,
          request: pytest.FixtureRequest) -> str:
    name = f"es-{request.node.name[5:30]}-{next(_names)}"
    store.CreateStoreTopic(pb.CreateStoreTopicRequest(topic=name, partitions=2))
    return name


def _events(*types: str, ids: list[str] | None = None) -> list[eventstore_pb2.EventToAppend]:
    return [pb.EventToAppend(type=t, data=f'{{"n": {i}}}'.encode(),
                             event_id=ids[i] if ids else "")
            for i, t in enumerate(types)]


def _append(store: Any, topic: str, stream: str, events: list[Any], *,
            exact: int | None = None, special: int = ANY) -> eventstore_pb2.AppendToStreamResponse:
    if exact is not None:
        request = pb.AppendToStreamRequest(topic=topic, stream=stream, exact=exact, events=events)
    else:
        request = pb.AppendToStreamRequest(topic=topic, stream=stream, special=special,
                                           events=events)
    reply: eventstore_pb2.AppendToStreamResponse = store.AppendToStream(request)
    return reply


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    reason = dict(caught.value.trailing_metadata() or ()).get("moldau-error", "")
    return caught.value.code(), caught.value.details(), reason


def test_expected_versions_and_idempotent_retries(store: Any, topic: str) -> None:
    first = _append(store, topic, "order-1", _events("Created", "Paid"), special=NO_STREAM)
    assert (first.first_version, first.last_version, first.duplicate) == (0, 1, False)
    code, message, reason = _code(lambda: _append(store, topic, "order-1", _events("X"),
                                                  special=NO_STREAM))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert reason == "WrongExpectedVersionError"
    assert "version 1" in message
    code, _, _ = _code(lambda: _append(store, topic, "order-1", _events("X"), exact=0))
    assert code == grpc.StatusCode.FAILED_PRECONDITION

    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    shipped = _append(store, topic, "order-1", _events("Packed", "Shipped", ids=ids), exact=1)
    again = _append(store, topic, "order-1", _events("Packed", "Shipped", ids=ids), exact=1)
    assert (again.first_version, again.last_version, again.duplicate) == (2, 3, True)
    assert again.first_offset == shipped.first_offset

    stream = store.ReadStream(pb.ReadStreamRequest(topic=topic, stream="order-1"))
    assert [e.type for e in stream.events] == ["Created", "Paid", "Packed", "Shipped"]
    assert [e.version for e in stream.events] == [0, 1, 2, 3]
    assert stream.events[2].event_id == ids[0]
    assert stream.last_version == 3
    assert stream.end_of_stream
    back = store.ReadStream(pb.ReadStreamRequest(topic=topic, stream="order-1", backwards=True,
                                                 max_count=2))
    assert [e.version for e in back.events] == [3, 2]
    assert not back.end_of_stream


def test_concurrent_writers_get_one_success_per_version(store: Any, topic: str) -> None:
    wins: list[int] = []
    lock = threading.Lock()

    def writer(name: str) -> None:
        for _ in range(30):
            current = -1
            try:
                read = store.ReadStream(pb.ReadStreamRequest(topic=topic, stream="acct-1"))
                current = read.last_version
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            try:
                if current < 0:
                    reply = _append(store, topic, "acct-1", _events(name), special=NO_STREAM)
                else:
                    reply = _append(store, topic, "acct-1", _events(name), exact=current)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                continue
            with lock:
                wins.append(reply.first_version)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == list(range(len(wins)))  # no gap, no version twice
    stream = store.ReadStream(pb.ReadStreamRequest(topic=topic, stream="acct-1"))
    assert len(stream.events) == len(wins)


def test_read_all_categories_delete_truncate_and_snapshots(store: Any, topic: str) -> None:
    for n in range(3):
        _append(store, topic, f"order-{n}", _events("Created"))
        _append(store, topic, f"user-{n}", _events("Registered"))
    everything = store.ReadAll(pb.ReadAllRequest(topic=topic))
    assert len(everything.events) == 6
    orders = store.ReadAll(pb.ReadAllRequest(topic=topic, category="order"))
    assert sorted(e.stream for e in orders.events) == ["order-0", "order-1", "order-2"]
    page = store.ReadAll(pb.ReadAllRequest(topic=topic, max_count=4))
    rest = store.ReadAll(pb.ReadAllRequest(topic=topic, from_position=page.next_position))
    assert len(page.events) + len(rest.events) == 6
    seen = {(e.partition, e.offset) for e in [*page.events, *rest.events]}
    assert len(seen) == 6  # resuming from a position neither skips nor repeats

    store.DeleteStream(pb.DeleteStreamRequest(topic=topic, stream="user-0"))
    code, _, reason = _code(lambda: store.ReadStream(pb.ReadStreamRequest(topic=topic,
                                                                          stream="user-0")))
    assert code == grpc.StatusCode.NOT_FOUND
    assert reason == "StreamNotFoundError"

    _append(store, topic, "order-0", _events("Paid", "Shipped"), exact=0)
    store.TruncateStream(pb.TruncateStreamRequest(topic=topic, stream="order-0",
                                                  before_version=2))
    kept = store.ReadStream(pb.ReadStreamRequest(topic=topic, stream="order-0"))
    assert [e.version for e in kept.events] == [2]

    assert not store.LoadSnapshot(pb.LoadSnapshotRequest(topic=topic, stream="order-1")).found
    store.SaveSnapshot(pb.SaveSnapshotRequest(topic=topic, stream="order-1", version=0,
                                              state=b'{"status": "created"}'))
    snapshot = store.LoadSnapshot(pb.LoadSnapshotRequest(topic=topic, stream="order-1"))
    assert snapshot.found
    assert (snapshot.version, snapshot.state) == (0, b'{"status": "created"}')


def test_subscription_catches_up_then_follows_live_without_gaps(store: Any, topic: str) -> None:
    for n in range(50):
        _append(store, topic, f"cart-{n % 5}", _events("Added"))
    call = store.Subscribe(pb.SubscribeEventsRequest(topic=topic, all=pb.AllStart()))
    received: list[tuple[int, int]] = []
    caught_up = threading.Event()

    def consume() -> None:
        try:
            for response in call:
                received.extend((e.partition, e.offset) for e in response.events)
                if response.caught_up:
                    caught_up.set()
                if len(received) >= 150:
                    call.cancel()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise

    reader = threading.Thread(target=consume)
    reader.start()
    for n in range(100):  # appended while the subscriber catches up and goes live
        _append(store, topic, f"cart-{n % 7}", _events("Added"))
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert caught_up.is_set()
    assert len(received) == 150
    assert len(set(received)) == 150  # no duplicate at the switch


def test_stream_subscription_and_bad_requests(store: Any, topic: str) -> None:
    _append(store, topic, "s-1", _events("A", "B", "C"))
    call = store.Subscribe(pb.SubscribeEventsRequest(
        topic=topic, stream=pb.StreamStart(stream="s-1", from_version=1)))
    first = next(call)
    assert [e.version for e in first.events] == [1, 2]
    call.cancel()

    bad = [
        lambda: store.AppendToStream(pb.AppendToStreamRequest(topic=topic, stream="s",
                                                              events=_events("A"))),
        lambda: _append(store, topic, "s", [pb.EventToAppend(type="A", event_id="nope")]),
        lambda: _append(store, topic, "s", []),
        lambda: _append(store, topic, "", _events("A")),
        lambda: _append(store, topic, "s", _events("$system")),
        lambda: store.ReadStream(pb.ReadStreamRequest(topic=topic, stream="s-1",
                                                      max_count=100_000)),
        lambda: next(store.Subscribe(pb.SubscribeEventsRequest(topic=topic))),
    ]
    for call_bad in bad:
        code, message, _ = _code(call_bad)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    code, _, _ = _code(lambda: _append(store, "no-such-store", "s", _events("A")))
    assert code == grpc.StatusCode.NOT_FOUND
    after = store.ReadStream(pb.ReadStreamRequest(topic=topic, stream="s-1"))
    assert len(after.events) == 3  # nothing of the refused requests was stored


def test_appended_events_survive_kill_9(start_server: StartServer) -> None:
    server = start_server()
    with grpc.insecure_channel(server.address) as channel:
        stub = eventstore_pb2_grpc.EventStoreServiceStub(channel)
        stub.CreateStoreTopic(pb.CreateStoreTopicRequest(topic="orders", partitions=1))
        for n in range(20):
            _append(stub, "orders", "order-7", _events(f"E{n}"), exact=n - 1 if n else None,
                    special=NO_STREAM)
    server.kill()
    server.start()
    with grpc.insecure_channel(server.address) as channel:
        stub = eventstore_pb2_grpc.EventStoreServiceStub(channel)
        stream = stub.ReadStream(pb.ReadStreamRequest(topic="orders", stream="order-7"))
        assert [e.type for e in stream.events] == [f"E{n}" for n in range(20)]
        reply = _append(stub, "orders", "order-7", _events("E20"), exact=19)
        assert reply.first_version == 20


def test_wrong_expected_version_carries_the_current_version(store: Any, topic: str) -> None:
    _append(store, topic, "ver-1", _events("A", "B"), special=NO_STREAM)
    with pytest.raises(grpc.RpcError) as caught:
        _append(store, topic, "ver-1", _events("C"), exact=0)
    trailing = dict(caught.value.trailing_metadata() or ())
    assert trailing["moldau-error"] == "WrongExpectedVersionError"
    assert trailing["moldau-current-version"] == "1"
    with pytest.raises(grpc.RpcError) as missing:
        store.DeleteStream(pb.DeleteStreamRequest(topic=topic, stream="ver-2", exact=3))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_streams_pages_by_name(store: Any, topic: str) -> None:
    for n in range(12):
        _append(store, topic, f"item-{n:02d}", _events("A"), special=NO_STREAM)
    _append(store, topic, "other-1", _events("A"), special=NO_STREAM)
    first = store.ListStreams(pb.ListStreamsRequest(topic=topic, category="item", max_count=5))
    assert [s.stream for s in first.streams] == [f"item-{n:02d}" for n in range(5)]
    assert first.more
    rest = store.ListStreams(pb.ListStreamsRequest(topic=topic, category="item-*",
                                                   after=first.streams[-1].stream))
    assert [s.stream for s in rest.streams] == [f"item-{n:02d}" for n in range(5, 12)]
    assert not rest.more
    with pytest.raises(grpc.RpcError) as bad:
        store.ListStreams(pb.ListStreamsRequest(topic=topic, max_count=5000))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_append_stream_orders_per_stream_and_errors_per_request(store: Any, topic: str) -> None:
    def requests() -> Iterator[eventstore_pb2.AppendStreamRequest]:
        for n in range(60):
            item = pb.PipelinedAppend(correlation_id=n, append=pb.AppendToStreamRequest(
                topic=topic, stream=f"pipe-{n % 2}", events=_events("Step")))
            version = n // 2
            if version:
                item.append.exact = version - 1
            else:
                item.append.special = NO_STREAM
            if n == 31:
                item.append.exact = 0  # stale: fails alone
            yield pb.AppendStreamRequest(appends=[item])

    outcomes = {o.correlation_id: o for r in store.AppendStream(requests()) for o in r.outcomes}
    assert sorted(outcomes) == list(range(60))
    stale = outcomes[31].error
    assert (stale.reason, stale.current_version) == ("WrongExpectedVersionError", 14)
    assert stale.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    # the stream's later appends expected the version 31 would have made: they fail too
    assert all(outcomes[n].WhichOneof("outcome") == "error" for n in range(33, 60, 2))
    assert [outcomes[n].response.last_version for n in range(0, 60, 2)] == list(range(30))


def test_append_stream_answers_bad_appends_beside_good_ones(store: Any, topic: str) -> None:
    good_id = str(uuid.uuid4())
    items = [
        pb.PipelinedAppend(correlation_id=1, append=pb.AppendToStreamRequest(
            topic=topic, stream="mixed", special=NO_STREAM,
            events=_events("A", "B", ids=[good_id, str(uuid.uuid4()).upper()]))),
        pb.PipelinedAppend(correlation_id=2, append=pb.AppendToStreamRequest(
            topic=topic, stream="mixed", exact=1, events=_events("C", ids=["nope"]))),
        pb.PipelinedAppend(correlation_id=3, append=pb.AppendToStreamRequest(
            topic=topic, stream="mixed", events=_events("D"))),  # no expected version
        pb.PipelinedAppend(correlation_id=4, append=pb.AppendToStreamRequest(
            topic=topic, stream="mixed", exact=1, events=_events("$E"))),
        pb.PipelinedAppend(correlation_id=5, append=pb.AppendToStreamRequest(
            topic=topic, stream="mixed", exact=1, events=_events("F", "G"))),
    ]
    responses = store.AppendStream(iter([pb.AppendStreamRequest(appends=items)]))
    outcomes = {o.correlation_id: o for r in responses for o in r.outcomes}
    assert outcomes[1].response.last_version == 1
    assert "not a UUID" in outcomes[2].error.message
    assert "expected version" in outcomes[3].error.message
    assert "not valid" in outcomes[4].error.message
    assert {outcomes[n].error.code for n in (2, 3, 4)} == {
        grpc.StatusCode.INVALID_ARGUMENT.value[0]}
    assert outcomes[5].response.first_version == 2
    read = store.ReadStream(pb.ReadStreamRequest(topic=topic, stream="mixed"))
    assert [e.type for e in read.events] == ["A", "B", "F", "G"]
    assert read.events[0].event_id == good_id


def test_append_stream_refuses_bytes_that_are_no_request(server: ServerProcess,
                                                         topic: str) -> None:
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream("/moldau.v1.EventStoreService/AppendStream")
        code, details, _ = _code(lambda: list(call(iter([b"\x0a\xff\xff\xff"]))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "AppendStreamRequest" in details
