"""One segment of a partition log: a ``.log`` file of RecordBatch v2 bytes and its two indexes.

On disk (names from :mod:`engine.log.files`)::

    00000000000000012345.log        stored batches back to back, baseOffset patched in
    00000000000000012345.index      sparse (relative offset, position) of batch starts
    00000000000000012345.timeindex  sparse (max timestamp so far, relative offset)

Invariants:
- batches are whole, their offsets strictly increase, and every offset lies in
  ``[base_offset, base_offset + 2**31)`` so relative offsets fit the index entries;
- an offset-index entry points at the first byte of a batch whose base offset is the entry's
  offset (this is verified on lookup: a mismatch means a damaged index, which is rebuilt);
- time-index timestamps never decrease.

Indexes are derived data: :meth:`LogSegment.rebuild_indexes` recreates them from the log.

Concurrency: one writer (the partition's append lock); readers use ``pread`` and the indexes'
searches, which tolerate a concurrent append. A damaged-index rebuild takes the segment's own lock.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.config import TopicConfig
from engine.errors import CorruptLogError
from engine.log.fileio import FileIO, LogFile
from engine.log.files import INDEX_SUFFIX, LOG_SUFFIX, TIMEINDEX_SUFFIX, segment_path
from engine.log.offset_index import OffsetIndex
from engine.log.time_index import NO_TIMESTAMP, TimeIndex
from engine.records.batch import (
    LOG_OVERHEAD,
    MAGIC,
    MAGIC_OFFSET,
    RECORD_BATCH_OVERHEAD,
    BatchHeader,
    verify_crc,
)
from engine.records.errors import RecordError

__all__ = ["LogSegment", "PositionedHeader", "base_offset_flipped", "header_from_prefix"]

_HEADER = struct.Struct(">qiibIhiqqqhii")
_MAX_RELATIVE_OFFSET = 2**31 - 1
_SCAN_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class PositionedHeader:
    position: int
    header: BatchHeader


class LogSegment:
    """A ``.log`` file plus its offset and time indexes."""

    def __init__(
        self,
        directory: Path,
        base_offset: int,
        log: LogFile,
        offset_index: OffsetIndex,
        time_index: TimeIndex,
        config: TopicConfig,
        rolling_base_ms: int,
    ) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.log = log
        self.offset_index = offset_index
        self.time_index = time_index
        self.config = config
        self.rolling_base_ms = rolling_base_ms
        self.next_offset = base_offset
        self.largest_timestamp = -1
        self._offset_of_largest_timestamp = base_offset
        self._bytes_since_index_entry = 0
        self._rebuild_lock = threading.Lock()
        self.needs_recovery = ""
        #: The batch this process appended last (see find_position); None after a cut.
        self._tail: PositionedHeader | None = None
        self._reserved_to = 0  # the log's size on disk as far as reserve() knows

    # ----------------------------------------------------------------- opening

    @classmethod
    def create(
        cls, directory: Path, base_offset: int, config: TopicConfig, fileio: FileIO, now_ms: int
    ) -> LogSegment:
        """A new empty active segment; the caller fsyncs the directory."""
        log = fileio.open_log(segment_path(directory, base_offset, LOG_SUFFIX), create=True)
        if log.size() != 0:
            log.truncate(0)
        offset_index, time_index = cls._open_indexes(directory, base_offset, config, True, 0)
        return cls(directory, base_offset, log, offset_index, time_index, config, now_ms)

    @classmethod
    def open(
        cls,
        directory: Path,
        base_offset: int,
        config: TopicConfig,
        fileio: FileIO,
        *,
        writable: bool,
        rebuild: bool,
    ) -> LogSegment:
        """Open an existing segment; ``rebuild`` discards the indexes (recovery rescans the log)."""
        log = fileio.open_log(segment_path(directory, base_offset, LOG_SUFFIX), create=False)
        entries = 0 if rebuild else None
        try:
            offset_index, time_index = cls._open_indexes(
                directory, base_offset, config, writable or rebuild, entries
            )
        except (OSError, ValueError):
            offset_index, time_index = cls._open_indexes(directory, base_offset, config, True, 0)
            rebuild = True
        segment = cls(directory, base_offset, log, offset_index, time_index, config, 0)
        if not rebuild:
            try:
                segment._load_from_indexes()
            except (RecordError, OSError, ValueError) as exc:
                segment.needs_recovery = f"{exc}"
                segment.offset_index.close()
                segment.time_index.close()
                segment.offset_index, segment.time_index = cls._open_indexes(
                    directory, base_offset, config, True, 0
                )
        if rebuild:
            segment.needs_recovery = "indexes are rebuilt from the log"
        first = segment.first_header()
        segment.rolling_base_ms = first.header.max_timestamp if first is not None else 0
        return segment

    @staticmethod
    def _open_indexes(
        directory: Path, base_offset: int, config: TopicConfig, writable: bool, entries: int | None
    ) -> tuple[OffsetIndex, TimeIndex]:
        offset_index = OffsetIndex.open(
            segment_path(directory, base_offset, INDEX_SUFFIX),
            base_offset,
            config.segment_index_bytes,
            writable,
            entries=entries,
        )
        time_index = TimeIndex.open(
            segment_path(directory, base_offset, TIMEINDEX_SUFFIX),
            base_offset,
            config.segment_index_bytes,
            writable,
            entries=entries,
        )
        return offset_index, time_index

    def _load_from_indexes(self) -> None:
        """Derive next offset and largest timestamp from a trusted index plus a short tail walk."""
        self.offset_index.sanity_check()
        self.time_index.sanity_check()
        entries = self.offset_index.entries
        start_offset, position = (
            self.offset_index.entry(entries - 1) if entries else (self.base_offset, 0)
        )
        size = self.log.size()
        if position > size:
            raise ValueError(f"offset index points past the end of {self.log.path}")
        first: PositionedHeader | None = None
        last: PositionedHeader | None = None
        newest: PositionedHeader | None = None  # the tail's largest timestamp, not its last
        previous_last = self.base_offset - 1
        for item in self.iter_headers(position, size):
            if last is None and position > 0 and item.header.base_offset != start_offset:
                raise ValueError("offset index entry does not point at its batch")
            # corruption fix: a tail whose offsets go backwards (a flipped base offset, a
            # replayed write) would set next_offset below offsets already stored
            if not _in_order(item.header, previous_last, self.base_offset):
                raise ValueError(f"offsets in {self.log.path} do not increase at {item.position}")
            previous_last = item.header.last_offset
            first = first or item
            last = item
            if newest is None or item.header.max_timestamp > newest.header.max_timestamp:
                newest = item
        if last is None and position > 0:
            raise ValueError("offset index entry does not point at a batch")
        # corruption fix: bytes that are not a batch where the walk starts (position 0 of a
        # segment without index entries) are damage too, not an empty segment
        if (position if last is None else last.position + last.header.size) != size:
            raise ValueError(f"{self.log.path} does not end at a batch boundary")
        if last is not None:
            self.next_offset = last.header.next_offset
            self._bytes_since_index_entry = size - position
        ts, ts_offset = self.time_index.max_timestamp_entry
        # corruption fix: a swapped, garbled or cut time index passes the ordering check, and
        # its timestamps would mislead time lookups and retention. Its last entry names a
        # batch with that max timestamp, and as both indexes get entries together, it is at
        # least the max timestamp of the batch at the last offset-index entry.
        indexed = first.header.max_timestamp if entries and first is not None else NO_TIMESTAMP
        if (ts != NO_TIMESTAMP and not self._names_batch(ts_offset, ts)) or indexed > ts:
            raise ValueError(f"{self.time_index.path} does not match {self.log.path}")
        self.largest_timestamp = ts
        self._offset_of_largest_timestamp = ts_offset
        if newest is not None and newest.header.max_timestamp > self.largest_timestamp:
            self.largest_timestamp = newest.header.max_timestamp
            self._offset_of_largest_timestamp = newest.header.base_offset

    # ----------------------------------------------------------------- writing

    @property
    def size(self) -> int:
        return self.log.size()

    def append(self, data: bytes | bytearray, header: BatchHeader) -> int:
        """Append one batch whose header already carries its final base offset."""
        position = self.log.append(data)
        self._index_batch(position, header)
        self._tail = PositionedHeader(position, header)
        return position

    def reserve(self, incoming: int) -> None:
        """Preallocate ``segment.preallocate.bytes`` ahead when an append of ``incoming`` bytes
        would pass the reserved space (active segment only; :meth:`flush` gives back the
        rest). Never past ``segment.bytes``, where the segment rolls anyway."""
        end = self.log.size() + incoming
        if end <= self._reserved_to:
            return
        chunk = self.config.segment_preallocate_bytes
        if chunk > 0:
            self._reserved_to = max(end, min(end + chunk, self.config.segment_bytes))
            self.log.preallocate(self._reserved_to)

    def _index_batch(self, position: int, header: BatchHeader) -> None:
        if header.max_timestamp > self.largest_timestamp:
            self.largest_timestamp = header.max_timestamp
            self._offset_of_largest_timestamp = header.base_offset
        if self._bytes_since_index_entry > self.config.index_interval_bytes:
            self.offset_index.append(header.base_offset, position)
            self.time_index.maybe_append(self.largest_timestamp, self._offset_of_largest_timestamp)
            self._bytes_since_index_entry = 0
        self._bytes_since_index_entry += header.size
        self.next_offset = header.next_offset

    def indexes_full(self) -> bool:
        return self.offset_index.is_full or self.time_index.is_full

    def flush(self) -> None:
        """Give back the log's reserved space, then fsync the log and the indexes (before a
        seal or a clean close: the file then ends where its data does)."""
        self.log.trim()
        self._reserved_to = 0
        self.log.fsync()
        self.offset_index.flush()
        self.time_index.flush()

    def seal(self) -> None:
        """Index the final max timestamp and trim the indexes; the segment is read-only after."""
        if self.largest_timestamp >= 0:
            self.time_index.maybe_append(self.largest_timestamp, self._offset_of_largest_timestamp)
        self.offset_index.trim()
        self.time_index.trim()

    def truncate_to(self, position: int, next_offset: int) -> None:
        """Cut the log at a batch boundary and drop index entries past it."""
        self._tail = None
        self._reserved_to = 0
        self.log.truncate(position)
        self.offset_index.truncate_to_offset(next_offset)
        self.time_index.truncate_to_offset(next_offset)
        self.next_offset = next_offset

    def close(self) -> None:
        self.log.close()
        self.offset_index.close()
        self.time_index.close()

    def delete_files(self, fileio: FileIO) -> None:
        self.close()
        fileio.unlink(self.log.path)
        self.offset_index.delete()
        self.time_index.delete()

    # ----------------------------------------------------------------- reading

    def iter_headers(self, start: int = 0, end: int | None = None) -> Iterator[PositionedHeader]:
        """Walk batch headers (no CRC check) from ``start`` up to ``end``; stops at damage."""
        end = self.log.size() if end is None else end
        position = start
        max_bytes = self.config.max_message_bytes + LOG_OVERHEAD
        while position + RECORD_BATCH_OVERHEAD <= end:
            raw = self.log.pread(RECORD_BATCH_OVERHEAD, position)
            if len(raw) < RECORD_BATCH_OVERHEAD:
                return
            header = header_from_prefix(raw, max_bytes)
            if header is None or position + header.size > end:
                return
            yield PositionedHeader(position, header)
            position += header.size

    def first_header(self) -> PositionedHeader | None:
        return next(self.iter_headers(0), None)

    def find_position(self, offset: int) -> PositionedHeader | None:
        """The first batch whose last offset is >= ``offset``, or None past the end.

        Raises:
            CorruptLogError: the walk from the index entry met bytes that are not a batch, or
                offsets that do not increase, before ``offset``. Stopping there quietly would
                send the reader on to the next segment, past the batches it asked for.
        """
        tail = self._tail
        if tail is not None and tail.header.base_offset <= offset <= tail.header.last_offset:
            # the batch this process appended last, where a consumer at the tail reads next:
            # its header is known without a walk of header reads from the index entry
            return tail
        for attempt in range(2):
            entry_offset, position = self.offset_index.lookup(offset)
            stale_entry, found = self._walk_to(offset, entry_offset, position)
            if not stale_entry:
                return found
            if attempt == 0:
                self.rebuild_indexes()  # the index entry does not point at its batch
        return None

    def _walk_to(
        self, offset: int, entry_offset: int, start: int
    ) -> tuple[bool, PositionedHeader | None]:
        """Walk headers from an index entry to ``offset``: (stale index entry, batch found).

        A corruption fix: the base offset is outside the CRC, so the batch found is checked
        against the header after it as well. When they overlap and nothing vouches for the
        found batch's offsets (the index entry, the segment's base offset, or a batch it
        directly follows), it is the damaged one and is not served.
        """
        end = self.log.size()
        max_bytes = self.config.max_message_bytes + LOG_OVERHEAD
        previous_last = entry_offset - 1 if start > 0 else self.base_offset - 1
        found: PositionedHeader | None = None
        vouched = False
        position = start
        while position < end:
            raw = self.log.pread(RECORD_BATCH_OVERHEAD, position)
            header = None
            if len(raw) == RECORD_BATCH_OVERHEAD and position + len(raw) <= end:
                header = header_from_prefix(raw, max_bytes)
            if position == start > 0 and (header is None or header.base_offset != entry_offset):
                return True, None
            if header is not None and position + header.size > end:
                header = None
            if found is not None:
                if header is not None and header.base_offset <= previous_last and not vouched:
                    raise self._corrupt(found.position, "base offset overlaps the next batch")
                return False, found  # damage after the batch found is reported by its own read
            if header is None or not _in_order(header, previous_last, self.base_offset):
                raise self._corrupt(position, f"no batch in offset order on the way to {offset}")
            if header.last_offset >= offset:
                found = PositionedHeader(position, header)
                vouched = header.base_offset == previous_last + 1
            previous_last = header.last_offset
            position += header.size
        return False, found

    def _corrupt(self, position: int, detail: str) -> CorruptLogError:
        return CorruptLogError(str(self.log.path), position, detail)

    def read(self, position: int, size: int) -> bytes:
        return self.log.pread(size, position)

    def find_offset_for_time(self, timestamp: int) -> PositionedHeader | None:
        """The first batch whose max timestamp is >= ``timestamp``."""
        start = self._time_lookup_start(timestamp)
        if start is None:
            return None
        for item in self.iter_headers(start.position):
            if item.header.max_timestamp >= timestamp:
                return item
        return None

    def _time_lookup_start(self, timestamp: int) -> PositionedHeader | None:
        """The batch to scan from for ``timestamp``, by a time-index entry checked on use.

        A corruption fix: an entry (largest timestamp so far, offset of the batch holding it)
        must name a batch with that max timestamp; one that does not is damage in derived
        data, so the indexes are rebuilt rather than trusted.
        """
        for attempt in range(2):
            entry_timestamp, offset = self.time_index.lookup(timestamp)
            start = self.find_position(offset)
            if entry_timestamp == NO_TIMESTAMP or (
                start is not None
                and start.header.base_offset == offset
                and start.header.max_timestamp == entry_timestamp
            ):
                return start
            if attempt == 0:
                self.rebuild_indexes()
        return self.find_position(self.base_offset)

    def _names_batch(self, offset: int, max_timestamp: int) -> bool:
        """Whether a batch starts at ``offset`` with ``max_timestamp`` (header walk, no CRC)."""
        _, position = self.offset_index.lookup(offset)
        for item in self.iter_headers(position):
            if item.header.base_offset >= offset:
                header = item.header
                return header.base_offset == offset and header.max_timestamp == max_timestamp
        return False

    # ----------------------------------------------------------------- rebuilding

    def rebuild_indexes(self) -> None:
        """Recreate both indexes by walking the log's batch headers.

        A corruption fix: damage in the log (a segment trusted after a clean shutdown is not
        scanned) no longer ends the index. Only batches in offset order are indexed; the walk
        steps over damage to the next CRC-valid batch and indexes it, so reads inside the
        damage raise while batches after it, and later appends, stay readable. A batch is
        indexed once the next one agrees with it: one whose base offset was flipped upward
        is left out, not indexed ahead of the log end where it would refuse every append.
        """
        with self._rebuild_lock:
            self.offset_index.reset()
            self.time_index.reset()
            self.rebuild_state_reset()
            pending: PositionedHeader | None = None
            expected = self.base_offset  # where ``pending`` starts if it follows its predecessor
            exact = True  # False after damage: ``expected`` is only a lower bound
            previous_last = self.base_offset - 1
            end = self.log.size()
            position = 0
            while position < end:
                item = self._header_at(position, end)
                if item is not None and _in_order(item.header, previous_last, self.base_offset):
                    if pending is not None:
                        self._index_batch(pending.position, pending.header)
                        exact = True
                    expected, pending = previous_last + 1, item
                    previous_last = item.header.last_offset
                    position += item.header.size
                    continue
                if item is not None and pending is not None and base_offset_flipped(
                    pending.header, expected, item.header, exact=exact,
                    compacted=self.config.compact,
                ):
                    previous_last, pending = expected - 1, None  # take ``item`` in its place
                else:
                    if pending is not None and pending.header.base_offset == expected:
                        self._index_batch(pending.position, pending.header)
                    elif pending is not None:  # nothing vouches for its offsets
                        previous_last = expected - 1
                    pending = None
                    resume = self._next_valid_batch(position + 1, previous_last, end)
                    if resume is None:
                        break
                    position, exact = resume, False
                self._bytes_since_index_entry = self.config.index_interval_bytes + 1
            if pending is not None:
                self._index_batch(pending.position, pending.header)

    def _header_at(self, position: int, end: int) -> PositionedHeader | None:
        """The header at ``position`` when it parses and its batch ends by ``end``."""
        if position + RECORD_BATCH_OVERHEAD > end:
            return None
        raw = self.log.pread(RECORD_BATCH_OVERHEAD, position)
        if len(raw) < RECORD_BATCH_OVERHEAD:
            return None
        header = header_from_prefix(raw, self.config.max_message_bytes + LOG_OVERHEAD)
        if header is None or position + header.size > end:
            return None
        return PositionedHeader(position, header)

    def _next_valid_batch(self, start: int, previous_last: int, end: int) -> int | None:
        """Position of the first whole, CRC-valid batch in offset order at or after ``start``."""
        chunk_start = start
        while chunk_start < end:
            chunk = self.log.pread(min(_SCAN_CHUNK_BYTES, end - chunk_start), chunk_start)
            if not chunk:
                return None
            index = chunk.find(MAGIC)
            while index >= 0:
                candidate = chunk_start + index - MAGIC_OFFSET
                item = self._header_at(candidate, end) if candidate >= start else None
                if item is not None and _in_order(item.header, previous_last, self.base_offset):
                    try:
                        verify_crc(self.log.pread(item.header.size, candidate), 0, item.header)
                    except RecordError:
                        pass
                    else:
                        return candidate
                index = chunk.find(MAGIC, index + 1)
            chunk_start += len(chunk)
        return None

    def rebuild_state_reset(self) -> None:
        """Forget what was derived from the log; recovery re-derives it batch by batch."""
        self._tail = None
        self._bytes_since_index_entry = 0
        self.largest_timestamp = -1
        self._offset_of_largest_timestamp = self.base_offset
        self.next_offset = self.base_offset

    def index_recovered_batch(self, position: int, header: BatchHeader) -> None:
        """Index a batch that recovery has validated."""
        self._index_batch(position, header)


def base_offset_flipped(
    header: BatchHeader,
    expected: int,
    following: BatchHeader,
    after: BatchHeader | None = None,
    *,
    exact: bool = True,
    compacted: bool = True,
    next_base: int | None = None,
) -> bool:
    """Whether ``header`` jumped a gap only because its base offset (outside the CRC) changed.

    ``expected`` is the first offset ``header`` may start at: exactly where the batch before
    it ended, or (``exact`` False, after damage) at least there. ``following`` is the batch
    after ``header``, ``after`` the one after that, if known. Intact, ``following`` starts
    past ``header``'s last offset. When it starts inside it, at a place ``header`` could have
    started before, one of the two base offsets changed. ``header`` is the one when
    ``following`` starts exactly where it would after an exact ``expected``, or ``after``
    directly follows ``following`` (two batches agreeing against one). With no ``after`` to
    ask, or one that agrees with neither (its base offset changed too), it is ``header`` when
    the log has no gaps but damaged ones (not ``compacted``), unless ``following`` ends its
    segment and ``next_base`` (where the next segment, or the log end, starts) says
    otherwise: without gaps the two meet, so ``following``'s offsets are the changed ones
    when they do not.
    """
    width = header.last_offset_delta + 1
    if (
        header.base_offset <= expected
        or following.base_offset > header.last_offset
        or following.base_offset - width < expected
    ):
        return False
    if exact and following.base_offset == expected + width:
        return True
    if after is not None:
        if after.base_offset == following.last_offset + 1:
            return True
        if after.base_offset == header.last_offset + 1 + following.last_offset_delta + 1:
            return False  # ``after`` sides with ``header``: ``following`` changed
        # ``after`` agrees with neither, its own base offset changed too: it has no vote
    if next_base is not None and next_base == following.last_offset + 1:
        return True
    return not compacted and next_base is None


def _in_order(header: BatchHeader, previous_last: int, base_offset: int) -> bool:
    """Offsets past the previous batch's and within the segment's relative-offset range."""
    return (
        header.base_offset > previous_last
        and header.base_offset >= base_offset
        and header.last_offset - base_offset <= _MAX_RELATIVE_OFFSET
    )


def header_from_prefix(
    raw: bytes | memoryview, max_batch_bytes: int, position: int = 0
) -> BatchHeader | None:
    """Parse the 61-byte batch header without its records; None when it cannot be a batch.

    The walk over stored headers reads 61 bytes per batch instead of whole batches, so it
    checks only what the header alone can tell: magic, a sane length and record count.
    """
    (
        base_offset,
        batch_length,
        leader_epoch,
        magic,
        crc,
        attributes,
        last_offset_delta,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
    ) = _HEADER.unpack_from(raw, position)
    if (
        magic != 2
        or batch_length < RECORD_BATCH_OVERHEAD - LOG_OVERHEAD
        or batch_length + LOG_OVERHEAD > max_batch_bytes
        or last_offset_delta < 0
        or record_count < 0
        or base_offset < 0
    ):
        return None
    return BatchHeader(
        base_offset=base_offset,
        batch_length=batch_length,
        partition_leader_epoch=leader_epoch,
        magic=magic,
        crc=crc,
        attributes=attributes,
        last_offset_delta=last_offset_delta,
        base_timestamp=base_timestamp,
        max_timestamp=max_timestamp,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        record_count=record_count,
    )
