"""The log of one partition: an ordered list of segments in one directory.

Directory layout (see docs/storage-format.md)::

    <data>/<topic>-<n>/
        00000000000000000000.log / .index / .timeindex    sealed segments
        00000000000000052311.log / .index / .timeindex    the active segment (last)
        recovery-point.checkpoint                         every segment below it is fsynced
        .clean_shutdown                                   present only after an orderly close
        quarantine/                                       damaged byte ranges cut from segments

Invariants:
- offsets strictly increase across segments; the active segment is the only one written;
- ``high_watermark`` is the end of what is durable by the topic's ``durability`` setting:
  under ``fsync`` only fsynced batches are visible to readers, so nothing a consumer saw can
  vanish at power loss; under ``async`` it equals the log end offset;
- an append is acknowledged only once it is below the high watermark.

Concurrency: appends, rolls, truncation and retention hold ``_lock``. fsync runs outside it
under ``_sync_lock`` (group commit: one fsync covers every append made while the previous one
ran). Readers take no lock: they read a snapshot of the segment list and use ``pread``.
"""

from __future__ import annotations

import bisect
import contextlib
import errno as errno_codes
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.clock import Clock, SystemClock
from engine.config import TopicConfig
from engine.errors import (
    CorruptLogError,
    DiskFullError,
    LogReadOnlyError,
    OffsetOutOfRangeError,
    StorageError,
)
from engine.log.compaction import finish_interrupted_swaps
from engine.log.fileio import FileIO, OsFileIO
from engine.log.files import (
    CLEAN_SHUTDOWN_FILE,
    CLEANED_SUFFIX,
    DELETED_SUFFIX,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    PRODUCER_SNAPSHOT_FILE,
    RECOVERY_CHECKPOINT_FILE,
    SWAP_SUFFIX,
    TEMP_SUFFIX,
    TIMEINDEX_SUFFIX,
    parse_base_offset,
    parse_producer_roll_snapshot,
    producer_roll_snapshot_name,
)
from engine.log.producer_state import ProducerStateManager
from engine.log.recovery import RecoveryEvent, recover_segment
from engine.log.segment import LogSegment, header_from_prefix
from engine.log.stats import LogStats
from engine.records.batch import (
    LOG_OVERHEAD,
    RECORD_BATCH_OVERHEAD,
    BatchHeader,
    patch_base_offset,
    set_log_append_time,
    validate_produce_batch,
    verify_crc,
)
from engine.records.errors import RecordError

__all__ = ["AppendResult", "PartitionLog", "ReadResult"]

log = logging.getLogger(__name__)

_DISK_FULL_ERRNOS = {errno_codes.ENOSPC, errno_codes.EDQUOT}


@dataclass(frozen=True, slots=True)
class AppendResult:
    base_offset: int
    last_offset: int
    log_append_time: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Whole stored batches; ``data`` is empty when ``offset`` is at the high watermark."""

    data: bytes
    high_watermark: int
    log_start_offset: int


@dataclass(slots=True)
class _PendingDelete:
    segment: LogSegment
    due_monotonic: float
    unlink: bool = True  # False: a compacted segment now owns the file names; only close


@dataclass(slots=True)
class RecoveryReport:
    clean: bool
    segments_scanned: int = 0
    bytes_scanned: int = 0
    events: list[RecoveryEvent] = field(default_factory=list)


class PartitionLog:
    """Append, read and maintain one partition's segments. Use :meth:`open`."""

    def __init__(
        self,
        directory: Path,
        config: TopicConfig,
        fileio: FileIO,
        clock: Clock,
        segments: list[LogSegment],
        recovery: RecoveryReport,
        producer_snapshot: bytes | None = None,
    ) -> None:
        self.directory = directory
        self.config = config
        self._fileio = fileio
        self._clock = clock
        self._segments = segments
        self._bases = [s.base_offset for s in segments]
        self.recovery = recovery
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()
        self._data_arrived = threading.Condition(threading.Lock())
        self._listeners: list[Callable[[], None]] = []
        self._producers = ProducerStateManager()
        self._next_offset = segments[-1].next_offset
        self._log_start_offset = self._compute_log_start_offset()
        self._high_watermark = self._next_offset
        self._read_only_reason: str | None = None
        #: Lowest base offset of a segment a read found damaged: recovery must scan from it.
        self._damaged_base: int | None = None
        self._pending_deletes: list[_PendingDelete] = []
        self.stats = LogStats()
        self._last_flush_monotonic = clock.monotonic()
        self._closed = False
        loaded = (ProducerStateManager.from_snapshot(producer_snapshot, self._next_offset)
                  if producer_snapshot is not None else None)
        if loaded is not None:
            self._producers = loaded
        else:
            self._rebuild_producer_state()

    # ------------------------------------------------------------------ open / close

    @classmethod
    def open(
        cls,
        directory: Path,
        config: TopicConfig,
        *,
        fileio: FileIO | None = None,
        clock: Clock | None = None,
    ) -> PartitionLog:
        """Open (creating if needed) the partition in ``directory``, recovering if unclean."""
        fileio = fileio or OsFileIO()
        clock = clock or SystemClock()
        directory.mkdir(parents=True, exist_ok=True)
        clean_marker = directory / CLEAN_SHUTDOWN_FILE
        clean = clean_marker.exists()
        bases = _list_segments(directory, fileio)
        report = RecoveryReport(clean=clean)
        segments: list[LogSegment] = []
        if not bases:
            segments.append(LogSegment.create(directory, 0, config, fileio, clock.now_ms()))
            fileio.fsync_dir(directory)
        else:
            recovery_point = 0 if clean else _read_checkpoint(directory)
            for i, base in enumerate(bases):
                is_last = i == len(bases) - 1
                needs_scan = not clean and (base >= recovery_point or is_last)
                segment = LogSegment.open(
                    directory, base, config, fileio, writable=is_last, rebuild=needs_scan
                )
                max_offset = None if is_last else bases[i + 1]
                if max_offset is not None and segment.next_offset > max_offset:
                    # corruption fix: a trusted segment whose offsets run into the next one (a
                    # flipped base offset) would make the next scan reject all of its batches
                    segment.needs_recovery = "offsets run past the next segment's base offset"
                if segment.needs_recovery and not needs_scan:
                    log.warning("segment %s needs recovery: %s", base, segment.needs_recovery)
                    needs_scan = True
                if needs_scan:
                    min_offset = segments[-1].next_offset if segments else base
                    report.segments_scanned += 1
                    report.bytes_scanned += segment.size
                    report.events.extend(
                        recover_segment(
                            segment, fileio, is_last=is_last, min_offset=min_offset,
                            max_offset=max_offset,
                        )
                    )
                    segment.flush()
                    if not is_last:
                        segment.seal()
                segments.append(segment)
        snapshot = None
        if clean:
            snapshot_path = directory / PRODUCER_SNAPSHOT_FILE
            with contextlib.suppress(OSError):  # missing or unreadable: rebuilt from the log
                snapshot = snapshot_path.read_bytes()
            fileio.unlink(snapshot_path)  # stale once anything is appended
            fileio.unlink(clean_marker)
            fileio.fsync_dir(directory)
        partition = cls(directory, config, fileio, clock, segments, report, snapshot)
        if not clean:
            try:
                partition._write_checkpoint(segments[-1].base_offset)
            except OSError as exc:
                # only a shortcut for the next start (which then scans from the older
                # checkpoint, never past valid data): a full disk must not stop recovery
                log.warning("partition %s: recovery checkpoint not written (%s); the next "
                            "start scans from the previous one", directory, exc)
        return partition

    def close(self) -> None:
        """Flush everything and mark the shutdown clean so the next open skips recovery."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._read_only_reason is None:
                self._flush_all()
                active = self._segments[-1]
                active.offset_index.trim()
                active.time_index.trim()
                if self._damaged_base is None:  # else the next open must scan the damage
                    self._write_producer_snapshot()
                    self._fileio.write_atomic(self.directory / CLEAN_SHUTDOWN_FILE, b"")
            for segment in self._segments:
                segment.close()
            for pending in self._pending_deletes:
                if pending.unlink:
                    pending.segment.delete_files(self._fileio)
                else:
                    pending.segment.close()
            self._pending_deletes.clear()

    def abandon(self) -> None:
        """Release descriptors without flushing or marking clean (what a crash leaves behind)."""
        with self._lock:
            self._closed = True
            for segment in self._segments:
                segment.close()

    # ------------------------------------------------------------------ properties

    def _compute_log_start_offset(self) -> int:
        # corruption fix: the first non-empty segment's base offset, not its first header's:
        # a damaged header (not CRC-checked here) hid the rest of the segment below the start
        for segment in self._segments:
            if segment.size > 0:
                return segment.base_offset
        return self._segments[-1].next_offset

    @property
    def log_start_offset(self) -> int:
        return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._next_offset

    @property
    def high_watermark(self) -> int:
        return self._high_watermark

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def largest_timestamp(self) -> int:
        """The largest record timestamp stored (-1 when empty), from the time indexes."""
        return max((s.largest_timestamp for s in self._segments), default=-1)

    @property
    def read_only_reason(self) -> str | None:
        return self._read_only_reason

    @property
    def producer_count(self) -> int:
        return len(self._producers)

    # ------------------------------------------------------------------ append

    def append(
        self, batch: bytes | bytearray | memoryview, *, wait_durable: bool = True
    ) -> AppendResult:
        """Validate, deduplicate, assign offsets and store one batch.

        Checked as Kafka's LogValidator checks (``validate_produce_batch``): header, length,
        CRC, and every record read once (in C when built), so a stored batch always decodes;
        nothing is re-encoded, and the base offset is patched in place (the CRC does not
        cover it). With ``wait_durable``
        (the default) the call returns once the batch is durable by the topic's setting; a
        caller pipelining several batches passes False and calls :meth:`wait_durable` with
        the last result's ``last_offset + 1``, so one fsync covers them all.
        """
        header = validate_produce_batch(batch, self.config.max_message_bytes)
        with self._lock:
            result = self._append_held(batch, header, may_roll=True)
        assert result is not None
        if wait_durable:
            self._await_durable(result.last_offset + 1)
        return result

    def append_nowait(self, batch: bytes | bytearray | memoryview) -> AppendResult | None:
        """``append(batch, wait_durable=False)`` for a caller that must not block (the
        broker's event loop): None, with nothing stored, when another thread holds the
        partition or the batch would roll the segment (a roll fsyncs the old segment, which
        on an async topic can be up to ``flush.ms`` of writes). Raises as :meth:`append`."""
        header = validate_produce_batch(batch, self.config.max_message_bytes)
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._append_held(batch, header, may_roll=False)
        finally:
            self._lock.release()

    def _append_held(
        self, batch: bytes | bytearray | memoryview, header: BatchHeader, *, may_roll: bool
    ) -> AppendResult | None:
        """Under ``_lock``: deduplicate and store; None, storing nothing, when the batch
        would roll the segment and ``may_roll`` is False."""
        self._check_writable()
        duplicate = self._producers.check(header)
        if duplicate is not None:
            return AppendResult(duplicate.base_offset, duplicate.last_offset, -1, True)
        if not may_roll and self._roll_due(header.size, self._clock.now_ms()):
            return None
        return self._append_locked(bytearray(batch), header)

    def wait_durable(self, end_offset: int) -> None:
        """Return once every offset below ``end_offset`` is durable (and visible to readers)."""
        self._await_durable(end_offset)

    def _append_locked(self, data: bytearray, header: BatchHeader) -> AppendResult:
        base_offset = self._next_offset
        now_ms = self._clock.now_ms()
        patch_base_offset(data, 0, base_offset)
        log_append_time = -1
        if self.config.message_timestamp_type == "LogAppendTime":
            set_log_append_time(data, 0, now_ms)
            log_append_time = now_ms
        stored = _rebased(header, base_offset, log_append_time)
        self._maybe_roll(stored.size, now_ms)
        segment = self._segments[-1]
        try:
            segment.reserve(len(data))
            segment.append(data, stored)
        except OSError as exc:
            raise self._storage_error("append to", segment.log.path, exc) from exc
        self._next_offset = stored.next_offset
        self._producers.update(stored, base_offset)
        stats = self.stats
        stats.appended_batches += 1
        stats.appended_records += stored.next_offset - base_offset
        stats.appended_bytes += stored.size
        if self.config.durability != "fsync":
            self._advance_high_watermark(self._next_offset)
        return AppendResult(base_offset, stored.last_offset, log_append_time)

    def _check_writable(self) -> None:
        if self._closed:
            raise StorageError(f"partition {self.directory.name} is closed", str(self.directory))
        if self._read_only_reason is not None:
            raise LogReadOnlyError(
                f"partition {self.directory.name} is read-only: {self._read_only_reason}; "
                "restart the broker to run recovery",
                str(self.directory),
            )

    def _storage_error(self, action: str, path: Path, exc: OSError) -> StorageError:
        if exc.errno in _DISK_FULL_ERRNOS:
            return DiskFullError(
                f"cannot {action} {path}: disk full; nothing was stored, retry once space is freed",
                str(path),
                exc.errno,
            )
        return StorageError(f"cannot {action} {path}: {exc.strerror}", str(path), exc.errno)

    def _maybe_roll(self, incoming_bytes: int, now_ms: int) -> None:
        if self._roll_due(incoming_bytes, now_ms):
            self.roll()

    def _roll_due(self, incoming_bytes: int, now_ms: int) -> bool:
        active = self._segments[-1]
        if active.size == 0:
            return False
        too_big = active.size + incoming_bytes > self.config.segment_bytes
        too_old = now_ms - active.rolling_base_ms > self.config.segment_ms
        offsets_overflow = self._next_offset - active.base_offset > 2**31 - 2**20
        return too_big or too_old or offsets_overflow or active.indexes_full()

    def roll(self) -> None:
        """Seal the active segment and start a new one at the log end offset."""
        with self._lock:
            active = self._segments[-1]
            if active.size == 0:
                return
            with self._sync_lock:
                try:
                    active.flush()
                except OSError as exc:
                    self._fail_read_only(f"fsync failed while rolling: {exc}")
                    raise self._storage_error("fsync", active.log.path, exc) from exc
                self._advance_high_watermark(self._next_offset)
            active.seal()
            try:
                segment = LogSegment.create(
                    self.directory, self._next_offset, self.config, self._fileio,
                    self._clock.now_ms(),
                )
                self._fileio.fsync_dir(self.directory)
            except OSError as exc:
                raise self._storage_error("create a segment in", self.directory, exc) from exc
            self._segments = [*self._segments, segment]
            self._bases = [*self._bases, segment.base_offset]
            self._write_checkpoint(segment.base_offset)
            self._write_roll_snapshot(segment.base_offset)

    # ------------------------------------------------------------------ durability

    def sync_nowait(self, end_offset: int) -> bool:
        """``wait_durable`` for a caller that must not wait for another thread (the broker's
        event loop): False, with nothing done, when another thread is syncing this partition.
        The fsync itself still blocks the caller for as long as it takes.

        Why the loop may fsync at all: handing an idle partition's fsync to a worker costs two
        thread wake-ups (to the worker and back), about 0.1 ms on a 2-core VM, more than half
        an fdatasync. Raises as :meth:`wait_durable`.
        """
        if self._high_watermark >= end_offset:
            return True
        if not self._sync_lock.acquire(blocking=False):
            return False
        try:
            if self._high_watermark < end_offset:
                self._sync_active_locked()
        finally:
            self._sync_lock.release()
        return True

    def _await_durable(self, end_offset: int) -> None:
        """Group commit: return once ``end_offset`` is below the high watermark."""
        if self._high_watermark >= end_offset:
            return
        with self._sync_lock:
            if self._high_watermark < end_offset:
                self._sync_active_locked()

    def _sync_active_locked(self) -> None:
        """fsync the active segment and publish what it covers; caller holds ``_sync_lock``.

        ``_lock`` is not taken here: ``roll`` takes ``_lock`` and then ``_sync_lock``, so taking
        them in the other order would deadlock. Reading the log end offset and the active
        segment without ``_lock`` is safe because a roll cannot complete while we hold
        ``_sync_lock``, and the log end offset only moves after a batch is fully written.
        """
        self._check_writable()
        target = self._next_offset
        segment = self._segments[-1]
        started = time.perf_counter()
        try:
            segment.log.fsync()
        except OSError as exc:
            self._fail_read_only(f"fsync failed: {exc}")
            raise LogReadOnlyError(
                f"fsync of {segment.log.path} failed ({exc.strerror}); the partition is "
                "now read-only and this write is not acknowledged",
                str(segment.log.path),
                exc.errno,
            ) from exc
        self.stats.record_fsync(time.perf_counter() - started)
        self._advance_high_watermark(target)
        self._last_flush_monotonic = self._clock.monotonic()

    def _fail_read_only(self, reason: str) -> None:
        log.error("partition %s goes read-only: %s", self.directory, reason)
        self._read_only_reason = reason

    def _advance_high_watermark(self, offset: int) -> None:
        if offset <= self._high_watermark:
            return
        self._high_watermark = offset
        with self._data_arrived:
            self._data_arrived.notify_all()
        for listener in list(self._listeners):
            listener()

    def flush(self) -> None:
        """fsync the active segment now (``durability=async`` topics call this every flush.ms)."""
        with self._sync_lock:
            self._sync_active_locked()

    def maybe_flush(self) -> bool:
        """Flush when ``flush.ms`` has passed since the last fsync; True if it flushed."""
        due = self._last_flush_monotonic + self.config.flush_ms / 1000.0
        if self._clock.monotonic() < due or self._read_only_reason or self._closed:
            return False
        self.flush()
        return True

    def _flush_all(self) -> None:
        with self._sync_lock:
            for segment in self._segments:
                segment.flush()
            self._advance_high_watermark(self._next_offset)

    def _write_checkpoint(self, recovery_point: int) -> None:
        if self._damaged_base is not None:
            recovery_point = min(recovery_point, self._damaged_base)
        self._fileio.write_atomic(
            self.directory / RECOVERY_CHECKPOINT_FILE, f"1\n{recovery_point}\n".encode()
        )

    # ------------------------------------------------------------------ waiting

    def wait_for_data(self, offset: int, timeout_s: float) -> bool:
        """Block until the high watermark passes ``offset`` or the timeout ends."""
        with self._data_arrived:
            return self._data_arrived.wait_for(lambda: self._high_watermark > offset, timeout_s)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from the appending thread) whenever the high watermark moves."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # ------------------------------------------------------------------ read

    def read(self, offset: int, max_bytes: int) -> ReadResult:
        """Whole batches from the one containing ``offset``, up to ``max_bytes``.

        At least one batch is returned when one exists even if it is larger than ``max_bytes``,
        so a consumer can always make progress. Every batch's CRC is checked: damaged bytes
        are never served as valid.
        """
        segments = self._segments
        bases = self._bases
        high_watermark = self._high_watermark
        log_start = self.log_start_offset
        if offset < log_start or offset > high_watermark:
            raise OffsetOutOfRangeError(offset, log_start, high_watermark)
        if offset == high_watermark:  # caught up; no walk into a damaged tail for nothing
            return ReadResult(b"", high_watermark, log_start)
        index = max(0, bisect.bisect_right(bases, offset) - 1)
        for i in range(index, len(segments)):
            segment = segments[i]
            if segment.base_offset >= high_watermark:
                break
            next_base = segments[i + 1].base_offset if i + 1 < len(segments) else None
            try:
                data = self._read_segment(segment, offset, max_bytes, high_watermark, next_base)
            except CorruptLogError:
                self._damage_found(segment)
                raise
            except OSError as exc:
                if exc.errno == errno_codes.EBADF and not self._closed:
                    # the segment was deleted by retention while we read it
                    return self.read(max(offset, self.log_start_offset), max_bytes)
                raise self._storage_error("read", segment.log.path, exc) from exc
            if data:
                self.stats.read_bytes += len(data)
                return ReadResult(data, high_watermark, log_start)
        return ReadResult(b"", high_watermark, log_start)

    def _damage_found(self, segment: LogSegment) -> None:
        """Make the next open scan ``segment``: a sealed segment is trusted after a clean
        shutdown, so without this a restart would never quarantine the damage, and a damaged
        header claiming later offsets would hide the intact batches after it for good."""
        with self._lock:
            if self._closed or (
                self._damaged_base is not None and self._damaged_base <= segment.base_offset
            ):
                return
            self._damaged_base = segment.base_offset
            log.error("partition %s: damaged segment %d found on read; the next start scans "
                      "it", self.directory, segment.base_offset)
            try:
                self._write_checkpoint(self._segments[-1].base_offset)
            except OSError as exc:  # the clean-shutdown marker is skipped all the same
                log.error("cannot lower the recovery checkpoint: %s", exc)

    def _read_segment(
        self,
        segment: LogSegment,
        offset: int,
        max_bytes: int,
        high_watermark: int,
        next_base: int | None,
    ) -> bytes:
        """Stored batches from the one holding ``offset``, each CRC- and offset-checked.

        A corruption fix: base offsets are outside the CRC, so a batch is served only when its
        offsets fit: after the previous batch, below the next segment's base offset, and, when
        it follows a gap (where a flipped base offset lands), before a next batch that agrees.
        """
        start = segment.find_position(offset)
        if start is None:
            return b""
        if start.header.base_offset >= high_watermark:
            # corruption fix: below the high watermark every offset is in, or in a gap before,
            # a batch that starts below it; reading on as if nothing were here skips that batch
            raise CorruptLogError(
                str(segment.log.path), start.position, "batch offsets past the high watermark"
            )
        size = max(max_bytes, start.header.size)
        # os.pread allocates all ``size`` bytes before reading fewer: at the tail of the log
        # that was a fresh 512 KiB allocation (mmap, page faults) per Subscribe push
        size = min(size, max(segment.size - start.position, start.header.size))
        data = segment.read(start.position, size)
        view = memoryview(data)
        limit = self.config.max_message_bytes + LOG_OVERHEAD
        end = 0
        served = 0  # batches up to here are served; a batch after a gap waits for its successor
        previous_last = start.header.base_offset - 1
        while end + RECORD_BATCH_OVERHEAD <= len(data):
            header = header_from_prefix(view, limit, end)
            if header is None or end + header.size > len(data):
                if header is None and end == 0:
                    raise CorruptLogError(str(segment.log.path), start.position, "bad batch header")
                break
            if end == 0 and header.base_offset != start.header.base_offset:
                # the segment's remembered newest batch no longer reads as written
                raise CorruptLogError(
                    str(segment.log.path), start.position, "batch offsets changed on disk"
                )
            if header.base_offset >= high_watermark or header.base_offset <= previous_last:
                break
            if next_base is not None and header.last_offset >= next_base:
                if end == 0:
                    raise CorruptLogError(
                        str(segment.log.path), start.position, "offsets run into the next segment"
                    )
                break
            try:
                verify_crc(view, end, header)
            except RecordError as exc:
                if end == 0:
                    raise CorruptLogError(str(segment.log.path), start.position, str(exc)) from exc
                break
            served = end  # the previous batch is confirmed by this one following it in order
            if end == 0 or header.base_offset == previous_last + 1:
                served = end + header.size
            previous_last = header.last_offset
            end += header.size
        view.release()
        return data[:served] if served != len(data) else data

    def offset_for_time(self, timestamp: int) -> int | None:
        """The first offset of the first batch whose max timestamp is >= ``timestamp``."""
        high_watermark = self._high_watermark
        for segment in self._segments:
            if segment.largest_timestamp < timestamp:
                continue
            found = segment.find_offset_for_time(timestamp)
            if found is not None and found.header.base_offset < high_watermark:
                return found.header.base_offset
        return None

    # ------------------------------------------------------------------ maintenance

    def _write_producer_snapshot(self) -> None:
        """Spare the next clean start a read of every batch header (best effort)."""
        try:
            self._fileio.write_atomic(self.directory / PRODUCER_SNAPSHOT_FILE,
                                      self._producers.snapshot(self._next_offset))
        except OSError as exc:
            log.warning("partition %s: producer state snapshot not written (%s); the next "
                        "start reads it from the log", self.directory, exc)

    def _rebuild_producer_state(self) -> None:
        """After an unclean start: the newest roll snapshot that still matches the log, then
        the batch headers after it (every header of the log when none does)."""
        self._producers.clear()
        start = self._load_roll_snapshot()
        for segment in self._segments:
            if segment.base_offset < start:
                continue
            for item in segment.iter_headers(0):
                if item.header.producer_id >= 0:
                    self._producers.update(item.header, item.header.base_offset)

    def _roll_snapshots(self) -> list[int]:
        """Offsets of the roll snapshots on disk, newest first."""
        offsets = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.directory):
                offset = parse_producer_roll_snapshot(entry.name)
                if offset is not None:
                    offsets.append(offset)
        return sorted(offsets, reverse=True)

    def _load_roll_snapshot(self) -> int:
        """Load the newest usable roll snapshot; returns its offset (0: none was usable).

        Usable: taken at the base of a segment that is still here, intact, and with nothing
        below it cut or quarantined by this start's recovery (it may count batches that are
        gone). Snapshots past the log end are stale (the log was cut below them): removed.
        """
        cut = min((event.segment_base_offset for event in self.recovery.events), default=None)
        bases = set(self._bases)
        for offset in self._roll_snapshots():
            path = self.directory / producer_roll_snapshot_name(offset)
            if offset > self._next_offset:
                with contextlib.suppress(OSError):
                    self._fileio.unlink(path)
                continue
            if offset not in bases or (cut is not None and cut < offset):
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            loaded = ProducerStateManager.from_snapshot(data, offset)
            if loaded is not None:
                self._producers = loaded
                return offset
        return 0

    def _write_roll_snapshot(self, offset: int) -> None:
        """The producer state as of the roll at ``offset``, for the next unclean start; the
        two newest are kept. Only a shortcut: a failure costs that start a longer read."""
        path = self.directory / producer_roll_snapshot_name(offset)
        try:
            self._fileio.write_atomic(path, self._producers.snapshot(offset))
        except OSError as exc:
            with contextlib.suppress(OSError):  # never leave an older state under this name
                self._fileio.unlink(path)
            log.warning("partition %s: producer state not snapshotted at the roll to %d "
                        "(%s); an unclean start reads more batch headers", self.directory,
                        offset, exc)
            return
        for older in self._roll_snapshots()[2:]:
            with contextlib.suppress(OSError):
                self._fileio.unlink(self.directory / producer_roll_snapshot_name(older))

    def apply_retention(self) -> int:
        """Delete whole sealed segments past ``retention.ms`` / ``retention.bytes``."""
        if not self.config.delete:
            self._finish_pending_deletes()
            return 0
        now_ms = self._clock.now_ms()
        removed: list[LogSegment] = []
        with self._lock:
            segments = self._segments
            total = sum(s.size for s in segments)
            keep_from = 0
            for segment in segments[:-1]:
                expired = (
                    self.config.retention_ms >= 0
                    and segment.largest_timestamp >= 0
                    and now_ms - segment.largest_timestamp > self.config.retention_ms
                )
                oversize = (
                    self.config.retention_bytes >= 0
                    and total - segment.size >= self.config.retention_bytes
                )
                if not (expired or oversize):
                    break
                total -= segment.size
                keep_from += 1
                removed.append(segment)
            if removed:
                self._segments = segments[keep_from:]
                self._bases = self._bases[keep_from:]
                self._log_start_offset = self._compute_log_start_offset()
        due = self._clock.monotonic() + 30.0
        for segment in removed:
            log.info("retention deletes segment %s", segment.log.path)
            self._pending_deletes.append(_PendingDelete(segment, due))
        self._finish_pending_deletes()
        return len(removed)

    def _finish_pending_deletes(self) -> None:
        now = self._clock.monotonic()
        still: list[_PendingDelete] = []
        for pending in self._pending_deletes:
            if pending.due_monotonic > now:
                still.append(pending)
            elif pending.unlink:
                pending.segment.delete_files(self._fileio)
            else:
                pending.segment.close()
        deleted = len(self._pending_deletes) - len(still)
        self._pending_deletes = still
        if deleted:
            self._fileio.fsync_dir(self.directory)

    def segments(self) -> list[LogSegment]:
        """A snapshot of the segment list (oldest first)."""
        return list(self._segments)

    def replace_segments(
        self,
        old: list[LogSegment],
        new: list[LogSegment] | Callable[[], list[LogSegment]],
    ) -> None:
        """Swap cleaned segments in for ``old`` (compaction); ``old`` must be a sealed run.

        ``new`` may be a function that moves the new files into place and opens them: it runs
        under the lock once ``old`` is known to be current, so retention cannot drop ``old``
        in between. If it fails the partition goes read-only; the next open finishes the
        swap. Old segments are closed 30 s later (readers hold them); their files are then
        unlinked unless a new segment took their names.

        Raises:
            ValueError: ``old`` is no longer a run of the current segments, or the partition
                was closed (its directory may already hold another topic's files).
            StorageError: ``new`` failed at a file operation.
        """
        with self._lock:
            current = self._segments
            start = current.index(old[0])
            if current[start : start + len(old)] != old or self._closed:
                raise ValueError("segments changed (or the partition closed) during compaction")
            if callable(new):
                try:
                    new = new()
                except OSError as exc:
                    self._fail_read_only(f"compaction swap failed: {exc}")
                    raise self._storage_error("swap segments in", self.directory, exc) from exc
            self._segments = [*current[:start], *new, *current[start + len(old) :]]
            self._bases = [s.base_offset for s in self._segments]
            self._log_start_offset = self._compute_log_start_offset()
        due = self._clock.monotonic() + 30.0
        reused = {s.base_offset for s in new}
        for segment in old:
            unlink = segment.base_offset not in reused
            self._pending_deletes.append(_PendingDelete(segment, due, unlink))

    def delete(self) -> None:
        """Remove the partition's files (topic deletion)."""
        self.abandon()
        for path in sorted(self.directory.rglob("*"), reverse=True):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
        self.directory.rmdir()


def _rebased(header: BatchHeader, base_offset: int, log_append_time: int) -> BatchHeader:
    """The header as stored: new base offset and, for LogAppendTime, the broker's timestamp.

    Built field by field: ``dataclasses.replace`` took 6 of the 10 microseconds of a small
    append (it inspects the fields on every call).
    """
    h = header
    max_timestamp, attributes = h.max_timestamp, h.attributes
    if log_append_time >= 0:
        max_timestamp, attributes = log_append_time, attributes | 0x08
    return BatchHeader(
        base_offset, h.batch_length, h.partition_leader_epoch, h.magic, h.crc, attributes,
        h.last_offset_delta, h.base_timestamp, max_timestamp, h.producer_id,
        h.producer_epoch, h.base_sequence, h.record_count,
    )


def _list_segments(directory: Path, fileio: FileIO) -> list[int]:
    """Base offsets of the ``.log`` files; leftovers of interrupted work are removed first."""
    finish_interrupted_swaps(directory, fileio)  # before .swap leftovers are removed below
    bases: set[int] = set()
    derived: list[tuple[int, Path]] = []
    for entry in os.scandir(directory):
        name = entry.name
        if name.endswith((TEMP_SUFFIX, DELETED_SUFFIX, SWAP_SUFFIX, CLEANED_SUFFIX)):
            fileio.unlink(Path(entry.path))
            continue
        base = parse_base_offset(name)
        if base is None:
            continue
        if name.endswith(LOG_SUFFIX):
            bases.add(base)
        elif name.endswith((INDEX_SUFFIX, TIMEINDEX_SUFFIX)):
            derived.append((base, Path(entry.path)))
    for base, path in derived:
        if base not in bases:
            fileio.unlink(path)  # an index without its log is derived data with nothing to derive
    return sorted(bases)


def _read_checkpoint(directory: Path) -> int:
    """The recovery point; anything unreadable means 'scan everything' (slow but safe)."""
    try:
        lines = (directory / RECOVERY_CHECKPOINT_FILE).read_text().split()
        if len(lines) == 2 and lines[0] == "1":
            value = int(lines[1])
            if value >= 0:
                return value
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return 0
