"""Idempotent-producer bookkeeping for one partition.

For every producer id the partition remembers its epoch and the metadata of its last five
batches (first and last sequence, base and last offset). The state is small and derived: it is
rebuilt from the batch headers in the log on open, so a retry after ``kill -9`` is still
recognised as a duplicate and answered with the original offsets.

Rules (as in Kafka's idempotent producer):
- producer id < 0: not idempotent, nothing is checked;
- an epoch older than the one seen: fenced;
- a newer epoch starts its sequences again at 0;
- a batch whose sequence range equals one of the last five: duplicate;
- otherwise its first sequence must follow the last batch's last sequence (wrapping at 2**31-1).

Not thread-safe: the partition calls it under its append lock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from engine.errors import OutOfOrderSequenceError, ProducerFencedError
from engine.records.batch import BatchHeader

__all__ = ["BATCHES_PER_PRODUCER", "BatchMetadata", "ProducerStateManager"]

BATCHES_PER_PRODUCER = 5
_MAX_SEQUENCE = 2**31 - 1


@dataclass(frozen=True, slots=True)
class BatchMetadata:
    first_sequence: int
    last_sequence: int
    base_offset: int
    last_offset: int


@dataclass(slots=True)
class _ProducerEntry:
    epoch: int
    batches: deque[BatchMetadata]


def _next_sequence(sequence: int) -> int:
    return 0 if sequence == _MAX_SEQUENCE else sequence + 1


class ProducerStateManager:
    """Per-partition map of producer id to recent batch sequences."""

    def __init__(self) -> None:
        self._producers: dict[int, _ProducerEntry] = {}

    def __len__(self) -> int:
        return len(self._producers)

    def check(self, header: BatchHeader) -> BatchMetadata | None:
        """The original batch when ``header`` is a duplicate; raises when it cannot be taken."""
        producer_id = header.producer_id
        if producer_id < 0:
            return None
        entry = self._producers.get(producer_id)
        if entry is None:
            return None
        epoch = header.producer_epoch
        if epoch < entry.epoch:
            raise ProducerFencedError(producer_id, epoch, entry.epoch)
        first = header.base_sequence
        if epoch > entry.epoch:
            if first != 0:
                raise OutOfOrderSequenceError(producer_id, 0, first)
            return None
        last = header.last_sequence
        for batch in entry.batches:
            if batch.first_sequence == first and batch.last_sequence == last:
                return batch
        if entry.batches:
            expected = _next_sequence(entry.batches[-1].last_sequence)
            if first != expected:
                raise OutOfOrderSequenceError(producer_id, expected, first)
        return None

    def update(self, header: BatchHeader, base_offset: int) -> None:
        """Record a batch that was appended at ``base_offset``."""
        producer_id = header.producer_id
        if producer_id < 0:
            return
        entry = self._producers.get(producer_id)
        if entry is None or header.producer_epoch != entry.epoch:
            entry = _ProducerEntry(header.producer_epoch, deque(maxlen=BATCHES_PER_PRODUCER))
            self._producers[producer_id] = entry
        entry.batches.append(
            BatchMetadata(
                header.base_sequence,
                header.last_sequence,
                base_offset,
                base_offset + header.last_offset_delta,
            )
        )

    def clear(self) -> None:
        self._producers.clear()

    def epoch_of(self, producer_id: int) -> int | None:
        entry = self._producers.get(producer_id)
        return None if entry is None else entry.epoch

    def last_sequence_of(self, producer_id: int) -> int | None:
        entry = self._producers.get(producer_id)
        if entry is None or not entry.batches:
            return None
        return entry.batches[-1].last_sequence
