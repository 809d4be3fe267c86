"""The producer's I/O: drains the accumulator into one pipelined ProduceStream.

One task writes ready batches (pre-encoded RecordBatch v2) as ``ProduceRequest``s, each with a
correlation id; a second task reads the acknowledgements and completes the batches. gRPC flow
control is the back-pressure: when the broker stops reading, ``write`` waits.

When the stream breaks (connection lost, broker restarting), every batch in flight has an
unknown outcome: they go back to the front of their partitions' queues and are resent, byte for
byte, on a new stream after a backoff; the broker recognises the ones it already stored by
producer id and sequence. Only errors the broker *answered* with are final for a batch, except
UNAVAILABLE (retried) and out-of-order sequences (see :mod:`moldau._accumulator`).

With ``tcp_address`` the ProduceStream goes to the broker's TCP port (fewer thread hand-offs
per batch, see :mod:`moldau._tcp`); metadata calls stay on gRPC.

Runs on one event loop: the caller's for :class:`~moldau.AsyncProducer`, a private loop thread
for :class:`~moldau.Producer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from typing import Any

import grpc

from engine.records import Codec
from moldau._accumulator import Accumulator, PendingBatch
from moldau._runtime import call, open_channel
from moldau._tcp import TcpCall, TcpChannel, TcpRpcError
from moldau.errors import (
    ClientClosedError,
    DeliveryTimeoutError,
    MoldauError,
    TopicNotFoundError,
    error_from_rpc,
    error_from_status,
)
from moldau.v1 import admin_pb2, admin_pb2_grpc, produce_pb2, produce_pb2_grpc

__all__ = ["Sender"]

_S = grpc.StatusCode
_RETRIABLE_STREAM = frozenset({_S.UNAVAILABLE, _S.CANCELLED, _S.DEADLINE_EXCEEDED, _S.UNKNOWN,
                               _S.INTERNAL})
_UNAVAILABLE = _S.UNAVAILABLE.value[0]
_FAILED_PRECONDITION = _S.FAILED_PRECONDITION.value[0]
_MAX_BACKOFF_S = 2.0
_PRODUCE_STREAM = "/moldau.v1.ProduceService/ProduceStream"


class Sender:
    """Owns the channel, the ProduceStream and the batches in flight on it."""

    def __init__(
        self,
        server: str,
        accumulator: Accumulator,
        *,
        codec: Codec,
        producer_id: int,
        request_timeout_s: float,
        delivery_timeout_s: float,
        retry_backoff_s: float,
        tcp_address: str | None = None,
    ) -> None:
        self.server = server
        self.tcp_address = tcp_address
        self._accumulator = accumulator
        self._codec = codec
        self._producer_id = producer_id
        self._request_timeout_s = request_timeout_s
        self._delivery_timeout_s = delivery_timeout_s
        self._retry_backoff_s = retry_backoff_s
        self._backoff_s = retry_backoff_s
        self._retry_at = 0.0
        self._in_flight: dict[int, PendingBatch] = {}
        self._correlation = itertools.count(1)
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._channel: grpc.aio.Channel | None = None
        self._produce: produce_pb2_grpc.ProduceServiceStub | None = None
        self._tcp: TcpChannel | None = None
        self._admin: admin_pb2_grpc.AdminServiceStub | None = None
        self._partition_counts: dict[str, int] = {}
        self._closing = False
        #: Held while batches are drained and written to a TCP stream, by the loop or by
        #: send_direct (any thread), and while a failed stream's batches are taken back:
        #: drain order is write order, and nothing goes in flight on a stream given up.
        #: Never held across an await.
        self._send_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the channel and start the send loop on the running loop."""
        self._wake = asyncio.Event()
        self._channel = open_channel(self.server)
        self._produce = produce_pb2_grpc.ProduceServiceStub(self._channel)
        if self.tcp_address is not None:
            self._tcp = TcpChannel(self.tcp_address)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._task = asyncio.create_task(self._run(), name="moldau-sender")

    def wake(self) -> None:
        """Tell the send loop there is work (call on the loop's thread)."""
        if self._wake is not None:
            self._wake.set()

    async def close(self, *, drain: bool) -> None:
        """Stop: with ``drain``, after everything queued is acknowledged or failed."""
        self._closing = True
        if not drain:
            self._fail_all(ClientClosedError("the producer was closed before this was sent"))
        self.wake()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._end_stream()
        if self._tcp is not None:
            await self._tcp.close()
        if self._channel is not None:
            await self._channel.close()

    # ------------------------------------------------------------------ metadata

    async def partition_count(self, topic: str) -> int:
        """Partitions of ``topic`` (cached; forgotten when a send finds it missing)."""
        count = self._partition_counts.get(topic)
        if count is None:
            assert self._admin is not None
            reply = await call(
                self._admin.DescribeTopic,
                admin_pb2.DescribeTopicRequest(name=topic),
                self._request_timeout_s,
            )
            count = self._partition_counts[topic] = reply.topic.partition_count
        return count

    def cached_partition_count(self, topic: str) -> int | None:
        return self._partition_counts.get(topic)

    # ------------------------------------------------------------------ the send loop

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: fail what is pending rather than hang the caller
            self._fail_all(MoldauError(f"the producer's send loop failed: {exc!r}"))
            raise

    async def _loop(self) -> None:
        accumulator = self._accumulator
        assert self._wake is not None
        while True:
            self._wake.clear()
            now = time.monotonic()
            self._expire(now)
            if now >= self._retry_at:
                if self._tcp is not None:
                    await self._send_tcp()
                else:
                    await self._send_all(accumulator.drain(now))
            if self._closing and accumulator.pending_count() == 0:
                return
            deadline = accumulator.next_deadline()
            if self._retry_at > now:
                deadline = self._retry_at if deadline is None else min(deadline, self._retry_at)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._in_flight or accumulator.pending_count() or self._tcp is not None:
                # wake now and then to expire batches past delivery_timeout_ms (with TCP,
                # send_direct may put batches in flight without waking this loop)
                timeout = min(timeout if timeout is not None else 1.0, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _send_all(self, batches: list[PendingBatch]) -> None:
        """Write one drain's batches, all on one stream.

        If that stream breaks part way, the batches not yet written go back to their queues
        with the ones it had in flight. Writing them on a new stream instead would put them
        ahead of those earlier batches: the broker would store them, and the earlier batches,
        resent later, could fall out of the five it remembers per producer and be refused as
        out of sequence although they were stored.
        """
        stream = None
        for index, batch in enumerate(batches):
            if stream is not None and self._call is not stream:
                self._accumulator.requeue(batches[index:])
                return
            stream = await self._send(batch)

    async def _send_tcp(self) -> None:
        """Drain and write on the TCP stream; the waits (connecting, a backed-up socket)
        come first, so the drain and the writes run under the send lock without a pause."""
        stream = self._call
        if stream is None:
            if self._accumulator.pending_count() == 0:
                return
            self._open_stream()
            stream = self._call
        assert isinstance(stream, TcpCall)
        if not await stream.wait_writable():
            return  # the call failed: its reader requeues what was in flight
        with self._send_lock:
            self._write_drained(stream)

    def send_direct(self) -> bool:
        """Any thread: drain and write what is ready straight onto the TCP stream.

        For the blocking producer with ``linger_ms=0``: a batch leaves from the application's
        thread instead of waking the loop thread to send it, one thread wake-up less per
        record end to end. False when that is not possible now (no TCP stream open yet, TLS,
        a retry backoff, a backed-up socket, the loop sending at this moment): the caller
        wakes the loop as before.
        """
        stream = self._call
        if (not isinstance(stream, TcpCall) or self._closing or self._accumulator.linger_s
                or not stream.writable_now() or time.monotonic() < self._retry_at):
            return False
        if not self._send_lock.acquire(blocking=False):
            return False
        try:
            if stream is not self._call:
                return False
            self._write_drained(stream)
        finally:
            self._send_lock.release()
        return True

    def _write_drained(self, stream: TcpCall) -> None:
        """Under the send lock: put every drainable batch in flight and write it."""
        if stream is not self._call:
            return
        batches = self._accumulator.drain(time.monotonic())
        for index, batch in enumerate(batches):
            request = self._request(batch)
            if request is None:
                continue
            try:
                stream.write_now(request)
            except TcpRpcError:
                # the connection broke: its reader requeues what is in flight (this batch
                # too); the rest of the drain was never written and goes back now
                self._accumulator.requeue(batches[index + 1:])
                return

    async def _send(self, batch: PendingBatch) -> Any:
        """Write ``batch`` on the current stream (opened if needed); returns that stream."""
        request = self._request(batch)
        stream = self._call
        if request is None:
            return stream
        if stream is None:
            self._open_stream()
            stream = self._call
        try:
            await stream.write(request)
        except Exception as exc:  # the stream ended under us; its reader has (or will) requeue
            self._stream_failed(stream, exc)
        return stream

    def _request(self, batch: PendingBatch) -> produce_pb2.ProduceRequest | None:
        """Encode ``batch`` and put it in flight under a new correlation id; None when it
        cannot be encoded (the batch has failed)."""
        try:
            data = batch.encode(self._codec, self._producer_id)
        except (ValueError, TypeError) as exc:
            self._fail(batch, MoldauError(f"cannot encode the batch: {exc}"))
            return None
        correlation_id = next(self._correlation)
        self._in_flight[correlation_id] = batch
        return produce_pb2.ProduceRequest(
            topic=batch.topic, partition=batch.partition, record_batch=data,
            correlation_id=correlation_id,
        )

    def _open_stream(self) -> None:
        assert self._produce is not None
        if self._tcp is not None:
            stream: Any = self._tcp.stream_stream(
                _PRODUCE_STREAM, produce_pb2.ProduceRequest.SerializeToString,
                produce_pb2.ProduceStreamResponse.FromString,
            )()
        else:
            stream = self._produce.ProduceStream()
        self._call = stream
        self._reader = asyncio.create_task(self._read(stream), name="moldau-acks")

    async def _end_stream(self) -> None:
        stream, reader = self._call, self._reader
        self._call = None
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.done_writing()
        if reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(reader, 5.0)
            if not reader.done():
                reader.cancel()
        if stream is not None:
            stream.cancel()

    async def _read(self, stream: Any) -> None:
        try:
            async for response in stream:
                self._on_response(response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # grpc.RpcError: the stream broke
            self._stream_failed(stream, exc)
            return
        if stream is self._call and self._in_flight:
            self._stream_failed(stream, error_from_status(_S.UNAVAILABLE, "stream ended"))

    # ------------------------------------------------------------------ outcomes

    def _on_response(self, response: produce_pb2.ProduceStreamResponse) -> None:
        batch = self._in_flight.pop(response.correlation_id, None)
        if batch is None:
            return
        self._backoff_s = self._retry_backoff_s
        if response.HasField("error"):
            self._on_error(batch, response.error.code, response.error.message)
        else:
            result = response.response.results[0]
            if result.HasField("error"):
                self._on_error(batch, result.error.code, result.error.message)
            else:
                self._accumulator.acknowledged(batch)
                batch.completion.set_result(
                    result.base_offset, result.log_append_time_ms, result.duplicate
                )
        self.wake()

    def _on_error(self, batch: PendingBatch, code: int, message: str) -> None:
        if code == _UNAVAILABLE:
            self._accumulator.requeue([batch])
            self._back_off()
            return
        if (code == _FAILED_PRECONDITION and "expected" in message
                and self._accumulator.out_of_order(batch)):
            return
        error = error_from_status(code, message)
        if isinstance(error, TopicNotFoundError):
            self._partition_counts.pop(batch.topic, None)
        self._fail(batch, error)

    def _stream_failed(self, stream: Any, exc: BaseException) -> None:
        """Requeue (or fail) everything in flight on ``stream`` if it is still the current one."""
        with self._send_lock:  # no send_direct is between putting a batch in flight and writing
            if stream is not self._call:
                return
            self._call = None
            batches = list(self._in_flight.values())
            self._in_flight.clear()
        stream.cancel()  # a half-dead stream must not deliver acks for requeued batches
        error = error_from_rpc(exc) if isinstance(exc, grpc.RpcError) else None
        if error is None and isinstance(exc, MoldauError):
            error = exc
        if error is None or error.retriable or error.code in _RETRIABLE_STREAM:
            self._accumulator.requeue(batches)
            self._back_off()
        else:
            for batch in batches:
                self._fail(batch, error)
        self.wake()

    def _back_off(self) -> None:
        self._retry_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, _MAX_BACKOFF_S)

    def _fail(self, batch: PendingBatch, error: BaseException) -> None:
        self._accumulator.failed(batch)
        batch.completion.set_error(error)

    def _expire(self, now: float) -> None:
        limit = self._delivery_timeout_s
        expired = self._accumulator.expired(now, limit)
        for correlation_id, batch in list(self._in_flight.items()):
            if now - batch.created > limit:
                del self._in_flight[correlation_id]
                expired.append(batch)
        for batch in expired:
            self._fail(
                batch,
                DeliveryTimeoutError(
                    f"no acknowledgement within delivery_timeout_ms "
                    f"({limit * 1000:.0f} ms) for {batch.count} records to "
                    f"{batch.topic}[{batch.partition}]; the broker at {self.server} may be down"
                ),
            )

    def _fail_all(self, error: BaseException) -> None:
        with self._send_lock:  # no send_direct is between putting a batch in flight and writing
            self._in_flight.clear()
        for batch in self._accumulator.abandon_all():
            self._fail(batch, error)
