"""EventStoreService: streams with expected versions, reads, snapshots and live subscriptions.

The engine's :class:`~engine.views.eventstore.EventStore` does the work; appends wait for fsync
and reads may touch the disk, so both run on worker threads.

Subscriptions do not park a worker thread while they wait for new events (a few hundred idle
subscribers would exhaust the pool): each step polls the engine subscription without waiting
(``next_batch(0)``) on a worker, and when there is nothing new the call awaits an asyncio event
that the store topic's partition logs set when their high watermark moves, exactly like the
fetch path's watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from engine.log.partition_log import PartitionLog
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
from grpc_api.errors import InvalidRequestError, NotReadyError, stream_errors, unary_errors
from grpc_api.runtime import Runtime
from moldau.v1 import eventstore_pb2, eventstore_pb2_grpc

__all__ = ["EventStoreServicer"]

_pb = eventstore_pb2
_SPECIAL = {
    _pb.EXPECTED_VERSION_ANY: ANY,
    _pb.EXPECTED_VERSION_NO_STREAM: NO_STREAM,
    _pb.EXPECTED_VERSION_STREAM_EXISTS: STREAM_EXISTS,
}
MAX_READ_COUNT = 4096
DEFAULT_SUBSCRIBE_BATCH = 1000


def _expected(request: Any) -> int:
    kind = request.WhichOneof("expected")
    if kind == "exact":
        if request.exact < 0:
            raise InvalidRequestError(
                f"an exact expected version is >= 0, got {request.exact}; use `special` for "
                "ANY, NO_STREAM or STREAM_EXISTS"
            )
        return int(request.exact)
    if kind == "special" and request.special in _SPECIAL:
        return _SPECIAL[request.special]
    raise InvalidRequestError(
        "set the expected version: `exact` (>= 0) or `special` (ANY, NO_STREAM, STREAM_EXISTS)"
    )


def _event_data(message: eventstore_pb2.EventToAppend) -> EventData:
    if message.event_id:
        try:
            event_id = uuid.UUID(message.event_id)
        except ValueError:
            raise InvalidRequestError(
                f"event_id {message.event_id[:60]!r} is not a UUID; use the 36-character form "
                "like 0f8fad5b-d9cb-469f-a165-70867728950e, or leave it empty"
            ) from None
    else:
        event_id = uuid.uuid4()
    return EventData(
        type=message.type,
        data=message.data,
        metadata=message.metadata,
        type_version=message.type_version or 1,
        event_id=event_id,
    )


def _recorded(events: Sequence[RecordedEvent]) -> list[eventstore_pb2.RecordedEvent]:
    return [
        _pb.RecordedEvent(
            stream=e.stream, version=e.version, event_id=str(e.event_id), type=e.type,
            type_version=e.type_version, data=e.data, metadata=e.metadata,
            timestamp_ms=e.timestamp_ms, partition=e.position.partition,
            offset=e.position.offset,
        )
        for e in events
    ]


def _count(requested: int) -> int:
    if requested < 0 or requested > MAX_READ_COUNT:
        raise InvalidRequestError(f"max_count must be 0 to {MAX_READ_COUNT}, got {requested}")
    return requested or MAX_READ_COUNT


def _position(message: eventstore_pb2.AllPosition | None) -> AllPosition | None:
    if message is None or not message.offsets:
        return None
    if any(o < 0 for o in message.offsets):
        raise InvalidRequestError("position offsets must not be negative")
    return AllPosition(tuple(message.offsets))


class _Wakeup:
    """An asyncio event set when any of ``logs`` publishes new data, or at shutdown."""

    def __init__(self, runtime: Runtime, logs: Sequence[PartitionLog]) -> None:
        self._loop = asyncio.get_running_loop()
        self._runtime = runtime
        self._logs = list(logs)
        self.event = asyncio.Event()

    def _from_engine(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(self.event.set)

    @contextlib.contextmanager
    def registered(self) -> Iterator[_Wakeup]:
        for partition_log in self._logs:
            partition_log.add_listener(self._from_engine)
        self._runtime.shutdown_callbacks.add(self.event.set)
        try:
            yield self
        finally:
            self._runtime.shutdown_callbacks.discard(self.event.set)
            for partition_log in self._logs:
                partition_log.remove_listener(self._from_engine)


class EventStoreServicer(eventstore_pb2_grpc.EventStoreServiceServicer):
    """Translates EventStoreService calls into EventStore calls."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def _store(self) -> EventStore:
        return self._runtime.event_store()

    async def _run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self._runtime.run(lambda: function(*args, **kwargs))

    @unary_errors
    async def CreateStoreTopic(  # noqa: N802  (the RPC name from the proto)
        self, request: eventstore_pb2.CreateStoreTopicRequest, context: Any
    ) -> eventstore_pb2.CreateStoreTopicResponse:
        await self._run(self._store().create_store_topic, request.topic,
                        request.partitions or 1, dict(request.configs))
        return _pb.CreateStoreTopicResponse()

    @unary_errors
    async def AppendToStream(  # noqa: N802  (the RPC name from the proto)
        self, request: eventstore_pb2.AppendToStreamRequest, context: Any
    ) -> eventstore_pb2.AppendToStreamResponse:
        expected = _expected(request)
        events = [_event_data(e) for e in request.events]
        result = await self._run(self._store().append_to_stream, request.topic, request.stream,
                                 expected, events)
        return _pb.AppendToStreamResponse(
            first_version=result.first_version, last_version=result.last_version,
            partition=result.partition, first_offset=result.first_offset,
            last_offset=result.last_offset, duplicate=result.duplicate,
        )

    @unary_errors
    async def ReadStream(  # noqa: N802  (the RPC name from the proto)
        self, request: eventstore_pb2.ReadStreamRequest, context: Any
    ) -> eventstore_pb2.ReadStreamResponse:
        direction = Direction.BACKWARDS if request.backwards else Direction.FORWARDS
        from_version = request.from_version if request.HasField("from_version") else None
        result = await self._run(
            self._store().read_stream, request.topic, request.stream, from_version, direction,
            _count(request.max_count), upcast=request.upcast,
        )
        return _pb.ReadStreamResponse(
            events=_recorded(result.events), last_version=result.last_version,
            end_of_stream=result.end_of_stream,
        )

    @unary_errors
    async def ReadAll(  # noqa: N802  (the RPC name from the proto)
        self, request: eventstore_pb2.ReadAllRequest, context: Any
    ) -> eventstore_pb2.ReadAllResponse:
        store = self._store()
        position = _position(request.from_position if request.HasField("from_position")
                             else None)
        count = _count(request.max_count)
        if request.category:
            result = await self._run(store.read_category, request.topic, request.category,
                                     position, count, upcast=request.upcast)
        else:
            result = await self._run(store.read_all, request.topic, position, count,
                                     upcast=request.upcast)
        return _pb.ReadAllResponse(
            events=_recorded(result.events),
            next_position=_pb.AllPosition(offsets=result.next_position.offsets),
        )

    @unary_errors
    async def DeleteStream(  # noqa: N802  (the RPC name from the proto)
        self, request: eventstore_pb2.DeleteStreamRequest, context: Any
    ) -> eventstore_pb2.DeleteStreamResponse:
        expected = _expected(request) if request.WhichOneof("expected") else ANY
        await self._run(self._store().delete_stream, request.topic, request.stream, expected)
        return _pb.DeleteStreamResponse()

    @unary_errors
    async def TruncateStream(  # noqa: N802  (the RPC name from the proto)
        self, request: eventstore_pb2.TruncateStreamRequest, context: Any
    ) -> eventstore_pb2.TruncateStreamResponse:
        await self._run(self._store().truncate_stream, request.topic, request.stream,
                        request.before_version)
        return _pb.TruncateStreamResponse()

    @unary_errors
    async def SaveSnapshot(  # noqa: N802  (the RPC name from the proto)
        self, request: eventstore_pb2.SaveSnapshotRequest, context: Any
    ) -> eventstore_pb2.SaveSnapshotResponse:
        await self._run(self._store().save_snapshot, request.topic, request.stream,
                        request.version, request.state)
        return _pb.SaveSnapshotResponse()

    @unary_errors
    async def LoadSnapshot(  # noqa: N802  (the RPC name from the proto)
        self, request: eventstore_pb2.LoadSnapshotRequest, context: Any
    ) -> eventstore_pb2.LoadSnapshotResponse:
        snapshot = await self._run(self._store().load_snapshot, request.topic, request.stream)
        if snapshot is None:
            return _pb.LoadSnapshotResponse(found=False)
        return _pb.LoadSnapshotResponse(found=True, version=snapshot.version,
                                        state=snapshot.state)

    @stream_errors
    async def Subscribe(  # noqa: N802  (the RPC name from the proto)
        self, request: eventstore_pb2.SubscribeEventsRequest, context: Any
    ) -> AsyncIterator[eventstore_pb2.SubscribeEventsResponse]:
        store = self._store()
        batch = request.max_batch or DEFAULT_SUBSCRIBE_BATCH
        if not 1 <= batch <= MAX_READ_COUNT:
            raise InvalidRequestError(f"max_batch must be 0 to {MAX_READ_COUNT}, got {batch}")
        subscription, follows_all = await self._open_subscription(store, request)
        logs = self._runtime.broker().partitions(request.topic)
        caught_up = False
        try:
            with _Wakeup(self._runtime, logs).registered() as wakeup:
                while True:
                    if self._runtime.closing:
                        raise NotReadyError("the server is shutting down; subscribe again from "
                                            "your last position after the restart")
                    wakeup.event.clear()  # before polling: a wake-up during the poll is kept
                    events = await self._runtime.run(subscription.next_batch, 0.0, batch)
                    if events or not caught_up:
                        response = _pb.SubscribeEventsResponse(
                            events=_recorded(events), caught_up=not events and not caught_up,
                        )
                        if follows_all:
                            response.next_position.offsets.extend(subscription.position.offsets)
                        caught_up = caught_up or not events
                        yield response
                    if not events:
                        await wakeup.event.wait()
        finally:
            subscription.close()

    async def _open_subscription(
        self, store: EventStore, request: eventstore_pb2.SubscribeEventsRequest
    ) -> tuple[Any, bool]:
        """The engine subscription, and whether it follows a whole topic (position cursor)."""
        source = request.WhichOneof("source")
        if source == "stream":
            start = request.stream
            if start.from_version < 0:
                raise InvalidRequestError(f"from_version must be >= 0, got {start.from_version}")
            subscription = await self._run(store.subscribe_to_stream, request.topic,
                                           start.stream, start.from_version,
                                           upcast=request.upcast)
            return subscription, False
        if source == "all":
            start_all = request.all
            position = (await self._run(store.head_position, request.topic) if start_all.from_end
                        else _position(start_all.from_position))
            subscription = await self._run(store.subscribe_to_all, request.topic, position,
                                           category=start_all.category or None,
                                           upcast=request.upcast)
            return subscription, True
        raise InvalidRequestError("say what to subscribe to: `stream` or `all`")
