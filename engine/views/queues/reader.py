"""Reading records through the :class:`~engine.log.log_protocol.Log` seam.

A read returns whole batches starting with the one that holds the requested offset, so these
helpers drop records below it, skip control batches, and report the offset to continue from
(the last batch's next offset: gaps left by compaction are stepped over, never re-read).
"""

from __future__ import annotations

from collections.abc import Container, Iterator

from engine.errors import OffsetOutOfRangeError
from engine.log.log_protocol import Log
from engine.records.batch import decode_batch
from engine.records.record import Record

__all__ = ["READ_BYTES", "iter_records", "load_batch", "load_record", "read_records"]

READ_BYTES = 1 << 20


def read_records(
    log: Log, offset: int, max_bytes: int = READ_BYTES, wanted: Container[int] | None = None
) -> tuple[list[Record], int]:
    """Records at or above ``offset`` from one read, and the offset to continue from.

    Returns ``([], offset)`` when ``offset`` is at the high watermark. Raises
    OffsetOutOfRangeError if ``offset`` is below the log start (retention passed it).
    ``wanted``: build only the records at these offsets.
    """
    data = log.read(offset, max_bytes).data
    records: list[Record] = []
    position = 0
    next_offset = offset
    while position < len(data):
        header, batch = decode_batch(data, position, wanted=wanted)
        position += header.size
        next_offset = max(next_offset, header.next_offset)
        if header.is_control:
            continue
        records.extend(r for r in batch if r.offset >= offset)
    return records, next_offset


def load_record(log: Log, offset: int) -> Record | None:
    """The record at ``offset``, or None if it is gone (retention) or never existed (a gap)."""
    try:
        records, _ = read_records(log, offset, 1)
    except OffsetOutOfRangeError:
        return None
    for record in records:
        if record.offset == offset:
            return record
        if record.offset > offset:
            break
    return None


def load_batch(log: Log, offset: int, wanted: Container[int] | None = None) -> list[Record]:
    """The records of the batch holding ``offset`` (and any after it in the same read), only
    those at ``wanted`` offsets if given."""
    try:
        return read_records(log, offset, 1, wanted)[0]
    except OffsetOutOfRangeError:
        return []


def iter_records(log: Log, offset: int | None = None) -> Iterator[Record]:
    """Every record from ``offset`` (default: the log start) up to the high watermark."""
    position = log.log_start_offset if offset is None else max(offset, log.log_start_offset)
    while position < log.high_watermark:
        records, next_offset = read_records(log, position)
        if next_offset <= position:
            break
        yield from records
        position = next_offset
