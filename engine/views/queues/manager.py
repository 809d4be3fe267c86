"""The queue manager: declare queues over topics, receive under leases, ack, nack, dead-letter.

Internal topics (created on open, ``cleanup.policy=compact``, ``durability=fsync``):

- ``__queues`` (1 partition): queue definitions;
- ``__queue_state`` (``state_partitions`` wide): per queue partition the start offset, done
  bitmaps above it and the delay index of retries (layouts in :mod:`.codec`).

Guarantees (at-least-once):

- an ack returns only once the done state is durable: after a crash, no acked record is
  delivered again; every record not acked or dead-lettered is delivered again;
- a dead letter is durable in the dead-letter topic before its source record is marked done;
  if the dead-letter append fails the record stays in the queue and is retried later;
- retries wait in a durable delay index (pointers, not copies), rebuilt on open;
- leases are NOT durable: after a restart every in-flight record is available again, and the
  delivery that was in flight at the crash is not counted (its count was not written).

Retry queues (``mode=retry``) give plain stream consumers (consumer groups) backoff without
blocking their partition: :meth:`QueueManager.schedule_retries` hands a failed record, by its
source offset, to the queue's delay index, as a failed first delivery; the record is then
received from the queue when due and acked or nacked like any delivery. A retry queue reads
nothing of its topic by itself, and keeps no state for offsets never handed to it.

Time: due times (retries, ``deliver-at``) use the clock's wall time, leases its monotonic
time. Expired leases and due retries are handled lazily by every ``receive`` of the queue and
by :meth:`QueueManager.run_due`, which the server calls about every 100 ms (it also persists
the start offset after acks, keeping the compacted state small).

Concurrency: every public method is thread-safe. Each queue has one lock held only for
in-memory work; durable writes go through one :class:`GroupCommitter` per ``__queue_state``
partition, so concurrent acks share appends and fsyncs. Declare and delete are serialised.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

from engine.clock import Clock
from engine.errors import (
    EngineError,
    InvalidQueueRequestError,
    QueueError,
    QueueExistsError,
    TopicExistsError,
    UnknownQueueError,
    UnknownTopicError,
)
from engine.log.log_protocol import Log, TopicCatalog
from engine.partitioner import partition_for_key
from engine.records.batch import encode_batch
from engine.records.record import NewRecord
from engine.views.queues.codec import (
    CHUNK_BITS,
    StateKey,
    encode_config,
    encode_queue_key,
    encode_start,
    encode_state_key,
)
from engine.views.queues.committer import GroupCommitter
from engine.views.queues.dead_letters import DeadLetterStore
from engine.views.queues.failures import FailureHandler
from engine.views.queues.model import (
    DeadLetter,
    Delivery,
    ExtendResult,
    LeaseFailure,
    LeaseRef,
    LeaseResult,
    NackAction,
    NackOutcome,
    NackResult,
    QueueConfig,
    QueueDescription,
    QueueMode,
    RedriveResult,
    RetryRequest,
    StartPosition,
)
from engine.views.queues.partition_state import Lease, PartitionState
from engine.views.queues.runtime import QueueRuntime
from engine.views.queues.state_store import (
    QueueSnapshot,
    StateChange,
    StateReplay,
    apply_changes,
    encode_changes,
    fail_changes,
    replay_definitions,
    replay_state,
)

__all__ = ["MAX_RECEIVE_RECORDS", "QUEUES_TOPIC", "QUEUE_STATE_TOPIC", "QueueManager"]

log = logging.getLogger(__name__)

QUEUES_TOPIC = "__queues"
QUEUE_STATE_TOPIC = "__queue_state"
DEFAULT_STATE_PARTITIONS = 4
MAX_RECEIVE_RECORDS = 10_000
_WAIT_SLICE_S = 0.05  # a waiting receive re-checks due retries and leases this often
_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "durability": "fsync",  # explicit: a broker-wide "async" default must not weaken acks
    "segment.bytes": str(16 * 1024 * 1024),
}

LeaseLike = LeaseRef | str


def _lease_ref(lease: LeaseLike) -> LeaseRef:
    return lease if isinstance(lease, LeaseRef) else LeaseRef.parse(lease)


class QueueManager:
    """Work queues over topics; create with :meth:`open` (see the module docstring)."""

    def __init__(
        self,
        catalog: TopicCatalog,
        clock: Clock,
        state_logs: list[Log],
        rng: random.Random,
        read_ahead: int,
        redriven: dict[tuple[str, int], dict[int, int]],
    ) -> None:
        self._catalog = catalog
        self._clock = clock
        self._state_logs = state_logs
        self._rng = rng
        self._read_ahead = read_ahead
        self._queues: dict[str, QueueRuntime] = {}
        self._admin_lock = threading.Lock()
        # guards only the rebuild of listener tuples, never I/O, so an event loop may take it
        self._listeners_lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._incarnation = secrets.token_hex(3)
        self._committers = [
            GroupCommitter[StateChange](log_, encode_changes, apply_changes, fail_changes,
                                        clock.now_ms)
            for log_ in state_logs
        ]
        self._dead_letters = DeadLetterStore(catalog, self._state_log_for_text, redriven,
                                             clock.now_ms)
        self._failures = FailureHandler(clock, rng, self._dead_letters, self._committer)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        catalog: TopicCatalog,
        clock: Clock,
        *,
        state_partitions: int = DEFAULT_STATE_PARTITIONS,
        read_ahead: int = 10_000,
        rng: random.Random | None = None,
    ) -> QueueManager:
        """Create the internal topics if missing, replay them and start every queue.

        ``read_ahead`` bounds, per queue partition, the records held ready, in flight or
        blocked behind their key; ``rng`` draws backoff jitter (seed it in tests).
        """
        for name, width in ((QUEUES_TOPIC, 1), (QUEUE_STATE_TOPIC, state_partitions)):
            if not catalog.has_topic(name):
                with contextlib.suppress(TopicExistsError):
                    catalog.create_topic(name, width, _TOPIC_CONFIG, allow_internal=True)
        width = catalog.describe_topic(QUEUE_STATE_TOPIC).partitions
        state_logs = [catalog.partition(QUEUE_STATE_TOPIC, n) for n in range(width)]
        definitions = replay_definitions(catalog.partition(QUEUES_TOPIC, 0))
        replay = replay_state(state_logs, {qid for _, qid in definitions.values()})
        manager = cls(catalog, clock, state_logs, rng or random.Random(), read_ahead,
                      replay.redriven)
        manager._restore(definitions, replay)
        return manager

    def _restore(
        self, definitions: dict[str, tuple[QueueConfig, str]], replay: StateReplay
    ) -> None:
        for index, keys in replay.orphans.items():
            records = [NewRecord(None, key) for key in sorted(keys)]
            if records:  # state of deleted queues: tombstones let compaction drop it
                self._state_logs[index].append(encode_batch(records))
        for name, (config, qid) in sorted(definitions.items()):
            if not self._catalog.has_topic(config.topic):
                log.error("queue %r: topic %r is missing; the queue is not started",
                          name, config.topic)
                continue
            snapshot = replay.queues.get(qid, QueueSnapshot())
            self._start(config, qid, snapshot)

    def _start(self, config: QueueConfig, qid: str, snapshot: QueueSnapshot) -> QueueRuntime:
        partitions = self._catalog.describe_topic(config.topic).partitions
        logs = [self._catalog.partition(config.topic, p) for p in range(partitions)]
        parts = []
        for partition, source in enumerate(logs):
            start = snapshot.starts.get(partition, source.log_start_offset)
            ps = PartitionState(partition, start, ordered=config.ordering == "per_key",
                                retry_only=config.mode == QueueMode.RETRY)
            first_chunk = start // CHUNK_BITS
            chunks = snapshot.chunks.get(partition, {})
            ps.persisted_chunks = set(chunks)
            ps.done = {c: bits for c, bits in chunks.items() if c >= first_chunk}
            for offset, state in snapshot.retries.get(partition, {}).items():
                if ps.retry_only:  # its R records are all it holds
                    ps.pending.add(offset)
                if ps.retry_only or (offset >= start and not ps.is_done(offset)):
                    ps.retry[offset] = state
                    ps.counts[offset] = state.count
                    ps.delayed[offset] = state.due_ms
            parts.append(ps)
        runtime = QueueRuntime(config, qid, logs, parts, read_ahead=self._read_ahead)
        for source in logs:
            source.add_listener(runtime.wake)
        self._queues[config.name] = runtime
        return runtime

    def close(self) -> None:
        """Detach from the source logs; leases end (records come back after a reopen)."""
        with self._admin_lock:
            for runtime in self._queues.values():
                for source in runtime.logs:
                    source.remove_listener(runtime.wake)
                runtime.notify()
            self._queues.clear()

    def _state_index(self, owner: str) -> int:
        return partition_for_key(owner.encode(), len(self._state_logs))

    def _state_log_for_text(self, owner: str) -> Log:
        return self._state_logs[self._state_index(owner)]

    def _committer(self, runtime: QueueRuntime) -> GroupCommitter[StateChange]:
        return self._committers[self._state_index(runtime.queue_id)]

    def _get(self, name: str) -> QueueRuntime:
        runtime = self._queues.get(name)
        if runtime is None:
            raise UnknownQueueError(name)
        return runtime

    # ------------------------------------------------------------------ definitions

    def declare(self, config: QueueConfig) -> QueueDescription:
        """Create a queue, or return the existing one if the definition is identical.

        A new queue's start offsets (the topic's log start, or its end for
        ``start=latest``) are written before the definition, so a crash in between leaves
        no queue rather than a queue starting at the wrong place.

        Raises:
            InvalidQueueRequestError: a bad field (the message names it).
            UnknownTopicError: the topic does not exist.
            QueueExistsError: the name is taken by a different definition.
        """
        config.validate()
        with self._admin_lock:
            existing = self._queues.get(config.name)
            if existing is not None:
                if existing.config == config:
                    return self.describe(config.name)
                raise QueueExistsError(config.name, existing.config.topic)
            if not self._catalog.has_topic(config.topic):
                raise UnknownTopicError(config.topic)
            qid = secrets.token_hex(8)
            partitions = self._catalog.describe_topic(config.topic).partitions
            snapshot = QueueSnapshot()
            records = []
            for partition in range(partitions):
                source = self._catalog.partition(config.topic, partition)
                start = (source.high_watermark if config.start == StartPosition.LATEST
                         else source.log_start_offset)
                snapshot.starts[partition] = start
                key = encode_state_key(StateKey("S", qid, partition))
                records.append(NewRecord(encode_start(start), key))
            self._state_log_for_text(qid).append(encode_batch(records))
            self._catalog.partition(QUEUES_TOPIC, 0).append(
                encode_batch([NewRecord(encode_config(config, qid),
                                        encode_queue_key(config.name))])
            )
            self._start(config, qid, snapshot)
        return self.describe(config.name)

    def delete(self, name: str) -> None:
        """Delete a queue and tombstone its state; the topic and its records stay.

        Raises:
            UnknownQueueError: no such queue.
        """
        with self._admin_lock:
            runtime = self._get(name)
            self._catalog.partition(QUEUES_TOPIC, 0).append(
                encode_batch([NewRecord(None, encode_queue_key(name))])
            )
            del self._queues[name]
            runtime.deleted = True
            for source in runtime.logs:
                source.remove_listener(runtime.wake)
            runtime.notify()
            keys = []
            with runtime.lock:
                qid = runtime.queue_id
                for ps in runtime.parts:
                    keys.append(StateKey("S", qid, ps.partition))
                    keys.extend(StateKey("C", qid, ps.partition, c) for c in ps.persisted_chunks)
                    keys.extend(StateKey("R", qid, ps.partition, o) for o in ps.retry)
            records = [NewRecord(None, encode_state_key(key)) for key in keys]
            for begin in range(0, len(records), 2000):
                self._state_log_for_text(qid).append(encode_batch(records[begin:begin + 2000]))

    def list_queues(self) -> list[QueueConfig]:
        """Every running queue's definition, by name."""
        return [runtime.config for _, runtime in sorted(self._queues.items())]

    def describe(self, name: str) -> QueueDescription:
        """Definition, per-partition state and counters of one queue."""
        runtime = self._get(name)
        with runtime.lock:
            return runtime.describe()

    def watch(self, queue: str, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` whenever records of ``queue`` may have become receivable.

        For waiters that cannot block a thread in :meth:`receive` (an event loop): they poll
        with ``wait_ms=0`` and wait for this. The listener runs on the notifying engine
        thread, must be quick and must not raise; it is also called when the queue is
        deleted or the manager closes, and about every 100 ms while retries come due or
        leases expire (from :meth:`run_due`). Returns the function that removes it. Neither
        waits for the queue's lock, so both may be called from an event loop.

        Raises:
            UnknownQueueError: no such queue.
        """
        runtime = self._get(queue)
        with self._listeners_lock:
            runtime.listeners = (*runtime.listeners, listener)

        def remove() -> None:
            with self._listeners_lock:
                runtime.listeners = tuple(x for x in runtime.listeners if x is not listener)

        return remove

    # ------------------------------------------------------------------ receive

    def receive(
        self,
        queue: str,
        max_records: int,
        *,
        consumer: str = "",
        wait_ms: int = 0,
        lease_ms: int | None = None,
    ) -> list[Delivery]:
        """Lease up to ``max_records`` records; waits up to ``wait_ms`` for the first one.

        Each delivery is invisible to other receivers until its lease expires (``lease_ms``,
        default the queue's), it is acked, nacked or released.

        Raises:
            UnknownQueueError: no such queue (or it was deleted while waiting).
            InvalidQueueRequestError: ``max_records`` outside 1..MAX_RECEIVE_RECORDS, or a
                negative wait or lease.
        """
        if not 1 <= max_records <= MAX_RECEIVE_RECORDS:
            raise InvalidQueueRequestError(
                f"max_records must be between 1 and {MAX_RECEIVE_RECORDS}, got {max_records}",
                queue)
        if wait_ms < 0 or (lease_ms is not None and lease_ms <= 0):
            raise InvalidQueueRequestError("wait_ms must be >= 0 and lease_ms > 0", queue)
        runtime = self._get(queue)
        lease = lease_ms if lease_ms is not None else runtime.config.lease_ms
        deadline = time.monotonic() + wait_ms / 1000.0
        while True:
            runtime.data_event.clear()
            now_ms, monotonic = self._clock.now_ms(), self._clock.monotonic()
            with runtime.lock:
                expired = runtime.collect_expired(monotonic)
                if not expired:
                    runtime.release_due(now_ms)
                    deliveries = runtime.fill(max_records, consumer, lease, now_ms, monotonic,
                                              self._tokens, self._incarnation)
            if expired:
                self._failures.expire(runtime, expired)
                continue
            remaining = deadline - time.monotonic()
            if deliveries or remaining <= 0 or runtime.deleted:
                if runtime.deleted and not deliveries:
                    raise UnknownQueueError(queue)
                return deliveries
            runtime.data_event.wait(min(remaining, _WAIT_SLICE_S))

    # ------------------------------------------------------------------ outcomes

    def _take(
        self, runtime: QueueRuntime, leases: Iterable[LeaseLike]
    ) -> tuple[dict[int, list[tuple[LeaseRef, Lease]]], list[LeaseFailure]]:
        """Remove current leases (their offsets become committing), grouped by partition."""
        taken: dict[int, list[tuple[LeaseRef, Lease]]] = defaultdict(list)
        failed: list[LeaseFailure] = []
        refs = [_lease_ref(lease) for lease in leases]
        with runtime.lock:
            for ref in refs:
                if not 0 <= ref.partition < len(runtime.parts):
                    failed.append(LeaseFailure(ref, "no such partition"))
                    continue
                ps = runtime.parts[ref.partition]
                lease = ps.take_lease(ref.offset, ref.token)
                if lease is None:
                    failed.append(LeaseFailure(ref, self._why_not(ps, ref)))
                else:
                    taken[ref.partition].append((ref, lease))
        return taken, failed

    @staticmethod
    def _why_not(ps: PartitionState, ref: LeaseRef) -> str:
        if ps.is_done(ref.offset):
            return "the record is already done (acked or dead-lettered)"
        if ref.offset in ps.committing:
            return "an ack or nack of this record is in progress"
        return "the lease expired or was released; the record was or will be redelivered"

    def ack(self, queue: str, leases: Iterable[LeaseLike]) -> LeaseResult:
        """Mark the leased records done, durably, in one group-committed write.

        Leases that are not current (expired, released, already acked) are returned in
        ``failed``; the others are durable when this returns.

        Raises:
            UnknownQueueError: no such queue.
            InvalidQueueRequestError: a lease id that cannot be parsed.
            StorageError: the state write failed; the records are delivered again.
        """
        runtime = self._get(queue)
        taken, failed = self._take(runtime, leases)
        changes = [StateChange(runtime, p, tuple(ref.offset for ref, _ in items))
                   for p, items in taken.items()]
        self._committer(runtime).submit(changes)
        acked = tuple(ref for items in taken.values() for ref, _ in items)
        with runtime.lock:
            runtime.counters.acked += len(acked)
        return LeaseResult(acked, tuple(failed))

    def nack(
        self,
        queue: str,
        lease: LeaseLike,
        action: NackAction = NackAction.RETRY,
        error: str = "",
        *,
        consumer: str = "",
    ) -> NackResult:
        """Report a failed delivery: retry after the backoff, or dead-letter it now.

        A retry of the ``max_deliveries``-th delivery dead-letters instead. See
        :meth:`nack_many` for the outcomes.
        """
        return self.nack_many(queue, [lease], action, error, consumer=consumer)[0]

    def nack_many(
        self,
        queue: str,
        leases: Sequence[LeaseLike],
        action: NackAction = NackAction.RETRY,
        error: str = "",
        *,
        consumer: str = "",
    ) -> list[NackResult]:
        """Nack several leases with one state write; one result per lease, in order.

        Outcomes: ``retry_scheduled`` (``due_ms`` set), ``dead_lettered`` (``dlq_offset``
        set), ``dead_letter_failed`` (the dead-letter append failed: the record stays in the
        queue and comes back after the backoff) or ``lease_invalid``.

        Raises:
            UnknownQueueError: no such queue.
            StorageError: the retry state could not be written; the records are delivered
                again without waiting.
        """
        runtime = self._get(queue)
        taken, failed = self._take(runtime, leases)
        return self._failures.nack(runtime, taken, failed, [_lease_ref(x) for x in leases],
                                   NackAction(action), error, consumer)

    def extend_lease(
        self, queue: str, leases: Iterable[LeaseLike], lease_ms: int
    ) -> ExtendResult:
        """Move the leases' expiry to now + ``lease_ms``.

        Raises:
            UnknownQueueError: no such queue.
            InvalidQueueRequestError: ``lease_ms`` not positive.
        """
        if lease_ms <= 0:
            raise InvalidQueueRequestError("lease_ms must be > 0", queue)
        runtime = self._get(queue)
        refs = [_lease_ref(lease) for lease in leases]
        now_ms, monotonic = self._clock.now_ms(), self._clock.monotonic()
        extended: list[tuple[LeaseRef, int]] = []
        failed: list[LeaseFailure] = []
        with runtime.lock:
            for ref in refs:
                parts = runtime.parts
                ps = parts[ref.partition] if 0 <= ref.partition < len(parts) else None
                current = ps.leases.get(ref.offset) if ps is not None else None
                if ps is None or current is None or current.token != ref.token:
                    reason = "no such partition" if ps is None else self._why_not(ps, ref)
                    failed.append(LeaseFailure(ref, reason))
                    continue
                current.deadline = monotonic + lease_ms / 1000.0
                current.expires_ms = now_ms + lease_ms
                runtime.lease_heap_push(ref.partition, ref.offset, current)
                extended.append((ref, current.expires_ms))
        return ExtendResult(tuple(extended), tuple(failed))

    def release(self, queue: str, leases: Iterable[LeaseLike]) -> LeaseResult:
        """Give leased records back without a failure: available at once, count unchanged."""
        runtime = self._get(queue)
        taken, failed = self._take(runtime, leases)
        with runtime.lock:
            for partition, items in taken.items():
                ps = runtime.parts[partition]
                for ref, _ in items:
                    # the delivery is undone: the next one gets the same count, and a worker
                    # that stops and gives back its prefetch uses up no attempts
                    count = ps.counts.get(ref.offset, 0) - 1
                    if count > 0:
                        ps.counts[ref.offset] = count
                    else:
                        ps.counts.pop(ref.offset, None)
                    ps.requeue(ref.offset)
        runtime.notify()
        released = tuple(ref for items in taken.values() for ref, _ in items)
        return LeaseResult(released, tuple(failed))

    # ------------------------------------------------------------------ stream retries

    def schedule_retries(
        self, queue: str, requests: Sequence[RetryRequest], *, consumer: str = ""
    ) -> list[NackResult]:
        """Hand records that failed in a stream consumer to retry queue ``queue``.

        Each record counts as failed once (its first delivery was the stream consumer's): it
        is received from the queue after ``backoff(1)``, or dead-lettered at once when
        ``max_deliveries`` is 1. Only a pointer is stored (an R record), never the payload.
        A record already pending in the queue is left alone (``already_scheduled``). One
        result per request, in order; all requests share one state write.

        Raises:
            UnknownQueueError: no such queue.
            QueueError: ``queue`` is a work queue.
            InvalidQueueRequestError: a partition or offset outside the topic.
            StorageError: the delay index could not be written; the records are then
                receivable from the queue at once.
        """
        runtime = self._get(queue)
        if runtime.config.mode != QueueMode.RETRY:
            raise QueueError(
                f"queue {queue!r} is a work queue and already receives every record of "
                f"{runtime.config.topic!r}; hand failed records to a queue declared with "
                "mode retry", queue)
        for request in requests:
            self._check_source_offset(runtime, request)
        now_ms = self._clock.now_ms()
        results: list[NackResult | None] = []
        adopted: dict[str, list[tuple[int, LeaseRef]]] = defaultdict(list)  # by error text
        leases: dict[LeaseRef, Lease] = {}
        with runtime.lock:
            for index, request in enumerate(requests):
                ps = runtime.parts[request.partition]
                ref = LeaseRef(request.partition, request.offset,
                               f"{self._incarnation}{next(self._tokens):x}")
                if not ps.adopt(request.offset):
                    results.append(NackResult(
                        ref, NackOutcome.RETRY_SCHEDULED, ps.delayed.get(request.offset, -1),
                        detail="already waiting in the queue; nothing changed",
                        already_scheduled=True))
                    continue
                results.append(None)
                adopted[request.error].append((index, ref))
                leases[ref] = Lease(ref.token, consumer, 0.0, now_ms, 1)
        for error, items in adopted.items():
            taken: dict[int, list[tuple[LeaseRef, Lease]]] = defaultdict(list)
            for _, ref in items:
                taken[ref.partition].append((ref, leases[ref]))
            outcomes = self._failures.nack(runtime, taken, [], [ref for _, ref in items],
                                           NackAction.RETRY, error, consumer, outcome="stream")
            for (index, _), result in zip(items, outcomes, strict=True):
                results[index] = result
        return [result for result in results if result is not None]

    @staticmethod
    def _check_source_offset(runtime: QueueRuntime, request: RetryRequest) -> None:
        topic = runtime.config.topic
        if not 0 <= request.partition < len(runtime.logs):
            raise InvalidQueueRequestError(
                f"topic {topic!r} has partitions 0 to {len(runtime.logs) - 1}, not "
                f"{request.partition}", runtime.config.name)
        source = runtime.logs[request.partition]
        if not source.log_start_offset <= request.offset < source.high_watermark:
            raise InvalidQueueRequestError(
                f"offset {request.offset} is not in {topic!r} partition {request.partition} "
                f"(its records are {source.log_start_offset} to {source.high_watermark - 1})",
                runtime.config.name)

    # ------------------------------------------------------------------ periodic

    def run_due(self) -> int:
        """Expire leases, release due retries and persist moved start offsets.

        The server calls this about every 100 ms; receives also do the first two lazily.
        Returns the number of leases expired.
        """
        expired_total = 0
        now_ms, monotonic = self._clock.now_ms(), self._clock.monotonic()
        for runtime in list(self._queues.values()):
            with runtime.lock:
                expired = runtime.collect_expired(monotonic)
                released = runtime.release_due(now_ms)
                moved = [ps.partition for ps in runtime.parts
                         if ps.advance_start() > ps.durable_start]
            if expired:
                expired_total += len(expired)
                self._failures.expire(runtime, expired)
            if moved:
                try:
                    self._committer(runtime).submit(
                        [StateChange(runtime, p) for p in moved])
                except EngineError:
                    log.exception("queue %r: persisting start offsets failed",
                                  runtime.config.name)
            if released or expired:
                runtime.notify()
        return expired_total

    # ------------------------------------------------------------------ dead letters

    def has_topic(self, name: str) -> bool:
        """Whether ``name`` exists (a dead-letter topic appears with its first letter)."""
        return self._catalog.has_topic(name)

    def dead_letters(
        self,
        dlq_topic: str,
        *,
        offsets: range | None = None,
        predicate: Callable[[DeadLetter], bool] | None = None,
        include_redriven: bool = True,
        limit: int = 10_000,
    ) -> list[DeadLetter]:
        """Dead letters of ``dlq_topic`` matching the selection (see ``DeadLetterStore``)."""
        return self._dead_letters.letters(dlq_topic, offsets=offsets, predicate=predicate,
                                          include_redriven=include_redriven, limit=limit)

    def redrive(
        self,
        dlq_topic: str,
        *,
        offsets: range | None = None,
        predicate: Callable[[DeadLetter], bool] | None = None,
        dry_run: bool = False,
        limit: int = 10_000,
    ) -> RedriveResult:
        """Move dead letters (all, ``offsets``, or those ``predicate`` accepts) back.

        Already redriven letters are skipped and counted. ``dry_run`` moves nothing and
        returns what would move. One offset: ``offsets=range(n, n + 1)``.
        """
        return self._dead_letters.redrive(dlq_topic, offsets=offsets, predicate=predicate,
                                          dry_run=dry_run, limit=limit)
