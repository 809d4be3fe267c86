"""Value objects of the queue client: definitions, deliveries, settlement results, dead letters.

All are frozen dataclasses built from QueueService answers by :mod:`moldau._queue_wire`; the
enumerations are plain strings (``"unordered"``, ``"retry"`` ...) so that they print and
compare the way the CLI and the docs spell them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from moldau._types import Header

__all__ = [
    "AckResult",
    "Backoff",
    "DeadLetter",
    "DeliveryAttempt",
    "ExtendResult",
    "LeaseError",
    "Message",
    "NackOutcome",
    "NackResult",
    "Ordering",
    "QueueConfig",
    "QueueDeclared",
    "QueueDescription",
    "QueueMode",
    "QueuePartitionStats",
    "QueueStats",
    "QueueSummary",
    "RedriveResult",
    "ReleaseResult",
    "ScheduledRetry",
    "StartPosition",
]

Ordering = Literal["unordered", "per-key"]
"""``unordered``: any record to any consumer; ``per-key``: one record of a key at a time."""
StartPosition = Literal["earliest", "latest"]
"""Where a new queue starts in its topic: every stored record, or only new ones."""
QueueMode = Literal["work", "retry"]
"""``work`` hands out every record of the topic; ``retry`` only those given by
``schedule_retry`` (the stream consumers' retry queue)."""
NackOutcome = Literal["retry-scheduled", "dead-lettered", "dead-letter-failed", "lease-invalid"]
"""What a nack did: see :class:`NackResult`."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before redelivery after the n-th failed delivery:
    ``min(max_ms, initial_ms * multiplier ** (n - 1))``, scaled by a random factor in
    ``[1 - jitter, 1 + jitter]``."""

    initial_ms: int = 1_000
    multiplier: float = 2.0
    max_ms: int = 300_000
    jitter: float = 0.0

    def delay_ms(self, failures: int) -> int:
        """The delay without jitter after ``failures`` failed deliveries (>= 1)."""
        return int(min(self.max_ms, self.initial_ms * self.multiplier ** (failures - 1)))


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """A queue's definition as the server stores it (defaults filled in)."""

    name: str
    topic: str
    ordering: Ordering = "unordered"
    lease_ms: int = 30_000
    max_deliveries: int = 5
    backoff: Backoff = field(default_factory=Backoff)
    dlq_topic: str = ""
    """The effective dead-letter topic (``<topic>.dlq`` unless set)."""
    start: StartPosition = "earliest"
    mode: QueueMode = "work"


@dataclass(frozen=True, slots=True)
class QueueDeclared:
    """The answer of ``declare``: the stored definition, and whether this call created it."""

    config: QueueConfig
    created: bool


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts of one queue. Record counts are current; ``delivered`` and later fields count
    events since the server started (they are not persisted)."""

    depth: int
    """Records not yet done: ready, in flight, waiting, blocked, or not yet read."""
    ready: int
    in_flight: int
    waiting_retry: int
    scheduled: int
    blocked_by_key: int
    delivered: int
    acked: int
    retried: int
    expired: int
    dead_lettered: int
    dead_letter_failures: int
    malformed_schedule_headers: int
    lost_to_retention: int
    redelivered: int


@dataclass(frozen=True, slots=True)
class QueuePartitionStats:
    partition: int
    start_offset: int
    """Every offset below it is done."""
    high_watermark: int
    scanned_offset: int
    done_above_start: int
    in_flight: int
    ready: int
    waiting_retry: int
    scheduled: int
    blocked_by_key: int


@dataclass(frozen=True, slots=True)
class QueueSummary:
    config: QueueConfig
    stats: QueueStats


@dataclass(frozen=True, slots=True)
class QueueDescription:
    config: QueueConfig
    stats: QueueStats
    partitions: tuple[QueuePartitionStats, ...]
    dead_letter_topic_records: int
    """Records in the dead-letter topic (of every queue that shares it)."""


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One earlier failed delivery: ``outcome`` is ``nack``, ``expired``, ``dlq-failed`` or
    ``stream`` (a stream consumer's failure handed over by ``schedule_retry``)."""

    number: int
    outcome: str
    error: str
    consumer: str
    time_ms: int


@dataclass(frozen=True, slots=True)
class Message:
    """One record leased to this consumer: settle it with ack, nack, release, or extend it.

    ``delivery_count`` is 1 on the first delivery; ``attempts`` are the earlier failures,
    oldest first (at most 16).
    """

    queue: str
    lease_id: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    timestamp_ms: int
    delivery_count: int
    lease_expires_ms: int
    attempts: tuple[DeliveryAttempt, ...] = ()

    def header(self, key: str) -> bytes | None:
        """The last value of header ``key``; None when absent (or null)."""
        for header in reversed(self.headers):
            if header.key == key:
                return header.value
        return None


@dataclass(frozen=True, slots=True)
class LeaseError:
    """A lease an operation could not use (expired, released, settled already), and why."""

    lease_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class AckResult:
    acked: tuple[str, ...]
    failed: tuple[LeaseError, ...]


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    released: tuple[str, ...]
    failed: tuple[LeaseError, ...]


@dataclass(frozen=True, slots=True)
class ExtendResult:
    extended: dict[str, int]
    """Lease id -> the new expiry (ms since the epoch)."""
    failed: tuple[LeaseError, ...]


@dataclass(frozen=True, slots=True)
class NackResult:
    """One nacked lease: ``retry-scheduled`` (receivable again from ``due_ms``),
    ``dead-lettered`` (copied to the dead-letter topic at ``dlq_offset``; -1 if the record
    had expired by retention), ``dead-letter-failed`` (the copy failed; the record stays
    queued and comes back at ``due_ms``) or ``lease-invalid`` (nothing changed, see
    ``detail``)."""

    lease_id: str
    outcome: NackOutcome
    due_ms: int
    dlq_offset: int
    detail: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record in a dead-letter topic, its ``moldau.dlq.*`` headers decoded.

    ``reason`` is ``max-deliveries`` or ``rejected``; ``headers`` are the record's own;
    ``redriven`` marks a letter an earlier redrive moved back.
    """

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    source_topic: str
    source_partition: int
    source_offset: int
    queue: str
    reason: str
    attempts: int
    last_error: str
    first_failure_ms: int
    last_failure_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    redriven: bool


@dataclass(frozen=True, slots=True)
class RedriveResult:
    """Letters moved (or, in a dry run, that would move) and those skipped as moved before."""

    moved: tuple[DeadLetter, ...]
    already_redriven: int
    dry_run: bool


@dataclass(frozen=True, slots=True)
class ScheduledRetry:
    """What ``schedule_retry`` did with one record: ``outcome`` ``retry-scheduled`` (receivable
    from the retry queue at ``due_ms``), ``dead-lettered`` or ``dead-letter-failed``;
    ``already_scheduled`` when the record was waiting there already (nothing changed)."""

    partition: int
    offset: int
    outcome: NackOutcome
    due_ms: int
    dlq_offset: int
    already_scheduled: bool
    detail: str
