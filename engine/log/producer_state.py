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

Snapshot (written at a clean shutdown and at each segment roll, so a start need not read
every batch header of the log; any doubt and the state is rebuilt from the log instead),
big-endian::

    magic "MPS1" | end_offset int64 | producers int32
    per producer: producer_id int64 | epoch int16 | batches int8
                  per batch: first_sequence int32 | last_sequence int32
                             base_offset int64 | last_offset int64
    crc32c of everything before it, uint32

Not thread-safe: the partition calls it under its append lock.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from engine.errors import OutOfOrderSequenceError, ProducerFencedError
from engine.records.batch import BatchHeader
from engine.records.crc import crc32c

__all__ = ["BATCHES_PER_PRODUCER", "BatchMetadata", "ProducerStateManager"]

BATCHES_PER_PRODUCER = 5
_MAX_SEQUENCE = 2**31 - 1
_MAGIC = b"MPS1"
_HEAD = struct.Struct(">4sqi")
_PRODUCER = struct.Struct(">qhb")
_BATCH = struct.Struct(">iiqq")
_CRC = struct.Struct(">I")


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

    def snapshot(self, end_offset: int) -> bytes:
        """The state as of ``end_offset`` (the log end), in the layout of the module doc."""
        parts = [_HEAD.pack(_MAGIC, end_offset, len(self._producers))]
        for producer_id, entry in self._producers.items():
            parts.append(_PRODUCER.pack(producer_id, entry.epoch, len(entry.batches)))
            parts += [_BATCH.pack(b.first_sequence, b.last_sequence, b.base_offset,
                                  b.last_offset) for b in entry.batches]
        body = b"".join(parts)
        return body + _CRC.pack(crc32c(body))

    @classmethod
    def from_snapshot(cls, data: bytes, end_offset: int) -> ProducerStateManager | None:
        """The state in ``data`` if it is intact and was taken at ``end_offset``, else None
        (the caller then rebuilds from the log)."""
        if len(data) < _HEAD.size + _CRC.size:
            return None
        body, (crc,) = data[: -_CRC.size], _CRC.unpack_from(data, len(data) - _CRC.size)
        if crc32c(body) != crc:
            return None
        magic, taken_at, count = _HEAD.unpack_from(body, 0)
        if magic != _MAGIC or taken_at != end_offset:
            return None
        state = cls()
        pos = _HEAD.size
        try:
            for _ in range(count):
                producer_id, epoch, batches = _PRODUCER.unpack_from(body, pos)
                pos += _PRODUCER.size
                entry = _ProducerEntry(epoch, deque(maxlen=BATCHES_PER_PRODUCER))
                for _ in range(batches):
                    entry.batches.append(BatchMetadata(*_BATCH.unpack_from(body, pos)))
                    pos += _BATCH.size
                state._producers[producer_id] = entry
        except struct.error:
            return None
        return state if pos == len(body) else None

    def epoch_of(self, producer_id: int) -> int | None:
        entry = self._producers.get(producer_id)
        return None if entry is None else entry.epoch

    def last_sequence_of(self, producer_id: int) -> int | None:
        entry = self._producers.get(producer_id)
        if entry is None or not entry.batches:
            return None
        return entry.batches[-1].last_sequence
