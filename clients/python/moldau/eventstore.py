"""The event-store client: :class:`AsyncEventStore`, and :class:`EventStore` running it on a
loop thread.

::

    from moldau import ANY, NO_STREAM, EventData, EventStore

    with EventStore("127.0.0.1:7654", topic="orders") as store:
        store.create_store_topic("orders")
        result = store.append_to_stream("order-1", NO_STREAM,
                                        [EventData.json("OrderPlaced", {"total": 20})])
        store.append_to_stream("order-1", result.last_version,
                               [EventData.json("OrderPaid", {})])
        for event in store.read_stream("order-1"):
            print(event.version, event.type, event.json())

Every method names its store topic with ``topic=``, or uses the client's default ``topic``.
Each is one EventStoreService call (``read_stream(max_count=None)`` pages until the end) and
fails with :mod:`moldau.errors` classes: ``WrongExpectedVersionError`` (with
``current_version``), ``StreamNotFoundError``, ``DuplicateEventIdError``, ``InvalidRequestError``.
Upcasters registered on the client (:attr:`AsyncEventStore.upcasters`) apply to every event read.

Pipelining: :meth:`AsyncEventStore.append_async` returns a future at once and sends the append
on one bidirectional ``AppendStream`` call shared by the client (see
:mod:`moldau._eventstore_pipeline`); thousands may be in flight, each with its own expected
version and its own answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import grpc

from moldau._eventstore_pipeline import APPEND_STREAM_METHOD, AppendPipeline
from moldau._eventstore_subscription import AsyncSubscription, Subscription, SubscriptionSource
from moldau._eventstore_types import (
    ANY,
    AllPosition,
    AllSlice,
    AppendResult,
    EventData,
    RecordedEvent,
    Snapshot,
    StreamInfo,
    StreamSlice,
    UpcasterRegistry,
)
from moldau._eventstore_wire import (
    append_request,
    append_result,
    position_message,
    recorded_events,
    set_expected,
)
from moldau._runtime import (
    AsyncClosing,
    BlockingTwin,
    Credentials,
    LoopThread,
    call,
    connection_error,
    open_channel,
    resolve_server,
)
from moldau.errors import ClientClosedError, MoldauError, StreamNotFoundError
from moldau.v1 import eventstore_pb2, eventstore_pb2_grpc

__all__ = ["AppendSpec", "AsyncEventStore", "EventStore"]

_pb = eventstore_pb2
MAX_READ_COUNT = 4096
"""The most events one ReadStream / ReadAll call returns (the server's limit)."""
MAX_LIST_COUNT = 1000

AppendSpec = tuple[str, int, Sequence[EventData]]
"""``(stream, expected_version, events)``: one append of :meth:`EventStore.append_many`."""
_SUBMIT_SLICE = 512
"""Appends, or events, encoded per loop turn by :meth:`AsyncEventStore.append_many`."""


def _slices(items: Iterable[AppendSpec], size: int) -> Iterator[list[AppendSpec]]:
    """Runs of at most ``size`` appends that end once they hold ``size`` events.

    500 appends of 100 events leave in slices of 6 (600 events): the broker decodes one
    while the client encodes the next, instead of waiting for all 50,000 to be encoded.
    """
    chunk: list[AppendSpec] = []
    events = 0
    for item in items:
        chunk.append(item)
        events += len(item[2]) if isinstance(item[2], Sized) else 1
        if len(chunk) == size or events >= size:
            yield chunk
            chunk = []
            events = 0
    if chunk:
        yield chunk


class AsyncEventStore(AsyncClosing):
    """Event-sourced streams over EventStoreService (see the module docstring).

    Args:
        server: ``HOST:PORT``; default ``$MOLDAU_SERVER`` or 127.0.0.1:7654.
        topic: The default store topic of every method.
        upcasters: The registry applied on read (default: an empty one, see
            :attr:`upcasters`).
        timeout_ms: Deadline of each unary call.
        max_in_flight: Pipelined appends sent and not yet answered, at most.
        token, tls_ca_file, tls_cert_file, tls_key_file: As for :class:`moldau.AsyncAdmin`.

    Use ``async with AsyncEventStore(...) as store:`` or call :meth:`close`. The channel opens
    on first use, on the loop that uses it.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        topic: str | None = None,
        upcasters: UpcasterRegistry | None = None,
        timeout_ms: int = 30_000,
        max_in_flight: int = 16_384,
        token: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self.server = resolve_server(server)
        self.topic = topic
        self.upcasters = upcasters if upcasters is not None else UpcasterRegistry()
        self._timeout_s = timeout_ms / 1000.0
        self._max_in_flight = max_in_flight
        self._credentials = Credentials.resolve(
            token=token, tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
        )
        self._channel: grpc.aio.Channel | None = None
        self._stub: eventstore_pb2_grpc.EventStoreServiceStub | None = None
        self._pipeline: AppendPipeline | None = None
        self._subscriptions: set[AsyncSubscription] = set()
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    def _store(self) -> eventstore_pb2_grpc.EventStoreServiceStub:
        if self._closed:
            raise ClientClosedError("the event store client is closed")
        if self._stub is None:
            self._channel = open_channel(self.server, self._credentials)
            self._stub = eventstore_pb2_grpc.EventStoreServiceStub(self._channel)
        return self._stub

    def _topic(self, topic: str | None) -> str:
        chosen = topic or self.topic
        if not chosen:
            raise ValueError("name the store topic: pass topic=..., or give the client one")
        return chosen

    async def _call(self, name: str, request: object) -> Any:
        try:
            return await call(getattr(self._store(), name), request, self._timeout_s)
        except MoldauError as exc:
            raise connection_error(self.server, exc) from None

    # ------------------------------------------------------------------ topics and writes

    async def create_store_topic(self, topic: str | None = None, partitions: int = 1,
                                 configs: Mapping[str, str] | None = None) -> None:
        """Create a store topic and its ``<topic>.snapshots`` topic.

        One partition gives :meth:`read_all` one total order; more spread the streams (each
        stays in one partition) and order events only within each partition.

        Raises:
            TopicExistsError: the topic exists.
        """
        request = _pb.CreateStoreTopicRequest(topic=self._topic(topic), partitions=partitions,
                                              configs=dict(configs or {}))
        await self._call("CreateStoreTopic", request)

    async def append_to_stream(self, stream: str, expected_version: int,
                               events: Sequence[EventData] | EventData, *,
                               topic: str | None = None) -> AppendResult:
        """Append ``events`` if ``stream`` is at ``expected_version`` (an exact version, ANY,
        NO_STREAM or STREAM_EXISTS), atomically; durable on return.

        Sending the same events again (same event ids) returns the first result with
        ``duplicate=True`` and writes nothing.

        Raises:
            WrongExpectedVersionError: the stream is elsewhere (``current_version``).
            DuplicateEventIdError: an event id is stored already at another position.
        """
        batch = [events] if isinstance(events, EventData) else events
        request = append_request(self._topic(topic), stream, expected_version, batch)
        return append_result(await self._call("AppendToStream", request))

    def append_async(self, stream: str, expected_version: int,
                     events: Sequence[EventData] | EventData, *,
                     topic: str | None = None) -> asyncio.Future[AppendResult]:
        """:meth:`append_to_stream`, pipelined: queue the append and return its future at once.

        Appends to one stream run in the order queued (so ``expected_version`` may count on
        the earlier ones); a failed append fails only its own future. Call on the client's
        loop. The future fails with the same errors as :meth:`append_to_stream`, or with
        ``UnavailableError`` if the connection broke before the answer (retrying the same
        ``EventData`` is safe: the event ids make it idempotent).
        """
        batch = [events] if isinstance(events, EventData) else events
        return self._pipeline_for().submit_many(self._topic(topic),
                                                ((stream, expected_version, batch),))[0]

    def append_many_async(self, appends: Iterable[AppendSpec], *,
                          topic: str | None = None) -> list[asyncio.Future[AppendResult]]:
        """:meth:`append_async` for each ``(stream, expected_version, events)``, in order."""
        return self._pipeline_for().submit_many(self._topic(topic), appends)

    async def append_many(self, appends: Iterable[AppendSpec], *,
                          topic: str | None = None) -> list[AppendResult | MoldauError]:
        """Pipeline every append and wait for all: one result or error per append, in order.

        Submitted in slices with a loop turn between them, so the first appends are on the
        wire (and being stored) while the later ones are still being encoded.

        Raises:
            ValueError, TypeError: an append that cannot be encoded (a bad expected version, a
                field of the wrong type). Nothing of its slice of 512 is sent; earlier slices
                may have been, and are stored as usual.
        """
        futures: list[asyncio.Future[AppendResult]] = []
        for chunk in _slices(appends, _SUBMIT_SLICE):
            if futures:
                await asyncio.sleep(0)
            futures += self.append_many_async(chunk, topic=topic)
        results: list[AppendResult | MoldauError] = []
        for outcome in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, MoldauError):
                raise outcome
            results.append(outcome)
        return results

    def _pipeline_for(self) -> AppendPipeline:
        if self._pipeline is None or self._pipeline.broken:
            self._store()
            assert self._channel is not None
            method = self._channel.stream_stream(  # requests go as the bytes the pipeline wrote
                APPEND_STREAM_METHOD,
                response_deserializer=eventstore_pb2.AppendStreamResponse.FromString)
            self._pipeline = AppendPipeline(method, self._max_in_flight, self.server)
        return self._pipeline

    async def delete_stream(self, stream: str, expected_version: int = ANY, *,
                            topic: str | None = None) -> None:
        """Soft-delete ``stream``: reads then raise StreamNotFoundError (``deleted``); the
        events stay in the log and appending with NO_STREAM or ANY starts it again.

        Raises:
            StreamNotFoundError: no such stream, or deleted already.
            WrongExpectedVersionError: the stream is not at ``expected_version``.
        """
        request = _pb.DeleteStreamRequest(topic=self._topic(topic), stream=stream)
        set_expected(request, expected_version)
        await self._call("DeleteStream", request)

    async def truncate_stream(self, stream: str, before_version: int, *,
                              topic: str | None = None) -> None:
        """Stop returning the events of ``stream`` below ``before_version`` (kept in the log)."""
        request = _pb.TruncateStreamRequest(topic=self._topic(topic), stream=stream,
                                            before_version=before_version)
        await self._call("TruncateStream", request)

    # ------------------------------------------------------------------ reads

    async def read_stream(self, stream: str, from_version: int | None = None, *,
                          backwards: bool = False, max_count: int | None = None,
                          topic: str | None = None) -> StreamSlice:
        """Events of ``stream`` from ``from_version`` (default: the first readable one, or the
        last one ``backwards``), at most ``max_count`` (None: all, over as many calls as
        needed), upcast by :attr:`upcasters`.

        Raises:
            StreamNotFoundError: the stream has no events or is deleted.
        """
        name = self._topic(topic)
        events: list[RecordedEvent] = []
        cursor = from_version
        while True:
            want = MAX_READ_COUNT if max_count is None else min(MAX_READ_COUNT,
                                                               max_count - len(events))
            request = _pb.ReadStreamRequest(topic=name, stream=stream, backwards=backwards,
                                            max_count=want)
            if cursor is not None:
                request.from_version = cursor
            reply = await self._call("ReadStream", request)
            page = recorded_events(reply.events, self.upcasters)
            events.extend(page)
            done = reply.end_of_stream or not page or (
                max_count is not None and len(events) >= max_count)
            if done:
                return StreamSlice(stream, tuple(events), reply.last_version,
                                   bool(reply.end_of_stream))
            cursor = reply.events[-1].version + (-1 if backwards else 1)

    async def stream_version(self, stream: str, *, topic: str | None = None) -> int:
        """The stream's last durable version; -1 if it does not exist or is deleted."""
        try:
            found = await self.read_stream(stream, backwards=True, max_count=1, topic=topic)
        except StreamNotFoundError:
            return -1
        return found.last_version

    async def read_all(self, from_position: AllPosition | None = None, *,
                       max_count: int = MAX_READ_COUNT, topic: str | None = None) -> AllSlice:
        """Up to ``max_count`` events of every stream of the topic after ``from_position``
        (None: the beginning); continue from the slice's ``next_position``. Deleted and
        truncated streams' events are included: this reads the log."""
        return await self._read_all(from_position, "", max_count, topic)

    async def read_category(self, category: str, from_position: AllPosition | None = None, *,
                            max_count: int = MAX_READ_COUNT,
                            topic: str | None = None) -> AllSlice:
        """:meth:`read_all` restricted to the streams ``<category>-...`` (``order`` or
        ``order-*``)."""
        if not category.removesuffix("*").removesuffix("-"):
            raise ValueError(f"category {category!r} is empty; name it like 'order'")
        return await self._read_all(from_position, category, max_count, topic)

    async def _read_all(self, from_position: AllPosition | None, category: str, max_count: int,
                        topic: str | None) -> AllSlice:
        request = _pb.ReadAllRequest(topic=self._topic(topic), category=category,
                                     max_count=max_count)
        cursor = position_message(from_position)
        if cursor is not None:
            request.from_position.CopyFrom(cursor)
        reply = await self._call("ReadAll", request)
        return AllSlice(recorded_events(reply.events, self.upcasters),
                        AllPosition(tuple(reply.next_position.offsets)))

    async def list_streams(self, category: str | None = None, *, include_deleted: bool = False,
                           topic: str | None = None) -> list[StreamInfo]:
        """Every stream of the topic (or of ``category``) by name, with its last version."""
        name = self._topic(topic)
        streams: list[StreamInfo] = []
        after = ""
        while True:
            request = _pb.ListStreamsRequest(topic=name, category=category or "",
                                             include_deleted=include_deleted, after=after,
                                             max_count=MAX_LIST_COUNT)
            reply = await self._call("ListStreams", request)
            streams.extend(
                StreamInfo(s.stream, s.last_version, s.truncate_before, s.deleted, s.partition)
                for s in reply.streams
            )
            if not reply.more or not reply.streams:
                return streams
            after = reply.streams[-1].stream

    # ------------------------------------------------------------------ snapshots

    async def save_snapshot(self, stream: str, version: int, state: bytes, *,
                            topic: str | None = None) -> None:
        """Store ``state`` as the state of ``stream`` after ``version`` (a durable version)."""
        request = _pb.SaveSnapshotRequest(topic=self._topic(topic), stream=stream,
                                          version=version, state=state)
        await self._call("SaveSnapshot", request)

    async def load_snapshot(self, stream: str, *, topic: str | None = None) -> Snapshot | None:
        """The latest snapshot the stream's readable events can continue, or None."""
        request = _pb.LoadSnapshotRequest(topic=self._topic(topic), stream=stream)
        reply = await self._call("LoadSnapshot", request)
        return Snapshot(stream, reply.version, reply.state) if reply.found else None

    # ------------------------------------------------------------------ subscriptions

    def subscribe_to_stream(self, stream: str, from_version: int = 0, *,
                            topic: str | None = None, max_batch: int = 1000,
                            reconnect: bool = True) -> AsyncSubscription:
        """Events of ``stream`` from ``from_version``: the stored ones, then live ones.

        ``reconnect`` resubscribes from the last position after a dropped connection.
        Call on the client's loop.
        """
        source = SubscriptionSource(self._topic(topic), stream=stream, from_version=from_version)
        return self._subscribe(source, max_batch, reconnect)

    def subscribe_to_all(self, from_position: AllPosition | None = None, *,
                         from_end: bool = False, topic: str | None = None,
                         max_batch: int = 1000, reconnect: bool = True) -> AsyncSubscription:
        """Events of every stream after ``from_position`` (None: the beginning, or with
        ``from_end`` only those appended from now on), stored then live."""
        source = SubscriptionSource(self._topic(topic), from_position=from_position,
                                    from_end=from_end)
        return self._subscribe(source, max_batch, reconnect)

    def subscribe_to_category(self, category: str, from_position: AllPosition | None = None, *,
                              from_end: bool = False, topic: str | None = None,
                              max_batch: int = 1000,
                              reconnect: bool = True) -> AsyncSubscription:
        """:meth:`subscribe_to_all` restricted to the streams ``<category>-...``."""
        if not category.removesuffix("*").removesuffix("-"):
            raise ValueError(f"category {category!r} is empty; name it like 'order'")
        source = SubscriptionSource(self._topic(topic), category=category,
                                    from_position=from_position, from_end=from_end)
        return self._subscribe(source, max_batch, reconnect)

    def subscribe(self, *, stream: str | None = None, category: str | None = None,
                  from_version: int = 0, from_position: AllPosition | None = None,
                  from_end: bool = False, topic: str | None = None, max_batch: int = 1000,
                  reconnect: bool = True) -> AsyncSubscription:
        """One entry for the three: a ``stream``, a ``category``, or (neither) all."""
        if stream is not None:
            if category is not None:
                raise ValueError("subscribe to a stream or a category, not both")
            return self.subscribe_to_stream(stream, from_version, topic=topic,
                                            max_batch=max_batch, reconnect=reconnect)
        if category is not None:
            return self.subscribe_to_category(category, from_position, from_end=from_end,
                                              topic=topic, max_batch=max_batch,
                                              reconnect=reconnect)
        return self.subscribe_to_all(from_position, from_end=from_end, topic=topic,
                                     max_batch=max_batch, reconnect=reconnect)

    def _subscribe(self, source: SubscriptionSource, max_batch: int,
                   reconnect: bool) -> AsyncSubscription:
        if not 1 <= max_batch <= MAX_READ_COUNT:
            raise ValueError(f"max_batch must be 1 to {MAX_READ_COUNT}, got {max_batch}")
        stub = self._store()
        subscription = AsyncSubscription(stub.Subscribe, source, self.upcasters, max_batch,
                                         reconnect)
        self._subscriptions.add(subscription)
        return subscription

    # ------------------------------------------------------------------ lifetime

    async def close(self) -> None:
        """End subscriptions and the append stream (failing unanswered appends), close the
        channel (idempotent)."""
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.close()
        self._subscriptions.clear()
        if self._pipeline is not None:
            await self._pipeline.close()
            self._pipeline = None
        self._stub = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None



class EventStore(BlockingTwin[AsyncEventStore]):
    """The blocking twin of :class:`AsyncEventStore`: same arguments, same results.

    ``append_async`` and ``append_many_async`` return ``concurrent.futures.Future`` objects;
    subscriptions are plain iterators (:class:`moldau._eventstore_subscription.Subscription`).
    Thread-safety: any thread may call any method.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        topic: str | None = None,
        upcasters: UpcasterRegistry | None = None,
        timeout_ms: int = 30_000,
        max_in_flight: int = 16_384,
        token: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self._async = AsyncEventStore(
            server, topic=topic, upcasters=upcasters, timeout_ms=timeout_ms,
            max_in_flight=max_in_flight, token=token, tls_ca_file=tls_ca_file,
            tls_cert_file=tls_cert_file, tls_key_file=tls_key_file,
        )
        self.server = self._async.server
        self._thread = LoopThread("moldau-eventstore")

    @property
    def topic(self) -> str | None:
        return self._async.topic

    @property
    def upcasters(self) -> UpcasterRegistry:
        return self._async.upcasters

    def create_store_topic(self, topic: str | None = None, partitions: int = 1,
                           configs: Mapping[str, str] | None = None) -> None:
        self._thread.run(self._async.create_store_topic(topic, partitions, configs))

    def append_to_stream(self, stream: str, expected_version: int,
                         events: Sequence[EventData] | EventData, *,
                         topic: str | None = None) -> AppendResult:
        return self._thread.run(
            self._async.append_to_stream(stream, expected_version, events, topic=topic))

    def append_async(self, stream: str, expected_version: int,
                     events: Sequence[EventData] | EventData, *,
                     topic: str | None = None) -> concurrent.futures.Future[AppendResult]:
        """See :meth:`AsyncEventStore.append_async`; the future is a concurrent one."""
        return self.append_many_async([(stream, expected_version,
                                        [events] if isinstance(events, EventData) else events)],
                                      topic=topic)[0]

    def append_many_async(self, appends: Iterable[AppendSpec], *, topic: str | None = None,
                          ) -> list[concurrent.futures.Future[AppendResult]]:
        """See :meth:`AsyncEventStore.append_many_async` (one hop to the loop for them all)."""
        items = list(appends)

        async def submit() -> list[concurrent.futures.Future[AppendResult]]:
            return [_concurrent(f) for f in self._async.append_many_async(items, topic=topic)]

        return self._thread.run(submit())

    def append_many(self, appends: Iterable[AppendSpec], *,
                    topic: str | None = None) -> list[AppendResult | MoldauError]:
        return self._thread.run(self._async.append_many(appends, topic=topic))

    def delete_stream(self, stream: str, expected_version: int = ANY, *,
                      topic: str | None = None) -> None:
        self._thread.run(self._async.delete_stream(stream, expected_version, topic=topic))

    def truncate_stream(self, stream: str, before_version: int, *,
                        topic: str | None = None) -> None:
        self._thread.run(self._async.truncate_stream(stream, before_version, topic=topic))

    def read_stream(self, stream: str, from_version: int | None = None, *,
                    backwards: bool = False, max_count: int | None = None,
                    topic: str | None = None) -> StreamSlice:
        return self._thread.run(self._async.read_stream(
            stream, from_version, backwards=backwards, max_count=max_count, topic=topic))

    def stream_version(self, stream: str, *, topic: str | None = None) -> int:
        return self._thread.run(self._async.stream_version(stream, topic=topic))

    def read_all(self, from_position: AllPosition | None = None, *,
                 max_count: int = MAX_READ_COUNT, topic: str | None = None) -> AllSlice:
        return self._thread.run(self._async.read_all(from_position, max_count=max_count,
                                                     topic=topic))

    def read_category(self, category: str, from_position: AllPosition | None = None, *,
                      max_count: int = MAX_READ_COUNT, topic: str | None = None) -> AllSlice:
        return self._thread.run(self._async.read_category(category, from_position,
                                                          max_count=max_count, topic=topic))

    def list_streams(self, category: str | None = None, *, include_deleted: bool = False,
                     topic: str | None = None) -> list[StreamInfo]:
        return self._thread.run(self._async.list_streams(
            category, include_deleted=include_deleted, topic=topic))

    def save_snapshot(self, stream: str, version: int, state: bytes, *,
                      topic: str | None = None) -> None:
        self._thread.run(self._async.save_snapshot(stream, version, state, topic=topic))

    def load_snapshot(self, stream: str, *, topic: str | None = None) -> Snapshot | None:
        return self._thread.run(self._async.load_snapshot(stream, topic=topic))

    def subscribe_to_stream(self, stream: str, from_version: int = 0, *,
                            topic: str | None = None, max_batch: int = 1000,
                            reconnect: bool = True) -> Subscription:
        return self.subscribe(stream=stream, from_version=from_version, topic=topic,
                              max_batch=max_batch, reconnect=reconnect)

    def subscribe_to_all(self, from_position: AllPosition | None = None, *,
                         from_end: bool = False, topic: str | None = None,
                         max_batch: int = 1000, reconnect: bool = True) -> Subscription:
        return self.subscribe(from_position=from_position, from_end=from_end, topic=topic,
                              max_batch=max_batch, reconnect=reconnect)

    def subscribe_to_category(self, category: str, from_position: AllPosition | None = None, *,
                              from_end: bool = False, topic: str | None = None,
                              max_batch: int = 1000, reconnect: bool = True) -> Subscription:
        return self.subscribe(category=category, from_position=from_position,
                              from_end=from_end, topic=topic, max_batch=max_batch,
                              reconnect=reconnect)

    def subscribe(self, *, stream: str | None = None, category: str | None = None,
                  from_version: int = 0, from_position: AllPosition | None = None,
                  from_end: bool = False, topic: str | None = None, max_batch: int = 1000,
                  reconnect: bool = True) -> Subscription:
        """See :meth:`AsyncEventStore.subscribe`; iterate the result with ``for``."""

        async def start() -> AsyncSubscription:
            return self._async.subscribe(
                stream=stream, category=category, from_version=from_version,
                from_position=from_position, from_end=from_end, topic=topic,
                max_batch=max_batch, reconnect=reconnect)

        return Subscription(self._thread, self._thread.run(start()))



def _concurrent(future: asyncio.Future[AppendResult]) -> concurrent.futures.Future[AppendResult]:
    """A thread-safe future that settles with ``future`` (on its loop)."""
    result: concurrent.futures.Future[AppendResult] = concurrent.futures.Future()

    def copy(done: asyncio.Future[AppendResult]) -> None:
        if done.cancelled():
            result.cancel()
        elif done.exception() is not None:
            result.set_exception(done.exception())
        else:
            result.set_result(done.result())

    future.add_done_callback(copy)
    return result

