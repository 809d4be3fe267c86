"""Producers: :class:`Producer` (blocking) and :class:`AsyncProducer` (asyncio).

Both are thin front ends over one implementation: records go into the
:class:`~moldau._accumulator.Accumulator` straight from the caller (no thread hop per record),
and a :class:`~moldau._sender.Sender` on an event loop ships ready batches over a pipelined
ProduceStream. The blocking producer runs that loop in a private thread; the async one runs it
on the caller's loop. They differ only in how they wait: for metadata, for buffer memory, and
for acknowledgements.

Partitioning follows Kafka's default partitioner: keyed records go to murmur2(key) mod
partitions (:func:`engine.partitioner.partition_for_key`), so a key lands where the Java client
would put it; unkeyed records stick to one partition until a batch's worth has gone there,
then move to the next (the sticky partitioner), which keeps batches full.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from types import TracebackType

from engine.partitioner import partition_for_key
from engine.records import Codec, NewRecord
from moldau._accumulator import RECORD_OVERHEAD, Accumulator, PendingBatch
from moldau._futures import BulkFuture, RecordFuture, await_completions, wait_completions
from moldau._runtime import (
    Credentials,
    LoopThread,
    connection_error,
    resolve_server,
    using_credentials,
)
from moldau._sender import Sender
from moldau._types import HeadersLike, normalize_headers
from moldau.errors import BufferFullError, ClientClosedError, MoldauError, RequestTimeoutError

__all__ = ["AsyncProducer", "Producer", "parse_codec"]

_CODECS = {codec.name.lower(): codec for codec in Codec}
_BYTES = (bytes, bytearray, memoryview)  # a tuple: isinstance checks it faster than a union


def parse_codec(codec: str | Codec) -> Codec:
    """``"none"``, ``"gzip"``, ``"snappy"``, ``"lz4"``, ``"zstd"`` (or a Codec)."""
    if isinstance(codec, Codec):
        return codec
    try:
        return _CODECS[codec.lower()]
    except KeyError:
        raise ValueError(f"codec must be one of {', '.join(_CODECS)}, got {codec!r}") from None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _ProducerCore:
    """What both producers share: options, record checks, partition choice, bulk splitting."""

    def __init__(
        self,
        server: str | None,
        *,
        linger_ms: float,
        batch_size: int,
        codec: str | Codec,
        buffer_memory: int,
        max_block_ms: float,
        delivery_timeout_ms: float,
        request_timeout_ms: float,
        retry_backoff_ms: float,
        max_in_flight_per_partition: int,
        idempotent: bool,
        tcp_address: str | None,
    ) -> None:
        if batch_size < 1 or buffer_memory < 1 or linger_ms < 0 or max_block_ms < 0:
            raise ValueError("batch_size and buffer_memory must be positive, times >= 0")
        if not 1 <= max_in_flight_per_partition <= 5 and idempotent:
            raise ValueError(
                "max_in_flight_per_partition must be 1..5 for an idempotent producer: the "
                "broker remembers the last five batches per producer and partition"
            )
        self.server = resolve_server(server)
        self.codec = parse_codec(codec)
        self.batch_size = batch_size
        self.max_block_s = max_block_ms / 1000.0
        #: Random 63-bit id (epoch 0): the broker deduplicates this producer's retries by it.
        self.producer_id = secrets.randbits(63) if idempotent else -1
        self._accumulator = Accumulator(
            batch_size=batch_size,
            linger_ms=linger_ms,
            buffer_memory=buffer_memory,
            max_in_flight=max_in_flight_per_partition,
            idempotent=idempotent,
        )
        self._sender = Sender(
            self.server,
            self._accumulator,
            codec=self.codec,
            producer_id=self.producer_id,
            request_timeout_s=request_timeout_ms / 1000.0,
            delivery_timeout_s=delivery_timeout_ms / 1000.0,
            retry_backoff_s=retry_backoff_ms / 1000.0,
            tcp_address=tcp_address,
        )
        self._sticky: dict[str, list[int]] = {}  # topic -> [partition, bytes sent to it]
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the producer is closed")

    @staticmethod
    def _record(
        value: bytes | None,
        key: bytes | None,
        headers: HeadersLike | None,
        timestamp: int | None,
    ) -> tuple[NewRecord, int]:
        if value is not None and not isinstance(value, _BYTES):
            raise TypeError(f"value must be bytes or None, got {type(value).__name__}")
        if key is not None and not isinstance(key, _BYTES):
            raise TypeError(f"key must be bytes or None, got {type(key).__name__}")
        normalized = normalize_headers(headers) if headers else ()
        size = RECORD_OVERHEAD + (len(value) if value is not None else 0)
        if key is not None:
            size += len(key)
        for header in normalized:
            size += len(header.key) + (len(header.value) if header.value is not None else 0) + 4
        ts = _now_ms() if timestamp is None else timestamp
        return NewRecord(value, key, normalized, ts), size

    def _choose(self, topic: str, key: bytes | None, size: int, count: int) -> int:
        if key is not None:
            return partition_for_key(bytes(key), count)
        sticky = self._sticky.get(topic)
        if sticky is None:
            sticky = self._sticky[topic] = [secrets.randbelow(count), 0]
        elif sticky[1] >= self.batch_size or sticky[0] >= count:
            sticky[0], sticky[1] = (sticky[0] + 1) % count, 0
        sticky[1] += size
        return sticky[0]

    def _chunks(
        self,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None] | None,
        partition: int | None,
        count: int | None,
    ) -> list[tuple[int, Sequence[bytes | None], Sequence[bytes | None] | None, int]]:
        """Split a bulk send into ``(partition, values, keys, size)`` of about batch_size."""
        if keys is not None and len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys for {len(values)} values")
        if partition is None and keys is not None:
            assert count is not None
            groups: dict[int, tuple[list[bytes | None], list[bytes | None]]] = {}
            for value, key in zip(values, keys, strict=True):
                p = partition_for_key(key, count) if key is not None else self._choose(
                    "", None, 0, count
                )
                group = groups.setdefault(p, ([], []))
                group[0].append(value)
                group[1].append(key)
            out = []
            for p, (vs, ks) in groups.items():
                out.extend(self._chunks(vs, ks, p, count))
            return out
        value_bytes = sum(len(v) for v in values if v is not None)
        key_bytes = 0 if keys is None else sum(len(k) for k in keys if k is not None)
        total = value_bytes + key_bytes + RECORD_OVERHEAD * len(values)
        per_record = max(1, total // max(1, len(values)))
        step = max(1, self.batch_size // per_record)
        out = []
        for start in range(0, len(values), step):
            part_values = values[start : start + step]
            part_keys = None if keys is None else keys[start : start + step]
            target = partition
            if target is None:
                assert count is not None
                sticky = self._sticky.setdefault("", [secrets.randbelow(count), 0])
                sticky[0] = (sticky[0] + 1) % count
                target = sticky[0]
            out.append((target, part_values, part_keys, per_record * len(part_values)))
        return out


class Producer(_ProducerCore):
    """Sends records to topics; thread-safe.

    Args:
        server: ``HOST:PORT`` of the broker; default ``$MOLDAU_SERVER`` or 127.0.0.1:7654.
        linger_ms: How long a batch waits for more records before it is sent.
        batch_size: Bytes of records per batch (a single larger record gets its own batch).
        codec: Batch compression: none, gzip, snappy, lz4 or zstd.
        buffer_memory: Bytes of records held unacknowledged before ``send`` blocks.
        max_block_ms: How long ``send`` blocks for buffer memory before BufferFullError.
        delivery_timeout_ms: How long a batch may take, retries included, before it fails.
        request_timeout_ms: Deadline of metadata calls.
        retry_backoff_ms: First pause before resending after a lost connection (doubles).
        max_in_flight_per_partition: Batches per partition awaiting acknowledgement (1-5).
        idempotent: Tag batches with producer id and sequences so retries never duplicate.
        token: Bearer token; default ``$MOLDAU_TOKEN``.
        tls_ca_file: CA that signed the server's certificate (TLS); default
            ``$MOLDAU_TLS_CA_FILE``.
        tls_cert_file: Client certificate for mTLS; default ``$MOLDAU_TLS_CERT_FILE``.
        tls_key_file: Its key; default ``$MOLDAU_TLS_KEY_FILE``.
        tcp_address: ``HOST:PORT`` of the broker's TCP port (``--tcp-listen``): batches go
            there instead of over gRPC, for lower latency (docs/tcp-port.md). Metadata calls
            still use ``server``.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        linger_ms: float = 5,
        batch_size: int = 256 * 1024,
        codec: str | Codec = "none",
        buffer_memory: int = 64 * 1024 * 1024,
        max_block_ms: float = 60_000,
        delivery_timeout_ms: float = 120_000,
        request_timeout_ms: float = 30_000,
        retry_backoff_ms: float = 100,
        max_in_flight_per_partition: int = 5,
        idempotent: bool = True,
        token: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tcp_address: str | None = None,
    ) -> None:
        self._credentials = Credentials.resolve(
            token=token, tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
        )
        super().__init__(
            server, linger_ms=linger_ms, batch_size=batch_size, codec=codec,
            buffer_memory=buffer_memory, max_block_ms=max_block_ms,
            delivery_timeout_ms=delivery_timeout_ms, request_timeout_ms=request_timeout_ms,
            retry_backoff_ms=retry_backoff_ms,
            max_in_flight_per_partition=max_in_flight_per_partition, idempotent=idempotent,
            tcp_address=tcp_address,
        )
        self._thread = LoopThread("moldau-producer")
        with using_credentials(self._credentials):  # the sender opens its channel in start
            self._thread.run(self._sender.start())

    def partition_count(self, topic: str) -> int:
        """The topic's number of partitions (cached after the first call)."""
        count = self._sender.cached_partition_count(topic)
        if count is None:
            try:
                count = self._thread.run(self._sender.partition_count(topic))
            except MoldauError as exc:
                raise connection_error(self.server, exc) from None
        return count

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: HeadersLike | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> RecordFuture:
        """Queue one record; the future resolves to its RecordMetadata once acknowledged.

        Blocks only for topic metadata (first send to a topic) and when buffer_memory is
        full (up to max_block_ms, then BufferFullError).
        """
        self._check_open()
        record, size = self._record(value, key, headers, timestamp)
        if partition is None:
            partition = self._choose(topic, key, size, self.partition_count(topic))
        accumulator = self._accumulator
        appended = accumulator.try_append(topic, partition, record, size)
        if appended is None:
            deadline = time.monotonic() + self.max_block_s
            while appended is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not accumulator.wait_for_memory(size, remaining):
                    raise _buffer_full(self.max_block_s, accumulator.buffer_memory)
                self._check_open()
                appended = accumulator.try_append(topic, partition, record, size)
        batch, index, wake = appended
        if wake and not self._sender.send_direct():
            self._thread.call_soon(self._sender.wake)
        assert record.timestamp is not None
        return RecordFuture(batch.completion, topic, partition, index, record.timestamp)

    def send_many(
        self,
        topic: str,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None] | None = None,
        partition: int | None = None,
    ) -> BulkFuture:
        """Queue many header-less records sharing one timestamp, encoded a batch at a time.

        The fast path: no per-record objects, values laid out with numpy when they have one
        length. With keys and no partition, records are grouped by murmur2(key), keeping
        their relative order within each partition; without either, each batch goes to the
        next partition.
        """
        self._check_open()
        count = None if partition is not None else self.partition_count(topic)
        timestamp = _now_ms()
        batches: list[PendingBatch] = []
        for target, part_values, part_keys, size in self._chunks(values, keys, partition, count):
            batch = self._accumulator.try_append_bulk(
                topic, target, part_values, part_keys, size, timestamp
            )
            if batch is None:
                self._thread.call_soon(self._sender.wake)
                if not self._accumulator.wait_for_memory(size, self.max_block_s):
                    raise _buffer_full(self.max_block_s, self._accumulator.buffer_memory)
                batch = self._accumulator.try_append_bulk(
                    topic, target, part_values, part_keys, size, timestamp
                )
                if batch is None:
                    raise _buffer_full(self.max_block_s, self._accumulator.buffer_memory)
            batches.append(batch)
        if not self._sender.send_direct():
            self._thread.call_soon(self._sender.wake)
        return BulkFuture(batches)

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued now and wait for the acknowledgements (or failures).

        Raises:
            RequestTimeoutError: not everything was acknowledged within ``timeout`` seconds.
        """
        completions = self._accumulator.close_all()
        self._thread.call_soon(self._sender.wake)
        if not wait_completions(completions, timeout):
            raise RequestTimeoutError(f"flush did not complete within {timeout} s")

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout`` seconds), then release the connection and the thread.

        Records still unacknowledged after the timeout fail with ClientClosedError.
        """
        if self._closed:
            return
        completions = self._accumulator.close_all()
        self._thread.call_soon(self._sender.wake)
        drained = wait_completions(completions, timeout)
        self._closed = True
        self._thread.run(self._sender.close(drain=drained))
        self._thread.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncProducer(_ProducerCore):
    """The asyncio producer: same options and semantics as :class:`Producer`.

    ``await producer.send(...)`` queues a record and returns its future (it waits only for
    metadata or buffer memory); ``await`` that future for the RecordMetadata. Use
    ``async with AsyncProducer(...) as producer:`` or :meth:`start` / :meth:`close`.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        linger_ms: float = 5,
        batch_size: int = 256 * 1024,
        codec: str | Codec = "none",
        buffer_memory: int = 64 * 1024 * 1024,
        max_block_ms: float = 60_000,
        delivery_timeout_ms: float = 120_000,
        request_timeout_ms: float = 30_000,
        retry_backoff_ms: float = 100,
        max_in_flight_per_partition: int = 5,
        idempotent: bool = True,
        token: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tcp_address: str | None = None,
    ) -> None:
        self._credentials = Credentials.resolve(
            token=token, tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
        )
        super().__init__(
            server, linger_ms=linger_ms, batch_size=batch_size, codec=codec,
            buffer_memory=buffer_memory, max_block_ms=max_block_ms,
            delivery_timeout_ms=delivery_timeout_ms, request_timeout_ms=request_timeout_ms,
            retry_backoff_ms=retry_backoff_ms,
            max_in_flight_per_partition=max_in_flight_per_partition, idempotent=idempotent,
            tcp_address=tcp_address,
        )
        self._started = False
        self._room: asyncio.Event | None = None

    async def start(self) -> None:
        """Open the connection on the running loop (``send`` does it on first use)."""
        if not self._started:
            self._started = True
            room = self._room = asyncio.Event()
            self._accumulator.room_listeners.append(room.set)
            with using_credentials(self._credentials):
                await self._sender.start()

    async def partition_count(self, topic: str) -> int:
        await self.start()
        try:
            return await self._sender.partition_count(topic)
        except MoldauError as exc:
            raise connection_error(self.server, exc) from None

    async def _wait_room(self, size: int, deadline: float) -> None:
        assert self._room is not None
        while not self._accumulator.has_room(size):
            self._room.clear()
            if self._accumulator.has_room(size):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _buffer_full(self.max_block_s, self._accumulator.buffer_memory)
            try:
                await asyncio.wait_for(self._room.wait(), remaining)
            except TimeoutError:
                raise _buffer_full(self.max_block_s, self._accumulator.buffer_memory) from None
            self._check_open()

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: HeadersLike | None = None,
        partition: int | None = None,
        timestamp: int | None = None,
    ) -> RecordFuture:
        """Queue one record; ``await`` the returned future for its RecordMetadata."""
        self._check_open()
        await self.start()
        record, size = self._record(value, key, headers, timestamp)
        if partition is None:
            count = self._sender.cached_partition_count(topic)
            if count is None:
                count = await self.partition_count(topic)
            partition = self._choose(topic, key, size, count)
        appended = self._accumulator.try_append(topic, partition, record, size)
        if appended is None:
            deadline = time.monotonic() + self.max_block_s
            while appended is None:
                await self._wait_room(size, deadline)
                appended = self._accumulator.try_append(topic, partition, record, size)
        batch, index, wake = appended
        if wake:
            self._sender.wake()
        assert record.timestamp is not None
        return RecordFuture(batch.completion, topic, partition, index, record.timestamp)

    async def send_many(
        self,
        topic: str,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None] | None = None,
        partition: int | None = None,
    ) -> BulkFuture:
        """The bulk path of :meth:`Producer.send_many`."""
        self._check_open()
        await self.start()
        count = None if partition is not None else await self.partition_count(topic)
        timestamp = _now_ms()
        batches: list[PendingBatch] = []
        for target, part_values, part_keys, size in self._chunks(values, keys, partition, count):
            deadline = time.monotonic() + self.max_block_s
            while True:
                batch = self._accumulator.try_append_bulk(
                    topic, target, part_values, part_keys, size, timestamp
                )
                if batch is not None:
                    break
                self._sender.wake()
                await self._wait_room(size, deadline)
            batches.append(batch)
        self._sender.wake()
        return BulkFuture(batches)

    async def flush(self, timeout: float | None = None) -> None:
        """Send everything queued now and wait for the acknowledgements (or failures)."""
        if not self._started:
            return
        completions = self._accumulator.close_all()
        self._sender.wake()
        try:
            await asyncio.wait_for(await_completions(completions), timeout)
        except TimeoutError:
            raise RequestTimeoutError(f"flush did not complete within {timeout} s") from None

    async def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout`` seconds), then close the connection."""
        if self._closed:
            return
        self._closed = True
        if not self._started:
            return
        completions = self._accumulator.close_all()
        self._sender.wake()
        try:
            await asyncio.wait_for(await_completions(completions), timeout)
            drained = True
        except TimeoutError:
            drained = False
        await self._sender.close(drain=drained)

    async def __aenter__(self) -> AsyncProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def _buffer_full(max_block_s: float, buffer_memory: int) -> BufferFullError:
    return BufferFullError(
        f"buffer_memory ({buffer_memory} bytes) stayed full for max_block_ms "
        f"({max_block_s * 1000:.0f} ms): the broker is slower than the sends or unreachable; "
        "raise buffer_memory or max_block_ms, or send less"
    )
