"""ProduceService: appends pre-encoded batches, or encodes plain records first.

The fast path hands the request's ``record_batch`` bytes to the partition log untouched: the
engine validates the header and CRC, checks the producer sequence and stores the bytes. Plain
records are partitioned here (murmur2 of the key, round-robin without one), encoded into one
batch per partition with ``encode_batch``, then appended the same way.

Appends wait for fsync, so they run on the runtime's worker threads. On ProduceStream, each
partition the stream writes to gets an :class:`~grpc_api.runtime.AppendLane`: its requests
reach the engine in the order sent, back to back on one worker thread, and every group of
requests queued while the previous fsync ran is made durable by one ``wait_durable`` (group
commit) before any of them is acknowledged. Acknowledgements of one partition leave in the
order sent. At most ``produce_stream_window`` requests, and at most ``max_request_bytes`` of
them (or one larger request), are in flight per stream; past that the server stops reading and
gRPC flow control pushes back on the client. The byte bound matters: 64 requests of 16 MiB held
at once (each twice: the parsed message and its batch bytes) would be 2 GiB for one client.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from engine.broker import Broker
from engine.log.partition_log import AppendResult, PartitionLog
from engine.partitioner import RoundRobin, partition_for_key
from engine.records.batch import encode_batch
from engine.records.compression import Codec
from engine.records.record import Header, NewRecord
from grpc_api.errors import (
    InvalidRequestError,
    LimitExceededError,
    status_for,
    stream_errors,
    unary_errors,
)
from grpc_api.runtime import AppendLane, Runtime
from moldau.v1 import common_pb2, produce_pb2, produce_pb2_grpc

__all__ = ["INLINE_APPEND_BYTES", "ProduceServicer"]

#: Pre-encoded batches up to this size are stored on the event loop when their partition's
#: lane is idle (see AppendLane.submit): validating and writing them takes microseconds.
INLINE_APPEND_BYTES = 64 * 1024

_AckQueue = asyncio.Queue[produce_pb2.ProduceStreamResponse | BaseException | None]


@dataclass(frozen=True, slots=True)
class _Part:
    """One partition's share of a request: pre-encoded bytes or the records to encode."""

    partition: int
    batch: bytes | None = None
    records: Sequence[common_pb2.Record] = ()


@dataclass(frozen=True, slots=True)
class _Plan:
    topic: str
    parts: list[_Part]
    codec: Codec = Codec.NONE


class _ByteWindow:
    """Bytes of one stream's requests read but not yet stored; reading waits past ``limit``.

    A request larger than the limit still goes through, alone, so every request the server
    accepts can be sent on a stream. Event loop thread only; one waiter (the stream's reader).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def acquire(self, size: int) -> None:
        while self.used and self.used + size > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
        self._freed.set()

    def release_after(self, size: int, _done: asyncio.Future[Any]) -> None:
        """Done callback of a request's appends."""
        self.release(size)


class ProduceServicer(produce_pb2_grpc.ProduceServiceServicer):
    """Translates ProduceService calls into ``Broker.append``."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._round_robin: dict[str, RoundRobin] = {}

    @unary_errors
    async def Produce(  # noqa: N802  (the RPC name from the proto)
        self, request: produce_pb2.ProduceRequest, context: object
    ) -> produce_pb2.ProduceResponse:
        plan = self._plan(request)
        broker = self._runtime.broker()
        if len(plan.parts) == 1:  # every pre-encoded batch: no gather, errors as they are
            part = plan.parts[0]
            result = await self._runtime.run(self._append_part, broker, plan, part)
            return _response(plan, [result])
        appends = [
            self._runtime.run(self._append_part, broker, plan, part) for part in plan.parts
        ]
        return _response(plan, await asyncio.gather(*appends, return_exceptions=True))

    @stream_errors
    async def ProduceStream(  # noqa: N802  (the RPC name from the proto)
        self, request_iterator: AsyncIterator[produce_pb2.ProduceRequest], context: object
    ) -> AsyncIterator[produce_pb2.ProduceStreamResponse]:
        config = self._runtime.config
        window = asyncio.Semaphore(config.produce_stream_window)
        stored_bytes = _ByteWindow(config.max_request_bytes)
        acks: _AckQueue = asyncio.Queue()
        lanes: dict[tuple[str, int], AppendLane] = {}
        tasks: set[asyncio.Future[Any]] = set()
        reader = asyncio.create_task(
            self._read_stream(request_iterator, window, stored_bytes, acks, lanes, tasks)
        )
        try:
            while True:
                ack = await acks.get()
                if ack is None:
                    return
                if isinstance(ack, BaseException):
                    raise ack
                yield ack
                window.release()
        finally:
            reader.cancel()
            for lane in lanes.values():
                lane.close()
            for task in tasks:
                task.cancel()

    async def _read_stream(
        self,
        request_iterator: AsyncIterator[produce_pb2.ProduceRequest],
        window: asyncio.Semaphore,
        stored_bytes: _ByteWindow,
        acks: _AckQueue,
        lanes: dict[tuple[str, int], AppendLane],
        tasks: set[asyncio.Future[Any]],
    ) -> None:
        """Read requests and queue each part on its partition's lane, in arrival order.

        A one-part request (every pre-encoded batch) is acknowledged straight from its lane
        future's done callback, in the order the lane settles; a request split over several
        partitions waits for all its parts in a task. A request's bytes count against
        ``stored_bytes`` until its appends are done (then its memory can be freed), its place
        in ``window`` until its acknowledgement is sent.
        """
        try:
            async for request in request_iterator:
                await window.acquire()
                size = request.ByteSize()
                await stored_bytes.acquire(size)
                correlation_id = request.correlation_id
                try:
                    plan = self._plan(request)
                    broker = self._runtime.broker()
                except Exception as exc:  # an invalid request is acked with its error
                    stored_bytes.release(size)
                    acks.put_nowait(_error_ack(correlation_id, exc))
                    continue
                appends = []
                for part in plan.parts:
                    key = (plan.topic, part.partition)
                    lane = lanes.get(key)
                    if lane is None:
                        lane = lanes[key] = AppendLane(
                            self._runtime.executor, self._runtime.loop_sync,
                            self._runtime.run_direct,
                        )
                    inline = None
                    if part.batch is not None and len(part.batch) <= INLINE_APPEND_BYTES:
                        inline = functools.partial(self._store_now, broker, plan, part)
                    appends.append(lane.submit(
                        functools.partial(self._store_part, broker, plan, part), inline=inline
                    ))
                if len(appends) == 1:
                    future: asyncio.Future[Any] = appends[0]
                    future.add_done_callback(
                        functools.partial(_ack_one, plan, correlation_id, acks)
                    )
                else:
                    future = asyncio.ensure_future(_ack(plan, correlation_id, appends, acks))
                tasks.add(future)
                future.add_done_callback(tasks.discard)
                future.add_done_callback(functools.partial(stored_bytes.release_after, size))
            if tasks:
                await asyncio.wait(list(tasks))
            acks.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the request stream itself failed: end the call with it
            acks.put_nowait(exc)

    # ------------------------------------------------------------------ planning

    def _plan(self, request: produce_pb2.ProduceRequest) -> _Plan:
        """Check the request against the limits and split it by partition (no I/O)."""
        broker = self._runtime.broker()
        limit = self._runtime.config.max_batch_bytes
        payload = request.WhichOneof("payload")
        has_partition = request.HasField("partition")
        if not request.topic:
            raise InvalidRequestError("topic is required")
        if payload == "record_batch":
            if not has_partition:
                raise InvalidRequestError(
                    "partition is required with record_batch (a pre-encoded batch goes to one "
                    "partition); send plain records to let the broker choose"
                )
            batch = request.record_batch  # each access copies the bytes out of the message
            if len(batch) > limit:
                raise LimitExceededError(
                    f"record_batch is {len(batch)} bytes, over the server's max_batch_bytes of "
                    f"{limit}; split it into smaller batches"
                )
            return _Plan(request.topic, [_Part(request.partition, batch=batch)])
        if payload != "records":
            raise InvalidRequestError("set either record_batch or records")
        records = request.records.records
        if not records:
            raise InvalidRequestError("records is empty; send at least one record")
        try:
            codec = Codec(request.records.compression)
        except ValueError:
            raise InvalidRequestError(
                f"compression {request.records.compression} is unknown "
                "(0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd)"
            ) from None
        if has_partition:
            broker.partition(request.topic, request.partition)  # NOT_FOUND before encoding
            return _Plan(request.topic, [_Part(request.partition, records=records)], codec)
        by_partition = self._partition_records(broker, request.topic, records)
        parts = [_Part(p, records=rs) for p, rs in sorted(by_partition.items())]
        return _Plan(request.topic, parts, codec)

    def _partition_records(
        self, broker: Broker, topic: str, records: Sequence[common_pb2.Record]
    ) -> dict[int, list[common_pb2.Record]]:
        """Kafka's default choice: murmur2 of the key, round-robin for records without one."""
        count = broker.describe_topic(topic).partitions
        round_robin = self._round_robin.get(topic)
        if round_robin is None:
            round_robin = self._round_robin[topic] = RoundRobin()
        by_partition: dict[int, list[common_pb2.Record]] = {}
        for record in records:
            if record.HasField("key"):
                partition = partition_for_key(record.key, count)
            else:
                partition = round_robin.next(count)
            by_partition.setdefault(partition, []).append(record)
        return by_partition

    # ------------------------------------------------------------------ execution

    def _append_part(self, broker: Broker, plan: _Plan, part: _Part) -> AppendResult:
        """Worker thread: encode if needed, then append (waits for fsync)."""
        batch = part.batch
        if batch is None:
            batch = _encode(part.records, plan.codec, self._runtime.config.max_batch_bytes)
        return broker.append(plan.topic, part.partition, batch)

    def _store_now(
        self, broker: Broker, plan: _Plan, part: _Part
    ) -> tuple[PartitionLog, AppendResult] | None:
        """Event loop: store a pre-encoded batch if that cannot block (None otherwise)."""
        assert part.batch is not None
        log = broker.partition(plan.topic, part.partition)
        result = log.append_nowait(part.batch)
        return None if result is None else (log, result)

    def _store_part(
        self, broker: Broker, plan: _Plan, part: _Part
    ) -> tuple[PartitionLog, AppendResult]:
        """Lane thread: encode if needed, then store without waiting for durability.

        The lane makes the group durable (one ``wait_durable``) before anything is acked.
        """
        batch = part.batch
        if batch is None:
            batch = _encode(part.records, plan.codec, self._runtime.config.max_batch_bytes)
        log = broker.partition(plan.topic, part.partition)
        return log, log.append(batch, wait_durable=False)


def _encode(records: Sequence[common_pb2.Record], codec: Codec, limit: int) -> bytes:
    """Encode plain records into one RecordBatch v2 within ``limit`` bytes."""
    new_records = [
        NewRecord(
            value=record.value if record.HasField("value") else None,
            key=record.key if record.HasField("key") else None,
            headers=tuple(
                Header(h.key, h.value if h.HasField("value") else None) for h in record.headers
            ),
            timestamp=record.timestamp_ms if record.HasField("timestamp_ms") else None,
        )
        for record in records
    ]
    try:
        batch = encode_batch(new_records, codec=codec)
    except ValueError as exc:
        raise InvalidRequestError(f"cannot encode the records: {exc}") from exc
    if len(batch) > limit:
        raise LimitExceededError(
            f"the {len(records)} records encode to a {len(batch)}-byte batch, over the "
            f"server's max_batch_bytes of {limit}; send fewer records per request"
        )
    return batch


def _response(plan: _Plan, outcomes: list[Any]) -> produce_pb2.ProduceResponse:
    """One result per part; fail the whole request only if every part failed."""
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if len(failures) == len(outcomes):
        raise failures[0]
    response = produce_pb2.ProduceResponse()
    for part, outcome in zip(plan.parts, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            code, message = status_for(outcome)
            response.results.add(
                partition=part.partition,
                base_offset=-1,
                last_offset=-1,
                log_append_time_ms=-1,
                error=common_pb2.ErrorStatus(code=code.value[0], message=message),
            )
        else:
            result: AppendResult = outcome
            response.results.add(
                partition=part.partition,
                base_offset=result.base_offset,
                last_offset=result.last_offset,
                log_append_time_ms=result.log_append_time,
                duplicate=result.duplicate,
            )
    return response


def _ack_one(
    plan: _Plan, correlation_id: int, acks: _AckQueue, append: asyncio.Future[Any]
) -> None:
    """Done callback of a one-part request's lane future: queue its acknowledgement."""
    if append.cancelled():
        return  # the stream is ending; nobody reads the acks any more
    try:
        response = _response(plan, [append.exception() or append.result()])
    except Exception as exc:  # acked with its status; the stream goes on
        acks.put_nowait(_error_ack(correlation_id, exc))
    else:
        acks.put_nowait(
            produce_pb2.ProduceStreamResponse(correlation_id=correlation_id, response=response)
        )


async def _ack(
    plan: _Plan, correlation_id: int, appends: list[asyncio.Future[Any]], acks: _AckQueue
) -> None:
    """Wait for a stream request's appends and queue its acknowledgement."""
    try:
        response = _response(plan, await asyncio.gather(*appends, return_exceptions=True))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # acked with its status; the stream goes on
        acks.put_nowait(_error_ack(correlation_id, exc))
    else:
        acks.put_nowait(
            produce_pb2.ProduceStreamResponse(correlation_id=correlation_id, response=response)
        )


def _error_ack(correlation_id: int, exc: BaseException) -> produce_pb2.ProduceStreamResponse:
    code, message = status_for(exc)
    return produce_pb2.ProduceStreamResponse(
        correlation_id=correlation_id,
        error=common_pb2.ErrorStatus(code=code.value[0], message=message),
    )
