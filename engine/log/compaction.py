"""Log compaction (``cleanup.policy=compact``): keep the latest record per key.

A pass cleans a run of sealed segments from the start of the log. Pass 1 maps each key of
the *dirty* segments (those not cleaned yet) to its latest offset. Pass 2 rewrites the run,
group by group (consecutive segments that fit one segment, so small cleaned segments merge),
keeping a record when no later offset of its key is mapped. Offsets, timestamps, keys, values,
headers and each batch's producer id, epoch, base sequence, offset range and codec are kept:
offsets never change, gaps are left where records went.

Rules:
- the active segment, and sealed segments from the first one whose largest timestamp is within
  ``min.compaction.lag.ms`` of now, are never cleaned;
- tombstones follow Kafka's rule since KIP-534 (3.1): the first pass that keeps a tombstone
  stamps its batch with a delete horizon, ``now + delete.retention.ms`` (attribute bit 6 set,
  baseTimestamp holds the horizon, record timestamp deltas are relative to it); a pass after
  the horizon removes it. That pass also removed every older record of the key, so a reader
  who saw one of them still finds the tombstone if it finishes within ``delete.retention.ms``.
  Record timestamps would not do: producers set them;
- keyless records are kept (Kafka refuses them at produce time; Moldau's append path does not,
  so dropping them here would silently delete data); control batches are kept whole;
- a batch is dropped when none of its records is kept, except (kept with no records): the
  log's first batch, so compaction never moves the log start offset (as in Kafka); the log's
  last batch, so a reader in a trailing gap still finds a batch spanning it; and the last five
  batches of each producer id, so idempotent-producer state, rebuilt from batch headers on
  open, is the same after compaction.

Swap protocol for a group of segments ``S0..Sk`` (base offsets ``b0 < .. < bk``) cleaned into
one segment named ``b0``:

1. write ``b0.log.cleaned`` with its ``.index.cleaned`` and ``.timeindex.cleaned``, fsync them;
2. rename them to ``.swap``, the log last, for every group; fsync the directory;
3. group by group, oldest first, under the partition lock (``replace_segments``): unlink
   ``b0.log`` (the group's commit point), then ``b1.log .. bk.log`` and every old index, fsync
   the directory; rename the index swaps and then the log swap to final names, fsync the
   directory; open the new segment and swap it in. A group left with no batch has no swap:
   step 3 only unlinks its files. Old segments keep open descriptors for readers and are
   closed 30 s later.

Crash states, resolved on open by :func:`finish_interrupted_swaps` before segments are listed:

- ``*.cleaned``: never complete; deleted (by ``_list_segments``); old segments are intact;
- ``b0.log.swap`` with ``b0.log`` present: the commit point was not reached; the swap files
  are deleted (old state). Recovery's quarantine rewrite (``recovery.py``) also leaves this
  state, never removing ``b0.log``, so rolling back is right for it too;
- ``b0.log.swap`` without ``b0.log``: committed. Every ``.log`` whose base offset lies in
  ``(b0, end of the swap's batches)`` is removed (the swap holds what was kept of them), the
  indexes of ``b0`` are removed so they are rebuilt and the segment CRC-scanned, the swap is
  renamed to ``b0.log`` (new state). Segments at or past that end stay: they are old, later;
- index swaps without a log swap: derived data, deleted.

Groups commit oldest first, so a crash leaves older groups new and newer groups old. That mix
never brings back a deleted key: a record goes only when a later record of its key, or its own
expired tombstone, is kept, and everything after an installed group is still there.

Concurrency: one pass at a time per :class:`LogCleaner` (its lock). Pass 1 and 2 read sealed
segments with ``pread`` and take no partition lock, so appends and reads go on; step 3 holds
the partition lock for two directory fsyncs and a few renames per group. Readers use their
snapshot of the segment list; the files they hold stay readable through open descriptors.
Memory: the offset map holds at most ``max_map_keys`` keys (or one segment's, if more), plus
one batch and one read chunk.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import struct
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.clock import Clock
from engine.config import TopicConfig
from engine.errors import CorruptLogError, StorageError
from engine.log.fileio import FileIO
from engine.log.files import (
    CLEANED_SUFFIX,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    SEGMENT_SUFFIXES,
    SWAP_SUFFIX,
    TIMEINDEX_SUFFIX,
    parse_base_offset,
    segment_file_name,
    segment_path,
)
from engine.log.offset_index import OffsetIndex
from engine.log.producer_state import BATCHES_PER_PRODUCER
from engine.log.segment import LogSegment, header_from_prefix
from engine.log.time_index import TimeIndex
from engine.records.batch import (
    LOG_APPEND_TIME,
    LOG_OVERHEAD,
    MAGIC,
    RECORD_BATCH_OVERHEAD,
    BatchHeader,
    Codec,
    Record,
    decode_batch,
    parse_header,
    verify_crc,
)
from engine.records.compression import compress
from engine.records.crc import crc32c
from engine.records.varint import NULL_VARINT, encode_varint, encode_varlong

if TYPE_CHECKING:
    from engine.log.partition_log import PartitionLog

__all__ = ["DELETE_HORIZON_FLAG", "CleanResult", "LogCleaner", "finish_interrupted_swaps"]

log = logging.getLogger(__name__)

DELETE_HORIZON_FLAG = 0x40
"""Batch attribute bit 6 (KIP-534): baseTimestamp holds the tombstones' delete horizon."""

_READ_CHUNK_BYTES = 8 << 20
_MAX_OFFSET_SPAN = 2**31  # a segment's offsets lie in [base, base + 2**31)
_ANY_BATCH_BYTES = 2**31 + LOG_OVERHEAD
_PREFIX = struct.Struct(">qiibI")  # baseOffset, batchLength, leaderEpoch, magic, crc
_COVERED = struct.Struct(">hiqqqhii")  # attributes .. recordsCount, under the CRC
_TIME_ENTRY_BYTES = 12


@dataclass(frozen=True, slots=True)
class CleanResult:
    """What one pass did; ``cleaned`` is False when there was nothing worth doing."""

    cleaned: bool
    segments_before: int = 0
    segments_after: int = 0
    records_read: int = 0
    records_kept: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    end_offset: int = -1


@dataclass(slots=True)
class _PartitionState:
    """In memory only: after a restart the first pass treats the whole log as dirty."""

    first_dirty_offset: int = 0
    next_horizon_ms: int | None = None


@dataclass(slots=True)
class _Group:
    segments: list[LogSegment]
    changed: bool = False
    empty: bool = True
    new_size: int = 0
    committed: bool = False  # b0.log is gone: only its swap holds the group now
    installed: bool = False

    @property
    def base_offset(self) -> int:
        return self.segments[0].base_offset


@dataclass(slots=True)
class _Pass:
    """Inputs and tallies of one pass 2."""

    offset_map: dict[bytes, int]
    protected: set[int]
    now_ms: int
    delete_retention_ms: int
    max_batch_bytes: int
    records_read: int = 0
    records_kept: int = 0
    next_horizon_ms: int | None = None


class _ClosingError(Exception):
    """The cleaner is closing; the pass is abandoned before its commit point."""


class LogCleaner:
    """Compacts partitions, one pass at a time, on its own thread or the caller's.

    Args:
        fileio: the file seam the partitions were opened with.
        clock: wall clock for ``min.compaction.lag.ms`` and delete horizons.
        max_map_keys: bound on the offset map of one pass.
        min_dirty_ratio: skip a partition until the dirty share of its cleanable bytes
            reaches this (Kafka's ``min.cleanable.dirty.ratio``), so a log is not rewritten
            for every new segment; a due delete horizon always triggers a pass.
    """

    def __init__(
        self, fileio: FileIO, clock: Clock, *, max_map_keys: int = 1_000_000,
        min_dirty_ratio: float = 0.5,
    ) -> None:
        self._fileio = fileio
        self._clock = clock
        self._max_map_keys = max_map_keys
        self._min_dirty_ratio = min_dirty_ratio
        self._lock = threading.Lock()
        self._states: weakref.WeakKeyDictionary[PartitionLog, _PartitionState] = (
            weakref.WeakKeyDictionary()
        )
        self._queue: collections.deque[PartitionLog] = collections.deque()
        self._wakeup = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ scheduling

    def start(self) -> None:
        """Run submitted partitions on a background thread from now on."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="moldau-cleaner", daemon=True)
            self._thread.start()

    def submit(self, partitions: Iterable[PartitionLog], *, wait: bool = False) -> None:
        """Clean ``partitions``: queued for the thread, or now when ``wait`` or not started."""
        if wait or self._thread is None:
            for partition in partitions:
                self._clean_logged(partition)
            return
        with self._wakeup:
            for partition in partitions:
                if partition not in self._queue:
                    self._queue.append(partition)
            self._wakeup.notify()

    def close(self) -> None:
        """Stop the thread; a pass in progress is abandoned before its commit point."""
        self._stop.set()
        with self._wakeup:
            self._queue.clear()
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._wakeup:
                while not self._queue and not self._stop.is_set():
                    self._wakeup.wait()
                if self._stop.is_set():
                    return
                partition = self._queue.popleft()
            self._clean_logged(partition)

    def _clean_logged(self, partition: PartitionLog) -> None:
        try:
            self.clean(partition)
        except Exception:  # one partition's failure must not stop the others
            log.exception("compaction of %s failed", partition.directory)

    # ------------------------------------------------------------------ one pass

    def clean(self, partition: PartitionLog) -> CleanResult:
        """One pass over ``partition`` if it has enough dirty data or a due delete horizon.

        Raises:
            StorageError: a file operation failed. Before the commit point nothing changed;
                after it the partition is read-only and its next open finishes the swap.
            CorruptLogError: a sealed batch failed its checks; nothing was changed.
        """
        with self._lock:
            config = partition.config
            if not config.compact or self._stop.is_set():
                return CleanResult(cleaned=False)
            state = self._states.setdefault(partition, _PartitionState())
            snapshot = partition.segments()
            now_ms = self._clock.now_ms()
            cleanable = _cleanable_prefix(snapshot[:-1], config.min_compaction_lag_ms, now_ms)
            clean_count = sum(1 for s in cleanable if s.base_offset < state.first_dirty_offset)
            dirty = cleanable[clean_count:]
            if not self._worth_cleaning(cleanable, dirty, state, now_ms):
                return CleanResult(cleaned=False)
            try:
                offset_map, mapped = self._build_offset_map(dirty, config)
                run = cleanable[: clean_count + mapped]
                work = _Pass(
                    offset_map,
                    _protected_batches(snapshot),
                    now_ms,
                    config.delete_retention_ms,
                    config.max_message_bytes + LOG_OVERHEAD,
                )
                result, complete = self._clean_run(partition, run, work)
            except _ClosingError:
                return CleanResult(cleaned=False)
            except OSError as exc:  # replace_segments reports failures of the swap itself
                raise StorageError(
                    f"compaction of {partition.directory} failed: {exc}",
                    str(partition.directory),
                    exc.errno,
                ) from exc
            if complete:  # otherwise the next pass maps the same dirty segments again
                state.first_dirty_offset = snapshot[len(run)].base_offset
                state.next_horizon_ms = work.next_horizon_ms
            return result

    def _worth_cleaning(
        self, cleanable: list[LogSegment], dirty: list[LogSegment], state: _PartitionState,
        now_ms: int,
    ) -> bool:
        if not cleanable:
            return False
        if state.next_horizon_ms is not None and now_ms >= state.next_horizon_ms:
            return True
        total = sum(s.size for s in cleanable)
        dirty_bytes = sum(s.size for s in dirty)
        return dirty_bytes > 0 and dirty_bytes >= self._min_dirty_ratio * total

    def _build_offset_map(
        self, dirty: list[LogSegment], config: TopicConfig
    ) -> tuple[dict[bytes, int], int]:
        """Pass 1: latest offset per key over a prefix of ``dirty``, and that prefix's length.

        Each segment is mapped on its own first, so one that would take the map past
        ``max_map_keys`` ends the prefix instead (except the first: a pass must progress).
        """
        limit = config.max_message_bytes + LOG_OVERHEAD
        offset_map: dict[bytes, int] = {}
        for count, segment in enumerate(dirty):
            keys: dict[bytes, int] = {}
            for header, buf, position in _iter_batches(segment, limit, _READ_CHUNK_BYTES):
                if self._stop.is_set():
                    raise _ClosingError
                if header.is_control:
                    continue
                _, records = decode_batch(buf, position, max_batch_bytes=limit)
                keys.update((r.key, r.offset) for r in records if r.key is not None)
            added = sum(1 for key in keys if key not in offset_map)
            if count and len(offset_map) + added > self._max_map_keys:
                return offset_map, count
            offset_map.update(keys)
        return offset_map, len(dirty)

    def _clean_run(
        self, partition: PartitionLog, run: list[LogSegment], work: _Pass
    ) -> tuple[CleanResult, bool]:
        """Pass 2 and the swap (steps 1-3 of the module docstring); True when all of it ran."""
        directory = partition.directory
        config = partition.config
        groups = _group_segments(run, config)
        todo: list[_Group] = []
        complete = False
        try:
            for group in groups:
                self._write_group(directory, group, work, config)
            todo = [g for g in groups if g.changed or len(g.segments) > 1]
            # Retention may have dropped the run's first segments meanwhile; a swap must never
            # exist for them, since its b0.log vanishing would read as a commit on open.
            current = set(map(id, partition.segments()))
            complete = all(id(s) in current for s in run)
            if not complete:
                log.info("compaction of %s abandoned: segments changed", directory)
                todo = []
            self._commit(directory, todo)
            for group in todo:
                install = functools.partial(self._install, directory, group, config)
                try:
                    partition.replace_segments(group.segments, install)
                except ValueError:  # changed since the check above; nothing was touched
                    log.info("compaction of %s stopped: segments changed", directory)
                    complete = False
                    break
                group.installed = True
        finally:
            for group in groups:
                if not group.installed:
                    self._discard(directory, group)
        installed = [g for g in groups if g.installed]
        removed = sum(len(g.segments) for g in installed)
        result = CleanResult(
            cleaned=True,
            segments_before=len(run),
            segments_after=len(run) - removed + sum(1 for g in installed if not g.empty),
            records_read=work.records_read,
            records_kept=work.records_kept,
            bytes_before=sum(s.size for s in run),
            bytes_after=sum(
                g.new_size if g.installed else sum(s.size for s in g.segments) for g in groups
            ),
            end_offset=run[-1].next_offset if run else -1,
        )
        log.info("compacted %s: %s", directory, result)
        return result, complete

    def _write_group(
        self, directory: Path, group: _Group, work: _Pass, config: TopicConfig
    ) -> None:
        """Step 1: the group's kept batches into ``<b0>.*.cleaned``, fsynced."""
        writer = _create_cleaned(directory, group.base_offset, config, self._fileio)
        try:
            for segment in group.segments:
                for header, buf, position in _iter_batches(
                    segment, work.max_batch_bytes, _READ_CHUNK_BYTES
                ):
                    if self._stop.is_set():
                        raise _ClosingError
                    data, changed = _filter_batch(work, header, buf, position)
                    group.changed |= changed
                    if data is None:
                        continue
                    stored = parse_header(data, 0, _ANY_BATCH_BYTES) if changed else header
                    writer.append(data, stored)
                    group.empty = False
            group.new_size = writer.size
            writer.seal()
            writer.flush()
        finally:
            writer.close()

    def _commit(self, directory: Path, todo: list[_Group]) -> None:
        """Step 2: each group to install becomes a ``.swap`` (the log's rename last)."""
        for group in todo:
            if group.empty:
                self._discard(directory, group)
                continue
            for suffix in (INDEX_SUFFIX, TIMEINDEX_SUFFIX, LOG_SUFFIX):
                name = segment_file_name(group.base_offset, suffix)
                self._fileio.rename(
                    directory / (name + CLEANED_SUFFIX), directory / (name + SWAP_SUFFIX)
                )
        self._fileio.fsync_dir(directory)

    def _install(self, directory: Path, group: _Group, config: TopicConfig) -> list[LogSegment]:
        """Step 3, under the partition lock: replace the group's files, open the new segment."""
        fileio = self._fileio
        group.committed = True  # from the first unlink attempt on, the swap must be kept
        for segment in group.segments:  # b0.log first: the commit point
            fileio.unlink(segment_path(directory, segment.base_offset, LOG_SUFFIX))
        for segment in group.segments:
            fileio.unlink(segment_path(directory, segment.base_offset, INDEX_SUFFIX))
            fileio.unlink(segment_path(directory, segment.base_offset, TIMEINDEX_SUFFIX))
        fileio.fsync_dir(directory)
        if group.empty:
            return []
        for suffix in (INDEX_SUFFIX, TIMEINDEX_SUFFIX, LOG_SUFFIX):
            final = segment_path(directory, group.base_offset, suffix)
            fileio.rename(final.with_name(final.name + SWAP_SUFFIX), final)
        fileio.fsync_dir(directory)
        segment = LogSegment.open(
            directory, group.base_offset, config, fileio, writable=False, rebuild=False
        )
        return [segment]

    def _discard(self, directory: Path, group: _Group) -> None:
        """Remove a group's uninstalled files; a swap past its commit point is left to open."""
        for suffix in SEGMENT_SUFFIXES:
            name = segment_file_name(group.base_offset, suffix)
            self._fileio.unlink(directory / (name + CLEANED_SUFFIX))
            if not group.committed:
                self._fileio.unlink(directory / (name + SWAP_SUFFIX))


# ---------------------------------------------------------------------------- planning


def _cleanable_prefix(sealed: list[LogSegment], lag_ms: int, now_ms: int) -> list[LogSegment]:
    """Sealed segments up to the first holding a record newer than ``min.compaction.lag.ms``."""
    for index, segment in enumerate(sealed):
        if lag_ms > 0 and now_ms - segment.largest_timestamp < lag_ms:
            return sealed[:index]
    return sealed


def _group_segments(run: list[LogSegment], config: TopicConfig) -> list[_Group]:
    """Consecutive segments whose sum fits one segment: its bytes, offsets and indexes."""
    groups: list[_Group] = []
    current: list[LogSegment] = []
    for segment in run:
        if current and not _fits([*current, segment], config):
            groups.append(_Group(current))
            current = []
        current.append(segment)
    if current:
        groups.append(_Group(current))
    return groups


def _fits(segments: list[LogSegment], config: TopicConfig) -> bool:
    total = sum(s.size for s in segments)
    if total > config.segment_bytes:
        return False
    if segments[-1].next_offset - segments[0].base_offset > _MAX_OFFSET_SPAN:
        return False
    # An index entry follows more than index.interval.bytes of log, and the cleaned segment
    # has no more batches than its sources, so either bound caps the entries it can need.
    entries = sum(s.offset_index.entries + 1 for s in segments)
    if config.index_interval_bytes > 0:
        entries = min(entries, total // config.index_interval_bytes + 1)
    return (entries + 2) * _TIME_ENTRY_BYTES <= config.segment_index_bytes


def _protected_batches(segments: list[LogSegment]) -> set[int]:
    """Base offsets of batches kept even when empty: the log's first and last, and each
    producer's last five."""
    protected: set[int] = set()
    recent: dict[int, collections.deque[int]] = {}
    last = -1
    for segment in segments:
        for item in segment.iter_headers(0):
            header = item.header
            last = header.base_offset
            if not protected:
                protected.add(last)
            if header.producer_id >= 0:
                if header.producer_id not in recent:
                    recent[header.producer_id] = collections.deque(maxlen=BATCHES_PER_PRODUCER)
                recent[header.producer_id].append(last)
    protected.add(last)
    for batches in recent.values():
        protected.update(batches)
    return protected


# ---------------------------------------------------------------------------- batches


def _iter_batches(
    segment: LogSegment, max_batch_bytes: int, chunk_bytes: int
) -> Iterator[tuple[BatchHeader, bytes, int]]:
    """Every batch of a sealed segment as ``(header, buffer, position in buffer)``.

    Reads large chunks rather than one ``pread`` per batch; a batch larger than a chunk is
    read on its own. Anything that is not a whole batch raises CorruptLogError: compaction
    never drops or copies bytes it cannot account for.
    """
    path = str(segment.log.path)
    end = segment.size
    position = 0
    while position < end:
        buf = segment.log.pread(min(chunk_bytes, end - position), position)
        offset = 0
        while offset + RECORD_BATCH_OVERHEAD <= len(buf):
            header = header_from_prefix(buf, max_batch_bytes, offset)
            if header is None:
                raise CorruptLogError(path, position + offset, "bad batch header")
            if offset + header.size > len(buf):
                if offset:
                    break
                if position + header.size > end:
                    raise CorruptLogError(path, position, "partial batch at the segment's end")
                buf = segment.log.pread(header.size, position)  # a batch larger than a chunk
                if len(buf) < header.size:
                    raise CorruptLogError(path, position, "short read of a sealed segment")
                continue
            yield header, buf, offset
            offset += header.size
        if offset == 0:
            raise CorruptLogError(path, position, "partial batch at the segment's end")
        position += offset


def _filter_batch(
    work: _Pass, header: BatchHeader, buf: bytes, position: int
) -> tuple[bytes | None, bool]:
    """The batch as stored after cleaning (None: dropped) and whether it differs."""
    if header.is_control:
        verify_crc(buf, position, header)
        return buf[position : position + header.size], False
    _, records = decode_batch(buf, position, max_batch_bytes=work.max_batch_bytes)
    horizon = header.base_timestamp if header.attributes & DELETE_HORIZON_FLAG else None
    expired = horizon is not None and work.now_ms >= horizon
    latest = work.offset_map.get
    kept = [
        r
        for r in records
        if r.key is None or (latest(r.key, -1) <= r.offset and not (expired and r.value is None))
    ]
    tombstones = any(r.value is None and r.key is not None for r in kept)
    work.records_read += len(records)
    work.records_kept += len(kept)
    if tombstones:
        if horizon is None:
            horizon = work.now_ms + work.delete_retention_ms
        if work.next_horizon_ms is None or horizon < work.next_horizon_ms:
            work.next_horizon_ms = horizon
    if len(kept) == len(records) and (not tombstones or header.attributes & DELETE_HORIZON_FLAG):
        return buf[position : position + header.size], False
    if not kept and header.base_offset not in work.protected:
        return None, True
    return _rebuild_batch(header, kept, horizon if tombstones else None), True


def _rebuild_batch(header: BatchHeader, records: list[Record], horizon_ms: int | None) -> bytes:
    """A batch with ``header``'s identity (offsets, producer, sequence, codec) and ``records``.

    ``encode_batch`` cannot serve: it numbers offsets by position and takes baseTimestamp from
    the first record, while a cleaned batch keeps the original offset deltas and may store a
    delete horizon instead. lastOffsetDelta stays, so the batch spans the offsets it always
    did and idempotent-producer sequences still line up with it.
    """
    append_time = header.timestamp_type == LOG_APPEND_TIME
    max_ts = header.max_timestamp
    if records and not append_time:
        max_ts = max(r.timestamp for r in records)
    attributes = header.attributes & ~DELETE_HORIZON_FLAG
    if horizon_ms is not None:
        attributes |= DELETE_HORIZON_FLAG
        base_ts = horizon_ms
    else:
        base_ts = records[0].timestamp if records else max_ts
    blob = _encode_records(records, header.base_offset, base_ts)
    codec = header.codec
    payload = blob if codec == Codec.NONE else compress(codec, blob)
    producer = (header.producer_id, header.producer_epoch, header.base_sequence)
    covered = _COVERED.pack(
        attributes, header.last_offset_delta, base_ts, max_ts, *producer, len(records)
    )
    crc = crc32c(payload, crc32c(covered))
    length = RECORD_BATCH_OVERHEAD - LOG_OVERHEAD + len(payload)
    prefix = _PREFIX.pack(header.base_offset, length, header.partition_leader_epoch, MAGIC, crc)
    return b"".join((prefix, covered, payload))


def _encode_records(records: list[Record], base_offset: int, base_ts: int) -> bytes:
    """The records section (layout in ``engine.records.record``) with given offsets."""
    parts: list[bytes] = []
    for record in records:
        body = [
            b"\x00",
            encode_varlong(record.timestamp - base_ts),
            encode_varint(record.offset - base_offset),
        ]
        for data in (record.key, record.value):
            body.extend((NULL_VARINT,) if data is None else (encode_varint(len(data)), data))
        body.append(encode_varint(len(record.headers)))
        for item in record.headers:
            key = item.key.encode()
            body += (encode_varint(len(key)), key)
            value = item.value
            body.extend((NULL_VARINT,) if value is None else (encode_varint(len(value)), value))
        encoded = b"".join(body)
        parts += (encode_varint(len(encoded)), encoded)
    return b"".join(parts)


def _create_cleaned(
    directory: Path, base_offset: int, config: TopicConfig, fileio: FileIO
) -> LogSegment:
    """An empty writable segment whose three files carry the ``.cleaned`` suffix."""
    paths = {s: directory / (segment_file_name(base_offset, s) + CLEANED_SUFFIX)
             for s in SEGMENT_SUFFIXES}
    for path in paths.values():
        fileio.unlink(path)
    size = config.segment_index_bytes
    log_file = fileio.open_log(paths[LOG_SUFFIX], create=True)
    try:
        offsets = OffsetIndex.open(paths[INDEX_SUFFIX], base_offset, size, True, entries=0)
        times = TimeIndex.open(paths[TIMEINDEX_SUFFIX], base_offset, size, True, entries=0)
    except BaseException:
        log_file.close()
        raise
    return LogSegment(directory, base_offset, log_file, offsets, times, config, 0)


# ---------------------------------------------------------------------------- recovery


def finish_interrupted_swaps(directory: Path, fileio: FileIO) -> None:
    """Roll each interrupted swap forward or back (module docstring, "Crash states").

    Runs when a partition opens, before its segments are listed. Removals come before the
    rename, each made durable first, so a crash in here leaves a state this resolves again.
    """
    names = set(os.listdir(directory))
    swap_tail = LOG_SUFFIX + SWAP_SUFFIX
    for name in sorted(n for n in names if n.endswith(swap_tail)):
        base = parse_base_offset(name)
        if base is None:
            continue
        swap = directory / name
        doomed = [directory / (segment_file_name(base, s) + SWAP_SUFFIX) for s in SEGMENT_SUFFIXES]
        if segment_file_name(base, LOG_SUFFIX) in names:
            log.warning("%s: swap before its commit point, rolled back", swap)
            for path in doomed:
                fileio.unlink(path)
            fileio.fsync_dir(directory)
            continue
        end = _end_offset(swap, fileio, base)
        covered = _covered_segments(names, base, end)
        log.warning("%s: committed swap completed, replacing segments %s", swap, covered)
        doomed = [path for path in doomed if path != swap]
        for other in [*covered, base]:
            doomed += [segment_path(directory, other, s) for s in SEGMENT_SUFFIXES]
        for path in doomed:
            fileio.unlink(path)
            names.discard(path.name)
        fileio.fsync_dir(directory)
        fileio.rename(swap, segment_path(directory, base, LOG_SUFFIX))
        fileio.fsync_dir(directory)


def _covered_segments(names: set[str], base: int, end: int) -> list[int]:
    """Bases of ``.log`` files in ``(base, end)``: what a committed swap holds the rest of."""
    covered = []
    for name in names:
        other = parse_base_offset(name)
        if other is not None and name.endswith(LOG_SUFFIX) and base < other < end:
            covered.append(other)
    return sorted(covered)


def _end_offset(path: Path, fileio: FileIO, base_offset: int) -> int:
    """The offset after the last whole batch in ``path`` (``base_offset`` if none)."""
    file = fileio.open_log(path, create=False)
    try:
        end = base_offset
        position = 0
        size = file.size()
        while position + RECORD_BATCH_OVERHEAD <= size:
            raw = file.pread(RECORD_BATCH_OVERHEAD, position)
            header = header_from_prefix(raw, _ANY_BATCH_BYTES)
            if header is None or position + header.size > size:
                break
            end = header.next_offset
            position += header.size
        return end
    finally:
        file.close()
