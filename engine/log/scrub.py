"""Scrub: re-check every stored batch of a partition while it keeps serving.

After a clean shutdown the broker trusts sealed segments and does not rescan them at startup
(ARCHITECTURE.md section 3), so silent damage in a sealed segment (a bit flip, a bad page) is
found on read, or earlier by this scrub. It walks each segment batch by batch and checks, per
batch: the header (magic 2, sane length and counts), that the batch ends inside the segment,
its CRC-32C, and that offsets strictly increase, start at or after the segment's base offset,
stay below the next segment's base offset (the end of the log for the active segment) and
within ``2**31`` of the segment's base. Together these catch every flipped bit in a batch
except in the partition leader epoch (bytes 12-15), which the CRC does not cover and which
nothing on a single node reads: no check can tell a flipped epoch from a producer's choice.

The base offset (bytes 0-7) is outside the CRC too; a change to it shows up as an offset that
contradicts a neighbour. When a batch that jumped a gap is contradicted by the next valid
batch, the rule recovery uses (:func:`engine.log.segment.base_offset_flipped`) decides which
of the two changed, and only that one is reported. A changed base offset with no intact
neighbour left to contradict it (both neighbours damaged too) cannot be told from a gap.

Concurrency: the scrub takes no partition lock, so appends, reads and rolls go on. It works
on a snapshot of :meth:`PartitionLog.segments` and each segment's size when it gets there,
reading with ``pread`` through the segment's :class:`LogFile` (bytes below a segment's size
are whole batches: the size moves only after a batch is fully written). A segment that
retention or compaction removes while it is read is skipped. The scrub only reports; it never
modifies a file, so running it is always safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from engine.log.fileio import LogFile
from engine.log.partition_log import PartitionLog
from engine.log.segment import LogSegment, base_offset_flipped, header_from_prefix
from engine.records.batch import (
    LENGTH_OFFSET,
    LOG_OVERHEAD,
    MAGIC,
    MAGIC_OFFSET,
    RECORD_BATCH_OVERHEAD,
    BatchHeader,
    validate_batch,
)
from engine.records.errors import RecordError

__all__ = ["DamagedRange", "ScrubReport", "scrub"]

_logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_MAX_RELATIVE_OFFSET = 2**31 - 1
_NO_LIMIT = 2**31 + LOG_OVERHEAD  # a header read only for its offsets


@dataclass(frozen=True, slots=True)
class DamagedRange:
    """Bytes of one segment that do not hold valid batches.

    ``last_valid_offset`` is the last offset of the valid batch before the range, in this
    segment or an earlier one (-1 when none); ``next_valid_offset`` the base offset of the
    valid batch after it in the same segment (-1 when the damage runs to the segment's end).
    """

    segment_base_offset: int
    path: str
    position: int
    length: int
    last_valid_offset: int
    next_valid_offset: int
    reason: str


@dataclass(frozen=True, slots=True)
class ScrubReport:
    """What one pass over a partition checked and found."""

    segments_scanned: int
    bytes_scanned: int
    batches_checked: int
    damaged: tuple[DamagedRange, ...]

    @property
    def clean(self) -> bool:
        return not self.damaged


@dataclass(frozen=True, slots=True)
class _Accepted:
    """The last batch taken as valid, kept to decide who is wrong when the next contradicts it."""

    position: int
    header: BatchHeader
    last_before: int
    exact: bool  # no damage between it and ``last_before``


class _Reader:
    """``pread`` in large chunks, so a segment of small batches costs few system calls."""

    def __init__(self, file: LogFile, end: int) -> None:
        self._file = file
        self.end = end
        self._start = 0
        self._data = b""

    def get(self, position: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``position``, never past ``end``."""
        size = max(0, min(size, self.end - position))
        offset = position - self._start
        if offset < 0 or offset + size > len(self._data):
            self._start = position
            self._data = self._file.pread(min(max(size, _CHUNK_BYTES), self.end - position),
                                          position)
            offset = 0
        return self._data[offset : offset + size]


def scrub(log: PartitionLog) -> ScrubReport:
    """Check every batch of every segment once; report each damaged byte range.

    Sealed segments are checked to their end, the active one up to its size when the scrub
    reaches it (which covers every batch below the high watermark).
    """
    segments = log.segments()
    damaged: list[DamagedRange] = []
    scanned = batches = bytes_scanned = 0
    last_valid = -1
    for i, segment in enumerate(segments):
        end = segment.size
        ceiling = segments[i + 1].base_offset if i + 1 < len(segments) else log.log_end_offset
        try:
            found, checked, last_valid = _scrub_segment(segment, end, last_valid, ceiling)
        except OSError as exc:
            found = [DamagedRange(segment.base_offset, str(segment.log.path), 0, end,
                                  last_valid, -1, f"read failed: {exc}")]
            checked = 0
        if found and segment not in log.segments():
            continue  # retention or compaction removed it while we read: nothing to report
        scanned += 1
        batches += checked
        bytes_scanned += end
        damaged.extend(found)
    for item in damaged:
        _logger.error(
            "scrub: %s: %d damaged bytes at byte %d (%s)",
            item.path, item.length, item.position, item.reason,
        )
    return ScrubReport(scanned, bytes_scanned, batches, tuple(damaged))


def _scrub_segment(
    segment: LogSegment, end: int, last_valid: int, ceiling: int
) -> tuple[list[DamagedRange], int, int]:
    """Damaged ranges, batches checked and the last valid offset of one segment."""
    reader = _Reader(segment.log, end)
    max_bytes = segment.config.max_message_bytes + LOG_OVERHEAD
    floor = segment.base_offset - 1
    damaged: list[DamagedRange] = []
    checked = 0
    position = 0
    after_gap: _Accepted | None = None  # the last batch, when it jumped a gap
    exact = True  # no damage since the last valid batch
    while position < end:
        checked += 1
        header, reason = _intact(reader, position, max_bytes)
        if header is not None:
            reason = _out_of_order(header, max(last_valid, floor), segment.base_offset, ceiling)
        if header is not None and not reason:
            gap = header.base_offset > max(last_valid, floor) + 1
            after_gap = _Accepted(position, header, last_valid, exact) if gap else None
            last_valid = header.last_offset
            position += header.size
            exact = True
            continue
        exact = False
        start = position
        following = None
        if after_gap is not None:  # the batch before the damage may be the damaged one
            following = _flipped_before(reader, segment, after_gap, position, floor, ceiling)
            if following is not None:
                start, last_valid = after_gap.position, after_gap.last_before
                reason = "base offset contradicts the batches after it"
            after_gap = None
        if following is None:
            following = _next_valid(reader, segment, position + 1, max(last_valid, floor),
                                    ceiling)
        stop = end if following is None else following[0]
        next_valid = -1 if following is None else following[1].base_offset
        damaged.append(_range(segment, start, stop - start, last_valid, next_valid, reason))
        position = stop
    return damaged, checked, last_valid


def _flipped_before(
    reader: _Reader, segment: LogSegment, suspect: _Accepted, start: int, floor: int,
    ceiling: int,
) -> tuple[int, BatchHeader] | None:
    """The next valid batch, when it shows that ``suspect``'s base offset was flipped."""
    last_before = max(suspect.last_before, floor)
    following = _next_valid(reader, segment, start, last_before, ceiling)
    if following is None:
        return None
    after = _header_at(reader, following[0] + following[1].size)
    last = following[0] + following[1].size == reader.end
    if base_offset_flipped(suspect.header, last_before + 1, following[1], after,
                           exact=suspect.exact, compacted=segment.config.compact,
                           next_base=ceiling if last else None):
        return following
    return None


def _range(
    segment: LogSegment, position: int, length: int, last: int, following: int, reason: str
) -> DamagedRange:
    return DamagedRange(segment.base_offset, str(segment.log.path), position, length,
                        last, following, reason)


def _intact(reader: _Reader, position: int, max_bytes: int) -> tuple[BatchHeader | None, str]:
    """The batch at ``position`` when its header, length and CRC hold, else why not."""
    prefix = reader.get(position, RECORD_BATCH_OVERHEAD)
    if len(prefix) < RECORD_BATCH_OVERHEAD:
        return None, f"{len(prefix)} bytes at the end of the segment are not a whole batch"
    if prefix[MAGIC_OFFSET] != MAGIC:
        return None, f"magic byte {prefix[MAGIC_OFFSET]}"
    length = int.from_bytes(prefix[LENGTH_OFFSET : LENGTH_OFFSET + 4], "big", signed=True)
    size = length + LOG_OVERHEAD
    if not RECORD_BATCH_OVERHEAD <= size <= max_bytes:
        return None, f"batch length {length} is impossible"
    if position + size > reader.end:
        return None, f"a {size}-byte batch runs past the end of the segment"
    try:
        return validate_batch(reader.get(position, size), 0, max_bytes), ""
    except RecordError as exc:
        return None, str(exc)


def _header_at(reader: _Reader, position: int) -> BatchHeader | None:
    prefix = reader.get(position, RECORD_BATCH_OVERHEAD)
    if len(prefix) < RECORD_BATCH_OVERHEAD:
        return None
    return header_from_prefix(prefix, _NO_LIMIT)


def _out_of_order(header: BatchHeader, last_valid: int, base_offset: int, ceiling: int) -> str:
    """Why the batch's offsets cannot be where they are; empty when they can."""
    if header.base_offset <= last_valid:
        return f"base offset {header.base_offset} does not follow offset {last_valid}"
    if header.last_offset >= ceiling:
        return f"last offset {header.last_offset} reaches the next segment's {ceiling}"
    if header.last_offset - base_offset > _MAX_RELATIVE_OFFSET:
        return f"last offset {header.last_offset} is too far from the segment's {base_offset}"
    return ""


def _next_valid(
    reader: _Reader, segment: LogSegment, start: int, last_valid: int, ceiling: int
) -> tuple[int, BatchHeader] | None:
    """The first valid, in-order batch at or after ``start``, found by its magic byte."""
    max_bytes = segment.config.max_message_bytes + LOG_OVERHEAD
    chunk_start = start + MAGIC_OFFSET
    while chunk_start < reader.end:
        chunk = reader.get(chunk_start, _CHUNK_BYTES)
        index = chunk.find(MAGIC)
        while index >= 0:
            candidate = chunk_start + index - MAGIC_OFFSET
            header, _ = _intact(reader, candidate, max_bytes)
            if header is not None and not _out_of_order(
                header, last_valid, segment.base_offset, ceiling
            ):
                return candidate, header
            index = chunk.find(MAGIC, index + 1)
        chunk_start += len(chunk)
    return None
