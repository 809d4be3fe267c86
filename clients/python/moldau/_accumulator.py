"""The producer's sans-I/O core: batches per partition, buffer memory, idempotent sequences.

Records wait in an *open* batch per partition until it reaches ``batch_size`` bytes or is
``linger_ms`` old; then it is *ready*. The sender drains ready batches, at most
``max_in_flight`` per partition, and reports each outcome back here.

Idempotence (Kafka's rules, which the broker enforces per partition): each partition has an
epoch and a next sequence; a batch gets ``(epoch, base_sequence)`` when it is first drained and
keeps those bytes for every retry, so a resend of a batch the broker already stored is
acknowledged as a duplicate with its original offsets. The broker remembers the last five
batches per producer, hence at most five in flight per partition. Three outcomes need care:

* unknown (connection lost): the batch goes back to the front and is resent byte for byte;
* rejected as out of order while an earlier batch of the partition is still outstanding: that
  one was not stored yet, so this one is resent unchanged after it;
* failed for good (or timed out): the partition's epoch goes up and sequences restart at 0.
  Batches of the old epoch that the broker then rejects were certainly not stored, so they are
  re-sequenced into the new epoch (header patched, CRC recomputed). New batches wait until no
  old-epoch batch is outstanding, so order is kept.

Thread-safety: every method takes the lock; the sync producer appends from user threads while
the sender drains on the loop thread. Nothing here blocks except :meth:`wait_for_memory`.
"""

from __future__ import annotations

import itertools
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from engine.records import (
    ATTRIBUTES_OFFSET,
    BASE_SEQUENCE_OFFSET,
    CRC_OFFSET,
    PRODUCER_EPOCH_OFFSET,
    Codec,
    NewRecord,
    crc32c,
    encode_batch,
    encode_values,
)

__all__ = ["RECORD_OVERHEAD", "Accumulator", "Completion", "PendingBatch"]

RECORD_OVERHEAD = 16
"""Bytes a record adds besides its key, value and headers (varints, attributes, deltas)."""

_MAX_SEQUENCE = 2**31 - 1
_MAX_EPOCH = 2**15 - 1
_UINT32 = struct.Struct(">I")


class Completion:
    """The outcome of one batch, set once on the sender's loop and read from any thread."""

    __slots__ = ("_callbacks", "_event", "_lock", "base_offset", "duplicate", "error",
                 "log_append_time")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        self.base_offset = -1
        self.log_append_time = -1
        self.duplicate = False
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float | None) -> bool:
        return self._event.wait(timeout_s)

    def set_result(self, base_offset: int, log_append_time: int, duplicate: bool) -> None:
        self.base_offset = base_offset
        self.log_append_time = log_append_time
        self.duplicate = duplicate
        self._finish()

    def set_error(self, error: BaseException) -> None:
        self.error = error
        self._finish()

    def add_callback(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` when done (at once if already done) on the completing thread."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def _finish(self) -> None:
        with self._lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


class PendingBatch:
    """Records bound for one partition, from first append to acknowledgement."""

    __slots__ = (
        "base_sequence", "bulk_keys", "bulk_values", "completion", "count", "created",
        "encoded", "epoch", "order", "partition", "records", "rejected", "reserved", "size",
        "timestamp", "topic",
    )

    def __init__(self, topic: str, partition: int, order: int) -> None:
        self.topic = topic
        self.partition = partition
        self.order = order  # creation order within the partition: the order of the log
        self.records: list[NewRecord] = []
        self.bulk_values: Sequence[bytes | None] | None = None
        self.bulk_keys: Sequence[bytes | None] | None = None
        self.timestamp = 0  # send_many's one timestamp
        self.count = 0
        self.size = 0
        self.reserved = 0
        self.created = time.monotonic()
        self.completion = Completion()
        self.encoded: bytes | None = None
        self.epoch = -1
        self.base_sequence = -1
        self.rejected = False  # the broker refused it, so it is certainly not stored

    def encode(self, codec: Codec, producer_id: int) -> bytes:
        """The batch bytes; built once, then patched only when re-sequenced."""
        if self.encoded is None:
            if self.bulk_values is not None:
                self.encoded = encode_values(
                    self.bulk_values, self.bulk_keys, codec=codec, timestamp=self.timestamp,
                    producer_id=producer_id, producer_epoch=self.epoch,
                    base_sequence=self.base_sequence,
                )
                self.bulk_values = self.bulk_keys = None
            else:
                self.encoded = encode_batch(
                    self.records, codec=codec, producer_id=producer_id,
                    producer_epoch=self.epoch, base_sequence=self.base_sequence,
                )
        return self.encoded

    def resequence(self, epoch: int, base_sequence: int) -> None:
        """Move an encoded batch to a new epoch and sequence; the CRC covers both fields."""
        self.epoch, self.base_sequence = epoch, base_sequence
        if self.encoded is not None:
            data = bytearray(self.encoded)
            struct.pack_into(">h", data, PRODUCER_EPOCH_OFFSET, epoch)
            struct.pack_into(">i", data, BASE_SEQUENCE_OFFSET, base_sequence)
            crc = crc32c(memoryview(data)[ATTRIBUTES_OFFSET:])
            _UINT32.pack_into(data, CRC_OFFSET, crc)
            self.encoded = bytes(data)


class _Partition:
    """One partition's batches and idempotence state."""

    __slots__ = ("epoch", "in_flight", "next_sequence", "open", "orders", "ready")

    def __init__(self) -> None:
        self.open: PendingBatch | None = None
        self.ready: deque[PendingBatch] = deque()
        self.in_flight: list[PendingBatch] = []
        self.epoch = 0
        self.next_sequence = 0
        self.orders = itertools.count()

    def stale_in_flight(self) -> bool:
        """Whether a batch of an older epoch is in flight: it may come back rejected, and
        then it must be re-sequenced before anything sent after it."""
        epoch = self.epoch
        return any(0 <= b.epoch < epoch for b in self.in_flight)


class Accumulator:
    """Batches records per partition under a memory budget.

    Args:
        batch_size: A batch is ready once its records reach this many bytes.
        linger_ms: ... or once it is this old.
        buffer_memory: Bytes of records held (waiting or in flight) before appends must wait.
        max_in_flight: Batches per partition sent but not yet acknowledged.
        idempotent: Assign epochs and sequences (False sends -1, as non-idempotent Kafka).
    """

    def __init__(
        self,
        *,
        batch_size: int,
        linger_ms: float,
        buffer_memory: int,
        max_in_flight: int,
        idempotent: bool,
    ) -> None:
        self.batch_size = batch_size
        self.linger_s = linger_ms / 1000.0
        self.buffer_memory = buffer_memory
        self.max_in_flight = max_in_flight
        self.idempotent = idempotent
        self.lock = threading.Lock()
        self._room = threading.Condition(self.lock)
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._used = 0
        self._pending: set[PendingBatch] = set()
        self.room_listeners: list[Callable[[], object]] = []

    # ------------------------------------------------------------------ appending

    def _partition(self, topic: str, partition: int) -> _Partition:
        state = self._partitions.get((topic, partition))
        if state is None:
            state = self._partitions[(topic, partition)] = _Partition()
        return state

    def try_append(
        self, topic: str, partition: int, record: NewRecord, size: int
    ) -> tuple[PendingBatch, int, bool] | None:
        """Add a record; None when the buffer has no room for ``size`` bytes.

        Returns the batch, the record's index in it, and whether the sender should be woken
        (a batch was opened or became ready).
        """
        with self.lock:
            if self._used + size > self.buffer_memory and self._used > 0:
                return None
            self._used += size
            state = self._partitions.get((topic, partition)) or self._partition(topic, partition)
            batch = state.open
            wake = False
            if batch is not None and batch.size + size > self.batch_size and batch.count:
                self._close(state)
                batch, wake = None, True
            if batch is None:
                batch = state.open = PendingBatch(topic, partition, next(state.orders))
                self._pending.add(batch)
                wake = True
            index = batch.count
            batch.records.append(record)
            batch.count = index + 1
            batch.size += size
            batch.reserved += size
            if batch.size >= self.batch_size:
                self._close(state)
                wake = True
            return batch, index, wake

    def try_append_bulk(
        self,
        topic: str,
        partition: int,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None] | None,
        size: int,
        timestamp: int,
    ) -> PendingBatch | None:
        """Queue ``values`` as one ready batch (after the partition's open one, for order)."""
        with self.lock:
            if self._used + size > self.buffer_memory and self._used > 0:
                return None
            self._used += size
            state = self._partition(topic, partition)
            if state.open is not None:
                self._close(state)
            batch = PendingBatch(topic, partition, next(state.orders))
            batch.bulk_values, batch.bulk_keys = values, keys
            batch.count, batch.size, batch.reserved = len(values), size, size
            batch.timestamp = timestamp
            self._pending.add(batch)
            state.ready.append(batch)
            return batch

    def _close(self, state: _Partition) -> None:
        batch = state.open
        if batch is not None:
            state.open = None
            state.ready.append(batch)

    def wait_for_memory(self, size: int, timeout_s: float) -> bool:
        """Block until ``size`` bytes might fit (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout_s
        with self._room:
            while self._used + size > self.buffer_memory and self._used > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._room.wait(remaining)
            return True

    def has_room(self, size: int) -> bool:
        with self.lock:
            return self._used + size <= self.buffer_memory or self._used == 0

    # ------------------------------------------------------------------ draining

    def close_all(self) -> list[Completion]:
        """Make every open batch ready now (flush) and return what is outstanding."""
        with self.lock:
            for state in self._partitions.values():
                self._close(state)
            return [b.completion for b in self._pending]

    def pending_count(self) -> int:
        with self.lock:
            return len(self._pending)

    def drain(self, now: float) -> list[PendingBatch]:
        """Batches to send now, with epoch and sequence assigned; marks them in flight."""
        out: list[PendingBatch] = []
        with self.lock:
            for state in self._partitions.values():
                batch = state.open
                if batch is not None and now - batch.created >= self.linger_s:
                    self._close(state)
                while state.ready and len(state.in_flight) < self.max_in_flight:
                    batch = state.ready[0]
                    if not self._sequence(state, batch):
                        break
                    state.ready.popleft()
                    state.in_flight.append(batch)
                    out.append(batch)
        return out

    def _sequence(self, state: _Partition, batch: PendingBatch) -> bool:
        """Give ``batch`` its epoch and sequence if it needs them; False to hold it back."""
        if not self.idempotent:
            return True
        if batch.epoch >= 0 and not (batch.rejected and batch.epoch < state.epoch):
            return True  # a resend: the same bytes, so the broker can deduplicate
        if state.stale_in_flight():
            return False  # wait: old-epoch batches may come back to be re-sequenced first
        sequence = state.next_sequence
        state.next_sequence = (sequence + batch.count) % (_MAX_SEQUENCE + 1)
        if batch.epoch >= 0:
            batch.resequence(state.epoch, sequence)
        else:
            batch.epoch, batch.base_sequence = state.epoch, sequence
        batch.rejected = False
        return True

    def next_deadline(self) -> float | None:
        """When the oldest open batch's linger ends (monotonic seconds), None if none."""
        with self.lock:
            created = [s.open.created for s in self._partitions.values() if s.open is not None]
        return min(created) + self.linger_s if created else None

    # ------------------------------------------------------------------ outcomes

    def acknowledged(self, batch: PendingBatch) -> None:
        with self.lock:
            self._settle(batch)

    def failed(self, batch: PendingBatch) -> None:
        """``batch`` failed for good: bump the partition's epoch (see the module doc)."""
        with self.lock:
            self._settle(batch)
            if self.idempotent and batch.epoch >= 0:
                state = self._partition(batch.topic, batch.partition)
                if batch.epoch == state.epoch:
                    state.epoch = state.epoch + 1 if state.epoch < _MAX_EPOCH else 0
                    state.next_sequence = 0

    def requeue(self, batches: Sequence[PendingBatch], *, rejected: bool = False) -> None:
        """Put in-flight batches back in front of the partition's queue, in log order."""
        with self.lock:
            for batch in sorted(batches, key=lambda b: b.order):
                state = self._partition(batch.topic, batch.partition)
                if batch in state.in_flight:
                    state.in_flight.remove(batch)
                batch.rejected = rejected
                index = 0
                while index < len(state.ready) and state.ready[index].order < batch.order:
                    index += 1
                state.ready.insert(index, batch)

    def out_of_order(self, batch: PendingBatch) -> bool:
        """The broker rejected ``batch``'s sequence; True when it was requeued for a resend.

        It is resent unchanged behind an earlier batch still outstanding (that one was not
        stored yet), or re-sequenced if its epoch is stale; otherwise the gap is real and the
        caller fails the batch.
        """
        with self.lock:
            state = self._partition(batch.topic, batch.partition)
            stale = 0 <= batch.epoch < state.epoch
            earlier = any(
                b.order < batch.order for b in (*state.in_flight, *state.ready) if b is not batch
            )
            if not (stale or earlier):
                return False
        self.requeue([batch], rejected=True)
        return True

    def _settle(self, batch: PendingBatch) -> None:
        state = self._partitions.get((batch.topic, batch.partition))
        if state is not None and batch in state.in_flight:
            state.in_flight.remove(batch)
        self._pending.discard(batch)
        self._used -= batch.reserved
        batch.reserved = 0
        self._room.notify_all()
        for listener in self.room_listeners:
            listener()

    def expired(self, now: float, timeout_s: float) -> list[PendingBatch]:
        """Queued (not in-flight) batches older than ``timeout_s``, removed from the queues."""
        out: list[PendingBatch] = []
        with self.lock:
            for state in self._partitions.values():
                if state.open is not None and now - state.open.created > timeout_s:
                    self._close(state)
                keep = deque(b for b in state.ready if now - b.created <= timeout_s)
                if len(keep) != len(state.ready):
                    out.extend(b for b in state.ready if now - b.created > timeout_s)
                    state.ready = keep
        return out

    def abandon_all(self) -> list[PendingBatch]:
        """Every outstanding batch, removed from the queues (close without flush)."""
        with self.lock:
            batches = list(self._pending)
            for state in self._partitions.values():
                state.open = None
                state.ready.clear()
                state.in_flight.clear()
        return batches
