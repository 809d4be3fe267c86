"""EventStoreService: streams with expected versions, reads, snapshots and live subscriptions.

The engine's :class:`~engine.views.eventstore.EventStore` does the work; appends wait for fsync
and reads may touch the disk, so both run on worker threads.

Subscriptions do not park a worker thread while they wait for new events (a few hundred idle
subscribers would exhaust the pool): each step polls the engine subscription without waiting
(``next_batch(0)``) on a worker, and when there is nothing new the call awaits an asyncio event
that the store topic's partition logs set when their high watermark moves, exactly like the
fetch path's watches.

AppendStream (pipelined appends): its messages arrive as ``append_wire.ParsedAppends``, read
from their wire bytes (see :func:`add_event_store_service`). Every store partition has one
:class:`_GroupLane` for the whole server, shared by all calls. Appends reach their partition's
lane in arrival order; a drain job on a worker thread takes every append queued so far and
hands the group to ``EventStore.append_group`` (one check per append, one log batch for the
accepted ones), then waits for one fsync, then answers the group. Appends that arrive
meanwhile form the next group, so the group grows with the load and a lone append waits for
nobody. Order per partition (so per stream) is arrival order; each call has at most
``APPEND_STREAM_WINDOW`` appends unanswered, past that the server stops reading it and gRPC
flow control holds the client.

A wrong expected version carries the stream's version machine-readably: as the
``moldau-current-version`` trailing metadata of AppendToStream/DeleteStream, and as
``AppendError.current_version`` on AppendStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import grpc

from engine.errors import WrongExpectedVersionError
from engine.log.partition_log import PartitionLog
from engine.partitioner import partition_for_key
from engine.views.eventstore import (
    ANY,
    AllPosition,
    Direction,
    EventData,
    EventStore,
    RecordedEvent,
)
from engine.views.eventstore.group import GroupOutcome
from grpc_api.append_wire import (
    ParsedAppends,
    decode_appends,
    event_data,
    expected_version,
)
from grpc_api.errors import (
    ERROR_METADATA_KEY,
    InvalidRequestError,
    NotReadyError,
    error_reason,
    status_for,
    stream_errors,
    unary_errors,
)
from grpc_api.logs import REQUEST_ID, REQUEST_ID_KEY
from grpc_api.runtime import Runtime
from moldau.v1 import eventstore_pb2, eventstore_pb2_grpc

__all__ = ["EventStoreServicer", "add_event_store_service"]

_pb = eventstore_pb2
MAX_READ_COUNT = 4096
DEFAULT_SUBSCRIBE_BATCH = 1000
MAX_LIST_COUNT = 1000
APPEND_STREAM_WINDOW = 16_384
CURRENT_VERSION_KEY = "moldau-current-version"
_Append = tuple[str, int, Sequence[EventData]]
_Deliver = Callable[[GroupOutcome | BaseException], None]


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


async def _abort_wrong_version(context: Any, exc: WrongExpectedVersionError) -> None:
    """Abort like ``unary_errors`` would, adding the current version as trailing metadata."""
    code, message = status_for(exc)
    await context.abort(code, message, trailing_metadata=(
        (ERROR_METADATA_KEY, error_reason(exc)), (REQUEST_ID_KEY, REQUEST_ID.get()),
        (CURRENT_VERSION_KEY, str(exc.current)),
    ))


def _add_outcome(response: eventstore_pb2.AppendStreamResponse, correlation_id: int,
                 outcome: GroupOutcome | BaseException) -> None:
    """Append one answer to ``response`` (filled in place: no nested message copies)."""
    answer = response.outcomes.add()
    answer.correlation_id = correlation_id
    if isinstance(outcome, BaseException) or outcome is None:
        error = outcome if outcome is not None else RuntimeError("append not run")
        code, message = status_for(error)
        failed = answer.error
        failed.code = code.value[0]
        failed.message = message
        failed.reason = error_reason(error)
        if isinstance(error, WrongExpectedVersionError):
            failed.current_version = error.current
        return
    result = answer.response
    result.first_version = outcome.first_version
    result.last_version = outcome.last_version
    result.partition = outcome.partition
    result.first_offset = outcome.first_offset
    result.last_offset = outcome.last_offset
    if outcome.duplicate:
        result.duplicate = True


class _GroupLane:
    """One store partition's pipelined appends, run in arrival order, a group at a time
    (see the module docstring). Submit from the event loop thread only."""

    def __init__(self, runtime: Runtime, topic: str, partition: int) -> None:
        self._runtime = runtime
        self._topic = topic
        self._partition = partition
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._pending: list[tuple[_Append, _Deliver]] = []
        self._draining = False

    def submit(self, append: _Append, deliver: _Deliver) -> None:
        with self._lock:
            self._pending.append((append, deliver))
            start = not self._draining
            self._draining = True
        if start:
            self._runtime.executor.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                group, self._pending = self._pending, []
                if not group:
                    self._draining = False
                    return
            outcomes = self._run_group([append for append, _ in group])
            delivers = [deliver for _, deliver in group]
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                self._loop.call_soon_threadsafe(_deliver_all, delivers, outcomes)

    def _run_group(self, appends: list[_Append]) -> Sequence[GroupOutcome | BaseException]:
        try:
            store = self._runtime.event_store()
            outcomes, end_offset = store.append_group(self._topic, self._partition, appends)
            if end_offset:
                store.wait_durable(self._topic, self._partition, end_offset)
        except Exception as exc:  # the whole group failed (read-only log, failed fsync ...)
            return [exc] * len(appends)
        return outcomes


def _deliver_all(delivers: list[_Deliver],
                 outcomes: Sequence[GroupOutcome | BaseException]) -> None:
    for deliver, outcome in zip(delivers, outcomes, strict=True):
        deliver(outcome)


class _AppendCall:
    """One AppendStream call's answers waiting to be sent, and its window."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.in_flight = 0
        self.answers: list[tuple[int, GroupOutcome | BaseException]] = []
        self.ready = asyncio.Event()
        self.room = asyncio.Event()
        self.finished = False
        self.error: BaseException | None = None

    def answer(self, correlation_id: int, outcome: GroupOutcome | BaseException) -> None:
        self.answers.append((correlation_id, outcome))
        self.ready.set()

    def take(self) -> eventstore_pb2.AppendStreamResponse | None:
        """The answers so far as one message (None if there are none); frees their room."""
        answers, self.answers = self.answers, []
        if not answers:
            return None
        self.in_flight -= len(answers)
        if self.in_flight < self.window:
            self.room.set()
        response = _pb.AppendStreamResponse()
        for correlation_id, outcome in answers:
            _add_outcome(response, correlation_id, outcome)
        return response


class _Handlers:
    """Stands in for a server to collect what the generated ``add_..._to_server`` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers come to add_registered_method_handlers

    def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
        self.handlers = dict(handlers)


def add_event_store_service(servicer: EventStoreServicer, server: Any) -> None:
    """Register ``servicer`` like ``add_EventStoreServiceServicer_to_server``, except that
    AppendStream's messages reach it as :class:`ParsedAppends` (``append_wire``), not parsed
    by protobuf first."""
    collected = _Handlers()
    eventstore_pb2_grpc.add_EventStoreServiceServicer_to_server(servicer, collected)
    handlers = collected.handlers
    if "AppendStream" not in handlers:  # generated code that registers some other way
        raise RuntimeError("eventstore_pb2_grpc did not register AppendStream; regenerate it")
    handlers["AppendStream"] = grpc.stream_stream_rpc_method_handler(
        servicer.AppendStream, request_deserializer=decode_appends,
        response_serializer=_pb.AppendStreamResponse.SerializeToString)
    name = eventstore_pb2.DESCRIPTOR.services_by_name["EventStoreService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


class EventStoreServicer(eventstore_pb2_grpc.EventStoreServiceServicer):
    """Translates EventStoreService calls into EventStore calls."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._lanes: dict[tuple[str, int], _GroupLane] = {}
        self._partition_counts: dict[str, int] = {}

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
        expected = expected_version(request)
        events = [event_data(e) for e in request.events]
        try:
            result = await self._run(self._store().append_to_stream, request.topic,
                                     request.stream, expected, events)
        except WrongExpectedVersionError as exc:
            await _abort_wrong_version(context, exc)
            raise
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
        expected = expected_version(request) if request.WhichOneof("expected") else ANY
        try:
            await self._run(self._store().delete_stream, request.topic, request.stream,
                            expected)
        except WrongExpectedVersionError as exc:
            await _abort_wrong_version(context, exc)
            raise
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

    @unary_errors
    async def ListStreams(  # noqa: N802  (the RPC name from the proto)
        self, request: eventstore_pb2.ListStreamsRequest, context: Any
    ) -> eventstore_pb2.ListStreamsResponse:
        count = request.max_count or MAX_LIST_COUNT
        if not 1 <= count <= MAX_LIST_COUNT:
            raise InvalidRequestError(f"max_count must be 0 to {MAX_LIST_COUNT}, got {count}")
        streams, more = await self._run(
            self._store().list_streams, request.topic, request.category or None,
            include_deleted=request.include_deleted, after=request.after, max_count=count,
        )
        return _pb.ListStreamsResponse(streams=[
            _pb.StreamInfo(stream=s.stream, last_version=s.last_version,
                           truncate_before=s.truncate_before, deleted=s.deleted,
                           partition=s.partition)
            for s in streams
        ], more=more)

    @stream_errors
    async def AppendStream(  # type: ignore[override]  # noqa: N802  (the RPC name)
        self, request_iterator: AsyncIterator[ParsedAppends], context: Any
    ) -> AsyncIterator[eventstore_pb2.AppendStreamResponse]:
        """Registered by :func:`add_event_store_service`: messages arrive as ParsedAppends."""
        self._store()  # UNAVAILABLE at once while the broker is not ready
        call = _AppendCall(APPEND_STREAM_WINDOW)
        reader = asyncio.create_task(self._read_appends(request_iterator, call))
        try:
            while True:
                await call.ready.wait()
                call.ready.clear()
                response = call.take()
                if response is not None:
                    yield response
                if call.error is not None:
                    raise call.error
                if call.finished and call.in_flight == 0:
                    return
        finally:
            reader.cancel()

    async def _read_appends(self, requests: AsyncIterator[ParsedAppends],
                            call: _AppendCall) -> None:
        """Route every append to its partition's lane, in arrival order."""
        try:
            async for message in requests:
                if message.error is not None:
                    raise message.error
                for correlation_id, topic, stream, expected, events in message.appends:
                    while call.in_flight >= call.window:
                        call.room.clear()
                        await call.room.wait()
                    call.in_flight += 1
                    if isinstance(events, InvalidRequestError):
                        call.answer(correlation_id, events)
                        continue
                    try:
                        count = self._partition_counts.get(topic)
                        if count is None:
                            count = await self._partition_count(topic)
                    except Exception as exc:  # answered with its status; the call goes on
                        call.answer(correlation_id, exc)
                        continue
                    # murmur2 runs in C: no cache of stream -> partition needed
                    partition = partition_for_key(stream.encode(), count)
                    lane = self._lanes.get((topic, partition))
                    if lane is None:
                        lane = self._lanes[(topic, partition)] = _GroupLane(
                            self._runtime, topic, partition)
                    lane.submit((stream, expected, events),
                                functools.partial(call.answer, correlation_id))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # the request stream itself failed: end the call with it
            call.error = exc
        call.finished = True
        call.ready.set()

    async def _partition_count(self, topic: str) -> int:
        """Open a store topic once per server (on a worker: it may read its checkpoint)."""
        count = len(await self._run(self._store().open_topic, topic))
        self._partition_counts[topic] = count
        return count

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
