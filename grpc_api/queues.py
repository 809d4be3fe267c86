"""QueueService: work queues, retry queues and dead letters over gRPC.

The engine's :class:`~engine.views.queues.QueueManager` does the work; this module converts
messages and runs the waits. Acks, nacks and dead-letter appends wait for fsync and reads may
touch the disk, so every engine call runs on a worker thread.

Waiting without parking a thread: a Receive with ``wait_ms`` and an idle Consume stream poll
the manager with ``wait_ms=0`` on a worker and, when nothing is receivable, await an asyncio
event that the queue's ``watch`` listener sets (new records in the topic, a settled or expired
lease, a retry come due: the maintenance task runs ``run_due`` every 100 ms, a deletion) or
that shutdown sets. A waiting call holds no thread, and each wait is bounded (``wait_ms``, at
most ``MAX_WAIT_MS``; streams re-poll at least every ``_IDLE_POLL_S``).

Consume: the call's coroutine pushes deliveries while the client has credit; a reader task
takes the client's messages, adds credit at once and settles acks, nacks, extends and
releases on worker threads, up to ``MAX_SETTLING`` requests concurrently per stream (beyond
that it stops reading, so gRPC flow control holds the client). Concurrent acks of all streams
share the manager's group-committed state writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from engine.errors import EngineError, UnknownTopicError
from engine.records.record import Header
from engine.views.queues import (
    MAX_RECEIVE_RECORDS,
    BackoffPolicy,
    DeadLetter,
    Delivery,
    LeaseFailure,
    NackAction,
    NackOutcome,
    NackResult,
    Ordering,
    QueueConfig,
    QueueDescription,
    QueueManager,
    QueueMode,
    RetryRequest,
    StartPosition,
)
from grpc_api.errors import (
    InvalidRequestError,
    NotReadyError,
    status_for,
    stream_errors,
    unary_errors,
)
from grpc_api.runtime import Runtime
from moldau.v1 import common_pb2, queues_pb2, queues_pb2_grpc

__all__ = ["MAINTENANCE_INTERVAL_S", "QueueServicer", "run_queue_maintenance"]

log = logging.getLogger(__name__)

_pb = queues_pb2
MAX_WAIT_MS = 30_000
DEFAULT_CONSUME_BATCH = 500
MAX_SETTLING = 64
MAX_DEAD_LETTERS = 10_000
#: How often the server expires leases, releases due retries and persists start offsets.
MAINTENANCE_INTERVAL_S = 0.1
_IDLE_POLL_S = 1.0
_DEFAULTS = QueueConfig("defaults", "topic")
_T = TypeVar("_T")

_ORDERING = {
    _pb.QUEUE_ORDERING_UNSPECIFIED: Ordering.UNORDERED,
    _pb.QUEUE_ORDERING_UNORDERED: Ordering.UNORDERED,
    _pb.QUEUE_ORDERING_PER_KEY: Ordering.PER_KEY,
}
_START = {
    _pb.QUEUE_START_POSITION_UNSPECIFIED: StartPosition.EARLIEST,
    _pb.QUEUE_START_POSITION_EARLIEST: StartPosition.EARLIEST,
    _pb.QUEUE_START_POSITION_LATEST: StartPosition.LATEST,
}
_MODE = {
    _pb.QUEUE_MODE_UNSPECIFIED: QueueMode.WORK,
    _pb.QUEUE_MODE_WORK: QueueMode.WORK,
    _pb.QUEUE_MODE_RETRY: QueueMode.RETRY,
}
_ACTION = {
    _pb.NACK_ACTION_UNSPECIFIED: NackAction.RETRY,
    _pb.NACK_ACTION_RETRY: NackAction.RETRY,
    _pb.NACK_ACTION_REJECT: NackAction.REJECT,
}
_OUTCOME = {
    NackOutcome.RETRY_SCHEDULED: _pb.NACK_OUTCOME_RETRY_SCHEDULED,
    NackOutcome.DEAD_LETTERED: _pb.NACK_OUTCOME_DEAD_LETTERED,
    NackOutcome.DEAD_LETTER_FAILED: _pb.NACK_OUTCOME_DEAD_LETTER_FAILED,
    NackOutcome.LEASE_INVALID: _pb.NACK_OUTCOME_LEASE_INVALID,
}
_ORDERING_OUT = {Ordering.UNORDERED: _pb.QUEUE_ORDERING_UNORDERED,
                 Ordering.PER_KEY: _pb.QUEUE_ORDERING_PER_KEY}
_START_OUT = {StartPosition.EARLIEST: _pb.QUEUE_START_POSITION_EARLIEST,
              StartPosition.LATEST: _pb.QUEUE_START_POSITION_LATEST}
_MODE_OUT = {QueueMode.WORK: _pb.QUEUE_MODE_WORK, QueueMode.RETRY: _pb.QUEUE_MODE_RETRY}


def _enum(table: Mapping[Any, _T], value: int, field: str) -> _T:
    try:
        return table[value]
    except KeyError:
        raise InvalidRequestError(f"{field} {value} is not one of the values the proto "
                                  "defines; upgrade the server or fix the client") from None


# ---------------------------------------------------------------------------- conversions


async def run_queue_maintenance(runtime: Runtime, manager: QueueManager) -> None:
    """Expire leases, release due retries and persist start offsets until cancelled."""
    while not runtime.closing:
        try:
            await runtime.run(manager.run_due)
        except RuntimeError:  # the executor shut down under us
            return
        except Exception:  # one bad queue must not stop the maintenance of the others
            log.exception("queue maintenance failed; retrying")
        await asyncio.sleep(MAINTENANCE_INTERVAL_S)


def queue_config(message: queues_pb2.QueueConfig) -> QueueConfig:
    """The engine definition of a declared queue (absent fields take the defaults)."""
    defaults = BackoffPolicy()
    wire = message.backoff
    backoff = BackoffPolicy(
        initial_ms=wire.initial_ms if wire.HasField("initial_ms") else defaults.initial_ms,
        multiplier=wire.multiplier if wire.HasField("multiplier") else defaults.multiplier,
        max_ms=wire.max_ms if wire.HasField("max_ms") else defaults.max_ms,
        jitter=wire.jitter if wire.HasField("jitter") else defaults.jitter,
    )
    # the answers carry the effective dead-letter topic: declaring an answer again must be
    # the same definition, so the default name is stored as "" either way
    dlq_topic = "" if message.dlq_topic == f"{message.topic}.dlq" else message.dlq_topic
    return QueueConfig(
        name=message.name, topic=message.topic,
        ordering=_enum(_ORDERING, message.ordering, "ordering"),
        lease_ms=message.lease_ms or _DEFAULTS.lease_ms,
        max_deliveries=message.max_deliveries or _DEFAULTS.max_deliveries,
        backoff=backoff, dlq_topic=dlq_topic,
        start=_enum(_START, message.start, "start"),
        mode=_enum(_MODE, message.mode, "mode"),
    )


def config_message(config: QueueConfig) -> queues_pb2.QueueConfig:
    backoff = config.backoff
    return _pb.QueueConfig(
        name=config.name, topic=config.topic, ordering=_ORDERING_OUT[config.ordering],
        lease_ms=config.lease_ms, max_deliveries=config.max_deliveries,
        backoff=_pb.Backoff(initial_ms=backoff.initial_ms, multiplier=backoff.multiplier,
                            max_ms=backoff.max_ms, jitter=backoff.jitter),
        dlq_topic=config.dead_letter_topic, start=_START_OUT[config.start],
        mode=_MODE_OUT[config.mode],
    )


def _stats(description: QueueDescription) -> queues_pb2.QueueStats:
    parts, counters = description.partitions, description.counters
    return _pb.QueueStats(
        depth=description.backlog,
        ready=sum(p.ready for p in parts),
        in_flight=sum(p.in_flight for p in parts),
        waiting_retry=sum(p.waiting_retry for p in parts),
        scheduled=sum(p.scheduled for p in parts),
        blocked_by_key=sum(p.blocked_by_key for p in parts),
        delivered=counters.delivered, acked=counters.acked, retried=counters.retried,
        expired=counters.expired, dead_lettered=counters.dead_lettered,
        dead_letter_failures=counters.dead_letter_failures,
        malformed_schedule_headers=counters.malformed_schedule_headers,
        lost_to_retention=counters.lost_to_retention,
        redelivered=counters.retried + counters.expired,
    )


def _headers(headers: Iterable[Header]) -> list[common_pb2.Header]:
    return [common_pb2.Header(key=h.key, value=h.value) for h in headers]


def add_deliveries(container: Any, deliveries: Sequence[Delivery]) -> None:
    """Worker thread: append ``deliveries`` to a repeated Delivery field, built in place
    (building messages first and passing them to a constructor would copy each again)."""
    add, attempt_message, header = container.add, _pb.DeliveryAttempt, common_pb2.Header
    for d in deliveries:
        message = add(
            lease_id=str(d.lease), topic=d.topic, partition=d.partition, offset=d.offset,
            value=d.value, timestamp_ms=d.timestamp_ms, delivery_count=d.delivery_count,
            lease_expires_ms=d.lease_expires_ms,
        )
        if d.key is not None:
            message.key = d.key
        if d.headers:
            message.headers.extend(header(key=h.key, value=h.value) for h in d.headers)
        if d.attempts:
            message.attempts.extend(
                attempt_message(number=a.number, outcome=a.outcome, error=a.error,
                                consumer=a.consumer, time_ms=a.time_ms)
                for a in d.attempts)


def _failed(failures: Iterable[LeaseFailure]) -> list[queues_pb2.LeaseError]:
    return [_pb.LeaseError(lease_id=str(f.lease), reason=f.reason) for f in failures]


def _nack_result(result: NackResult) -> queues_pb2.NackResult:
    return _pb.NackResult(lease_id=str(result.lease), outcome=_OUTCOME[result.outcome],
                          due_ms=result.due_ms, dlq_offset=result.dlq_offset,
                          detail=result.detail)


def _dead_letter(letter: DeadLetter) -> queues_pb2.DeadLetter:
    return _pb.DeadLetter(
        dlq_topic=letter.dlq_topic, dlq_partition=letter.dlq_partition,
        dlq_offset=letter.dlq_offset, source_topic=letter.source_topic,
        source_partition=letter.source_partition, source_offset=letter.source_offset,
        queue=letter.queue, reason=letter.reason, attempts=letter.attempts,
        last_error=letter.last_error, first_failure_ms=letter.first_failure_ms,
        last_failure_ms=letter.last_failure_ms, key=letter.key, value=letter.value,
        headers=_headers(letter.headers), redriven=letter.redriven,
    )


class _Selection:
    """A DeadLetterSelection as the manager's arguments: topic, offsets, predicate, limit."""

    def __init__(self, manager: QueueManager, message: queues_pb2.DeadLetterSelection) -> None:
        source = message.WhichOneof("source")
        #: Selected by queue: its dead-letter topic is only created with the first letter, and
        #: until then the queue simply has none (by topic, a missing topic is NOT_FOUND).
        self.by_queue = source == "queue"
        if source == "queue":
            self.topic = manager.describe(message.queue).config.dead_letter_topic
        elif source == "dlq_topic" and message.dlq_topic:
            self.topic = message.dlq_topic
        else:
            raise InvalidRequestError("say whose dead letters: set `dlq_topic` or `queue`")
        which = message.WhichOneof("offsets")
        self.offsets: range | None = None
        if which == "offset":
            if message.offset < 0:
                raise InvalidRequestError(f"offset must be >= 0, got {message.offset}")
            self.offsets = range(message.offset, message.offset + 1)
        elif which == "range":
            first, last = message.range.first, message.range.last
            if not 0 <= first <= last:
                raise InvalidRequestError(
                    f"an offset range needs 0 <= first <= last, got {first} to {last}")
            self.offsets = range(first, last + 1)
        if not 0 <= message.limit <= MAX_DEAD_LETTERS:
            raise InvalidRequestError(f"limit must be 0 to {MAX_DEAD_LETTERS}, got "
                                      f"{message.limit}")
        self.limit = message.limit or MAX_DEAD_LETTERS
        wanted: dict[str, bytes | None] = {}
        for header in message.headers:
            if header.key in wanted:
                raise InvalidRequestError(f"header {header.key!r} is named twice in the filter")
            wanted[header.key] = header.value if header.HasField("value") else None
        self._headers = wanted
        self._error = message.error_contains
        self._queue = message.from_queue
        self._reason = message.reason

    def accepts(self, letter: DeadLetter) -> bool:
        if self._error and self._error not in letter.last_error:
            return False
        if (self._queue and letter.queue != self._queue) or (
                self._reason and letter.reason != self._reason):
            return False
        if not self._headers:
            return True
        present = {h.key: h.value for h in letter.headers}
        return all(key in present and (value is None or present[key] == value)
                   for key, value in self._headers.items())

    @property
    def predicate(self) -> Callable[[DeadLetter], bool] | None:
        filtered = self._headers or self._error or self._queue or self._reason
        return self.accepts if filtered else None


def _list_dead_letters(manager: QueueManager, message: queues_pb2.ListDeadLettersRequest,
                       ) -> queues_pb2.ListDeadLettersResponse:
    selection = _Selection(manager, message.selection)
    if selection.by_queue and not manager.has_topic(selection.topic):
        return _pb.ListDeadLettersResponse()
    letters = manager.dead_letters(selection.topic, offsets=selection.offsets,
                                   predicate=selection.predicate,
                                   include_redriven=message.include_redriven,
                                   limit=selection.limit)
    return _pb.ListDeadLettersResponse(dead_letters=[_dead_letter(x) for x in letters])


def _redrive(manager: QueueManager, message: queues_pb2.RedriveRequest,
             ) -> queues_pb2.RedriveResponse:
    selection = _Selection(manager, message.selection)
    if selection.by_queue and not manager.has_topic(selection.topic):
        return _pb.RedriveResponse(dry_run=message.dry_run)
    result = manager.redrive(selection.topic, offsets=selection.offsets,
                             predicate=selection.predicate, dry_run=message.dry_run,
                             limit=selection.limit)
    return _pb.RedriveResponse(moved=[_dead_letter(x) for x in result.moved],
                               already_redriven=result.already_redriven,
                               dry_run=result.dry_run)


def _describe(runtime: Runtime, name: str) -> queues_pb2.DescribeQueueResponse:
    description = runtime.queues().describe(name)
    stored = 0
    try:
        for plog in runtime.broker().partitions(description.config.dead_letter_topic):
            stored += plog.high_watermark - plog.log_start_offset
    except UnknownTopicError:  # created with the first dead letter
        pass
    return _pb.DescribeQueueResponse(
        config=config_message(description.config), stats=_stats(description),
        partitions=[_pb.QueuePartitionStats(
            partition=p.partition, start_offset=p.start_offset,
            high_watermark=p.high_watermark, scanned_offset=p.scanned_offset,
            done_above_start=p.done_above_start, in_flight=p.in_flight, ready=p.ready,
            waiting_retry=p.waiting_retry, scheduled=p.scheduled,
            blocked_by_key=p.blocked_by_key,
        ) for p in description.partitions],
        dead_letter_topic_records=stored,
    )


def _list(manager: QueueManager) -> queues_pb2.ListQueuesResponse:
    summaries = []
    for config in manager.list_queues():
        try:
            description = manager.describe(config.name)
        except EngineError:  # deleted meanwhile
            continue
        summaries.append(_pb.QueueSummary(config=config_message(config),
                                          stats=_stats(description)))
    return _pb.ListQueuesResponse(queues=summaries)


def _declare(manager: QueueManager, config: QueueConfig) -> queues_pb2.DeclareQueueResponse:
    existed = any(q.name == config.name for q in manager.list_queues())
    description = manager.declare(config)
    return _pb.DeclareQueueResponse(config=config_message(description.config),
                                    created=not existed)


def _schedule(manager: QueueManager, request: queues_pb2.ScheduleRetryRequest,
              ) -> queues_pb2.ScheduleRetryResponse:
    if request.topic:
        topic = manager.describe(request.queue).config.topic
        if topic != request.topic:
            raise InvalidRequestError(f"queue {request.queue!r} retries records of {topic!r}, "
                                      f"not {request.topic!r}; use the retry queue of "
                                      f"{request.topic!r}")
    results = manager.schedule_retries(
        request.queue, [RetryRequest(r.partition, r.offset, r.error) for r in request.records],
        consumer=request.consumer)
    return _pb.ScheduleRetryResponse(results=[
        _pb.ScheduledRetry(partition=r.lease.partition, offset=r.lease.offset,
                           outcome=_OUTCOME[r.outcome], due_ms=r.due_ms,
                           dlq_offset=r.dlq_offset, already_scheduled=r.already_scheduled,
                           detail=r.detail)
        for r in results
    ])


def _check_receive(max_records: int, wait_ms: int, lease_ms: int) -> None:
    if not 0 <= max_records <= MAX_RECEIVE_RECORDS:
        raise InvalidRequestError(f"max_records must be 0 to {MAX_RECEIVE_RECORDS}, got "
                                  f"{max_records}")
    if not 0 <= wait_ms <= MAX_WAIT_MS:
        raise InvalidRequestError(f"wait_ms must be 0 to {MAX_WAIT_MS}, got {wait_ms}; "
                                  "long-poll again for longer waits")
    if lease_ms < 0:
        raise InvalidRequestError(f"lease_ms must be >= 0 (0: the queue's), got {lease_ms}")


class _Wakeup:
    """An asyncio event set by the queue's engine listener (any thread) and by shutdown."""

    def __init__(self, runtime: Runtime) -> None:
        self.event = asyncio.Event()
        self._runtime = runtime
        self._loop = asyncio.get_running_loop()

    def on_notify(self) -> None:
        """Engine thread: must be quick and never raise."""
        if self.event.is_set():
            return  # a wake-up is pending already
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(self.event.set)

    @contextlib.contextmanager
    def watching(self, manager: QueueManager, queue: str) -> Iterator[_Wakeup]:
        remove = manager.watch(queue, self.on_notify)
        self._runtime.shutdown_callbacks.add(self.event.set)
        try:
            yield self
        finally:
            self._runtime.shutdown_callbacks.discard(self.event.set)
            remove()

    async def wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout_s)


def _settle(manager: QueueManager, queue: str, consumer: str,
            request: queues_pb2.ConsumeRequest) -> queues_pb2.ConsumeSettled:
    """Worker thread: a Consume request's acks, nacks, extends and releases."""
    settled = _pb.ConsumeSettled(correlation_id=request.correlation_id)
    if request.ack:
        acked = manager.ack(queue, request.ack)
        if acked.failed:
            settled.acked.extend(str(ref) for ref in acked.succeeded)
            settled.failed.extend(_failed(acked.failed))
        else:  # the common case: echo the ids as sent (no per-record formatting)
            settled.acked.extend(request.ack)
    for nack in request.nack:
        results = manager.nack_many(queue, list(nack.lease_ids),
                                    _enum(_ACTION, nack.action, "action"), nack.error,
                                    consumer=consumer)
        settled.nacked.extend(_nack_result(r) for r in results)
    for extend in request.extend:
        extended = manager.extend_lease(queue, extend.lease_ids, extend.lease_ms)
        settled.extended.extend(_pb.ExtendedLease(lease_id=str(ref), lease_expires_ms=expiry)
                                for ref, expiry in extended.extended)
        settled.failed.extend(_failed(extended.failed))
    if request.release:
        released = manager.release(queue, request.release)
        settled.released.extend(str(ref) for ref in released.succeeded)
        settled.failed.extend(_failed(released.failed))
    return settled


class _ConsumeCall:
    """One Consume stream: its credit, its settlements in progress and answers to send."""

    def __init__(self, runtime: Runtime, manager: QueueManager, start: queues_pb2.ConsumeStart,
                 wakeup: _Wakeup) -> None:
        self.runtime = runtime
        self.manager = manager
        self.queue = start.queue
        self.consumer = start.consumer
        self.wakeup = wakeup
        self.credit = 0
        self.answers: list[queues_pb2.ConsumeSettled] = []
        self.settling: set[asyncio.Task[None]] = set()
        self.room = asyncio.Event()
        self.room.set()
        self.finished = False
        self.error: BaseException | None = None

    def take(self, request: queues_pb2.ConsumeRequest) -> None:
        """Event loop: credit counts at once; settlements go to a worker thread."""
        if request.HasField("start"):
            raise InvalidRequestError("send `start` only in the first message of a stream")
        if request.credit < 0:
            raise InvalidRequestError(f"credit must be >= 0, got {request.credit}")
        self.credit += request.credit
        if request.ack or request.nack or request.extend or request.release:
            task = asyncio.create_task(self._settle(request))
            self.settling.add(task)
            task.add_done_callback(self._settled)
            if len(self.settling) >= MAX_SETTLING:
                self.room.clear()
        elif request.correlation_id:
            self.answers.append(_pb.ConsumeSettled(correlation_id=request.correlation_id))
        self.wakeup.event.set()

    def _settled(self, task: asyncio.Task[None]) -> None:
        self.settling.discard(task)
        if len(self.settling) < MAX_SETTLING:
            self.room.set()
        self.wakeup.event.set()

    async def _settle(self, request: queues_pb2.ConsumeRequest) -> None:
        try:
            settled = await self.runtime.run(_settle, self.manager, self.queue, self.consumer,
                                             request)
        except Exception as exc:  # answered in the stream; the stream goes on
            code, message = status_for(exc)
            if not request.correlation_id:
                log.warning("queue %r: settlements of consumer %r failed: %s", self.queue,
                            self.consumer, message)
                return
            settled = _pb.ConsumeSettled(
                correlation_id=request.correlation_id,
                error=common_pb2.ErrorStatus(code=code.value[0], message=message))
        if request.correlation_id:
            self.answers.append(settled)

    async def read(self, requests: AsyncIterator[queues_pb2.ConsumeRequest]) -> None:
        try:
            async for request in requests:
                await self.room.wait()
                self.take(request)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # surfaced by the response side, which owns the status
            self.error = exc
        self.finished = True
        self.wakeup.event.set()

    def responses(self) -> list[queues_pb2.ConsumeResponse]:
        answers, self.answers = self.answers, []
        return [_pb.ConsumeResponse(settled=a) for a in answers]


class QueueServicer(queues_pb2_grpc.QueueServiceServicer):
    """The QueueService RPCs over the runtime's :class:`QueueManager`."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def _manager(self) -> QueueManager:
        return self._runtime.queues()

    @unary_errors
    async def DeclareQueue(  # noqa: N802  (the RPC name from the proto)
        self, request: queues_pb2.DeclareQueueRequest, context: Any
    ) -> queues_pb2.DeclareQueueResponse:
        config = queue_config(request.config)
        return await self._runtime.run(_declare, self._manager(), config)

    @unary_errors
    async def DeleteQueue(  # noqa: N802  (the RPC name from the proto)
        self, request: queues_pb2.DeleteQueueRequest, context: Any
    ) -> queues_pb2.DeleteQueueResponse:
        await self._runtime.run(self._manager().delete, request.name)
        return _pb.DeleteQueueResponse()

    @unary_errors
    async def ListQueues(  # noqa: N802  (the RPC name from the proto)
        self, request: queues_pb2.ListQueuesRequest, context: Any
    ) -> queues_pb2.ListQueuesResponse:
        return await self._runtime.run(_list, self._manager())

    @unary_errors
    async def DescribeQueue(  # noqa: N802  (the RPC name from the proto)
        self, request: queues_pb2.DescribeQueueRequest, context: Any
    ) -> queues_pb2.DescribeQueueResponse:
        self._manager()
        return await self._runtime.run(_describe, self._runtime, request.name)

    @unary_errors
    async def Receive(  # noqa: N802  (the RPC name from the proto)
        self, request: queues_pb2.ReceiveRequest, context: Any
    ) -> queues_pb2.ReceiveResponse:
        _check_receive(request.max_records, request.wait_ms, request.lease_ms)
        manager = self._manager()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.wait_ms / 1000.0
        with _Wakeup(self._runtime).watching(manager, request.queue) as wakeup:
            while True:
                wakeup.event.clear()  # before polling: a wake-up during the poll is kept
                received: queues_pb2.ReceiveResponse = await self._runtime.run(
                    _receive_response, _pb.ReceiveResponse, manager, request.queue,
                    request.max_records or 1, request.consumer, request.lease_ms or None)
                remaining = deadline - loop.time()
                if received.deliveries or remaining <= 0 or self._runtime.closing:
                    return received
                await wakeup.wait(min(remaining, _IDLE_POLL_S))

    @unary_errors
    async def Ack(  # noqa: N802  (the RPC name from the proto)
        self, request: queues_pb2.AckRequest, context: Any
    ) -> queues_pb2.AckResponse:
        result = await self._runtime.run(self._manager().ack, request.queue,
                                         list(request.lease_ids))
        return _pb.AckResponse(acked=[str(ref) for ref in result.succeeded],
                               failed=_failed(result.failed))

    @unary_errors
    async def Nack(  # noqa: N802  (the RPC name from the proto)
        self, request: queues_pb2.NackRequest, context: Any
    ) -> queues_pb2.NackResponse:
        action = _enum(_ACTION, request.action, "action")
        results = await self._runtime.run(
            _nack, self._manager(), request.queue, list(request.lease_ids), action,
            request.error, request.consumer)
        return _pb.NackResponse(results=[_nack_result(r) for r in results])

    @unary_errors
    async def ExtendLease(  # noqa: N802  (the RPC name from the proto)
        self, request: queues_pb2.ExtendLeaseRequest, context: Any
    ) -> queues_pb2.ExtendLeaseResponse:
        result = await self._runtime.run(self._manager().extend_lease, request.queue,
                                         list(request.lease_ids), request.lease_ms)
        return _pb.ExtendLeaseResponse(
            extended=[_pb.ExtendedLease(lease_id=str(ref), lease_expires_ms=expiry)
                      for ref, expiry in result.extended],
            failed=_failed(result.failed))

    @unary_errors
    async def Release(  # noqa: N802  (the RPC name from the proto)
        self, request: queues_pb2.ReleaseRequest, context: Any
    ) -> queues_pb2.ReleaseResponse:
        result = await self._runtime.run(self._manager().release, request.queue,
                                         list(request.lease_ids))
        return _pb.ReleaseResponse(released=[str(ref) for ref in result.succeeded],
                                   failed=_failed(result.failed))

    @stream_errors
    async def Consume(  # noqa: N802  (the RPC name from the proto)
        self, request_iterator: AsyncIterator[queues_pb2.ConsumeRequest], context: Any
    ) -> AsyncIterator[queues_pb2.ConsumeResponse]:
        manager = self._manager()
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        start = first.start
        if not first.HasField("start") or not start.queue:
            raise InvalidRequestError("the first message must carry `start` naming the queue")
        batch = start.max_batch or DEFAULT_CONSUME_BATCH
        if not 1 <= batch <= MAX_RECEIVE_RECORDS:
            raise InvalidRequestError(f"max_batch must be 0 to {MAX_RECEIVE_RECORDS}, got "
                                      f"{start.max_batch}")
        _check_receive(0, 0, start.lease_ms)
        first.ClearField("start")
        with _Wakeup(self._runtime).watching(manager, start.queue) as wakeup:
            call = _ConsumeCall(self._runtime, manager, start, wakeup)
            call.take(first)
            reader = asyncio.create_task(call.read(request_iterator))
            try:
                async for response in self._consume(call, batch, start.lease_ms or None):
                    yield response
            finally:
                reader.cancel()

    async def _consume(self, call: _ConsumeCall, batch: int, lease_ms: int | None,
                       ) -> AsyncIterator[queues_pb2.ConsumeResponse]:
        while True:
            for response in call.responses():
                yield response
            if call.error is not None:
                raise call.error
            if self._runtime.closing:
                raise NotReadyError("the server is shutting down; consume again after the "
                                    "restart (unacked records come back)")
            if call.finished and not call.settling and not call.answers:
                return
            call.wakeup.event.clear()
            if call.credit > 0 and not call.finished:
                received = await self._runtime.run(
                    _receive_response, _pb.ConsumeResponse, call.manager, call.queue,
                    min(call.credit, batch), call.consumer, lease_ms)
                if received.deliveries:
                    call.credit -= len(received.deliveries)
                    yield received
                    continue
            if not call.answers:
                await call.wakeup.wait(_IDLE_POLL_S)

    @unary_errors
    async def ListDeadLetters(  # noqa: N802  (the RPC name from the proto)
        self, request: queues_pb2.ListDeadLettersRequest, context: Any
    ) -> queues_pb2.ListDeadLettersResponse:
        return await self._runtime.run(_list_dead_letters, self._manager(), request)

    @unary_errors
    async def Redrive(  # noqa: N802  (the RPC name from the proto)
        self, request: queues_pb2.RedriveRequest, context: Any
    ) -> queues_pb2.RedriveResponse:
        return await self._runtime.run(_redrive, self._manager(), request)

    @unary_errors
    async def ScheduleRetry(  # noqa: N802  (the RPC name from the proto)
        self, request: queues_pb2.ScheduleRetryRequest, context: Any
    ) -> queues_pb2.ScheduleRetryResponse:
        return await self._runtime.run(_schedule, self._manager(), request)


_Received = TypeVar("_Received", queues_pb2.ReceiveResponse, queues_pb2.ConsumeResponse)


def _receive_response(response_type: type[_Received], manager: QueueManager, queue: str,
                      max_records: int, consumer: str, lease_ms: int | None) -> _Received:
    """Worker thread: lease what is receivable now, as a response of ``response_type``."""
    response = response_type()
    add_deliveries(response.deliveries, manager.receive(queue, max_records, consumer=consumer,
                                                        lease_ms=lease_ms))
    return response


def _nack(manager: QueueManager, queue: str, leases: list[str], action: NackAction,
          error: str, consumer: str) -> list[NackResult]:
    return manager.nack_many(queue, leases, action, error, consumer=consumer)
