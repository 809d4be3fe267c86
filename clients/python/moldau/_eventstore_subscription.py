"""Event-store subscriptions: catch up from a position, then follow live, as iterators.

A reader task on the client's loop drives one server-streaming ``Subscribe`` call and queues
its batches (at most ``_QUEUE_BATCHES`` ahead, then gRPC flow control holds the server back).
It keeps the resume point of what it has queued: a stream subscription the next version, an
all/category subscription the server's ``next_position``. When the connection drops
(UNAVAILABLE) it subscribes again from that point, so the events handed out have no gap and
no duplicate across a reconnect, just as across the catch-up/live switch (which the server
guarantees: one cursor decides what comes next).

Concurrency: :class:`AsyncSubscription` lives on one event loop; :class:`Subscription` (the
blocking twin) runs it on its client's loop thread and may be iterated from one thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from moldau._eventstore_types import AllPosition, RecordedEvent, UpcasterRegistry
from moldau._eventstore_wire import position_message, recorded_events
from moldau._runtime import LoopThread, cancel_and_wait
from moldau.errors import ClientClosedError, error_from_rpc
from moldau.v1 import eventstore_pb2

__all__ = ["AsyncSubscription", "Subscription", "SubscriptionSource"]

_pb = eventstore_pb2
_QUEUE_BATCHES = 8
_RECONNECT_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass(frozen=True, slots=True)
class SubscriptionSource:
    """What a subscription follows: one ``stream``, else the topic (or its ``category``)."""

    topic: str
    stream: str | None = None
    from_version: int = 0
    category: str = ""
    from_position: AllPosition | None = None
    from_end: bool = False


class AsyncSubscription:
    """Events of a stream, a category or a whole store topic: stored ones, then live ones.

    ``async for event in subscription`` never ends by itself; leave the loop (or call
    :meth:`close`) to stop. :attr:`caught_up` turns True once every event stored when the
    subscription started has been handed out. :attr:`position` is where a new subscription
    would resume after the events handed out so far: the next version (stream) or an
    :class:`AllPosition` (category, all).
    """

    def __init__(self, open_call: Callable[[eventstore_pb2.SubscribeEventsRequest], Any],
                 source: SubscriptionSource, upcasters: UpcasterRegistry, max_batch: int,
                 reconnect: bool) -> None:
        self._open_call = open_call
        self._source = source
        self._upcasters = upcasters
        self._max_batch = max_batch
        self._reconnect = reconnect
        self._queue: asyncio.Queue[tuple[list[RecordedEvent], Any, bool] | BaseException] = (
            asyncio.Queue(_QUEUE_BATCHES)
        )
        self._buffer: collections.deque[RecordedEvent] = collections.deque()
        self._read_cursor: Any = (source.from_version if source.stream is not None
                                  else source.from_position)
        self._position: Any = self._read_cursor
        self._batch_cursor: Any = self._read_cursor
        self._caught_up = False
        self._closed = False
        self._call: Any = None
        self._reader = asyncio.ensure_future(self._read())

    @property
    def position(self) -> int | AllPosition | None:
        """The resume point after the events handed out (None: the start, for all/category)."""
        position: int | AllPosition | None = self._position
        return position

    @property
    def caught_up(self) -> bool:
        return self._caught_up

    @property
    def closed(self) -> bool:
        return self._closed

    def _request(self) -> eventstore_pb2.SubscribeEventsRequest:
        source = self._source
        request = _pb.SubscribeEventsRequest(topic=source.topic, max_batch=self._max_batch)
        if source.stream is not None:
            request.stream.stream = source.stream
            request.stream.from_version = int(self._read_cursor)
            return request
        request.all.category = source.category
        cursor = position_message(self._read_cursor)
        if cursor is not None:
            request.all.from_position.CopyFrom(cursor)
        elif source.from_end:
            request.all.from_end = True
        else:
            request.all.SetInParent()
        return request

    async def _read(self) -> None:
        attempt = 0
        while not self._closed:
            self._call = self._open_call(self._request())
            try:
                async for response in self._call:
                    attempt = 0
                    events = list(recorded_events(response.events, self._upcasters))
                    if self._source.stream is not None:
                        if events:
                            self._read_cursor = events[-1].version + 1
                    elif response.HasField("next_position"):
                        self._read_cursor = AllPosition(tuple(response.next_position.offsets))
                    await self._queue.put((events, self._read_cursor, response.caught_up))
                return
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                if self.closed:  # cancelled by close()
                    return
                if not (self._reconnect and error.retriable) or attempt >= len(
                        _RECONNECT_BACKOFF_S):
                    await self._queue.put(error)
                    return
                await asyncio.sleep(_RECONNECT_BACKOFF_S[attempt])
                attempt += 1

    async def _take(self, timeout_s: float | None) -> list[RecordedEvent] | None:
        """The next queued batch (its cursor into ``_batch_cursor``); None on timeout."""
        if self._closed:
            raise ClientClosedError("the subscription is closed")
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            self._closed = True
            raise item
        events, self._batch_cursor, caught_up = item
        self._caught_up = self._caught_up or caught_up
        return events

    async def next_batch(self, timeout_s: float | None = None) -> list[RecordedEvent]:
        """The next events (waiting up to ``timeout_s``, forever for None); [] on timeout.

        Raises:
            MoldauError: the subscription failed (a reconnect did not help).
            ClientClosedError: the subscription is closed.
        """
        if self._buffer:
            events, self._buffer = list(self._buffer), collections.deque()
        else:
            events = await self._take(timeout_s) or []
        self._position = self._batch_cursor
        return events

    async def __anext__(self) -> RecordedEvent:
        while not self._buffer:
            try:
                events = await self._take(None)
            except ClientClosedError:
                raise StopAsyncIteration from None
            self._buffer.extend(events or ())
            if not self._buffer:
                self._position = self._batch_cursor
        event = self._buffer.popleft()
        if not self._buffer:  # the batch is done: the server's cursor covers skipped records
            self._position = self._batch_cursor
        elif self._source.stream is not None:
            self._position = event.version + 1
        else:
            start = self._position or AllPosition.start(len(self._batch_cursor.offsets))
            self._position = start.after(event.position)
        return event

    def __aiter__(self) -> AsyncIterator[RecordedEvent]:
        return self

    async def close(self) -> None:
        """Cancel the call; iteration ends (idempotent)."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        await cancel_and_wait(self._reader)

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()


class Subscription:
    """The blocking twin of :class:`AsyncSubscription` (same attributes), iterated with
    ``for event in subscription``; made by :class:`moldau.EventStore`'s ``subscribe_*``."""

    def __init__(self, thread: LoopThread, inner: AsyncSubscription) -> None:
        self._thread = thread
        self._inner = inner

    @property
    def position(self) -> int | AllPosition | None:
        return self._inner.position

    @property
    def caught_up(self) -> bool:
        return self._inner.caught_up

    def next_batch(self, timeout_s: float | None = None) -> list[RecordedEvent]:
        """See :meth:`AsyncSubscription.next_batch`."""
        return self._thread.run(self._inner.next_batch(timeout_s))

    def __iter__(self) -> Iterator[RecordedEvent]:
        return self

    def __next__(self) -> RecordedEvent:
        try:
            return self._thread.run(self._inner.__anext__())
        except (StopAsyncIteration, ClientClosedError):
            raise StopIteration from None

    def close(self) -> None:
        """Cancel the call (idempotent; a no-op once the client is closed)."""
        with contextlib.suppress(ClientClosedError):
            self._thread.run(self._inner.close())

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
