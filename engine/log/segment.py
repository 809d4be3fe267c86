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
from engine.log.fileio import FileIO, LogFile
from engine.log.files import INDEX_SUFFIX, LOG_SUFFIX, TIMEINDEX_SUFFIX, segment_path
from engine.log.offset_index import OffsetIndex
from engine.log.time_index import TimeIndex
from engine.records.batch import (
    LOG_OVERHEAD,
    RECORD_BATCH_OVERHEAD,
    BatchHeader,
)
from engine.records.errors import RecordError

__all__ = ["LogSegment", "PositionedHeader", "header_from_prefix"]

_HEADER = struct.Struct(">qiibIhiqqqhii")


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
        last: PositionedHeader | None = None
        for item in self.iter_headers(position, size):
            if last is None and position > 0 and item.header.base_offset != start_offset:
                raise ValueError("offset index entry does not point at its batch")
            last = item
        if last is None and position > 0:
            raise ValueError("offset index entry does not point at a batch")
        if last is not None:
            if last.position + last.header.size != size:
                raise ValueError(f"{self.log.path} does not end at a batch boundary")
            self.next_offset = last.header.next_offset
            self._bytes_since_index_entry = size - position
        ts, ts_offset = self.time_index.max_timestamp_entry
        self.largest_timestamp = ts
        self._offset_of_largest_timestamp = ts_offset
        if last is not None and last.header.max_timestamp > self.largest_timestamp:
            self.largest_timestamp = last.header.max_timestamp
            self._offset_of_largest_timestamp = last.header.base_offset

    # ----------------------------------------------------------------- writing

    @property
    def size(self) -> int:
        return self.log.size()

    def append(self, data: bytes | bytearray, header: BatchHeader) -> int:
        """Append one batch whose header already carries its final base offset."""
        position = self.log.append(data)
        self._index_batch(position, header)
        return position

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
        """fsync the log and the indexes."""
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
        """The first batch whose last offset is >= ``offset``, or None past the end."""
        for attempt in range(2):
            entry_offset, position = self.offset_index.lookup(offset)
            found = None
            for item in self.iter_headers(position):
                if (
                    item.position == position
                    and position > 0
                    and item.header.base_offset != entry_offset
                ):
                    break  # the index entry does not point at its batch
                if item.header.last_offset >= offset:
                    found = item
                    break
            else:
                return None
            if found is not None:
                return found
            if attempt == 0:
                self.rebuild_indexes()
        return None

    def read(self, position: int, size: int) -> bytes:
        return self.log.pread(size, position)

    def find_offset_for_time(self, timestamp: int) -> PositionedHeader | None:
        """The first batch whose max timestamp is >= ``timestamp``."""
        _, start_offset = self.time_index.lookup(timestamp)
        start = self.find_position(start_offset)
        if start is None:
            return None
        for item in self.iter_headers(start.position):
            if item.header.max_timestamp >= timestamp:
                return item
        return None

    # ----------------------------------------------------------------- rebuilding

    def rebuild_indexes(self) -> None:
        """Recreate both indexes by walking the log's batch headers."""
        with self._rebuild_lock:
            self.offset_index.reset()
            self.time_index.reset()
            self.rebuild_state_reset()
            for item in self.iter_headers(0):
                self._index_batch(item.position, item.header)

    def rebuild_state_reset(self) -> None:
        """Forget what was derived from the log; recovery re-derives it batch by batch."""
        self._bytes_since_index_entry = 0
        self.largest_timestamp = -1
        self._offset_of_largest_timestamp = self.base_offset
        self.next_offset = self.base_offset

    def index_recovered_batch(self, position: int, header: BatchHeader) -> None:
        """Index a batch that recovery has validated."""
        self._index_batch(position, header)


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
