"""In-memory state of one queue over one partition: which offsets are done, leased, waiting.

No I/O happens here; the manager reads the log, writes ``__queue_state`` and calls these
transitions. Vocabulary (offsets of the source partition):

- ``start``: every offset below is done; the durable copy is ``durable_start`` (an S record).
- ``scanned``: the next offset the scanner has not read yet; ``start <= scanned``.
- pending: scanned offsets not yet done. Each pending offset is in exactly one of: ready
  (``ready`` heap, payload in ``records``), leased (``leases``), committing (an ack, nack or
  dead-letter write in progress), delayed (``delayed``: due time of a retry or a
  ``deliver-at`` schedule; no payload held), or blocked behind an earlier record of its key
  (per-key ordering; no payload held). Gaps in the log (compaction) are never pending, so
  ``start`` skips them without writing anything for them.
- done: the bit of the offset is set in ``done`` (from durable C records) or it is below
  ``start``. An offset becomes done only after its state write is durable.

A retry queue's partition (``retry_only``) reads nothing: its pending offsets are exactly those
handed over by ``adopt`` (or replayed from R records), and done means not pending, so no
bitmaps or start offset are kept for it (its ``start`` never moves).

Per-key ordering keeps, per key, the pending offsets in order (``key_queue``); only the head
may be ready, leased or committing, so a key's next record waits while an earlier one is in
flight or waiting for its retry.

Concurrency: none of its own; the owning queue's lock guards every call.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from engine.records.record import Record
from engine.views.queues.codec import CHUNK_BITS, RetryState

__all__ = ["Lease", "PartitionState"]

_SHIFT = CHUNK_BITS.bit_length() - 1
_MASK = CHUNK_BITS - 1


@dataclass(slots=True)
class Lease:
    """The current lease of one record (mutable: extend moves the deadline)."""

    token: str
    consumer: str
    deadline: float  # Clock.monotonic() seconds
    expires_ms: int
    count: int  # the delivery count of this delivery


class PartitionState:
    """See the module docstring."""

    def __init__(
        self, partition: int, start: int, *, ordered: bool, retry_only: bool = False
    ) -> None:
        self.partition = partition
        self.ordered = ordered
        self.retry_only = retry_only
        self.start = start
        self.durable_start = start
        self.scanned = start
        self.done: dict[int, int] = {}  # chunk -> bitmap of done offsets
        self.persisted_chunks: set[int] = set()  # chunks with a live C record
        self.pending: set[int] = set()
        self._pending_heap: list[int] = []
        self.records: dict[int, Record] = {}
        self.ready: list[int] = []  # heap of offsets
        self.leases: dict[int, Lease] = {}
        self.committing: set[int] = set()
        self.delayed: dict[int, int] = {}  # offset -> due_ms
        self.scheduled: set[int] = set()  # delayed by a header, not by a retry
        self.retry: dict[int, RetryState] = {}  # durable R records
        self.counts: dict[int, int] = {}  # deliveries so far, for pending offsets
        self.key_of: dict[int, bytes] = {}
        self.key_queue: dict[bytes, deque[int]] = {}

    # ------------------------------------------------------------------ queries

    def is_done(self, offset: int) -> bool:
        if self.retry_only:
            return offset not in self.pending
        if offset < self.start:
            return True
        return bool((self.done.get(offset >> _SHIFT, 0) >> (offset & _MASK)) & 1)

    def is_head(self, offset: int) -> bool:
        """True unless per-key ordering holds ``offset`` behind an earlier record of its key."""
        if not self.ordered:
            return True
        key = self.key_of.get(offset)
        return key is None or self.key_queue[key][0] == offset

    def is_ready(self, offset: int) -> bool:
        """True if ``offset`` may be handed out now (its ``ready`` heap entry is current)."""
        return (offset in self.pending and offset not in self.leases
                and offset not in self.committing and offset not in self.delayed)

    def blocked_count(self) -> int:
        return sum(len(q) - 1 for q in self.key_queue.values())

    def window(self) -> int:
        """Pending offsets that count against read-ahead (everything but delayed ones)."""
        return len(self.pending) - len(self.delayed)

    def done_above_start(self) -> int:
        return sum(bin(bits).count("1") for bits in self.done.values()) - self._done_below()

    def _done_below(self) -> int:
        chunk = self.start >> _SHIFT
        below = sum(bin(b).count("1") for c, b in self.done.items() if c < chunk)
        partial = self.done.get(chunk, 0) & ((1 << (self.start & _MASK)) - 1)
        return below + bin(partial).count("1")

    # ------------------------------------------------------------------ scanning

    def accept(self, record: Record, due_ms: int, now_ms: int) -> bool:
        """Take in one scanned record; returns True if it became delayed by its schedule.

        ``due_ms`` is the record's ``deliver-at`` time (-1: none). The caller keeps the
        delay heap and pushes ``(due_ms, partition, offset)`` when this returns True.
        """
        offset = record.offset
        self.scanned = offset + 1
        if self.is_done(offset):
            return False
        self.pending.add(offset)
        heapq.heappush(self._pending_heap, offset)
        if self.ordered and record.key is not None:
            self.key_of[offset] = record.key
            self.key_queue.setdefault(record.key, deque()).append(offset)
        if offset in self.retry:  # known from the replayed delay index
            if offset not in self.delayed and self.is_head(offset):
                self.records[offset] = record
                heapq.heappush(self.ready, offset)
            return False
        if due_ms > now_ms:
            self.delayed[offset] = due_ms
            self.scheduled.add(offset)
            return True
        if self.is_head(offset):
            self.records[offset] = record
            heapq.heappush(self.ready, offset)
        return False

    def skip_to(self, offset: int) -> None:
        """The scanner passed ``offset`` (a batch ended; gaps are not records)."""
        self.scanned = max(self.scanned, offset)

    # ------------------------------------------------------------------ delivery

    def pop_ready(self) -> int | None:
        """The lowest ready offset, or None."""
        ready = self.ready
        while ready:
            offset = heapq.heappop(ready)
            if self.is_ready(offset):
                return offset
        return None

    def make_ready(self, offset: int) -> None:
        """Queue ``offset`` for delivery if nothing holds it back (its key, a delay)."""
        if offset in self.pending and offset not in self.delayed and self.is_head(offset):
            heapq.heappush(self.ready, offset)

    def due(self, offset: int, due_ms: int) -> bool:
        """A delay-heap entry came due; True if it was current and the offset may go ready.

        The payload may have to be loaded by the caller (delayed records hold none).
        """
        if self.delayed.get(offset) != due_ms:
            return False  # stale heap entry: acked, re-delayed or dropped since
        del self.delayed[offset]
        self.scheduled.discard(offset)
        if offset >= self.scanned and not self.retry_only:
            return False  # replayed retry beyond the scanner: the scan will ready it
        if not self.is_head(offset):
            return False
        heapq.heappush(self.ready, offset)
        return True

    def adopt(self, offset: int) -> bool:
        """Retry queues: take in a record failed elsewhere, as committing (a nack follows).

        Returns False if ``offset`` is pending already (nothing changes).
        """
        if offset in self.pending:
            return False
        self.pending.add(offset)
        self.committing.add(offset)
        return True

    def take_lease(self, offset: int, token: str) -> Lease | None:
        """Remove and return the lease if ``token`` is current; the offset is then committing."""
        lease = self.leases.get(offset)
        if lease is None or lease.token != token:
            return None
        del self.leases[offset]
        self.committing.add(offset)
        return lease

    # ------------------------------------------------------------------ outcomes

    def finish_done(self, offset: int) -> int | None:
        """``offset``'s done state is durable; returns the next record of its key, if any.

        The caller readies the returned offset (it may need its payload loaded).
        """
        if not self.retry_only:
            chunk = offset >> _SHIFT
            self.done[chunk] = self.done.get(chunk, 0) | (1 << (offset & _MASK))
        self.committing.discard(offset)
        self.pending.discard(offset)
        self.records.pop(offset, None)
        self.counts.pop(offset, None)
        self.retry.pop(offset, None)
        self.delayed.pop(offset, None)
        self.scheduled.discard(offset)
        key = self.key_of.pop(offset, None)
        if key is None:
            return None
        queue = self.key_queue[key]
        queue.remove(offset)  # normally the head: O(1)
        if not queue:
            del self.key_queue[key]
            return None
        following = queue[0]
        if following in self.delayed or following in self.leases or following in self.committing:
            return None
        return following

    def finish_retry(self, offset: int, state: RetryState) -> None:
        """``offset``'s retry state is durable: it waits, without payload, until due."""
        self.committing.discard(offset)
        self.retry[offset] = state
        self.counts[offset] = state.count
        self.delayed[offset] = state.due_ms
        self.records.pop(offset, None)

    def requeue(self, offset: int) -> None:
        """A write about ``offset`` failed or its lease was released: deliver it again."""
        self.committing.discard(offset)
        self.make_ready(offset)

    def advance_start(self) -> int:
        """Move ``start`` up to the lowest pending offset (or ``scanned``); returns it."""
        if self.retry_only:
            return self.start
        heap = self._pending_heap
        while heap and heap[0] not in self.pending:
            heapq.heappop(heap)
        self.start = max(self.start, heap[0] if heap else self.scanned)
        return self.start

    def forget_chunks_below(self, start: int) -> list[int]:
        """Drop done bitmaps wholly below ``start``; returns the persisted ones (to tombstone)."""
        limit = start >> _SHIFT
        gone = [chunk for chunk in self.done if chunk < limit]
        for chunk in gone:
            del self.done[chunk]
        return sorted(c for c in self.persisted_chunks if c < limit)

    def drop_below(self, offset: int) -> int:
        """Retention removed everything below ``offset``: forget those records; returns count."""
        lost = [o for o in self.pending if o < offset]
        for o in lost:
            self.leases.pop(o, None)
            self.committing.discard(o)
            self.finish_done(o)
        self.scanned = max(self.scanned, offset)
        self.start = max(self.start, offset)
        return len(lost)
