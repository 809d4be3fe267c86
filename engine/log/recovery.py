"""Recovery of a segment after an unclean stop.

Passes, for each segment from the recovery checkpoint on:

1. Walk the segment batch by batch from byte 0, checking length, magic, CRC-32C and that
   offsets increase; rebuild both indexes on the way.
2. At the first bad byte, look ahead for a valid batch (magic 2, sane header, matching CRC,
   offsets past the last good batch).
3. No valid batch follows and this is the last segment: a torn tail, truncated (it was never
   acknowledged under fsync-before-ack). A tail of zeros only is "trimmed", not damage: it is
   the space preallocated past the data (``segment.preallocate.bytes``), which every unclean
   stop leaves behind. Otherwise the bad range is damage in the middle of the
   log: it is moved to ``quarantine/`` (never deleted, since one node has no replica to heal it
   from), the segment is rewritten without it by temp file, fsync, rename, directory fsync,
   and the walk continues with the batches that followed it.

Every cut and quarantine is returned as a :class:`RecoveryEvent` with offsets and sizes.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from engine.log.fileio import FileIO
from engine.log.files import QUARANTINE_DIR, SWAP_SUFFIX, segment_file_name
from engine.log.segment import LogSegment, base_offset_flipped, header_from_prefix
from engine.records.batch import LOG_OVERHEAD, RECORD_BATCH_OVERHEAD, BatchHeader, verify_crc
from engine.records.errors import RecordError

__all__ = ["RecoveryEvent", "recover_segment"]

log = logging.getLogger(__name__)

_MAGIC_POSITION = 16
_SCAN_CHUNK_BYTES = 1 << 20
_COPY_CHUNK_BYTES = 4 << 20
_MAX_RELATIVE_OFFSET = 2**31 - 1
_LENGTH = struct.Struct(">i")


@dataclass(frozen=True, slots=True)
class RecoveryEvent:
    """One cut or quarantine; ``next_valid_offset`` is -1 for a torn tail."""

    kind: str  # "truncated" | "quarantined" | "trimmed" (zeros only: not damage)
    segment_base_offset: int
    position: int
    length: int
    last_valid_offset: int
    next_valid_offset: int
    quarantine_file: str = ""


def _valid_batch_at(
    segment: LogSegment, position: int, end: int, min_offset: int, max_offset: int | None
) -> BatchHeader | None:
    """The batch at ``position`` when it is whole, CRC-valid and in offset order.

    ``max_offset`` (the next segment's base offset) bounds the batch's offsets from above.
    """
    if position + RECORD_BATCH_OVERHEAD > end:
        return None
    raw = segment.log.pread(RECORD_BATCH_OVERHEAD, position)
    if len(raw) < RECORD_BATCH_OVERHEAD:
        return None
    header = header_from_prefix(raw, segment.config.max_message_bytes + LOG_OVERHEAD)
    if (
        header is None
        or position + header.size > end
        or header.base_offset < min_offset
        or header.last_offset - segment.base_offset > _MAX_RELATIVE_OFFSET
        or (max_offset is not None and header.last_offset >= max_offset)
    ):
        return None
    data = segment.log.pread(header.size, position)
    try:
        verify_crc(data, 0, header)
    except RecordError:
        return None
    return header


def _find_next_valid(
    segment: LogSegment, start: int, end: int, min_offset: int, max_offset: int | None
) -> int | None:
    """Position of the next valid batch after damage, by scanning for magic bytes."""
    chunk_start = start
    while chunk_start < end:
        chunk = segment.log.pread(min(_SCAN_CHUNK_BYTES, end - chunk_start), chunk_start)
        if not chunk:
            return None
        index = chunk.find(b"\x02")
        while index >= 0:
            candidate = chunk_start + index - _MAGIC_POSITION
            if candidate >= start and _valid_batch_at(
                segment, candidate, end, min_offset, max_offset
            ):
                return candidate
            index = chunk.find(b"\x02", index + 1)
        chunk_start += len(chunk)
    return None


def _zeros_only(segment: LogSegment, start: int, end: int) -> bool:
    position = start
    while position < end:
        chunk = segment.log.pread(min(_SCAN_CHUNK_BYTES, end - position), position)
        if not chunk:
            return True
        if chunk.count(0) != len(chunk):
            return False
        position += len(chunk)
    return True


def _copy_range(segment: LogSegment, fileio: FileIO, target: Path, start: int, end: int) -> None:
    out = fileio.open_log(target, create=True)
    try:
        out.truncate(0)
        position = start
        while position < end:
            data = segment.log.pread(min(_COPY_CHUNK_BYTES, end - position), position)
            if not data:
                break
            out.append(data)
            position += len(data)
        out.fsync()
    finally:
        out.close()


def _quarantine(segment: LogSegment, fileio: FileIO, start: int, end: int) -> Path:
    """Copy the damaged range aside, then rewrite the segment without it."""
    directory = segment.directory / QUARANTINE_DIR
    directory.mkdir(exist_ok=True)
    fileio.fsync_dir(segment.directory)
    name = f"{segment_file_name(segment.base_offset, '')}.{start}-{end}.bin"
    target = directory / name
    _copy_range(segment, fileio, target, start, end)
    fileio.fsync_dir(directory)
    size = segment.log.size()
    swap = segment.log.path.with_name(segment.log.path.name + SWAP_SUFFIX)
    out = fileio.open_log(swap, create=True)
    try:
        out.truncate(0)
        for lo, hi in ((0, start), (end, size)):
            position = lo
            while position < hi:
                data = segment.log.pread(min(_COPY_CHUNK_BYTES, hi - position), position)
                if not data:
                    break
                out.append(data)
                position += len(data)
        out.fsync()
    finally:
        out.close()
    path = segment.log.path
    segment.log.close()
    fileio.rename(swap, path)
    fileio.fsync_dir(segment.directory)
    segment.log = fileio.open_log(path, create=False)
    return target


def _header_at(segment: LogSegment, position: int, end: int) -> BatchHeader | None:
    if position + RECORD_BATCH_OVERHEAD > end:
        return None
    raw = segment.log.pread(RECORD_BATCH_OVERHEAD, position)
    if len(raw) < RECORD_BATCH_OVERHEAD:
        return None
    return header_from_prefix(raw, segment.config.max_message_bytes + LOG_OVERHEAD)


@dataclass(frozen=True, slots=True)
class _Unconfirmed:
    """A valid batch after a gap, indexed only once a later batch agrees with its offsets."""

    position: int
    header: BatchHeader
    expected: int  # the offset it would start at had it followed the batch before it
    exact: bool  # False when damage came between: ``expected`` is only a lower bound


def _flipped_before(
    segment: LogSegment, pending: _Unconfirmed, start: int, end: int, max_offset: int | None
) -> int | None:
    """Where the damage after ``pending`` ends, if the next valid batch shows that
    ``pending`` is damaged too (its base offset, outside the CRC, was flipped upward)."""
    following = _find_next_valid(segment, start, end, pending.expected, max_offset)
    if following is None:
        return None
    header = _header_at(segment, following, end)
    if header is None:
        return None
    after = _header_at(segment, following + header.size, end)
    last = following + header.size == end
    flipped = base_offset_flipped(pending.header, pending.expected, header, after,
                                  exact=pending.exact, compacted=segment.config.compact,
                                  next_base=max_offset if last else None)
    return following if flipped else None


def recover_segment(
    segment: LogSegment,
    fileio: FileIO,
    *,
    is_last: bool,
    min_offset: int,
    max_offset: int | None = None,
) -> list[RecoveryEvent]:
    """Validate every batch of ``segment``, rebuild its indexes, cut or quarantine damage.

    Batches must have offsets from ``min_offset`` (past the previous segment's) up to, not
    including, ``max_offset`` (the next segment's base offset; None for the last segment).

    A corruption fix: the CRC does not cover the base offset, so a batch that jumps a gap
    is held until a later valid batch agrees with it. If the next valid batch, right after it
    or past damage, instead starts where it should have (see
    :func:`~engine.log.segment.base_offset_flipped`), the gap-jumping batch is quarantined
    with the damage. Accepting it would have rejected every later batch as out of order.
    """
    events: list[RecoveryEvent] = []
    segment.offset_index.reset()
    segment.time_index.reset()
    segment.rebuild_state_reset()
    position = 0
    next_offset = max(min_offset, segment.base_offset)
    pending: _Unconfirmed | None = None
    exact = True  # ``next_offset`` is where the last valid batch ended, no damage since
    while True:
        end = segment.log.size()
        if position >= end:
            break
        header = _valid_batch_at(segment, position, end, next_offset, max_offset)
        if header is not None:
            if pending is not None:
                segment.index_recovered_batch(pending.position, pending.header)
                pending = None
            if header.base_offset > next_offset:
                pending = _Unconfirmed(position, header, next_offset, exact)
            else:
                segment.index_recovered_batch(position, header)
            position += header.size
            next_offset = header.next_offset
            exact = True
            continue
        exact = False
        following = None
        if pending is not None:
            following = _flipped_before(segment, pending, position, end, max_offset)
            if following is not None:
                position, next_offset = pending.position, pending.expected
            else:
                segment.index_recovered_batch(pending.position, pending.header)
            pending = None
        if following is None and is_last and _zeros_only(segment, position, end):
            # space preallocated past the data (segment.preallocate.bytes), or unsynced
            # blocks the file system left as zeros: no batch was there to lose. Checked before
            # the look-ahead, which could find nothing in zeros: every unclean start has this
            # tail, and it is read once instead of twice.
            events.append(
                RecoveryEvent("trimmed", segment.base_offset, position, end - position,
                              next_offset - 1, -1)
            )
            log.info("segment %s: %d bytes of zeros after the data cut at byte %d",
                     segment.log.path, end - position, position)
            segment.log.truncate(position)
            segment.log.fsync()
            break
        if following is None:
            following = _find_next_valid(segment, position + 1, end, next_offset, max_offset)
        if following is None and is_last:
            events.append(
                RecoveryEvent("truncated", segment.base_offset, position, end - position,
                              next_offset - 1, -1)
            )
            log.warning(
                "segment %s: torn tail of %d bytes at byte %d cut (last valid offset %d)",
                segment.log.path, end - position, position, next_offset - 1,
            )
            segment.log.truncate(position)
            segment.log.fsync()
            break
        stop = end if following is None else following
        next_valid = -1
        if following is not None:
            raw = segment.log.pread(RECORD_BATCH_OVERHEAD, following)
            found = header_from_prefix(raw, segment.config.max_message_bytes + LOG_OVERHEAD)
            next_valid = -1 if found is None else found.base_offset
        target = _quarantine(segment, fileio, position, stop)
        events.append(
            RecoveryEvent("quarantined", segment.base_offset, position, stop - position,
                          next_offset - 1, next_valid, str(target))
        )
        log.error(
            "segment %s: %d damaged bytes at byte %d quarantined to %s "
            "(last valid offset before %d, next valid offset %d)",
            segment.log.path, stop - position, position, target, next_offset - 1, next_valid,
        )
    if pending is not None:  # nothing after it to disagree: keep it
        segment.index_recovered_batch(pending.position, pending.header)
    segment.next_offset = max(next_offset, segment.base_offset)
    return events
