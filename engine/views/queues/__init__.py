"""Work queues over topics: leases, acks, retries with backoff, scheduled delivery, dead letters.

The public API is :class:`QueueManager` and the value objects below; everything else in this
package is private. Design and guarantees: docs/queues.md and docs/retries-and-dlq.md; record
layouts: :mod:`engine.views.queues.codec`.

Modules, bottom up: ``model`` (value objects), ``schedule`` (``deliver-at``/``deliver-after``),
``codec`` (state record layouts), ``reader`` (reads through the Log seam), ``partition_state``
(in-memory state of one queue partition), ``runtime`` (one queue: heaps and delivery),
``committer`` (group commit), ``state_store`` (encode/apply/replay of state), ``dead_letters``
(DLQ copy, list, redrive), ``failures`` (nack and expiry outcomes), ``manager`` (the API).
"""

from engine.views.queues.codec import (
    HDR_ATTEMPTS,
    HDR_FIRST_FAILURE,
    HDR_LAST_ERROR,
    HDR_LAST_FAILURE,
    HDR_QUEUE,
    HDR_REASON,
    HDR_SOURCE_OFFSET,
    HDR_SOURCE_PARTITION,
    HDR_SOURCE_TIMESTAMP,
    HDR_SOURCE_TOPIC,
)
from engine.views.queues.manager import (
    MAX_RECEIVE_RECORDS,
    QUEUE_STATE_TOPIC,
    QUEUES_TOPIC,
    QueueManager,
)
from engine.views.queues.model import (
    Attempt,
    BackoffPolicy,
    DeadLetter,
    Delivery,
    ExtendResult,
    LeaseFailure,
    LeaseRef,
    LeaseResult,
    NackAction,
    NackOutcome,
    NackResult,
    Ordering,
    PartitionStats,
    QueueConfig,
    QueueCounters,
    QueueDescription,
    QueueMode,
    RedriveResult,
    RetryRequest,
    StartPosition,
)
from engine.views.queues.schedule import DELIVER_AFTER_HEADER, DELIVER_AT_HEADER

__all__ = [
    "DELIVER_AFTER_HEADER",
    "DELIVER_AT_HEADER",
    "HDR_ATTEMPTS",
    "HDR_FIRST_FAILURE",
    "HDR_LAST_ERROR",
    "HDR_LAST_FAILURE",
    "HDR_QUEUE",
    "HDR_REASON",
    "HDR_SOURCE_OFFSET",
    "HDR_SOURCE_PARTITION",
    "HDR_SOURCE_TIMESTAMP",
    "HDR_SOURCE_TOPIC",
    "MAX_RECEIVE_RECORDS",
    "QUEUES_TOPIC",
    "QUEUE_STATE_TOPIC",
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
    "QueueManager",
    "QueueMode",
    "RedriveResult",
    "RetryRequest",
    "StartPosition",
]
