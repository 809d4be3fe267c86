"""Pipelined appends: many appends in flight on one bidirectional ``AppendStream`` call.

Each append gets a correlation id and a future. Appends queued in the same turn of the event
loop go out as one ``AppendStreamRequest`` (up to ``_MAX_APPENDS_PER_MESSAGE``), so gRPC's
per-message cost is paid once per burst, not once per event. Each append is encoded to its
wire bytes once, when it is queued (``encode_append``, in C when built), and a message is the
concatenation of its appends' bytes: the call is opened without a protobuf serializer. The
server answers with ``AppendOutcome`` messages (also grouped) that settle the futures by id.
It runs the appends of one partition in the order sent, so a caller may queue
``expected_version`` n, n+1, n+2 ... for one stream without waiting.

At most ``max_in_flight`` appends are sent and unanswered; more wait in the outbox, which is
bounded only by the caller (await the futures to apply back-pressure).

A broken call (server restart, connection lost) fails every unanswered future with the
retriable error and marks the pipeline ``broken``; the client opens a new one for the next
append. Retrying with the same ``EventData`` is safe: the event ids make appends idempotent.

Concurrency: created, used and closed on one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from moldau._eventstore_types import AppendResult, EventData
from moldau._eventstore_wire import append_result, encode_append
from moldau._runtime import cancel_and_wait
from moldau.errors import (
    ClientClosedError,
    MoldauError,
    UnavailableError,
    WrongExpectedVersionError,
    error_from_rpc,
    error_from_status,
)
from moldau.v1 import eventstore_pb2

__all__ = ["APPEND_STREAM_METHOD", "AppendPipeline"]

_MAX_APPENDS_PER_MESSAGE = 2048
APPEND_STREAM_METHOD = "/moldau.v1.EventStoreService/AppendStream"


class _Message:
    """An outgoing AppendStreamRequest: its appends' wire bytes, in order."""

    __slots__ = ("count", "parts")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.count = 0


def outcome_error(error: eventstore_pb2.AppendError) -> MoldauError:
    """The client error for one failed pipelined append."""
    result = error_from_status(error.code, error.message, error.reason or None)
    if isinstance(result, WrongExpectedVersionError) and error.HasField("current_version"):
        result.current_version = error.current_version
    return result


class AppendPipeline:
    """One ``AppendStream`` call and the appends in flight on it."""

    def __init__(self, method: Callable[[], Any], max_in_flight: int, server: str) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._server = server
        self._max_in_flight = max_in_flight
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[AppendResult]] = {}
        #: Messages not yet written; appends are added to ``_open`` (the last one) until it
        #: holds ``_message_limit``, so the window (``max_in_flight``) is never overrun.
        self._outbox: deque[_Message] = deque()
        self._open: _Message | None = None
        self._message_limit = min(_MAX_APPENDS_PER_MESSAGE, max_in_flight)
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self.broken = False
        self._call = method()
        self._writer = asyncio.ensure_future(self._write())
        self._reader = asyncio.ensure_future(self._read())

    def submit_many(self, topic: str, appends: Iterable[tuple[str, int, Iterable[EventData]]],
                    ) -> list[asyncio.Future[AppendResult]]:
        """Queue ``(stream, expected_version, events)`` appends; one future each.

        Each append is written straight into the next outgoing message. All or nothing: the
        writer cannot run before this returns, so a failure takes back what it queued.

        Raises:
            ValueError, TypeError: an append that cannot be encoded; none of ``appends`` is
                queued.
        """
        if self.broken:
            raise ClientClosedError("the append stream is closed")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[AppendResult]] = []
        pending = self._pending
        message = self._open
        kept = (message, len(message.parts)) if message is not None else None
        outbox_length = len(self._outbox)
        ids: list[int] = []
        try:
            for stream, expected_version, events in appends:
                if message is None or message.count >= self._message_limit:
                    message = self._open = _Message()
                    self._outbox.append(message)
                correlation_id = next(self._ids)
                ids.append(correlation_id)
                message.parts.append(
                    encode_append(correlation_id, topic, stream, expected_version, events))
                message.count += 1
                future: asyncio.Future[AppendResult] = loop.create_future()
                pending[correlation_id] = future
                futures.append(future)
        except BaseException:
            while len(self._outbox) > outbox_length:
                self._outbox.pop()
            self._open = None
            if kept is not None:
                del kept[0].parts[kept[1]:]
                kept[0].count = kept[1]
                self._open = kept[0]
            for correlation_id in ids:
                pending.pop(correlation_id, None)
            for future in futures:
                future.cancel()
            raise
        self._wake.set()
        return futures

    async def _write(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    message = self._outbox[0]  # never empty: submit_many takes back failures
                    size = message.count
                    if self._in_flight + size > self._max_in_flight:
                        self._room.clear()
                        await self._room.wait()
                        continue
                    self._outbox.popleft()
                    if message is self._open:
                        self._open = None  # later appends start the next message
                    self._in_flight += size
                    await self._call.write(b"".join(message.parts))
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:  # the reader sees the same failure and settles futures
            self._fail(error_from_rpc(exc))
        except Exception as exc:
            self._fail(UnavailableError(f"the append stream to {self._server} ended: {exc}"))

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self._settle(response)
            error: MoldauError = UnavailableError(
                f"the append stream to {self._server} ended before every answer")
        except asyncio.CancelledError:
            error = ClientClosedError("the event store client is closed")
        except grpc.RpcError as exc:
            error = error_from_rpc(exc)
        self._fail(error)

    def _settle(self, response: eventstore_pb2.AppendStreamResponse) -> None:
        pending = self._pending
        for outcome in response.outcomes:
            future = pending.pop(outcome.correlation_id, None)
            if future is None or future.done():
                continue
            if outcome.HasField("error"):
                future.set_exception(outcome_error(outcome.error))
            else:
                future.set_result(append_result(outcome.response))
        self._in_flight -= len(response.outcomes)
        if self._in_flight < self._max_in_flight:
            self._room.set()

    def _fail(self, error: MoldauError) -> None:
        """Fail every unanswered append with ``error``; later submits open a new pipeline."""
        self.broken = True
        pending, self._pending = self._pending, {}
        self._outbox.clear()
        self._open = None
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: an abandoned future logs nothing at exit
        self._room.set()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Wait up to ``timeout_s`` for the answers in flight, then end the call."""
        waiting = [f for f in self._pending.values() if not f.done()]
        if waiting and not self.broken:
            await asyncio.wait(waiting, timeout=timeout_s)
        with contextlib.suppress(Exception):
            await self._call.done_writing()
        self._writer.cancel()
        self._call.cancel()
        for task in (self._writer, self._reader):
            await cancel_and_wait(task)
        self._fail(ClientClosedError("the event store client is closed"))
