"""Append, read, roll, reopen, recovery and producer dedup of one partition."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.errors import (
    CorruptLogError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    ProducerFencedError,
)
from engine.log.files import (
    CLEAN_SHUTDOWN_FILE,
    PRODUCER_ROLL_SUFFIX,
    PRODUCER_SNAPSHOT_FILE,
    RECOVERY_CHECKPOINT_FILE,
    producer_roll_snapshot_name,
)
from engine.log.partition_log import PartitionLog, _rebased
from engine.log.segment import LogSegment
from engine.records.batch import BatchHeader, decode_batches
from engine.records.errors import CorruptBatchError, InvalidBatchError

from .conftest import make_batch

Opener = Callable[..., PartitionLog]


def read_all(log: PartitionLog, start: int = 0) -> list[tuple[int, bytes | None]]:
    out: list[tuple[int, bytes | None]] = []
    offset = max(start, log.log_start_offset)
    while offset < log.high_watermark:
        result = log.read(offset, 64 * 1024)
        records = [r for r in decode_batches(result.data) if r.offset >= offset]
        assert records, f"no progress at offset {offset}"
        out.extend((r.offset, r.value) for r in records)
        offset = records[-1].offset + 1
    return out


def test_empty_log(open_log: Opener) -> None:
    log = open_log()
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (0, 0, 0)
    assert log.read(0, 1000).data == b""
    with pytest.raises(OffsetOutOfRangeError):
        log.read(1, 1000)
    log.close()


def test_append_assigns_offsets_and_reads_back(open_log: Opener) -> None:
    log = open_log()
    first = log.append(make_batch(10, tag=1))
    second = log.append(make_batch(5, tag=2))
    assert (first.base_offset, first.last_offset) == (0, 9)
    assert (second.base_offset, second.last_offset) == (10, 14)
    assert log.high_watermark == 15
    records = read_all(log)
    assert [o for o, _ in records] == list(range(15))
    assert records[12][1] is not None
    assert records[12][1].startswith(b"2:2:")
    # reading from the middle of a batch returns the whole batch containing the offset
    middle = list(decode_batches(log.read(12, 10).data))
    assert middle[0].offset == 10
    log.close()


def test_read_respects_max_bytes_but_always_returns_one_batch(open_log: Opener) -> None:
    log = open_log()
    for tag in range(5):
        log.append(make_batch(10, tag=tag))
    one = log.read(0, 1)
    assert [r.offset for r in decode_batches(one.data)] == list(range(10))
    all_ = log.read(0, 10**6)
    assert len(list(decode_batches(all_.data))) == 50
    log.close()


def pread_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the size of every ``os.pread`` (the partition's file reads)."""
    asked: list[int] = []
    real_pread = os.pread

    def spy(fd: int, size: int, position: int) -> bytes:
        asked.append(size)
        return real_pread(fd, size, position)

    monkeypatch.setattr(os, "pread", spy)
    return asked


def test_a_read_at_the_tail_asks_the_file_only_for_the_bytes_it_holds(
    open_log: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.pread allocates the size asked for before reading fewer bytes: a consumer at the
    tail with 512 KiB of credit must not cost a 512 KiB allocation per push."""
    log = open_log()
    for tag in range(3):
        log.append(make_batch(4, tag=tag))
    asked = pread_sizes(monkeypatch)
    whole = log.read(0, 512 * 1024)
    tail = log.read(8, 512 * 1024)
    assert len(list(decode_batches(whole.data))) == 12
    assert [r.offset for r in decode_batches(tail.data)] == [8, 9, 10, 11]
    # (the index lookups read single batch headers; no ask reaches past the file's end)
    assert max(asked) == len(whole.data) < 512 * 1024
    assert len(tail.data) in asked
    log.close()


def test_a_read_of_the_newest_batch_reads_only_its_bytes(
    open_log: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer at the tail asks for the batch just appended: its position is known, no
    walk of header reads from the sparse index entry (one pread per batch header)."""
    log = open_log()
    for tag in range(6):
        log.append(make_batch(4, tag=tag))
    asked = pread_sizes(monkeypatch)
    newest = log.read(21, 512 * 1024)  # inside the last batch (20..23)
    assert [r.offset for r in decode_batches(newest.data)] == [20, 21, 22, 23]
    assert asked == [len(newest.data)]
    asked.clear()
    older = log.read(9, 512 * 1024)  # an older batch: found by the index walk, as before
    assert [r.offset for r in decode_batches(older.data)][:4] == [8, 9, 10, 11]
    assert len(asked) > 1
    log.close()


def test_a_newest_batch_damaged_on_disk_is_not_served_from_its_remembered_header(
    open_log: Opener,
) -> None:
    log = open_log()
    for tag in range(3):
        log.append(make_batch(4, tag=tag))
    path = next(log.directory.glob("*.log"))
    data = bytearray(path.read_bytes())
    position = log.segments()[-1].size - len(make_batch(4, tag=2))
    data[position:position + 8] = (99).to_bytes(8, "big")  # base offset flipped (outside CRC)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError):
        log.read(8, 512 * 1024)
    log.close()


def test_rejects_bad_batches_and_stores_nothing(open_log: Opener) -> None:
    log = open_log()
    good = bytearray(make_batch(3))
    flipped = bytearray(good)
    flipped[-1] ^= 0x01
    with pytest.raises(CorruptBatchError):
        log.append(bytes(flipped))
    with pytest.raises(InvalidBatchError):
        log.append(bytes(good[:-5]))
    with pytest.raises(InvalidBatchError):
        log.append(b"")
    assert log.log_end_offset == 0
    assert log.append(bytes(good)).base_offset == 0
    log.close()


def test_reopen_after_clean_close(open_log: Opener) -> None:
    log = open_log(segment_bytes=4096)
    for tag in range(20):
        log.append(make_batch(5, tag=tag))
    before = read_all(log)
    segments = log.segment_count
    assert segments > 1
    log.close()
    reopened = open_log(segment_bytes=4096)
    assert reopened.recovery.clean
    assert reopened.segment_count == segments
    assert reopened.log_end_offset == 100
    assert read_all(reopened) == before
    assert reopened.append(make_batch(1)).base_offset == 100
    reopened.close()


def test_unclean_reopen_recovers_everything_fsynced(open_log: Opener) -> None:
    log = open_log(segment_bytes=4096)
    for tag in range(20):
        log.append(make_batch(5, tag=tag))
    before = read_all(log)
    log.abandon()
    reopened = open_log(segment_bytes=4096)
    assert not reopened.recovery.clean
    # nothing damaged: at most the active segment's preallocated zeros were trimmed
    assert {e.kind for e in reopened.recovery.events} <= {"trimmed"}
    assert read_all(reopened) == before
    reopened.close()


def test_torn_tail_is_truncated(open_log: Opener, tmp_path: Path) -> None:
    log = open_log()
    for tag in range(3):
        log.append(make_batch(5, tag=tag))
    path = log.segments()[-1].log.path
    size = log.segments()[-1].size  # the file may be longer: preallocated zeros
    log.abandon()
    with open(path, "r+b") as f:
        f.truncate(size - 7)
    reopened = open_log()
    assert reopened.log_end_offset == 10
    assert [e.kind for e in reopened.recovery.events] == ["truncated"]
    assert reopened.append(make_batch(2)).base_offset == 10
    assert [o for o, _ in read_all(reopened)] == list(range(12))
    reopened.close()


def test_damage_in_the_middle_is_quarantined_not_deleted(open_log: Opener) -> None:
    log = open_log()
    batch_size = len(make_batch(5))
    for tag in range(5):
        log.append(make_batch(5, tag=tag))
    path = log.segments()[-1].log.path
    log.abandon()
    with open(path, "r+b") as f:
        f.seek(batch_size * 2 + 70)  # inside the third batch's records
        f.write(b"\xff\xff\xff")
    reopened = open_log()
    events = [e for e in reopened.recovery.events if e.kind != "trimmed"]
    assert [e.kind for e in events] == ["quarantined"]
    assert events[0].length == batch_size
    assert Path(events[0].quarantine_file).stat().st_size == batch_size
    offsets = [o for o, _ in read_all(reopened)]
    assert offsets == [*range(10), *range(15, 25)]
    assert reopened.append(make_batch(1)).base_offset == 25
    reopened.close()


def test_corrupt_batch_is_never_served(open_log: Opener) -> None:
    log = open_log()
    batch_size = len(make_batch(5))
    for tag in range(3):
        log.append(make_batch(5, tag=tag))
    path = log.segments()[-1].log.path
    with open(path, "r+b") as f:
        f.seek(batch_size + 80)
        f.write(b"\x00\x01\x02")
    with pytest.raises(CorruptLogError):
        log.read(5, 10**6)
    served = log.read(0, 10**6).data  # stops before the damaged batch
    assert [r.offset for r in decode_batches(served)] == list(range(5))
    log.close()


def test_missing_and_garbage_indexes_are_rebuilt(open_log: Opener) -> None:
    log = open_log(segment_bytes=8192, index_interval_bytes=0)
    for tag in range(40):
        log.append(make_batch(3, tag=tag))
    before = read_all(log)
    segments = log.segments()
    log.close()
    os.unlink(segments[0].offset_index.path)
    with open(segments[1].offset_index.path, "r+b") as f:
        f.write(os.urandom(64))
    reopened = open_log(segment_bytes=8192, index_interval_bytes=0)
    assert read_all(reopened) == before
    for offset in (0, 7, 50, 119):
        assert next(iter(decode_batches(reopened.read(offset, 1).data))).offset <= offset
    reopened.close()


def test_idempotent_producer_dedup_gap_and_fencing(open_log: Opener) -> None:
    log = open_log()
    b0 = make_batch(5, producer_id=7, producer_epoch=0, base_sequence=0)
    b1 = make_batch(5, producer_id=7, producer_epoch=0, base_sequence=5)
    assert log.append(b0).base_offset == 0
    assert log.append(b1).base_offset == 5
    dup = log.append(b0)
    assert dup.duplicate
    assert dup.base_offset == 0
    with pytest.raises(OutOfOrderSequenceError):
        log.append(make_batch(5, producer_id=7, producer_epoch=0, base_sequence=20))
    new_epoch = make_batch(2, producer_id=7, producer_epoch=1, base_sequence=0)
    assert log.append(new_epoch).base_offset == 10
    with pytest.raises(ProducerFencedError):
        log.append(make_batch(2, producer_id=7, producer_epoch=0, base_sequence=10))
    assert log.log_end_offset == 12
    log.abandon()
    reopened = open_log()
    # state is rebuilt from the log: the retry after a crash is still a duplicate
    again = reopened.append(make_batch(2, producer_id=7, producer_epoch=1, base_sequence=0))
    assert again.duplicate
    assert again.base_offset == 10
    reopened.close()


def test_clean_start_loads_producer_state_without_reading_the_log(
    open_log: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log()
    for producer in (7, 8):
        for sequence in range(0, 30, 5):
            log.append(make_batch(5, producer_id=producer, producer_epoch=2,
                                  base_sequence=sequence))
    log.close()
    snapshot = log.directory / PRODUCER_SNAPSHOT_FILE
    assert snapshot.exists()
    scans: list[int] = []
    monkeypatch.setattr(PartitionLog, "_rebuild_producer_state",
                        lambda self: scans.append(1))
    reopened = open_log()
    assert scans == []  # loaded from the snapshot, no header read
    assert not snapshot.exists()  # stale from the first append on; rewritten at close
    again = reopened.append(make_batch(5, producer_id=8, producer_epoch=2, base_sequence=25))
    assert (again.duplicate, again.base_offset) == (True, 55)
    with pytest.raises(OutOfOrderSequenceError):
        reopened.append(make_batch(5, producer_id=7, producer_epoch=2, base_sequence=40))
    with pytest.raises(ProducerFencedError):
        reopened.append(make_batch(5, producer_id=7, producer_epoch=1, base_sequence=0))
    reopened.close()


@pytest.mark.parametrize("damage", ["flip", "cut", "stale"])
def test_a_damaged_or_stale_producer_snapshot_is_rebuilt_from_the_log(
    open_log: Opener, damage: str
) -> None:
    log = open_log()
    log.append(make_batch(5, producer_id=7, producer_epoch=0, base_sequence=0))
    log.close()
    snapshot = log.directory / PRODUCER_SNAPSHOT_FILE
    data = bytearray(snapshot.read_bytes())
    if damage == "flip":
        data[12] ^= 0x01
    elif damage == "cut":
        data = data[:-3]
    else:  # taken at another log end than the one found on open
        log = open_log()
        log.append(make_batch(5, producer_id=7, producer_epoch=0, base_sequence=5))
        log.close()
    snapshot.write_bytes(bytes(data))  # "stale": the older one, taken at log end 5, not 10
    reopened = open_log()
    retry = reopened.append(make_batch(5, producer_id=7, producer_epoch=0, base_sequence=0))
    assert (retry.duplicate, retry.base_offset) == (True, 0)
    reopened.close()


def _fill_idempotent(log: PartitionLog, batches: int) -> None:
    """``batches`` batches of 5 records from producers 7 and 8 in turn, epoch 3."""
    for n in range(batches):
        producer = 7 + n % 2
        log.append(make_batch(5, producer_id=producer, producer_epoch=3,
                              base_sequence=5 * (n // 2)), wait_durable=False)


def _headers_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The base offsets of the segments whose batch headers are read for producer state from
    now on (the recovery scan's own reads are not counted)."""
    read: list[int] = []
    rebuilding: list[bool] = []
    original_iter, original_rebuild = LogSegment.iter_headers, PartitionLog._rebuild_producer_state

    def counting(self: LogSegment, start: int = 0, end: int | None = None) -> Any:
        if rebuilding:
            read.append(self.base_offset)
        return original_iter(self, start, end)

    def rebuild(self: PartitionLog) -> None:
        rebuilding.append(True)
        try:
            original_rebuild(self)
        finally:
            rebuilding.clear()

    monkeypatch.setattr(LogSegment, "iter_headers", counting)
    monkeypatch.setattr(PartitionLog, "_rebuild_producer_state", rebuild)
    return read


def _state(log: PartitionLog) -> bytes:
    return log._producers.snapshot(0)


def test_unclean_start_reads_only_the_headers_after_the_last_roll(
    open_log: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(segment_bytes=4096)
    _fill_idempotent(log, 60)
    bases = [s.base_offset for s in log.segments()]
    assert len(bases) > 4
    expected = _state(log)
    log.abandon()  # a crash: no clean marker, no end snapshot
    snapshots = sorted(p.name for p in log.directory.glob(f"*{PRODUCER_ROLL_SUFFIX}"))
    assert snapshots == [producer_roll_snapshot_name(b) for b in bases[-2:]]  # two kept
    read = _headers_read(monkeypatch)
    reopened = open_log(segment_bytes=4096)
    assert read == [bases[-1]]  # the active segment only, after its recovery scan
    assert _state(reopened) == expected
    # what the state is for: resends of stored batches, in old segments too, are duplicates
    for n in (56, 58):  # producer 7's last two batches, the older one before the last roll
        retry = reopened.append(make_batch(5, producer_id=7, producer_epoch=3,
                                           base_sequence=5 * (n // 2)))
        assert (retry.duplicate, retry.base_offset) == (True, 5 * n)
    with pytest.raises(OutOfOrderSequenceError):
        reopened.append(make_batch(5, producer_id=8, producer_epoch=3, base_sequence=500))
    with pytest.raises(ProducerFencedError):
        reopened.append(make_batch(5, producer_id=8, producer_epoch=2, base_sequence=0))
    reopened.close()


@pytest.mark.parametrize("case", ["damaged snapshot", "segment gone", "cut below it"])
def test_an_unusable_roll_snapshot_falls_back_to_reading_headers(
    open_log: Opener, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    log = open_log(segment_bytes=4096)
    _fill_idempotent(log, 60)
    bases = [s.base_offset for s in log.segments()]
    newest = log.directory / producer_roll_snapshot_name(bases[-1])
    log.abandon()
    if case == "damaged snapshot":
        data = bytearray(newest.read_bytes())
        data[20] ^= 0x10
        newest.write_bytes(bytes(data))  # the older one, a roll earlier, is used instead
    elif case == "segment gone":  # as after a recovery that dropped the active segment
        for suffix in (".log", ".index", ".timeindex"):
            (log.directory / f"{bases[-1]:020d}{suffix}").unlink()
    else:  # damage in the middle of the first segment, scanned because the checkpoint is gone
        (log.directory / RECOVERY_CHECKPOINT_FILE).unlink()
        segment = log.directory / f"{bases[0]:020d}.log"
        data = bytearray(segment.read_bytes())
        data[200] ^= 0xFF
        segment.write_bytes(bytes(data))
    read = _headers_read(monkeypatch)
    reopened = open_log(segment_bytes=4096)
    rebuilt = _state(reopened)
    # the reference: the same log read header by header, no snapshot at all
    reopened.abandon()
    for path in log.directory.glob(f"*{PRODUCER_ROLL_SUFFIX}"):
        path.unlink()
    monkeypatch.undo()
    reference = open_log(segment_bytes=4096)
    assert rebuilt == _state(reference)
    expected_reads = {"damaged snapshot": bases[-2:], "segment gone": bases[-2:-1],
                      "cut below it": bases}[case]
    assert read == expected_reads
    reference.close()


def test_offset_for_time(open_log: Opener) -> None:
    log = open_log(index_interval_bytes=0)
    for i in range(10):
        log.append(make_batch(4, tag=i, timestamp=1_000 + i * 100))
    assert log.offset_for_time(0) == 0
    assert log.offset_for_time(1_250) == 12
    assert log.offset_for_time(1_300) == 12
    assert log.offset_for_time(10_000) is None
    log.close()


def test_retention_by_bytes_and_time(open_log: Opener, clock: ManualClock) -> None:
    log = open_log(segment_bytes=4096, retention_bytes=8192)
    for tag in range(40):
        log.append(make_batch(5, tag=tag, timestamp=clock.now_ms()))
    assert log.segment_count > 3
    deleted = log.apply_retention()
    assert deleted > 0
    assert log.size_bytes - log.segments()[0].size < 8192
    start = log.log_start_offset
    assert start > 0
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 100)
    assert read_all(log)[0][0] == start
    log.close()

    timed = open_log(segment_bytes=4096, retention_ms=60_000)
    count = timed.segment_count
    clock.advance(120_000)
    assert timed.apply_retention() == count - 1
    assert timed.segment_count == 1
    timed.close()


def test_long_poll_wakes_on_append(open_log: Opener) -> None:
    log = open_log()
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(log.wait_for_data(0, 5.0)))
    waiter.start()
    log.append(make_batch(1))
    waiter.join(5.0)
    assert woke == [True]
    assert log.wait_for_data(1, 0.01) is False
    log.close()


def test_async_durability_acks_before_fsync_and_flush_syncs(
    open_log: Opener, clock: ManualClock
) -> None:
    log = open_log(durability="async", flush_ms=1000)
    log.append(make_batch(3))
    assert log.high_watermark == 3
    assert log.maybe_flush() is False
    clock.advance(1001)
    assert log.maybe_flush() is True
    log.close()


def test_clean_marker_written_and_removed(open_log: Opener, tmp_path: Path) -> None:
    log = open_log()
    log.append(make_batch(1))
    log.close()
    assert (tmp_path / "p-0" / CLEAN_SHUTDOWN_FILE).exists()
    reopened = open_log()
    assert not (tmp_path / "p-0" / CLEAN_SHUTDOWN_FILE).exists()
    reopened.close()


def test_concurrent_appends_group_commit(open_log: Opener) -> None:
    log = open_log()
    results: list[int] = []
    lock = threading.Lock()

    def worker(tag: int) -> None:
        for i in range(20):
            r = log.append(make_batch(2, tag=tag * 100 + i))
            with lock:
                results.append(r.base_offset)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(0, 160, 2))
    assert log.high_watermark == 160
    log.close()


def test_concurrent_appends_across_rolls_do_not_deadlock(open_log: Opener) -> None:
    log = open_log(segment_bytes=4096)
    errors: list[BaseException] = []

    def worker(tag: int) -> None:
        try:
            for i in range(40):
                log.append(make_batch(5, tag=tag * 100 + i))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "appenders deadlocked"
    assert errors == []
    assert log.high_watermark == 4 * 40 * 5
    assert log.segment_count > 10
    assert [o for o, _ in read_all(log)] == list(range(800))
    log.close()


@given(st.tuples(*[st.integers(-(2**40), 2**40)] * 13), st.integers(0, 2**40),
       st.integers(-1, 2**40))
def test_the_stored_header_is_the_sent_one_rebased(
    fields: tuple[int, ...], base_offset: int, log_append_time: int
) -> None:
    """_rebased builds the header field by field (speed); it must equal dataclasses.replace."""
    header = BatchHeader(*fields)
    expected = dataclasses.replace(header, base_offset=base_offset)
    if log_append_time >= 0:
        expected = dataclasses.replace(expected, max_timestamp=log_append_time,
                                       attributes=header.attributes | 0x08)
    assert _rebased(header, base_offset, log_append_time) == expected


def test_append_nowait_declines_instead_of_blocking(open_log: Opener) -> None:
    """The broker's event loop stores small batches itself only when that cannot block."""
    log = open_log(segment_bytes=4096)
    stored = log.append_nowait(make_batch(4, tag=0))
    assert stored is not None
    assert (stored.base_offset, stored.last_offset) == (0, 3)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with log._lock:
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    assert log.append_nowait(make_batch(4, tag=1)) is None  # another writer holds it
    release.set()
    holder.join()
    while log.segment_count == 1:  # fill the segment until the next batch would roll it
        before = log.log_end_offset
        if log.append_nowait(make_batch(4, tag=2)) is None:
            assert log.log_end_offset == before  # declined: nothing stored
            break
    assert log.segment_count == 1  # the roll (and its fsync) was left to a blocking append
    log.append(make_batch(4, tag=3))
    assert log.segment_count == 2
    log.close()


# ------------------------------------------------------------------ preallocation


def _on_disk(log: PartitionLog) -> list[tuple[int, int]]:
    """(file size, data size) of each segment."""
    return [(s.log.path.stat().st_size, s.size) for s in log.segments()]


def test_preallocation_reserves_space_ahead_and_a_clean_close_gives_it_back(
    open_log: Opener,
) -> None:
    log = open_log(segment_bytes=64 * 1024, segment_preallocate_bytes=16 * 1024)
    log.append(make_batch(3))
    [(file_size, data_size)] = _on_disk(log)
    assert file_size == data_size + 16 * 1024  # appends below it do not grow the file
    for tag in range(60):
        log.append(make_batch(3, tag=tag))
    [(file_size, data_size)] = _on_disk(log)
    assert data_size < file_size <= 64 * 1024  # never past segment.bytes
    before = read_all(log)
    path = log.segments()[-1].log.path
    log.close()
    assert path.stat().st_size == data_size
    reopened = open_log(segment_bytes=64 * 1024, segment_preallocate_bytes=16 * 1024)
    assert reopened.recovery.clean
    assert reopened.recovery.events == []
    assert read_all(reopened) == before
    reopened.close()


def test_a_roll_gives_back_the_sealed_segments_reserved_space(open_log: Opener) -> None:
    log = open_log(segment_bytes=4096)
    for tag in range(40):
        log.append(make_batch(5, tag=tag))
    on_disk = _on_disk(log)
    assert len(on_disk) > 3
    assert all(file_size == data_size for file_size, data_size in on_disk[:-1])
    assert on_disk[-1][0] > on_disk[-1][1]  # the active segment keeps its reserve
    log.close()


def test_preallocation_off_keeps_files_at_their_data(open_log: Opener) -> None:
    log = open_log(segment_preallocate_bytes=0)
    log.append(make_batch(3))
    assert [f == d for f, d in _on_disk(log)] == [True]
    log.close()


def test_recovery_trims_the_reserved_zeros_an_unclean_stop_leaves(open_log: Opener) -> None:
    log = open_log()
    for tag in range(3):
        log.append(make_batch(5, tag=tag))
    [(file_size, data_size)] = _on_disk(log)
    assert file_size > data_size
    before = read_all(log)
    log.abandon()
    reopened = open_log()
    events = reopened.recovery.events
    assert [(e.kind, e.position, e.length, e.last_valid_offset) for e in events] == [
        ("trimmed", data_size, file_size - data_size, 14)
    ]
    assert reopened.segments()[-1].log.path.stat().st_size == data_size
    assert read_all(reopened) == before
    assert reopened.append(make_batch(2)).base_offset == 15
    reopened.close()


def test_a_torn_batch_inside_the_reserved_space_is_truncated_with_the_zeros(
    open_log: Opener,
) -> None:
    """A crash in the middle of a write leaves part of a batch, then zeros: damage."""
    log = open_log()
    for tag in range(3):
        log.append(make_batch(5, tag=tag))
    [(file_size, data_size)] = _on_disk(log)
    path = log.segments()[-1].log.path
    log.abandon()
    with open(path, "r+b") as f:
        f.seek(data_size)
        f.write(make_batch(5, tag=9)[:40])
    reopened = open_log()
    assert [(e.kind, e.position, e.length) for e in reopened.recovery.events] == [
        ("truncated", data_size, file_size - data_size)
    ]
    assert reopened.log_end_offset == 15
    reopened.close()


def test_a_failed_preallocation_leaves_appends_working(
    open_log: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No space to reserve (or a file system that cannot): the append goes on unreserved."""

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    log = open_log()
    log.append(make_batch(3))
    log.append(make_batch(2))
    assert [f == d for f, d in _on_disk(log)] == [True]
    assert [o for o, _ in read_all(log)] == list(range(5))
    log.close()
