"""One declared queue at run time: its partitions' states, the delay heap and the lease heap.

Two heaps hold all timing, so there is no timer or thread per message:

- the delay heap ``(due_ms, partition, offset)`` on the wall clock (due times are durable:
  they come from R records and ``deliver-at`` headers, which must mean the same after a
  restart); entries are pointers, checked against the partition state when popped, so a stale
  entry (acked or re-delayed since) costs one pop;
- the lease heap ``(deadline, partition, offset, token)`` on the monotonic clock (leases are not
  durable and must not jump with the wall clock).

Wake-ups: :meth:`QueueRuntime.notify` sets ``data_event`` (for receives waiting on a thread)
and calls every callback in ``listeners`` (for waiters elsewhere, e.g. on an event loop),
whenever records may have become receivable: new data in the topic, a settled lease, a retry
that came due, a deletion. Listeners run on the notifying thread, must be quick and must not
raise.

Concurrency: ``lock`` guards everything here and in the partition states. No I/O other than
lock-free log reads happens under it; writes go through the group committer after it is
released.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields

from engine.errors import OffsetOutOfRangeError
from engine.log.log_protocol import Log
from engine.records.record import Record
from engine.views.queues.model import (
    Delivery,
    LeaseRef,
    PartitionStats,
    QueueConfig,
    QueueCounters,
    QueueDescription,
)
from engine.views.queues.partition_state import Lease, PartitionState
from engine.views.queues.reader import READ_BYTES, load_batch, read_records
from engine.views.queues.schedule import parse_schedule

__all__ = ["Expired", "QueueRuntime"]

#: Decoded records kept per partition for redeliveries (see ``QueueRuntime._loaded``).
_LOADED_MAX = 4096


@dataclass(slots=True)
class _Counters:
    delivered: int = 0
    acked: int = 0
    retried: int = 0
    expired: int = 0
    dead_lettered: int = 0
    dead_letter_failures: int = 0
    malformed_schedule_headers: int = 0
    lost_to_retention: int = 0


@dataclass(frozen=True, slots=True)
class Expired:
    """A lease that ran out, taken from the partition state (the offset is committing)."""

    partition: int
    offset: int
    lease: Lease


class QueueRuntime:
    """See the module docstring. Built by the manager from the replayed state."""

    def __init__(
        self,
        config: QueueConfig,
        queue_id: str,
        logs: list[Log],
        parts: list[PartitionState],
        *,
        read_ahead: int,
    ) -> None:
        self.config = config
        self.queue_id = queue_id
        self.logs = logs
        self.parts = parts
        self.read_ahead = read_ahead
        self.lock = threading.Lock()
        self.data_event = threading.Event()
        # replaced whole under the manager's listener lock, read without any lock
        self.listeners: tuple[Callable[[], None], ...] = ()
        self.delay_heap: list[tuple[int, int, int]] = []
        self.lease_heap: list[tuple[float, int, int, str]] = []
        self.counters = _Counters()
        self.deleted = False
        self._next_partition = 0
        # payloads of redelivered records, per partition: a retried record holds none while it
        # waits, and its batch's other records tend to come due soon after (by backoff), so
        # one decode serves them all instead of one decode of the whole batch per record
        self._loaded: dict[int, dict[int, Record]] = {}
        for ps in parts:
            for offset, due_ms in ps.delayed.items():
                self.delay_heap.append((due_ms, ps.partition, offset))
        heapq.heapify(self.delay_heap)

    def wake(self) -> None:
        """Log listener: new data arrived (runs in the appending thread; never blocks)."""
        self.notify()

    def notify(self) -> None:
        """Wake every waiter: records may be receivable now (see the module docstring)."""
        self.data_event.set()
        for listener in self.listeners:
            listener()

    # ------------------------------------------------------------------ timing

    def release_due(self, now_ms: int) -> int:
        """Ready every delayed record whose time has come; returns how many went ready."""
        heap = self.delay_heap
        released = 0
        while heap and heap[0][0] <= now_ms:
            due_ms, partition, offset = heapq.heappop(heap)
            released += self.parts[partition].due(offset, due_ms)
        return released

    def push_delay(self, partition: int, offset: int, due_ms: int) -> None:
        heapq.heappush(self.delay_heap, (due_ms, partition, offset))

    def next_due_ms(self) -> int | None:
        return self.delay_heap[0][0] if self.delay_heap else None

    def lease_heap_push(self, partition: int, offset: int, lease: Lease) -> None:
        heapq.heappush(self.lease_heap, (lease.deadline, partition, offset, lease.token))

    def collect_expired(self, monotonic: float) -> list[Expired]:
        """Take every lease past its deadline; each offset is left committing."""
        expired: list[Expired] = []
        heap = self.lease_heap
        while heap and heap[0][0] <= monotonic:
            deadline, partition, offset, token = heapq.heappop(heap)
            ps = self.parts[partition]
            lease = ps.leases.get(offset)
            if lease is None or lease.token != token or lease.deadline != deadline:
                continue  # acked, released or extended since
            ps.take_lease(offset, token)
            expired.append(Expired(partition, offset, lease))
        return expired

    # ------------------------------------------------------------------ delivery

    def fill(
        self,
        max_records: int,
        consumer: str,
        lease_ms: int,
        now_ms: int,
        monotonic: float,
        tokens: itertools.count[int],
        incarnation: str,
    ) -> list[Delivery]:
        """Lease up to ``max_records`` ready records, partitions taken in rotating order."""
        deliveries: list[Delivery] = []
        count = len(self.parts)
        first = self._next_partition
        self._next_partition = (first + 1) % count
        for step in range(count):
            ps = self.parts[(first + step) % count]
            self._fill_partition(ps, max_records - len(deliveries), deliveries, consumer,
                                 lease_ms, now_ms, monotonic, tokens, incarnation)
            if len(deliveries) >= max_records:
                break
        self.counters.delivered += len(deliveries)
        return deliveries

    def _fill_partition(
        self,
        ps: PartitionState,
        wanted: int,
        out: list[Delivery],
        consumer: str,
        lease_ms: int,
        now_ms: int,
        monotonic: float,
        tokens: itertools.count[int],
        incarnation: str,
    ) -> None:
        config = self.config
        deadline = monotonic + lease_ms / 1000.0
        expires_ms = now_ms + lease_ms
        log = self.logs[ps.partition]
        loaded = self._loaded.setdefault(ps.partition, {})
        partition, lease_heap, heappush = ps.partition, self.lease_heap, heapq.heappush
        while wanted > 0:
            offset = ps.pop_ready()
            if offset is None:
                if not self.scan(ps, now_ms):
                    return
                continue
            record = ps.records.get(offset)
            if record is None:
                # delayed records hold no payload: a retried record's batch is read once, and
                # of it the records with a retry state are built and kept (bounded) for when
                # they come due; a record due by its schedule or freed by its key is built alone
                if offset not in loaded:
                    if len(loaded) > _LOADED_MAX:
                        loaded.clear()
                    held = ps.records
                    build = ps.retry if offset in ps.retry else (offset,)
                    loaded.update((r.offset, r) for r in load_batch(log, offset, build)
                                  if r.offset not in held)
                record = loaded.pop(offset, None)
                if record is None:  # removed by retention since it was scanned
                    ps.finish_done(offset)
                    self.counters.lost_to_retention += 1
                    continue
                ps.records[offset] = record
            delivery_count = ps.counts.get(offset, 0) + 1
            ps.counts[offset] = delivery_count
            token = f"{incarnation}{next(tokens):x}"
            ps.leases[offset] = Lease(token, consumer, deadline, expires_ms, delivery_count)
            heappush(lease_heap, (deadline, partition, offset, token))
            retry = ps.retry.get(offset)
            out.append(Delivery(
                config.name, config.topic, partition, offset, record.timestamp, record.key,
                record.value, record.headers, LeaseRef(partition, offset, token), expires_ms,
                delivery_count, retry.attempts if retry is not None else (),
            ))
            wanted -= 1

    def scan(self, ps: PartitionState, now_ms: int) -> bool:
        """Read the next batches of the partition into the state; False if nothing new."""
        if ps.retry_only or ps.window() >= self.read_ahead:
            return False
        log = self.logs[ps.partition]
        if ps.scanned >= log.high_watermark:
            return False
        before = ps.scanned
        try:
            records, next_offset = read_records(log, before, READ_BYTES)
        except OffsetOutOfRangeError as exc:
            self.counters.lost_to_retention += ps.drop_below(exc.log_start_offset)
            return True
        for record in records:
            schedule = parse_schedule(record.headers, record.timestamp)
            if schedule.malformed:
                self.counters.malformed_schedule_headers += 1
            if ps.accept(record, schedule.due_ms, now_ms):
                self.push_delay(ps.partition, record.offset, schedule.due_ms)
        ps.skip_to(next_offset)
        return ps.scanned > before

    # ------------------------------------------------------------------ describe

    def describe(self) -> QueueDescription:
        stats = []
        for ps in self.parts:
            stats.append(PartitionStats(
                partition=ps.partition,
                start_offset=ps.advance_start(),
                high_watermark=self.logs[ps.partition].high_watermark,
                scanned_offset=ps.scanned,
                done_above_start=ps.done_above_start(),
                in_flight=len(ps.leases),
                ready=sum(1 for o in set(ps.ready) if ps.is_ready(o)),
                waiting_retry=len(ps.delayed) - len(ps.scheduled),
                scheduled=len(ps.scheduled),
                blocked_by_key=ps.blocked_count(),
            ))
        counters = QueueCounters(**{f.name: getattr(self.counters, f.name)
                                    for f in fields(_Counters)})
        return QueueDescription(self.config, tuple(stats), counters)
