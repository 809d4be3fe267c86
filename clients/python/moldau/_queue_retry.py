"""Retries with backoff for consumer-group (stream) consumers: :class:`RetryQueue`.

A stream consumer that fails on a record cannot wait for a backoff without stalling its
partition, and re-producing the record copies its payload. Instead it hands the record's
position to a retry queue (a queue declared with ``mode="retry"`` over the same topic): the
broker's durable delay index keeps a pointer to the source offset, and the record becomes
receivable from the retry queue once its backoff is over. The consumer commits and moves on.
The record then comes back through :meth:`RetryQueue.receive` (or a
:class:`moldau.worker.Worker` handler on the retry queue), is acked or nacked there like any
delivery, and is dead-lettered after ``max_deliveries`` (the stream consumer's failure counts
as the first).

::

    retries = RetryQueue(server, "billing-retry", topic="orders", max_deliveries=4)
    for record in consumer.poll(timeout_ms=500):
        try:
            bill(record)
        except Exception as exc:
            retries.retry(record, str(exc))     # returns at once; the partition moves on
    consumer.commit()
    for message in retries.receive(100):        # the ones whose backoff is over
        ...
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

from moldau._queue_types import (
    AckResult,
    Backoff,
    Message,
    NackResult,
    QueueDeclared,
    ScheduledRetry,
)
from moldau.queues import AsyncQueues, LeasesLike, Queues, RetryTarget

__all__ = ["AsyncRetryQueue", "RetryQueue"]


class AsyncRetryQueue:
    """A retry queue for the records of ``topic`` that a stream consumer failed on.

    Args:
        server: ``HOST:PORT``; default ``$MOLDAU_SERVER`` or 127.0.0.1:7654.
        queue: The retry queue's name; declared (``mode="retry"``) by :meth:`declare`, which
            the first :meth:`retry` calls when it has not been called.
        topic: The topic the stream consumer reads.
        backoff: Delay before each retry; default 1 s doubling up to 5 min.
        max_deliveries: Attempts in all, the stream consumer's included, before the record
            is dead-lettered.
        dlq_topic: Default ``<topic>.dlq``.
        lease_ms: How long a received retry may take before it is delivered again.
        consumer, timeout_ms, token, tls_*: As for :class:`moldau.queues.AsyncQueues`.
    """

    def __init__(
        self,
        server: str | None = None,
        queue: str = "",
        *,
        topic: str,
        backoff: Backoff | None = None,
        max_deliveries: int = 5,
        dlq_topic: str = "",
        lease_ms: int = 30_000,
        **client_options: Any,
    ) -> None:
        if not queue or not topic:
            raise ValueError("a retry queue needs its name (queue=) and the topic (topic=)")
        self.queue = queue
        self.topic = topic
        self._definition: dict[str, Any] = {
            "backoff": backoff, "max_deliveries": max_deliveries, "dlq_topic": dlq_topic,
            "lease_ms": lease_ms}
        self._queues = AsyncQueues(server, **client_options)
        self._declared = False

    async def declare(self) -> QueueDeclared:
        """Create the retry queue, or find it with the same definition."""
        declared = await self._queues.declare(self.queue, self.topic, mode="retry",
                                              **self._definition)
        self._declared = True
        return declared

    async def retry(self, records: RetryTarget | Iterable[RetryTarget],
                    error: str = "") -> list[ScheduledRetry]:
        """Hand failed records (consumed records, or ``(partition, offset)`` pairs) to the
        delay index; each comes back after the backoff. A record already waiting is left as
        it is (``already_scheduled``)."""
        if not self._declared:
            await self.declare()
        return await self._queues.schedule_retry(self.queue, records, error=error,
                                                 topic=self.topic)

    async def receive(self, max_records: int = 100, *, wait_ms: int = 0) -> list[Message]:
        """Retries whose backoff is over, leased to this consumer."""
        return await self._queues.receive(self.queue, max_records, wait_ms=wait_ms)

    async def ack(self, leases: LeasesLike) -> AckResult:
        return await self._queues.ack(leases, queue=self.queue)

    async def nack(self, leases: LeasesLike, error: str = "", *,
                   reject: bool = False) -> list[NackResult]:
        """Failed again: retry after the next backoff step, or dead-letter (``reject``)."""
        return await self._queues.nack(leases, error=error, reject=reject, queue=self.queue)

    async def close(self) -> None:
        await self._queues.close()

    async def __aenter__(self) -> AsyncRetryQueue:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class RetryQueue:
    """The blocking twin of :class:`AsyncRetryQueue`; same arguments, same results."""

    def __init__(
        self,
        server: str | None = None,
        queue: str = "",
        *,
        topic: str,
        backoff: Backoff | None = None,
        max_deliveries: int = 5,
        dlq_topic: str = "",
        lease_ms: int = 30_000,
        **client_options: Any,
    ) -> None:
        if not queue or not topic:
            raise ValueError("a retry queue needs its name (queue=) and the topic (topic=)")
        self.queue = queue
        self.topic = topic
        self._definition: dict[str, Any] = {
            "backoff": backoff, "max_deliveries": max_deliveries, "dlq_topic": dlq_topic,
            "lease_ms": lease_ms}
        self._queues = Queues(server, **client_options)
        self._declared = False

    def declare(self) -> QueueDeclared:
        declared = self._queues.declare(self.queue, self.topic, mode="retry",
                                        **self._definition)
        self._declared = True
        return declared

    def retry(self, records: RetryTarget | Iterable[RetryTarget],
              error: str = "") -> list[ScheduledRetry]:
        if not self._declared:
            self.declare()
        return self._queues.schedule_retry(self.queue, records, error=error, topic=self.topic)

    def receive(self, max_records: int = 100, *, wait_ms: int = 0) -> list[Message]:
        return self._queues.receive(self.queue, max_records, wait_ms=wait_ms)

    def ack(self, leases: LeasesLike) -> AckResult:
        return self._queues.ack(leases, queue=self.queue)

    def nack(self, leases: LeasesLike, error: str = "", *,
             reject: bool = False) -> list[NackResult]:
        return self._queues.nack(leases, error=error, reject=reject, queue=self.queue)

    def close(self) -> None:
        self._queues.close()

    def __enter__(self) -> RetryQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
