"""QueueService messages to and from the client's value objects (:mod:`moldau._queue_types`).

The one place that knows the proto enums, so the rest of the client speaks in the strings the
docs use. Deliveries are converted once per record, so :func:`messages` keeps its loop flat.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from moldau._queue_types import (
    Backoff,
    DeadLetter,
    DeliveryAttempt,
    LeaseError,
    Message,
    NackOutcome,
    NackResult,
    Ordering,
    QueueConfig,
    QueueDescription,
    QueueMode,
    QueuePartitionStats,
    QueueStats,
    ScheduledRetry,
    StartPosition,
)
from moldau._types import Header
from moldau.v1 import common_pb2, queues_pb2

__all__ = [
    "HeaderFilter",
    "config_message",
    "dead_letter",
    "description",
    "lease_errors",
    "messages",
    "nack_action",
    "nack_result",
    "queue_config",
    "scheduled_retry",
    "selection",
    "stats",
]

_pb = queues_pb2
HeaderFilter = Mapping[str, str | bytes | None]
"""Header name -> required value (str is UTF-8), or None for "present with any value"."""

_ORDERING: dict[str, int] = {"unordered": _pb.QUEUE_ORDERING_UNORDERED,
                             "per-key": _pb.QUEUE_ORDERING_PER_KEY}
_ORDERING_IN: dict[int, Ordering] = {_pb.QUEUE_ORDERING_UNSPECIFIED: "unordered",
                                     _pb.QUEUE_ORDERING_UNORDERED: "unordered",
                                     _pb.QUEUE_ORDERING_PER_KEY: "per-key"}
_START: dict[str, int] = {"earliest": _pb.QUEUE_START_POSITION_EARLIEST,
                          "latest": _pb.QUEUE_START_POSITION_LATEST}
_START_IN: dict[int, StartPosition] = {_pb.QUEUE_START_POSITION_UNSPECIFIED: "earliest",
                                       _pb.QUEUE_START_POSITION_EARLIEST: "earliest",
                                       _pb.QUEUE_START_POSITION_LATEST: "latest"}
_MODE: dict[str, int] = {"work": _pb.QUEUE_MODE_WORK, "retry": _pb.QUEUE_MODE_RETRY}
_MODE_IN: dict[int, QueueMode] = {_pb.QUEUE_MODE_UNSPECIFIED: "work",
                                  _pb.QUEUE_MODE_WORK: "work",
                                  _pb.QUEUE_MODE_RETRY: "retry"}
_OUTCOME_IN: dict[int, NackOutcome] = {
    _pb.NACK_OUTCOME_RETRY_SCHEDULED: "retry-scheduled",
    _pb.NACK_OUTCOME_DEAD_LETTERED: "dead-lettered",
    _pb.NACK_OUTCOME_DEAD_LETTER_FAILED: "dead-letter-failed",
    _pb.NACK_OUTCOME_LEASE_INVALID: "lease-invalid",
}


def _choice(table: Mapping[str, int], value: str, name: str) -> int:
    try:
        return table[value]
    except KeyError:
        raise ValueError(f"{name} must be one of {', '.join(table)}, got {value!r}") from None


def config_message(config: QueueConfig) -> queues_pb2.QueueConfig:
    """The proto of ``config``; ValueError names a field with a value outside its choices."""
    b = config.backoff
    return _pb.QueueConfig(
        name=config.name, topic=config.topic,
        ordering=_choice(_ORDERING, config.ordering, "ordering"),  # type: ignore[arg-type]
        lease_ms=config.lease_ms, max_deliveries=config.max_deliveries,
        backoff=_pb.Backoff(initial_ms=b.initial_ms, multiplier=b.multiplier, max_ms=b.max_ms,
                            jitter=b.jitter),
        dlq_topic=config.dlq_topic,
        start=_choice(_START, config.start, "start"),  # type: ignore[arg-type]
        mode=_choice(_MODE, config.mode, "mode"),  # type: ignore[arg-type]
    )


def queue_config(message: queues_pb2.QueueConfig) -> QueueConfig:
    b = message.backoff
    return QueueConfig(
        name=message.name, topic=message.topic,
        ordering=_ORDERING_IN.get(message.ordering, "unordered"),
        lease_ms=message.lease_ms, max_deliveries=message.max_deliveries,
        backoff=Backoff(b.initial_ms, b.multiplier, b.max_ms, b.jitter),
        dlq_topic=message.dlq_topic, start=_START_IN.get(message.start, "earliest"),
        mode=_MODE_IN.get(message.mode, "work"),
    )


def stats(message: queues_pb2.QueueStats) -> QueueStats:
    m = message
    return QueueStats(
        depth=m.depth, ready=m.ready, in_flight=m.in_flight, waiting_retry=m.waiting_retry,
        scheduled=m.scheduled, blocked_by_key=m.blocked_by_key, delivered=m.delivered,
        acked=m.acked, retried=m.retried, expired=m.expired, dead_lettered=m.dead_lettered,
        dead_letter_failures=m.dead_letter_failures,
        malformed_schedule_headers=m.malformed_schedule_headers,
        lost_to_retention=m.lost_to_retention, redelivered=m.redelivered,
    )


def description(message: queues_pb2.DescribeQueueResponse) -> QueueDescription:
    return QueueDescription(
        config=queue_config(message.config), stats=stats(message.stats),
        partitions=tuple(
            QueuePartitionStats(
                partition=p.partition, start_offset=p.start_offset,
                high_watermark=p.high_watermark, scanned_offset=p.scanned_offset,
                done_above_start=p.done_above_start, in_flight=p.in_flight, ready=p.ready,
                waiting_retry=p.waiting_retry, scheduled=p.scheduled,
                blocked_by_key=p.blocked_by_key,
            )
            for p in message.partitions
        ),
        dead_letter_topic_records=message.dead_letter_topic_records,
    )


def _headers(headers: Iterable[common_pb2.Header]) -> tuple[Header, ...]:
    return tuple(Header(h.key, h.value if h.HasField("value") else None) for h in headers)


def messages(queue: str, deliveries: Sequence[queues_pb2.Delivery]) -> list[Message]:
    """Deliveries as :class:`Message` objects, in the order the server sent them."""
    out = []
    for d in deliveries:
        attempts = tuple(
            DeliveryAttempt(a.number, a.outcome, a.error, a.consumer, a.time_ms)
            for a in d.attempts
        ) if d.attempts else ()
        out.append(Message(
            queue, d.lease_id, d.topic, d.partition, d.offset,
            d.key if d.HasField("key") else None,
            d.value if d.HasField("value") else None,
            _headers(d.headers) if d.headers else (),
            d.timestamp_ms, d.delivery_count, d.lease_expires_ms, attempts,
        ))
    return out


def lease_errors(failed: Iterable[queues_pb2.LeaseError]) -> tuple[LeaseError, ...]:
    return tuple(LeaseError(f.lease_id, f.reason) for f in failed)


def nack_action(reject: bool) -> queues_pb2.NackAction.ValueType:
    return _pb.NACK_ACTION_REJECT if reject else _pb.NACK_ACTION_RETRY


def nack_result(result: queues_pb2.NackResult) -> NackResult:
    return NackResult(result.lease_id, _OUTCOME_IN.get(result.outcome, "lease-invalid"),
                      result.due_ms, result.dlq_offset, result.detail)


def scheduled_retry(result: queues_pb2.ScheduledRetry) -> ScheduledRetry:
    return ScheduledRetry(result.partition, result.offset,
                          _OUTCOME_IN.get(result.outcome, "lease-invalid"), result.due_ms,
                          result.dlq_offset, result.already_scheduled, result.detail)


def dead_letter(m: queues_pb2.DeadLetter) -> DeadLetter:
    return DeadLetter(
        dlq_topic=m.dlq_topic, dlq_partition=m.dlq_partition, dlq_offset=m.dlq_offset,
        source_topic=m.source_topic, source_partition=m.source_partition,
        source_offset=m.source_offset, queue=m.queue, reason=m.reason, attempts=m.attempts,
        last_error=m.last_error, first_failure_ms=m.first_failure_ms,
        last_failure_ms=m.last_failure_ms, key=m.key if m.HasField("key") else None,
        value=m.value if m.HasField("value") else None, headers=_headers(m.headers),
        redriven=m.redriven,
    )


def selection(
    *,
    queue: str | None,
    dlq_topic: str | None,
    offset: int | None,
    offsets: tuple[int, int] | None,
    headers: HeaderFilter | None,
    error_contains: str,
    from_queue: str,
    reason: str,
    limit: int,
) -> queues_pb2.DeadLetterSelection:
    """A DeadLetterSelection; ValueError when the arguments contradict each other."""
    if (queue is None) == (dlq_topic is None):
        raise ValueError("say whose dead letters: give exactly one of queue and dlq_topic")
    if offset is not None and offsets is not None:
        raise ValueError("give one offset or an offset range, not both")
    if reason not in ("", "max-deliveries", "rejected"):
        raise ValueError(f"reason must be 'max-deliveries' or 'rejected', got {reason!r}")
    message = _pb.DeadLetterSelection(error_contains=error_contains, from_queue=from_queue,
                                      reason=reason, limit=limit)
    if queue is not None:
        message.queue = queue
    else:
        message.dlq_topic = dlq_topic or ""
    if offset is not None:
        message.offset = offset
    elif offsets is not None:
        message.range.first, message.range.last = offsets
    for key, value in (headers or {}).items():
        header = common_pb2.Header(key=key)
        if value is not None:
            header.value = value.encode() if isinstance(value, str) else value
        message.headers.append(header)
    return message
