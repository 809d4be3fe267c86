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
    NackResult,
    QueueConfig,
    QueueDescription,
    RedriveResult,
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
            ps = PartitionState(partition, start, ordered=config.ordering == "per_key")
            first_chunk = start // CHUNK_BITS
            chunks = snapshot.chunks.get(partition, {})
            ps.persisted_chunks = set(chunks)
            ps.done = {c: bits for c, bits in chunks.items() if c >= first_chunk}
            for offset, state in snapshot.retries.get(partition, {}).items():
                if offset >= start and not ps.is_done(offset):
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
                runtime.data_event.set()
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
            runtime.data_event.set()
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
                for ref, _ in items:
                    runtime.parts[partition].requeue(ref.offset)
        runtime.data_event.set()
        released = tuple(ref for items in taken.values() for ref, _ in items)
        return LeaseResult(released, tuple(failed))

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
                runtime.release_due(now_ms)
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
            runtime.data_event.set()
        return expired_total

    # ------------------------------------------------------------------ dead letters

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
