"""The consumer's I/O: one credit-based Subscribe stream per assigned partition.

Each stream starts at the partition's fetch position with ``credit_bytes`` of credit; the broker
pushes stored batches (whole RecordBatch v2 bytes) up to that credit. Every push becomes a
:class:`Chunk` in the shared :class:`ChunkBuffer`; when the application has consumed a chunk,
its bytes are granted back as credit. So the memory a consumer holds is bounded by
``credit_bytes`` per partition, and a slow application slows the broker's pushes instead of
growing a queue.

A broken stream (broker restart, connection loss) is reopened after a backoff at the offset
after the last chunk received, with the credit not yet spent. OUT_OF_RANGE (retention passed
the position) is resolved by ``auto_offset_reset``; NOT_FOUND and other errors are delivered as
an error chunk, which the consumer raises from ``poll``, and the partition is tried again every
5 s, so it resumes by itself once the cause is gone.

Runs on one event loop (the caller's, or the sync consumer's loop thread).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from moldau._feed import RequestFeed
from moldau._runtime import cancel_and_wait, open_channel
from moldau._tcp import TcpCall, TcpChannel
from moldau._types import TopicPartition
from moldau.errors import MoldauError, error_from_rpc
from moldau.v1 import common_pb2, fetch_pb2, fetch_pb2_grpc

__all__ = ["Chunk", "ChunkBuffer", "Fetcher"]

log = logging.getLogger("moldau.consumer")

_S = grpc.StatusCode
_RETRIABLE = frozenset(
    {_S.UNAVAILABLE, _S.CANCELLED, _S.INTERNAL, _S.UNKNOWN, _S.DEADLINE_EXCEEDED}
)
_MAX_BACKOFF_S = 2.0
_SUBSCRIBE = "/moldau.v1.FetchService/Subscribe"
#: The wait before trying a partition again after an error that is not transient by its code.
_FINAL_ERROR_BACKOFF_S = 5.0


@dataclass(slots=True)
class Chunk:
    """One push: batch bytes, or a position reset (``reset_to``), or a final ``error``."""

    tp: TopicPartition
    generation: int
    data: bytes = b""
    high_watermark: int = -1
    reset_to: int = -1
    error: MoldauError | None = None


class ChunkBuffer:
    """Chunks from the loop thread to whoever polls; a deque under a condition.

    :meth:`interrupt` wakes a poller for something other than a chunk (a group event); the
    flag it sets makes the next :meth:`wait` return at once, so an interrupt that arrives
    between the poller's check and its wait is not lost.
    """

    def __init__(self) -> None:
        self.chunks: deque[Chunk] = deque()
        self.ready = threading.Condition()
        self.listeners: list[Callable[[], object]] = []
        self.interrupted = False

    def put(self, chunk: Chunk) -> None:
        with self.ready:
            self.chunks.append(chunk)
            self.ready.notify_all()
        for listener in self.listeners:
            listener()

    def take(self) -> Chunk | None:
        with self.ready:
            return self.chunks.popleft() if self.chunks else None

    def wait(self, timeout_s: float) -> bool:
        """Block until a chunk is available (True), an interrupt, or the timeout passes."""
        with self.ready:
            if not self.chunks and not self.interrupted:
                self.ready.wait(timeout_s)
            self.interrupted = False
            return bool(self.chunks)

    def pending(self) -> bool:
        """Whether :meth:`wait` would return at once (a chunk or an interrupt)."""
        return bool(self.chunks) or self.interrupted

    def take_interrupt(self) -> bool:
        """Whether :meth:`interrupt` was called since the last wait (and clear it)."""
        with self.ready:
            interrupted, self.interrupted = self.interrupted, False
            return interrupted

    def interrupt(self) -> None:
        """Wake the poller without a chunk (any thread)."""
        with self.ready:
            self.interrupted = True
            self.ready.notify_all()
        for listener in self.listeners:
            listener()

    def wake(self) -> None:
        """Release waiters without a chunk (close)."""
        with self.ready:
            self.ready.notify_all()
        for listener in self.listeners:
            listener()


class _Stream:
    """The fetch state of one partition: its generation, position and credit."""

    def __init__(self, tp: TopicPartition, generation: int, offset: int) -> None:
        self.tp = tp
        self.generation = generation
        self.offset = offset  # where the next push starts (after the last chunk received)
        self.unconsumed = 0  # bytes delivered but not yet granted back
        self.returned = 0  # of those, bytes the application is done with (granted in bulk)
        self.credits: asyncio.Queue[fetch_pb2.SubscribeRequest | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None


class Fetcher:
    """Runs the Subscribe streams and feeds a :class:`ChunkBuffer`."""

    def __init__(
        self,
        server: str,
        buffer: ChunkBuffer,
        *,
        credit_bytes: int,
        auto_offset_reset: str,
        retry_backoff_s: float = 0.1,
        tcp_address: str | None = None,
    ) -> None:
        self.server = server
        self.tcp_address = tcp_address
        self.buffer = buffer
        self.credit_bytes = credit_bytes
        #: Credit goes back to the broker in grants of at least this many bytes.
        self.grant_bytes = credit_bytes // 4
        self.auto_offset_reset = auto_offset_reset
        self._retry_backoff_s = retry_backoff_s
        self._streams: dict[TopicPartition, _Stream] = {}
        self.channel: grpc.aio.Channel | None = None
        self._stub: fetch_pb2_grpc.FetchServiceStub | None = None
        self._tcp: TcpChannel | None = None

    def start(self) -> grpc.aio.Channel:
        """Open the channel on the running loop (idempotent); returns it for admin calls."""
        if self.channel is None:
            self.channel = open_channel(self.server)
            self._stub = fetch_pb2_grpc.FetchServiceStub(self.channel)
            if self.tcp_address is not None:
                self._tcp = TcpChannel(self.tcp_address)
        return self.channel

    async def subscribe(self, tp: TopicPartition, generation: int, offset: int) -> None:
        """(Re)start ``tp`` at ``offset``; chunks carry ``generation`` so stale ones drop."""
        await self.unsubscribe(tp)
        stream = self._streams[tp] = _Stream(tp, generation, offset)
        stream.task = asyncio.create_task(self._run(stream), name=f"moldau-fetch-{tp}")

    async def unsubscribe(self, tp: TopicPartition) -> None:
        stream = self._streams.pop(tp, None)
        if stream is not None and stream.task is not None:
            await cancel_and_wait(stream.task)

    def consumed(self, tp: TopicPartition, generation: int, size: int) -> None:
        """Give ``size`` bytes of credit back (loop thread only), in grants of at least a
        quarter of ``credit_bytes``: a grant per push was one more message for the broker
        to read per push, and the broker still has three quarters of the credit meanwhile."""
        stream = self._streams.get(tp)
        if stream is not None and stream.generation == generation:
            stream.returned += size
            if stream.returned >= self.grant_bytes:
                grant, stream.returned = stream.returned, 0
                stream.unconsumed -= grant
                stream.credits.put_nowait(fetch_pb2.SubscribeRequest(credit_bytes=grant))

    async def close(self) -> None:
        for tp in list(self._streams):
            await self.unsubscribe(tp)
        if self._tcp is not None:
            await self._tcp.close()
            self._tcp = None
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    # ------------------------------------------------------------------ one partition

    async def _run(self, stream: _Stream) -> None:
        backoff = self._retry_backoff_s
        spec: common_pb2.OffsetSpec | None = None

        def pushed(response: fetch_pb2.SubscribeResponse) -> None:
            nonlocal backoff, spec
            backoff = self._retry_backoff_s
            if spec is not None:  # a reset resolved: the position jumps there
                spec = None
                self.buffer.put(
                    Chunk(stream.tp, stream.generation, reset_to=response.next_offset)
                )
                stream.offset = response.next_offset
            data = response.record_batches
            if data:
                stream.offset = response.next_offset
                stream.unconsumed += len(data)
                self.buffer.put(
                    Chunk(stream.tp, stream.generation, data, response.high_watermark)
                )

        while True:
            call: Any = None
            try:
                call = self._subscribe(stream, spec)
                if isinstance(call, TcpCall):
                    # pushes are handled as their frames are read, not one loop turn later
                    # in this task: the records reach the poller sooner
                    await call.listen(pushed)
                else:
                    async for response in call:
                        pushed(response)
                return  # ended OK: only after our half-close, i.e. never while subscribed
            except asyncio.CancelledError:
                raise
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                if error.code == _S.OUT_OF_RANGE and self.auto_offset_reset != "none":
                    kind = (
                        common_pb2.OffsetSpec.EARLIEST
                        if self.auto_offset_reset == "earliest"
                        else common_pb2.OffsetSpec.LATEST
                    )
                    spec = common_pb2.OffsetSpec(kind=kind)
                    continue
                if error.code not in _RETRIABLE:
                    # the application hears of it from poll, and the partition is tried again
                    # (slowly): a topic being recreated or a limit lifting must not leave it
                    # unread until the next rebalance
                    self.buffer.put(Chunk(stream.tp, stream.generation, error=error))
                    backoff = max(backoff, _FINAL_ERROR_BACKOFF_S)
            except Exception:  # a bug, or a library error that is no RpcError
                # retried like a broken stream: a task that ended here would leave the
                # partition unread with nothing said, and raise into the next seek or rebalance
                log.warning("fetching %s[%d] failed unexpectedly; retrying", stream.tp.topic,
                            stream.tp.partition, exc_info=True)
            finally:
                if call is not None:
                    call.cancel()
                # end the request feed: grpc.aio does not cancel the task reading it once the
                # call has failed, and that task, waiting on the queue forever, was collected
                # later as "Task was destroyed but it is pending!" (an ERROR in the app's log)
                stream.credits.put_nowait(None)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max(backoff, _MAX_BACKOFF_S))

    def _subscribe(self, stream: _Stream, spec: common_pb2.OffsetSpec | None) -> Any:
        assert self._stub is not None
        stream.unconsumed -= stream.returned  # consumed already: granted with the start
        stream.returned = 0
        credit = max(0, self.credit_bytes - stream.unconsumed)
        start = fetch_pb2.SubscribeStart(
            topic=stream.tp.topic, partition=stream.tp.partition, credit_bytes=credit
        )
        if spec is not None:
            start.spec.CopyFrom(spec)
        else:
            start.offset = stream.offset
        stream.credits = asyncio.Queue()  # credit granted to a dead stream is in `credit` now
        requests = RequestFeed(stream.credits, fetch_pb2.SubscribeRequest(start=start))
        if self._tcp is not None:
            return self._tcp.stream_stream(
                _SUBSCRIBE, fetch_pb2.SubscribeRequest.SerializeToString,
                fetch_pb2.SubscribeResponse.FromString,
            )(requests)
        return self._stub.Subscribe(requests)
