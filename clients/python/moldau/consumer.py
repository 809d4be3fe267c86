"""Consumers: :class:`Consumer` (blocking) and :class:`AsyncConsumer` (asyncio).

Both read partitions assigned explicitly (``assign``) or by a consumer group (``subscribe``,
whose machinery is in :mod:`moldau._group`, :mod:`moldau._group_session` and
:mod:`moldau._group_api`), keep a position per partition (the next offset to return), and read
through :class:`~moldau._fetcher.Fetcher`'s Subscribe streams. Everything between a pushed
chunk and the records handed out is shared here: batches are CRC-checked when they arrive,
decoded only when asked for (``poll`` decodes records, ``poll_batches`` hands out
:class:`FetchedBatch` objects that decode on access, with ``values()`` as the fast path), and
records before the position are skipped, since a push starts with the whole batch that
contains the requested offset. Group work costs ``poll`` one check per call, never per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from types import TracebackType
from typing import Literal

from engine.records import (
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    BatchHeader,
    RecordError,
    decode_batch,
    decode_values,
    iter_batches,
)
from moldau._fetcher import Chunk, ChunkBuffer, Fetcher
from moldau._group_api import AsyncGroupConsumerMixin, GroupConsumerMixin
from moldau._group_session import GroupSession, await_steps, run_steps
from moldau._runtime import BUSY_GAP_S, LoopThread, call, connection_error, resolve_server
from moldau._types import ConsumerRecord, TopicPartition
from moldau.admin import OffsetSpecLike, offset_spec
from moldau.errors import ClientClosedError, CorruptRecordError, MoldauError
from moldau.v1 import admin_pb2, admin_pb2_grpc, fetch_pb2, fetch_pb2_grpc

__all__ = ["AsyncConsumer", "Consumer", "FetchedBatch"]

TopicPartitionLike = TopicPartition | tuple[str, int]
_new = tuple.__new__


class FetchedBatch:
    """One stored batch as fetched: header parsed, CRC verified, records decoded on access.

    ``first_offset`` is where this consumer's position was when the batch was handed out;
    ``values()`` and ``records()`` start there.
    """

    __slots__ = ("_data", "_position", "first_offset", "generation", "header", "partition", "topic")

    def __init__(
        self,
        tp: TopicPartition,
        generation: int,
        data: bytes,
        position: int,
        header: BatchHeader,
    ) -> None:
        self.topic, self.partition = tp
        self.generation = generation
        self._data = data
        self._position = position
        self.header = header
        self.first_offset = header.base_offset

    @property
    def base_offset(self) -> int:
        return self.header.base_offset

    @property
    def last_offset(self) -> int:
        return self.header.last_offset

    @property
    def next_offset(self) -> int:
        return self.header.next_offset

    @property
    def _dense(self) -> bool:
        """Offsets without gaps (every producer batch; compaction can leave gaps)."""
        header = self.header
        return header.last_offset_delta == header.record_count - 1

    def __len__(self) -> int:
        if self._dense:
            return self.header.next_offset - max(self.first_offset, self.header.base_offset)
        return len(self.records())

    def values(self) -> list[bytes | None]:
        """The values from ``first_offset`` on: the fastest way to read a batch."""
        if not self._dense:
            return [r.value for r in self.records()]
        try:
            values = decode_values(
                self._data, self._position, max_batch_bytes=len(self._data), verify_crc=False
            )
        except RecordError as exc:
            raise CorruptRecordError(f"{self.topic}[{self.partition}]: {exc}") from None
        skip = self.first_offset - self.header.base_offset
        return values[skip:] if skip > 0 else values

    def records(self) -> list[ConsumerRecord]:
        """Full records (offset, timestamp, key, value, headers) from ``first_offset`` on."""
        try:
            _, decoded = decode_batch(
                self._data,
                self._position,
                max_batch_bytes=len(self._data),
                max_decompressed_bytes=DEFAULT_MAX_DECOMPRESSED_BYTES,
                verify_crc=False,
            )
        except RecordError as exc:
            raise CorruptRecordError(f"{self.topic}[{self.partition}]: {exc}") from None
        first = self.first_offset
        if decoded and decoded[0].offset < first:
            decoded = [r for r in decoded if r.offset >= first]
        prefix = (self.topic, self.partition)
        return list(map(_new, repeat(ConsumerRecord), map(prefix.__add__, decoded)))

    def __iter__(self) -> Iterator[ConsumerRecord]:
        return iter(self.records())

    def __repr__(self) -> str:
        return (
            f"FetchedBatch({self.topic}[{self.partition}] offsets {self.first_offset}.."
            f"{self.last_offset})"
        )


class _ConsumerCore:
    """Positions, generations and the chunk-to-record pipeline both consumers share.

    A partition's *generation* goes up with every seek; chunks and batches of an older
    generation are dropped, so nothing fetched before a seek is returned after it.
    """

    def __init__(
        self,
        server: str | None,
        *,
        auto_offset_reset: Literal["earliest", "latest"],
        credit_bytes: int,
        request_timeout_ms: float,
        tcp_address: str | None,
    ) -> None:
        if auto_offset_reset not in ("earliest", "latest"):
            raise ValueError("auto_offset_reset must be 'earliest' or 'latest'")
        self.server = resolve_server(server)
        self.auto_offset_reset = auto_offset_reset
        self._timeout_s = request_timeout_ms / 1000.0
        self._buffer = ChunkBuffer()
        self._fetcher = Fetcher(
            self.server,
            self._buffer,
            credit_bytes=credit_bytes,
            auto_offset_reset=auto_offset_reset,
            tcp_address=tcp_address,
        )
        self._positions: dict[TopicPartition, int] = {}
        self._generations: dict[TopicPartition, int] = {}
        self._high_watermarks: dict[TopicPartition, int] = {}
        self._batches: deque[FetchedBatch] = deque()
        self._decoded: list[ConsumerRecord] | None = None  # records of _batches[0], if decoded
        self._decoded_index = 0
        self._closed = False
        self._session: GroupSession | None = None  # set by subscribe()
        self._paused: set[TopicPartition] = set()

    # ------------------------------------------------------------------ async internals

    async def _admin_stub(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self._fetcher.start())

    async def _list_offsets(
        self, topic: str, spec: OffsetSpecLike, partitions: Sequence[int] | None
    ) -> dict[int, int]:
        stub = await self._admin_stub()
        request = admin_pb2.ListOffsetsRequest(
            topic=topic, partitions=list(partitions or ()), spec=offset_spec(spec)
        )
        try:
            reply = await call(stub.ListOffsets, request, self._timeout_s)
        except MoldauError as exc:
            raise connection_error(self.server, exc) from None
        return {o.partition: o.offset for o in reply.offsets}

    async def _partition_count(self, topic: str) -> int:
        stub = await self._admin_stub()
        try:
            reply = await call(
                stub.DescribeTopic, admin_pb2.DescribeTopicRequest(name=topic), self._timeout_s
            )
        except MoldauError as exc:
            raise connection_error(self.server, exc) from None
        return int(reply.topic.partition_count)

    async def _assign(self, partitions: Iterable[TopicPartitionLike]) -> None:
        if self._session is not None:
            raise RuntimeError(
                "the consumer is subscribed to a group; unsubscribe() before "
                "assigning partitions by hand"
            )
        wanted = [TopicPartition(*tp) for tp in partitions]
        for tp in [tp for tp in self._positions if tp not in wanted]:
            await self._stop_reading([tp])
            self._drop_partitions([tp])
        new = [tp for tp in dict.fromkeys(wanted) if tp not in self._positions]
        await self._seek_spec(new, self.auto_offset_reset)

    async def _assign_all(self, topic: str) -> None:
        count = await self._partition_count(topic)
        await self._assign([TopicPartition(topic, p) for p in range(count)])

    async def _seek(self, tp: TopicPartition, offset: int) -> None:
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        generation = self._generations.get(tp, 0) + 1
        self._generations[tp] = generation
        self._forget(tp)
        self._positions[tp] = offset
        if self._session is not None:
            self._session.no_offset.discard(tp)
        if tp not in self._paused:
            await self._fetcher.subscribe(tp, generation, offset)

    async def _seek_all(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            await self._seek(tp, offset)

    async def _stop_reading(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching ``partitions`` and drop what was fetched; positions stay."""
        for tp in partitions:
            await self._fetcher.unsubscribe(tp)
            self._generations[tp] = self._generations.get(tp, 0) + 1  # in-flight chunks drop
            self._forget(tp)

    def _drop_partitions(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._positions.pop(tp, None)
            self._paused.discard(tp)

    async def _seek_spec(self, partitions: Sequence[TopicPartition], spec: OffsetSpecLike) -> None:
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        for topic, numbers in by_topic.items():
            offsets = await self._list_offsets(topic, spec, numbers)
            for number in numbers:
                tp, offset = TopicPartition(topic, number), offsets[number]
                if isinstance(spec, int):
                    offset = await self._first_at_or_after(tp, offset, spec)
                await self._seek(tp, offset)

    async def _first_at_or_after(self, tp: TopicPartition, offset: int, timestamp: int) -> int:
        """The exact record offset for a time lookup.

        The broker's time index resolves to the first *batch* whose max timestamp is >= the
        time; the records before the wanted one in that batch are skipped here, so a seek
        by time lands on the first record at or after it, as Kafka's does.
        """
        stub = fetch_pb2_grpc.FetchServiceStub(self._fetcher.start())
        while True:
            request = fetch_pb2.FetchRequest(
                topic=tp.topic, partition=tp.partition, offset=offset, max_bytes=1
            )
            try:
                reply = await call(stub.Fetch, request, self._timeout_s)
            except MoldauError as exc:
                raise connection_error(self.server, exc) from None
            data = reply.record_batches
            if not data:
                return offset
            try:
                _, records = decode_batch(data, 0, max_batch_bytes=len(data))
            except RecordError as exc:
                raise CorruptRecordError(f"{tp.topic}[{tp.partition}]: {exc}") from None
            for record in records:
                if record.offset >= offset and record.timestamp >= timestamp:
                    return record.offset
            offset = max(offset, reply.next_offset)

    def _targets(
        self, partitions: Iterable[TopicPartitionLike] | None, *, positioned: bool = True
    ) -> list[TopicPartition]:
        """``partitions`` (default: all assigned), checked to be assigned (and positioned)."""
        if partitions is None:
            return list(self._positions) if positioned else self.assignment()
        targets = [TopicPartition(*tp) for tp in partitions]
        known = self._positions if positioned else set(self.assignment())
        for tp in targets:
            if tp not in known:
                raise ValueError(f"{tp.topic}[{tp.partition}] is not assigned")
        return targets

    def _forget(self, tp: TopicPartition) -> None:
        """Drop what was fetched for ``tp`` and not handed out yet."""
        if (
            self._batches
            and self._batches[0].topic == tp.topic
            and self._batches[0].partition == tp.partition
        ):
            self._decoded = None
        self._batches = deque(b for b in self._batches if (b.topic, b.partition) != tp)

    # ------------------------------------------------------------------ the record pipeline

    def _grant(self, tp: TopicPartition, generation: int, size: int) -> None:
        raise NotImplementedError

    def _head(self) -> FetchedBatch | None:
        """The next batch to hand out, taking chunks from the buffer as needed."""
        batches = self._batches
        while True:
            while batches:
                batch = batches[0]
                tp = TopicPartition(batch.topic, batch.partition)
                position = self._positions.get(tp)
                if (
                    self._generations.get(tp) != batch.generation
                    or position is None
                    or batch.next_offset <= position
                ):
                    batches.popleft()
                    self._decoded = None
                    continue
                batch.first_offset = max(batch.first_offset, position)
                return batch
            chunk = self._buffer.take()
            if chunk is None:
                return None
            self._accept(chunk)

    def _accept(self, chunk: Chunk) -> None:
        tp = chunk.tp
        if self._generations.get(tp) != chunk.generation or tp not in self._positions:
            return
        if chunk.error is not None:
            raise chunk.error
        if chunk.reset_to >= 0:
            self._positions[tp] = chunk.reset_to
            return
        data = chunk.data
        self._high_watermarks[tp] = chunk.high_watermark
        self._grant(tp, chunk.generation, len(data))
        try:
            for position, header in iter_batches(data, 0, max_batch_bytes=len(data)):
                if not header.is_control:
                    self._batches.append(FetchedBatch(tp, chunk.generation, data, position, header))
        except RecordError as exc:
            raise CorruptRecordError(f"{tp.topic}[{tp.partition}]: {exc}") from None

    def _take_records(self, max_records: int) -> list[ConsumerRecord]:
        out: list[ConsumerRecord] = []
        while len(out) < max_records:
            batch = self._head()
            if batch is None:
                break
            if self._decoded is None:
                self._decoded, self._decoded_index = batch.records(), 0
            start = self._decoded_index
            piece = self._decoded[start : start + max_records - len(out)]
            out.extend(piece)
            self._decoded_index = start + len(piece)
            tp = TopicPartition(batch.topic, batch.partition)
            if self._decoded_index >= len(self._decoded):
                self._batches.popleft()
                self._decoded = None
                self._positions[tp] = batch.next_offset
            else:
                self._positions[tp] = piece[-1].offset + 1
        return out

    def _take_batches(self, max_batches: int) -> list[FetchedBatch]:
        self._decoded = None
        out: list[FetchedBatch] = []
        while len(out) < max_batches:
            batch = self._head()
            if batch is None:
                break
            self._batches.popleft()
            self._positions[TopicPartition(batch.topic, batch.partition)] = batch.next_offset
            out.append(batch)
        return out

    def position(self, tp: TopicPartitionLike) -> int:
        """The offset of the next record ``poll`` will return for ``tp``."""
        return self._positions[TopicPartition(*tp)]

    def assignment(self) -> list[TopicPartition]:
        """The partitions this consumer reads: assigned by hand, or by its group."""
        if self._session is not None:
            return sorted(self._session.assigned)
        return list(self._positions)

    def high_watermark(self, tp: TopicPartitionLike) -> int | None:
        """The partition's high watermark as of the last fetch, None before one."""
        return self._high_watermarks.get(TopicPartition(*tp))

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the consumer is closed")


class Consumer(_ConsumerCore, GroupConsumerMixin):
    """Reads assigned partitions; not thread-safe (one consuming thread, as Kafka's).

    Partitions come from :meth:`assign` / :meth:`assign_all`, or from a consumer group
    (:meth:`subscribe`, with :meth:`commit`, :meth:`committed`, :meth:`pause` and more).

    Args:
        server: ``HOST:PORT``; default ``$MOLDAU_SERVER`` or 127.0.0.1:7654.
        auto_offset_reset: Where a newly assigned partition starts, and where to go when the
            position falls out of the log (retention): "earliest" or "latest".
        credit_bytes: Bytes per partition the broker may push ahead of the application.
        request_timeout_ms: Deadline of offset lookups.
        tcp_address: ``HOST:PORT`` of the broker's TCP port (``--tcp-listen``): records are
            pushed there instead of over gRPC, for lower latency (docs/tcp-port.md). Offsets
            and group calls still use ``server``.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        auto_offset_reset: Literal["earliest", "latest"] = "latest",
        credit_bytes: int = 4 * 1024 * 1024,
        request_timeout_ms: float = 30_000,
        tcp_address: str | None = None,
    ) -> None:
        super().__init__(
            server,
            auto_offset_reset=auto_offset_reset,
            credit_bytes=credit_bytes,
            request_timeout_ms=request_timeout_ms,
            tcp_address=tcp_address,
        )
        # lent: a poll that waits runs the loop itself, so a push reaches it without a
        # thread hand-off (see LoopThread)
        self._thread = LoopThread("moldau-consumer", lend=True, busy_gap_s=BUSY_GAP_S)
        self._close_deferred = False
        self._buffer.listeners.append(self._thread.wake)
        self._ungranted: dict[TopicPartition, tuple[int, int]] = {}  # tp -> (generation, bytes)

    def _grant(self, tp: TopicPartition, generation: int, size: int) -> None:
        """Add up consumed bytes here; hand them to the loop only once a grant is due.

        The fetcher gives credit back in grants of ``grant_bytes`` anyway; waking its loop
        for every chunk put a self-pipe write (and a thread competing for the interpreter
        lock) into the path of every poll, before the records reach the application.
        """
        known, total = self._ungranted.get(tp, (generation, 0))
        total = size + (total if known == generation else 0)
        if total >= self._fetcher.grant_bytes:
            self._ungranted.pop(tp, None)
            self._thread.call_soon(self._fetcher.consumed, tp, generation, total)
        else:
            self._ungranted[tp] = (generation, total)

    def _wait(self, timeout_s: float) -> None:
        buffer = self._buffer
        self._thread.wait(
            lambda: self._closed or self._close_deferred or buffer.pending(), timeout_s,
            buffer.wait,
        )
        buffer.take_interrupt()
        if self._close_deferred:
            self._close_deferred = False
            self.close()

    def assign(self, partitions: Iterable[TopicPartitionLike]) -> None:
        """Read exactly these ``(topic, partition)`` pairs; new ones start per
        auto_offset_reset, kept ones keep their position."""
        self._check_open()
        self._thread.run(self._assign(partitions))

    def assign_all(self, topic: str) -> None:
        """Assign every partition of ``topic`` (replacing the assignment)."""
        self._check_open()
        self._thread.run(self._assign_all(topic))

    def seek(self, tp: TopicPartitionLike, offset: int) -> None:
        self._check_open()
        if self._session is not None:
            self._targets([tp], positioned=False)
        self._thread.run(self._seek(TopicPartition(*tp), offset))

    def seek_to_beginning(self, partitions: Iterable[TopicPartitionLike] | None = None) -> None:
        self._check_open()
        self._thread.run(self._seek_spec(self._targets(partitions), "earliest"))

    def seek_to_end(self, partitions: Iterable[TopicPartitionLike] | None = None) -> None:
        self._check_open()
        self._thread.run(self._seek_spec(self._targets(partitions), "latest"))

    def seek_to_time(
        self, timestamp_ms: int, partitions: Iterable[TopicPartitionLike] | None = None
    ) -> None:
        """Move to the first record at or after ``timestamp_ms`` (else the end)."""
        self._check_open()
        self._thread.run(self._seek_spec(self._targets(partitions), timestamp_ms))

    def poll(self, timeout_ms: float = 1000, max_records: int = 500) -> list[ConsumerRecord]:
        """Up to ``max_records`` records, waiting up to ``timeout_ms`` for the first one."""
        self._check_open()
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            session = self._session
            if session is not None and session.due(time.monotonic()):
                run_steps(self._thread, session.tick(self))
            records = self._take_records(max_records)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0 or self._closed:
                return records
            self._wait(remaining)

    def poll_batches(self, timeout_ms: float = 1000, max_batches: int = 1000) -> list[FetchedBatch]:
        """Whole fetched batches (decoded lazily), for throughput; positions move past them."""
        self._check_open()
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            session = self._session
            if session is not None and session.due(time.monotonic()):
                run_steps(self._thread, session.tick(self))
            batches = self._take_batches(max_batches)
            remaining = deadline - time.monotonic()
            if batches or remaining <= 0 or self._closed:
                return batches
            self._wait(remaining)

    def __iter__(self) -> Iterator[ConsumerRecord]:
        """Records forever (until :meth:`close`), polling as needed."""
        while not self._closed:
            yield from self.poll()

    def close(self) -> None:
        """Leave the group if subscribed (on_revoke, then a commit if auto-commit is on), then
        stop fetching and close the connection."""
        if self._closed:
            return
        if self._thread.inside_loop():
            # a signal handler that interrupted a waiting poll (which runs the loop in this
            # thread): the loop cannot run again from inside itself, so that poll closes the
            # consumer as soon as the handler returns, before it returns itself
            self._close_deferred = True
            self._thread.wake(from_handler=True)
            return
        try:
            if self._session is not None:
                run_steps(self._thread, self._session.leave(self))
        finally:
            self._session = None
            self._closed = True
            self._buffer.wake()
            self._thread.run(self._fetcher.close())
            self._thread.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncConsumer(_ConsumerCore, AsyncGroupConsumerMixin):
    """The asyncio consumer: the methods of :class:`Consumer`, as coroutines.

    Group callbacks run on the caller's loop inside :meth:`poll` / :meth:`poll_batches`; they
    may be plain functions or coroutine functions (awaited).
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        auto_offset_reset: Literal["earliest", "latest"] = "latest",
        credit_bytes: int = 4 * 1024 * 1024,
        request_timeout_ms: float = 30_000,
        tcp_address: str | None = None,
    ) -> None:
        super().__init__(
            server,
            auto_offset_reset=auto_offset_reset,
            credit_bytes=credit_bytes,
            request_timeout_ms=request_timeout_ms,
            tcp_address=tcp_address,
        )
        self._arrived: asyncio.Event | None = None

    def _grant(self, tp: TopicPartition, generation: int, size: int) -> None:
        self._fetcher.consumed(tp, generation, size)

    def _event(self) -> asyncio.Event:
        if self._arrived is None:
            self._arrived = asyncio.Event()
            self._buffer.listeners.append(self._arrived.set)
        return self._arrived

    async def assign(self, partitions: Iterable[TopicPartitionLike]) -> None:
        self._check_open()
        await self._assign(partitions)

    async def assign_all(self, topic: str) -> None:
        self._check_open()
        await self._assign_all(topic)

    async def seek(self, tp: TopicPartitionLike, offset: int) -> None:
        self._check_open()
        if self._session is not None:
            self._targets([tp], positioned=False)
        await self._seek(TopicPartition(*tp), offset)

    async def seek_to_beginning(
        self, partitions: Iterable[TopicPartitionLike] | None = None
    ) -> None:
        await self._seek_spec(self._targets(partitions), "earliest")

    async def seek_to_end(self, partitions: Iterable[TopicPartitionLike] | None = None) -> None:
        await self._seek_spec(self._targets(partitions), "latest")

    async def seek_to_time(
        self, timestamp_ms: int, partitions: Iterable[TopicPartitionLike] | None = None
    ) -> None:
        await self._seek_spec(self._targets(partitions), timestamp_ms)

    async def _wait(self, deadline: float) -> None:
        event = self._event()
        event.clear()
        if self._buffer.chunks or self._buffer.take_interrupt():
            return
        remaining = deadline - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    async def poll(self, timeout_ms: float = 1000, max_records: int = 500) -> list[ConsumerRecord]:
        self._check_open()
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            session = self._session
            if session is not None and session.due(time.monotonic()):
                await await_steps(session.tick(self))
            records = self._take_records(max_records)
            if records or time.monotonic() >= deadline or self._closed:
                return records
            await self._wait(deadline)

    async def poll_batches(
        self, timeout_ms: float = 1000, max_batches: int = 1000
    ) -> list[FetchedBatch]:
        self._check_open()
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            session = self._session
            if session is not None and session.due(time.monotonic()):
                await await_steps(session.tick(self))
            batches = self._take_batches(max_batches)
            if batches or time.monotonic() >= deadline or self._closed:
                return batches
            await self._wait(deadline)

    async def __aiter__(self) -> AsyncIterator[ConsumerRecord]:
        while not self._closed:
            for record in await self.poll():
                yield record

    async def close(self) -> None:
        """Leave the group if subscribed, then stop fetching (see :meth:`Consumer.close`)."""
        if self._closed:
            return
        try:
            if self._session is not None:
                await await_steps(self._session.leave(self))
        finally:
            self._session = None
            self._closed = True
            self._buffer.wake()
            await self._fetcher.close()

    async def __aenter__(self) -> AsyncConsumer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
