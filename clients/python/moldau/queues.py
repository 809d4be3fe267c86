"""Work queues: :class:`AsyncQueues`, and :class:`Queues` running it on a loop thread.

A queue hands each record of a topic to one consumer at a time under a lease; the consumer
acks it (done for good), nacks it (retry after the queue's backoff, or reject: dead-letter
now), extends the lease or releases it. Every method is one QueueService call; results are the
frozen value objects of :mod:`moldau._queue_types`. Guarantees and the CLI: docs/queues.md and
docs/retries-and-dlq.md. For a long-running consumer use :class:`moldau.worker.Worker`, which
runs handlers over the Consume stream (:meth:`AsyncQueues.consume`).

Settlement methods take :class:`Message` objects (the queue comes with them) or lease ids
(then say ``queue=``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from moldau._queue_stream import ConsumeStream
from moldau._queue_types import (
    AckResult,
    Backoff,
    DeadLetter,
    ExtendResult,
    Message,
    NackResult,
    Ordering,
    QueueConfig,
    QueueDeclared,
    QueueDescription,
    QueueMode,
    QueueSummary,
    RedriveResult,
    ReleaseResult,
    ScheduledRetry,
    StartPosition,
)
from moldau._queue_wire import (
    HeaderFilter,
    config_message,
    dead_letter,
    description,
    lease_errors,
    messages,
    nack_action,
    nack_result,
    queue_config,
    scheduled_retry,
    selection,
    stats,
)
from moldau._runtime import (
    AsyncClosing,
    BlockingTwin,
    Credentials,
    LoopThread,
    call,
    connection_error,
    open_channel,
    resolve_server,
)
from moldau._types import ConsumerRecord
from moldau.errors import ClientClosedError, MoldauError, TopicNotFoundError
from moldau.v1 import queues_pb2, queues_pb2_grpc

__all__ = ["AsyncQueues", "LeasesLike", "Queues", "RetryTarget", "lease_ids"]

_pb = queues_pb2

LeasesLike = Message | str | Iterable[Message | str]
"""One delivery or lease id, or several."""
RetryTarget = ConsumerRecord | tuple[int, int]
"""A failed record of the queue's topic: a consumed record, or ``(partition, offset)``."""


def lease_ids(leases: LeasesLike, queue: str | None) -> tuple[str, list[str]]:
    """``(queue, lease ids)``; the queue comes from the messages unless given.

    Raises:
        ValueError: no queue is known (bare lease ids without ``queue``), or messages of
            several queues are mixed.
    """
    items: Iterable[Message | str] = (
        [leases] if isinstance(leases, (Message, str)) else leases
    )
    ids: list[str] = []
    for item in items:
        if isinstance(item, Message):
            if queue is None:
                queue = item.queue
            elif item.queue != queue:
                raise ValueError(
                    f"a message of queue {item.queue!r} was settled as one of {queue!r}; "
                    "settle each queue's messages separately")
            ids.append(item.lease_id)
        else:
            ids.append(item)
    if not queue:
        raise ValueError("lease ids alone do not name their queue: pass queue=")
    return queue, ids


def _is_target(value: object) -> bool:
    """One record rather than several (a ConsumerRecord is a tuple too)."""
    if isinstance(value, ConsumerRecord):
        return True
    return isinstance(value, tuple) and len(value) == 2 and all(
        isinstance(x, int) for x in value)


class AsyncQueues(AsyncClosing):
    """Declares, inspects and consumes work queues; lists and redrives dead letters.

    Args:
        server: ``HOST:PORT``; default ``$MOLDAU_SERVER`` or 127.0.0.1:7654.
        consumer: Names this client in the attempt history of failed deliveries.
        timeout_ms: Deadline of each call (a long-poll ``receive`` adds its ``wait_ms``).
        token, tls_ca_file, tls_cert_file, tls_key_file: As for :class:`moldau.AsyncAdmin`.

    Use ``async with AsyncQueues() as queues:``, or call :meth:`close` when done.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        consumer: str = "",
        timeout_ms: int = 30_000,
        token: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self.server = resolve_server(server)
        self.consumer = consumer
        self._timeout_s = timeout_ms / 1000.0
        self._credentials = Credentials.resolve(
            token=token, tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
        )
        self._channel: grpc.aio.Channel | None = None
        self._stub: queues_pb2_grpc.QueueServiceStub | None = None
        self._closed = False

    def _queues(self) -> queues_pb2_grpc.QueueServiceStub:
        if self._closed:
            raise ClientClosedError("the queues client is closed")
        if self._stub is None:
            self._channel = open_channel(self.server, self._credentials)
            self._stub = queues_pb2_grpc.QueueServiceStub(self._channel)
        return self._stub

    async def _call(self, name: str, request: object, extra_s: float = 0.0) -> Any:
        try:
            return await call(getattr(self._queues(), name), request, self._timeout_s + extra_s)
        except MoldauError as exc:
            raise connection_error(self.server, exc) from None

    # ------------------------------------------------------------------ definitions

    async def declare(
        self,
        name: str,
        topic: str,
        *,
        ordering: Ordering = "unordered",
        lease_ms: int = 30_000,
        max_deliveries: int = 5,
        backoff: Backoff | None = None,
        dlq_topic: str = "",
        start: StartPosition = "earliest",
        mode: QueueMode = "work",
    ) -> QueueDeclared:
        """Create queue ``name`` over ``topic`` (which must exist), or find it unchanged.

        Declaring the same definition again is a no-op (``created`` False); another
        definition under the name raises :class:`~moldau.errors.QueueExistsError`.

        Args:
            ordering: ``per-key`` holds a key's next record while one is in flight or
                waiting for its retry (like SQS FIFO message groups).
            lease_ms: Visibility timeout of a delivery; an unsettled one comes back after it.
            max_deliveries: Deliveries before a failing record is dead-lettered.
            backoff: Retry delays; default 1 s doubling up to 5 min, no jitter.
            dlq_topic: Dead-letter topic; default ``<topic>.dlq``, created when first needed.
            start: ``earliest`` (every stored record) or ``latest`` (only new ones).
            mode: ``retry`` makes a retry queue for stream consumers (see
                :meth:`schedule_retry`).
        """
        config = QueueConfig(name, topic, ordering, lease_ms, max_deliveries,
                             backoff or Backoff(), dlq_topic, start, mode)
        request = _pb.DeclareQueueRequest(config=config_message(config))
        reply = await self._call("DeclareQueue", request)
        return QueueDeclared(queue_config(reply.config), reply.created)

    async def delete(self, name: str) -> None:
        """Delete the queue and its state; the topic and its records stay."""
        await self._call("DeleteQueue", _pb.DeleteQueueRequest(name=name))

    async def list_queues(self) -> list[QueueSummary]:
        reply = await self._call("ListQueues", _pb.ListQueuesRequest())
        return [QueueSummary(queue_config(q.config), stats(q.stats)) for q in reply.queues]

    async def describe(self, name: str) -> QueueDescription:
        reply = await self._call("DescribeQueue", _pb.DescribeQueueRequest(name=name))
        return description(reply)

    # ------------------------------------------------------------------ deliveries

    async def receive(
        self, queue: str, max_records: int = 1, *, wait_ms: int = 0, lease_ms: int = 0
    ) -> list[Message]:
        """Lease up to ``max_records`` records, waiting up to ``wait_ms`` (at most 30000)
        for the first one; an empty list after the wait is normal.

        ``lease_ms`` 0 takes the queue's. Each message must be settled before its lease
        runs out, or it is delivered again (with a higher ``delivery_count``).
        """
        request = _pb.ReceiveRequest(queue=queue, max_records=max_records, wait_ms=wait_ms,
                                     lease_ms=lease_ms, consumer=self.consumer)
        reply = await self._call("Receive", request, extra_s=wait_ms / 1000.0)
        return messages(queue, reply.deliveries)

    async def ack(self, leases: LeasesLike, *, queue: str | None = None) -> AckResult:
        """Mark deliveries done, durably: they never come back. Leases no longer current
        (expired, released, settled) are in ``failed``; the call still succeeds."""
        name, ids = lease_ids(leases, queue)
        reply = await self._call("Ack", _pb.AckRequest(queue=name, lease_ids=ids))
        return AckResult(tuple(reply.acked), lease_errors(reply.failed))

    async def nack(
        self,
        leases: LeasesLike,
        *,
        error: str = "",
        reject: bool = False,
        queue: str | None = None,
    ) -> list[NackResult]:
        """Report failed deliveries: retry after the queue's backoff (dead-lettered once
        ``max_deliveries`` is reached), or with ``reject`` dead-letter now. ``error`` is kept
        in the attempt history and the dead letter's headers. One result per lease."""
        name, ids = lease_ids(leases, queue)
        request = _pb.NackRequest(queue=name, lease_ids=ids, action=nack_action(reject),
                                  error=error, consumer=self.consumer)
        reply = await self._call("Nack", request)
        return [nack_result(r) for r in reply.results]

    async def extend_lease(
        self, leases: LeasesLike, lease_ms: int, *, queue: str | None = None
    ) -> ExtendResult:
        """Move the leases' expiry to now + ``lease_ms``."""
        name, ids = lease_ids(leases, queue)
        reply = await self._call(
            "ExtendLease", _pb.ExtendLeaseRequest(queue=name, lease_ids=ids, lease_ms=lease_ms))
        return ExtendResult({e.lease_id: e.lease_expires_ms for e in reply.extended},
                            lease_errors(reply.failed))

    async def release(self, leases: LeasesLike, *, queue: str | None = None) -> ReleaseResult:
        """Give deliveries back without a failure: receivable at once, count unchanged."""
        name, ids = lease_ids(leases, queue)
        reply = await self._call("Release", _pb.ReleaseRequest(queue=name, lease_ids=ids))
        return ReleaseResult(tuple(reply.released), lease_errors(reply.failed))

    def consume(
        self,
        queue: str,
        *,
        lease_ms: int = 0,
        max_batch: int = 0,
    ) -> ConsumeStream:
        """A Consume stream (not yet open: ``await stream.open()``), the fast path that
        :class:`moldau.worker.AsyncWorker` uses: credit-based pushes and batched
        settlements on one bidirectional call."""
        return ConsumeStream(self._queues(), queue, consumer=self.consumer, lease_ms=lease_ms,
                             max_batch=max_batch, server=self.server)

    # ------------------------------------------------------------------ dead letters

    async def dead_letters(
        self,
        *,
        queue: str | None = None,
        dlq_topic: str | None = None,
        offset: int | None = None,
        offsets: tuple[int, int] | None = None,
        headers: HeaderFilter | None = None,
        error_contains: str = "",
        from_queue: str = "",
        reason: str = "",
        limit: int = 0,
        include_redriven: bool = False,
    ) -> list[DeadLetter]:
        """Dead letters of ``queue``'s dead-letter topic (or of ``dlq_topic``), oldest first.

        Args:
            offset: Only this dead-letter offset ...
            offsets: ... or those from the first to the last, both included.
            headers: Each must be among the record's own headers with this value (None:
                present with any value).
            error_contains: The last error text contains this (case-sensitive).
            from_queue: Only letters this queue dead-lettered (a topic may serve several).
            reason: ``max-deliveries`` or ``rejected``.
            limit: At most this many; 0 means 10000.
            include_redriven: Also letters an earlier redrive moved back.
        """
        request = _pb.ListDeadLettersRequest(
            selection=selection(queue=queue, dlq_topic=dlq_topic, offset=offset,
                                offsets=offsets, headers=headers,
                                error_contains=error_contains, from_queue=from_queue,
                                reason=reason, limit=limit),
            include_redriven=include_redriven)
        try:
            reply = await self._call("ListDeadLetters", request)
        except TopicNotFoundError:
            if queue is None:
                raise
            return []  # the queue's dead-letter topic is created with its first letter
        return [dead_letter(m) for m in reply.dead_letters]

    async def redrive(
        self,
        *,
        queue: str | None = None,
        dlq_topic: str | None = None,
        offset: int | None = None,
        offsets: tuple[int, int] | None = None,
        headers: HeaderFilter | None = None,
        error_contains: str = "",
        from_queue: str = "",
        reason: str = "",
        limit: int = 0,
        dry_run: bool = False,
    ) -> RedriveResult:
        """Move the selected dead letters (as :meth:`dead_letters` selects them) back to
        their source topic, where the queue receives them again; each moves at most once.
        ``dry_run`` moves nothing and answers what would move."""
        request = _pb.RedriveRequest(
            selection=selection(queue=queue, dlq_topic=dlq_topic, offset=offset,
                                offsets=offsets, headers=headers,
                                error_contains=error_contains, from_queue=from_queue,
                                reason=reason, limit=limit),
            dry_run=dry_run)
        try:
            reply = await self._call("Redrive", request)
        except TopicNotFoundError:
            if queue is None:
                raise
            return RedriveResult((), 0, dry_run)  # no letter yet: no dead-letter topic yet
        return RedriveResult(tuple(dead_letter(m) for m in reply.moved), reply.already_redriven,
                             reply.dry_run)

    # ------------------------------------------------------------------ stream retries

    async def schedule_retry(
        self,
        queue: str,
        records: RetryTarget | Iterable[RetryTarget],
        *,
        error: str = "",
        topic: str = "",
    ) -> list[ScheduledRetry]:
        """Hand failed records of a stream consumer to retry queue ``queue`` (declared with
        ``mode="retry"``): each becomes receivable there after the queue's backoff, with no
        copy of its payload written. The stream consumer's failure counts as the first
        delivery. ``topic`` (default: the records' own) guards against the wrong queue."""
        targets: list[RetryTarget] = (
            [records] if _is_target(records) else list(records))  # type: ignore[list-item,arg-type]
        wire = []
        for target in targets:
            if isinstance(target, ConsumerRecord):
                topic = topic or target.topic
                if target.topic != topic:
                    raise ValueError(f"record of topic {target.topic!r} given for {topic!r}")
                wire.append(_pb.RetryRecord(partition=target.partition, offset=target.offset,
                                            error=error))
            else:
                partition, offset = target[0], target[1]
                wire.append(_pb.RetryRecord(partition=partition, offset=offset, error=error))
        request = _pb.ScheduleRetryRequest(queue=queue, topic=topic, records=wire,
                                           consumer=self.consumer)
        reply = await self._call("ScheduleRetry", request)
        return [scheduled_retry(r) for r in reply.results]

    async def close(self) -> None:
        self._closed = True
        self._stub = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None



class Queues(BlockingTwin[AsyncQueues]):
    """The blocking twin of :class:`AsyncQueues`; same arguments, same results (without
    ``consume``: use :class:`moldau.worker.Worker` for a long-running consumer)."""

    def __init__(
        self,
        server: str | None = None,
        *,
        consumer: str = "",
        timeout_ms: int = 30_000,
        token: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self._async = AsyncQueues(
            server, consumer=consumer, timeout_ms=timeout_ms, token=token,
            tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file, tls_key_file=tls_key_file,
        )
        self.server = self._async.server
        self.consumer = consumer
        self._thread = LoopThread("moldau-queues")

    def declare(
        self,
        name: str,
        topic: str,
        *,
        ordering: Ordering = "unordered",
        lease_ms: int = 30_000,
        max_deliveries: int = 5,
        backoff: Backoff | None = None,
        dlq_topic: str = "",
        start: StartPosition = "earliest",
        mode: QueueMode = "work",
    ) -> QueueDeclared:
        return self._thread.run(self._async.declare(
            name, topic, ordering=ordering, lease_ms=lease_ms, max_deliveries=max_deliveries,
            backoff=backoff, dlq_topic=dlq_topic, start=start, mode=mode))

    def delete(self, name: str) -> None:
        self._thread.run(self._async.delete(name))

    def list_queues(self) -> list[QueueSummary]:
        return self._thread.run(self._async.list_queues())

    def describe(self, name: str) -> QueueDescription:
        return self._thread.run(self._async.describe(name))

    def receive(
        self, queue: str, max_records: int = 1, *, wait_ms: int = 0, lease_ms: int = 0
    ) -> list[Message]:
        return self._thread.run(
            self._async.receive(queue, max_records, wait_ms=wait_ms, lease_ms=lease_ms))

    def ack(self, leases: LeasesLike, *, queue: str | None = None) -> AckResult:
        return self._thread.run(self._async.ack(leases, queue=queue))

    def nack(
        self,
        leases: LeasesLike,
        *,
        error: str = "",
        reject: bool = False,
        queue: str | None = None,
    ) -> list[NackResult]:
        return self._thread.run(
            self._async.nack(leases, error=error, reject=reject, queue=queue))

    def extend_lease(
        self, leases: LeasesLike, lease_ms: int, *, queue: str | None = None
    ) -> ExtendResult:
        return self._thread.run(self._async.extend_lease(leases, lease_ms, queue=queue))

    def release(self, leases: LeasesLike, *, queue: str | None = None) -> ReleaseResult:
        return self._thread.run(self._async.release(leases, queue=queue))

    def dead_letters(self, **selection: Any) -> list[DeadLetter]:
        """See :meth:`AsyncQueues.dead_letters` for the keyword arguments."""
        return self._thread.run(self._async.dead_letters(**selection))

    def redrive(self, **selection: Any) -> RedriveResult:
        """See :meth:`AsyncQueues.redrive` for the keyword arguments."""
        return self._thread.run(self._async.redrive(**selection))

    def schedule_retry(
        self,
        queue: str,
        records: RetryTarget | Iterable[RetryTarget],
        *,
        error: str = "",
        topic: str = "",
    ) -> list[ScheduledRetry]:
        return self._thread.run(
            self._async.schedule_retry(queue, records, error=error, topic=topic))

