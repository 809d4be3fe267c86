"""Failed deliveries: nacks and expired leases become retries or dead letters.

A failure adds an :class:`~engine.views.queues.model.Attempt` to the record's retry state
(the delay-index entry, an R record in ``__queue_state``). Then:

- fewer than ``max_deliveries`` deliveries and not rejected: the record waits until
  ``now + backoff(delivery count)`` (a nack) or is available at once (an expired lease: the
  consumer vanished, nothing says the record is bad);
- otherwise it is dead-lettered: copied to the dead-letter topic, durably, and only then marked
  done. If that append fails the record stays in the queue with a ``dlq-failed`` attempt and
  comes back after the backoff, so a later failure tries the dead-letter topic again.

Concurrency: called without the queue lock; takes it for in-memory reads, never across I/O.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace

from engine.clock import Clock
from engine.errors import EngineError
from engine.records.record import NewRecord
from engine.views.queues.codec import RetryState
from engine.views.queues.committer import GroupCommitter
from engine.views.queues.dead_letters import (
    REASON_MAX_DELIVERIES,
    REASON_REJECTED,
    DeadLetterFailure,
    DeadLetterStore,
    build_dead_letter,
)
from engine.views.queues.model import (
    Attempt,
    LeaseFailure,
    LeaseRef,
    NackAction,
    NackOutcome,
    NackResult,
)
from engine.views.queues.partition_state import Lease, PartitionState
from engine.views.queues.reader import load_record
from engine.views.queues.runtime import Expired, QueueRuntime
from engine.views.queues.state_store import StateChange

__all__ = ["FailureHandler"]

log = logging.getLogger(__name__)
Taken = dict[int, list[tuple[LeaseRef, Lease]]]


@dataclass(frozen=True, slots=True)
class _Doomed:
    ref: LeaseRef
    state: RetryState
    reason: str


def _next_state(ps: PartitionState, offset: int, count: int, attempt: Attempt) -> RetryState:
    previous = ps.retry.get(offset)
    if previous is None:
        return RetryState(0, count, attempt.time_ms, ()).with_attempt(attempt, 0)
    base = RetryState(0, count, previous.first_failure_ms, previous.attempts)
    return base.with_attempt(attempt, 0)


def _changes(runtime: QueueRuntime, items: list[tuple[int, int, RetryState | None]]
             ) -> list[StateChange]:
    """(partition, offset, retry state or None for done) -> one StateChange per partition."""
    done: dict[int, list[int]] = defaultdict(list)
    retries: dict[int, list[tuple[int, RetryState]]] = defaultdict(list)
    for partition, offset, state in items:
        if state is None:
            done[partition].append(offset)
        else:
            retries[partition].append((offset, state))
    return [StateChange(runtime, p, tuple(done.get(p, ())), tuple(retries.get(p, ())))
            for p in sorted(set(done) | set(retries))]


class FailureHandler:
    """Turns nacks and expiries into durable retries or dead letters (see module docs)."""

    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        dead_letters: DeadLetterStore,
        committer_for: Callable[[QueueRuntime], GroupCommitter[StateChange]],
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._dead_letters = dead_letters
        self._committer_for = committer_for

    def nack(
        self,
        runtime: QueueRuntime,
        taken: Taken,
        failed: list[LeaseFailure],
        refs: list[LeaseRef],
        action: NackAction,
        error: str,
        consumer: str,
        *,
        outcome: str = "nack",
    ) -> list[NackResult]:
        """Schedule retries and dead-letter the rest; one result per ref, in order.

        ``outcome`` names the failure in the attempt history (``stream``: a stream consumer's).
        """
        now_ms = self._clock.now_ms()
        config = runtime.config
        results = {f.lease: NackResult(f.lease, NackOutcome.LEASE_INVALID, detail=f.reason)
                   for f in failed}
        retries: list[tuple[int, int, RetryState | None]] = []
        doomed: list[_Doomed] = []
        with runtime.lock:
            for partition, items in taken.items():
                ps = runtime.parts[partition]
                for ref, lease in items:
                    attempt = Attempt(lease.count, outcome, error,
                                      consumer or lease.consumer, now_ms)
                    state = _next_state(ps, ref.offset, lease.count, attempt)
                    if action == NackAction.REJECT:
                        doomed.append(_Doomed(ref, state, REASON_REJECTED))
                    elif lease.count >= config.max_deliveries:
                        doomed.append(_Doomed(ref, state, REASON_MAX_DELIVERIES))
                    else:
                        due = now_ms + config.backoff.delay_ms(lease.count, self._rng)
                        retries.append((partition, ref.offset, replace(state, due_ms=due)))
                        results[ref] = NackResult(ref, NackOutcome.RETRY_SCHEDULED, due)
            runtime.counters.retried += len(retries)
        self._committer_for(runtime).submit(_changes(runtime, retries))
        results.update(self._dead_letter(runtime, doomed, now_ms))
        return [results[ref] for ref in refs]

    def expire(self, runtime: QueueRuntime, expired: list[Expired]) -> None:
        """Record the expiries; retry at once or dead-letter. Storage errors are logged."""
        now_ms = self._clock.now_ms()
        retries: list[tuple[int, int, RetryState | None]] = []
        doomed: list[_Doomed] = []
        with runtime.lock:
            for item in expired:
                ps = runtime.parts[item.partition]
                lease = item.lease
                attempt = Attempt(lease.count, "expired", "lease expired", lease.consumer,
                                  now_ms)
                state = _next_state(ps, item.offset, lease.count, attempt)
                ref = LeaseRef(item.partition, item.offset, lease.token)
                if lease.count >= runtime.config.max_deliveries:
                    doomed.append(_Doomed(ref, state, REASON_MAX_DELIVERIES))
                else:
                    retries.append((item.partition, item.offset, replace(state, due_ms=now_ms)))
            runtime.counters.expired += len(expired)
        try:
            self._committer_for(runtime).submit(_changes(runtime, retries))
        except EngineError:
            log.exception("queue %r: recording expired leases failed; records requeued",
                          runtime.config.name)
        try:
            self._dead_letter(runtime, doomed, now_ms)
        except EngineError:
            log.exception("queue %r: dead-lettering expired records failed; records requeued",
                          runtime.config.name)

    def _dead_letter(
        self, runtime: QueueRuntime, doomed: list[_Doomed], now_ms: int
    ) -> dict[LeaseRef, NackResult]:
        if not doomed:
            return {}
        config = runtime.config
        results: dict[LeaseRef, NackResult] = {}
        records: list[NewRecord] = []
        copied: list[_Doomed] = []
        lost: list[tuple[int, int, RetryState | None]] = []
        for item in doomed:
            ref = item.ref
            with runtime.lock:
                record = runtime.parts[ref.partition].records.get(ref.offset)
            if record is None:
                record = load_record(runtime.logs[ref.partition], ref.offset)
            if record is None:  # retention removed it: nothing left to copy
                lost.append((ref.partition, ref.offset, None))
                results[ref] = NackResult(ref, NackOutcome.DEAD_LETTERED,
                                          detail="record removed by retention; not copied")
                continue
            last = item.state.attempts[-1]
            failure = DeadLetterFailure(config.name, item.reason, item.state.count, last.error,
                                        item.state.first_failure_ms, last.time_ms)
            records.append(build_dead_letter(record, config.topic, ref.partition, failure,
                                              now_ms))
            copied.append(item)
        committer = self._committer_for(runtime)
        try:
            base = self._dead_letters.append(config.dead_letter_topic, records) if records else 0
        except EngineError as exc:
            results.update(self._keep(runtime, copied, str(exc), now_ms))
            committer.submit(_changes(runtime, lost))
            return results
        committer.submit(_changes(runtime, [(d.ref.partition, d.ref.offset, None)
                                            for d in copied] + lost))
        with runtime.lock:
            runtime.counters.dead_lettered += len(copied)
            runtime.counters.lost_to_retention += len(lost)
        for index, item in enumerate(copied):
            results[item.ref] = NackResult(item.ref, NackOutcome.DEAD_LETTERED,
                                           dlq_offset=base + index)
        return results

    def _keep(
        self, runtime: QueueRuntime, items: list[_Doomed], reason: str, now_ms: int
    ) -> dict[LeaseRef, NackResult]:
        """The dead-letter append failed: the records stay, retried after the backoff."""
        log.error("queue %r: dead-letter append to %r failed (%s); %d records stay queued",
                  runtime.config.name, runtime.config.dead_letter_topic, reason, len(items))
        results: dict[LeaseRef, NackResult] = {}
        retries: list[tuple[int, int, RetryState | None]] = []
        for item in items:
            count = item.state.count
            due = now_ms + runtime.config.backoff.delay_ms(count, self._rng)
            attempt = Attempt(count, "dlq-failed", reason, "", now_ms)
            retries.append((item.ref.partition, item.ref.offset,
                            item.state.with_attempt(attempt, due)))
            results[item.ref] = NackResult(item.ref, NackOutcome.DEAD_LETTER_FAILED, due,
                                           detail=reason)
        with runtime.lock:
            runtime.counters.dead_letter_failures += len(items)
        self._committer_for(runtime).submit(_changes(runtime, retries))
        return results
