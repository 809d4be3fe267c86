"""Value objects of the queue API: definitions, deliveries, leases, outcomes, descriptions.

All are frozen slotted dataclasses so they can cross threads (and the gRPC layer) freely.
Times named ``*_ms`` are wall-clock epoch milliseconds from the manager's Clock.
"""

from __future__ import annotations

import enum
import math
import random
import re
from dataclasses import dataclass, field

from engine.errors import InvalidQueueRequestError
from engine.records.record import Header

__all__ = [
    "MAX_ATTEMPTS_KEPT",
    "Attempt",
    "BackoffPolicy",
    "DeadLetter",
    "Delivery",
    "ExtendResult",
    "LeaseFailure",
    "LeaseRef",
    "LeaseResult",
    "NackAction",
    "NackOutcome",
    "NackResult",
    "Ordering",
    "PartitionStats",
    "QueueConfig",
    "QueueCounters",
    "QueueDescription",
    "QueueMode",
    "RedriveResult",
    "RetryRequest",
    "StartPosition",
]

MAX_ATTEMPTS_KEPT = 16  # attempt history per record: the first failure time is kept apart
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class Ordering(enum.StrEnum):
    """``unordered``: any record to any consumer. ``per_key``: one in-flight record per key."""

    UNORDERED = "unordered"
    PER_KEY = "per_key"


class StartPosition(enum.StrEnum):
    """Where a new queue starts in its topic."""

    EARLIEST = "earliest"
    LATEST = "latest"


class QueueMode(enum.StrEnum):
    """``work``: every record of the topic. ``retry``: only records handed over by
    :meth:`QueueManager.schedule_retries` (backoff for stream consumers, see ``manager``)."""

    WORK = "work"
    RETRY = "retry"


class NackAction(enum.StrEnum):
    """``retry``: redeliver after the backoff. ``reject``: dead-letter now."""

    RETRY = "retry"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Delay before redelivery after the n-th failed delivery.

    ``delay(n) = min(max_ms, initial_ms * multiplier ** (n - 1))``, then scaled by a factor
    drawn uniformly from ``[1 - jitter, 1 + jitter]`` (jitter spreads retries of records that
    failed together, so they do not all come back in the same instant).
    """

    initial_ms: int = 1000
    multiplier: float = 2.0
    max_ms: int = 300_000
    jitter: float = 0.0

    def validate(self) -> None:
        """Raises InvalidQueueRequestError naming the bad field."""
        if self.initial_ms < 0 or self.max_ms < 0:
            raise InvalidQueueRequestError("backoff initial_ms and max_ms must be >= 0")
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1.0):
            raise InvalidQueueRequestError("backoff multiplier must be a finite number >= 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise InvalidQueueRequestError("backoff jitter must be a fraction in [0, 1]")

    def base_delay_ms(self, attempt: int) -> int:
        """The delay after failed delivery number ``attempt`` (>= 1), without jitter."""
        exponent = max(0, attempt - 1)
        # cap the exponent: a float overflow would otherwise raise for large attempt counts
        if self.multiplier > 1.0 and exponent > 1100:
            return self.max_ms
        return int(min(float(self.max_ms), self.initial_ms * self.multiplier**exponent))

    def delay_ms(self, attempt: int, rng: random.Random) -> int:
        """The delay with jitter applied; never negative."""
        base = self.base_delay_ms(attempt)
        if self.jitter == 0.0 or base == 0:
            return base
        factor = 1.0 + rng.uniform(-self.jitter, self.jitter)
        return max(0, round(base * factor))


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """A queue's definition, stored in ``__queues``.

    Attributes:
        name: the queue name (letters, digits, ``.``, ``_``, ``-``).
        topic: the topic the queue consumes, all partitions.
        ordering: see :class:`Ordering`.
        lease_ms: visibility timeout of a delivery unless the receive asks otherwise.
        max_deliveries: deliveries before a failing record is dead-lettered (>= 1).
        backoff: delay policy for ``nack(retry)`` and expired leases.
        dlq_topic: dead-letter topic; ``""`` means ``<topic>.dlq``.
        start: where a new queue starts in the topic.
        mode: see :class:`QueueMode`; a retry queue reads nothing by itself.
    """

    name: str
    topic: str
    ordering: Ordering = Ordering.UNORDERED
    lease_ms: int = 30_000
    max_deliveries: int = 5
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    dlq_topic: str = ""
    start: StartPosition = StartPosition.EARLIEST
    mode: QueueMode = QueueMode.WORK

    @property
    def dead_letter_topic(self) -> str:
        """The effective dead-letter topic name."""
        return self.dlq_topic or f"{self.topic}.dlq"

    def validate(self) -> None:
        """Raises InvalidQueueRequestError naming the bad field."""
        if not _NAME.match(self.name):
            raise InvalidQueueRequestError(
                f"queue name {self.name!r} must be 1-200 letters, digits, '.', '_' or '-'",
                self.name,
            )
        if not self.topic:
            raise InvalidQueueRequestError("a queue needs a topic", self.name)
        if self.lease_ms <= 0:
            raise InvalidQueueRequestError("lease_ms must be > 0", self.name)
        if self.max_deliveries < 1:
            raise InvalidQueueRequestError("max_deliveries must be >= 1", self.name)
        if self.dead_letter_topic == self.topic:
            raise InvalidQueueRequestError("the dead-letter topic must differ from the topic",
                                           self.name)
        if self.mode == QueueMode.RETRY and self.ordering == Ordering.PER_KEY:
            raise InvalidQueueRequestError(
                "a retry queue is unordered (its records come back when due, not in key "
                "order); declare it with ordering unordered", self.name)
        self.backoff.validate()


@dataclass(frozen=True, slots=True)
class LeaseRef:
    """Names one delivery: the record and the lease token issued with it.

    ``str(ref)`` is the lease id clients pass back (``"<partition>:<offset>:<token>"``);
    :meth:`parse` reads it. A token is unique per manager instance, so a lease from before a
    restart, or from an earlier delivery of the same record, never matches the current one.
    """

    partition: int
    offset: int
    token: str

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}:{self.token}"

    @classmethod
    def parse(cls, lease_id: str) -> LeaseRef:
        """Inverse of ``str``; raises InvalidQueueRequestError for anything else."""
        parts = lease_id.split(":")
        if len(parts) != 3 or not parts[2]:
            raise InvalidQueueRequestError(f"{lease_id!r} is not a lease id")
        try:
            return cls(int(parts[0]), int(parts[1]), parts[2])
        except ValueError as exc:
            raise InvalidQueueRequestError(f"{lease_id!r} is not a lease id") from exc


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one failed delivery, kept beside the pointer in the delay index.

    ``outcome`` is ``"nack"``, ``"expired"`` (the lease ran out) or ``"dlq-failed"`` (the
    dead-letter append failed, so the record stayed in the queue).
    """

    number: int
    outcome: str
    error: str
    consumer: str
    time_ms: int


@dataclass(frozen=True, slots=True)
class RetryRequest:
    """A record of a retry queue's topic that failed in a stream consumer (see
    :meth:`QueueManager.schedule_retries`)."""

    partition: int
    offset: int
    error: str = ""


@dataclass(slots=True)
class Delivery:
    """One record handed to one consumer under a lease; treat it as immutable.

    ``delivery_count`` counts this delivery (1 on the first). ``attempts`` are the earlier
    failed deliveries, oldest first (at most ``MAX_ATTEMPTS_KEPT``).

    Not ``frozen`` on purpose: one is built per delivered record on the receive hot path, and
    a frozen dataclass's ``__init__`` (``object.__setattr__`` per field) costs about five times
    as much, a measurable share of a queue's receive+ack throughput.
    """

    queue: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    lease: LeaseRef
    lease_expires_ms: int
    delivery_count: int
    attempts: tuple[Attempt, ...] = ()

    @property
    def lease_id(self) -> str:
        return str(self.lease)


@dataclass(frozen=True, slots=True)
class LeaseFailure:
    """A lease an ack/nack/extend/release could not use, and why (expired, unknown, ...)."""

    lease: LeaseRef
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseResult:
    """Outcome of a batch ack or release: ``succeeded`` leases and ``failed`` ones (not current).

    For an ack, ``succeeded`` records are durably done when this is returned.
    """

    succeeded: tuple[LeaseRef, ...]
    failed: tuple[LeaseFailure, ...] = ()


@dataclass(frozen=True, slots=True)
class ExtendResult:
    """Outcome of ``extend_lease``: ``(lease, new expiry ms)`` pairs and failed leases."""

    extended: tuple[tuple[LeaseRef, int], ...]
    failed: tuple[LeaseFailure, ...] = ()


class NackOutcome(enum.StrEnum):
    """What became of a nacked (or expired) record."""

    RETRY_SCHEDULED = "retry_scheduled"
    DEAD_LETTERED = "dead_lettered"
    DEAD_LETTER_FAILED = "dead_letter_failed"  # the DLQ append failed; the record stays queued
    LEASE_INVALID = "lease_invalid"


@dataclass(frozen=True, slots=True)
class NackResult:
    """``due_ms``: when a retry becomes visible. ``dlq_offset``: the dead letter's offset."""

    lease: LeaseRef
    outcome: NackOutcome
    due_ms: int = -1
    dlq_offset: int = -1
    detail: str = ""
    already_scheduled: bool = False  # schedule_retries only: the record was pending already


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """One partition of a queue; counts are of records between ``start_offset`` and the end."""

    partition: int
    start_offset: int
    high_watermark: int
    scanned_offset: int
    done_above_start: int
    in_flight: int
    ready: int
    waiting_retry: int
    scheduled: int
    blocked_by_key: int


@dataclass(frozen=True, slots=True)
class QueueCounters:
    """Counts since the manager opened (not persisted)."""

    delivered: int = 0
    acked: int = 0
    retried: int = 0
    expired: int = 0
    dead_lettered: int = 0
    dead_letter_failures: int = 0
    malformed_schedule_headers: int = 0
    lost_to_retention: int = 0


@dataclass(frozen=True, slots=True)
class QueueDescription:
    """A queue's definition, per-partition state and counters."""

    config: QueueConfig
    partitions: tuple[PartitionStats, ...]
    counters: QueueCounters

    @property
    def backlog(self) -> int:
        """Records not yet done (ready, in flight, delayed or not yet scanned).

        A retry queue holds only the records handed to it, all of them scanned.
        """
        if self.config.mode == QueueMode.RETRY:
            return sum(p.ready + p.in_flight + p.waiting_retry for p in self.partitions)
        return sum(p.high_watermark - p.start_offset - p.done_above_start
                   for p in self.partitions)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record in a dead-letter topic, with its ``moldau.dlq.*`` headers decoded."""

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
    headers: tuple[Header, ...]  # the original headers, without the dlq ones
    redriven: bool


@dataclass(frozen=True, slots=True)
class RedriveResult:
    """Dead letters moved (or, in a dry run, that would move) and those skipped."""

    moved: tuple[DeadLetter, ...]
    already_redriven: int
    dry_run: bool
