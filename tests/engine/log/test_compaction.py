"""Log compaction: what it keeps, the tombstone rule, the swap and its crash states."""

from __future__ import annotations

import errno
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.broker import Broker, BrokerSettings
from engine.clock import ManualClock
from engine.config import TopicConfig
from engine.errors import OutOfOrderSequenceError, StorageError
from engine.log.compaction import DELETE_HORIZON_FLAG, LogCleaner, finish_interrupted_swaps
from engine.log.fileio import FileIO, LogFile, OsFileIO
from engine.log.files import TRANSIENT_SUFFIXES
from engine.log.partition_log import PartitionLog
from engine.records.batch import (
    BatchHeader,
    Codec,
    Header,
    NewRecord,
    Record,
    decode_batch,
    encode_batch,
    iter_batches,
)

from .crashfs import CrashFileIO

DAY_MS = 86_400_000
Key = bytes
Value = bytes | None


def compact_config(**overrides: str) -> TopicConfig:
    values = {
        "cleanup.policy": "compact",
        "segment.bytes": "1024",
        "index.interval.bytes": "128",
        "durability": "async",
    }
    values.update({k.replace("_", "."): v for k, v in overrides.items()})
    return TopicConfig.from_dict(values)


def put(
    log: PartitionLog,
    key: Key | None,
    value: Value,
    clock: ManualClock,
    *,
    headers: tuple[Header, ...] = (),
    codec: Codec = Codec.NONE,
) -> int:
    """Append one single-record batch; returns its offset. The clock moves 1 ms per record."""
    clock.advance(1)
    batch = encode_batch([NewRecord(value, key, headers)], timestamp=clock.now_ms(), codec=codec)
    return log.append(batch, wait_durable=False).base_offset


def stored_batches(log: PartitionLog) -> Iterator[tuple[BatchHeader, list[Record]]]:
    """Every batch from the log start to the high watermark, through PartitionLog.read."""
    offset = log.log_start_offset
    while offset < log.high_watermark:
        data = log.read(offset, 1 << 20).data
        assert data, f"nothing at offset {offset}"
        for position, header in iter_batches(data, 0, 1 << 30):
            yield decode_batch(data, position)
            offset = header.next_offset


def records(log: PartitionLog) -> list[Record]:
    return [r for _, batch in stored_batches(log) for r in batch]


def latest(items: list[Record]) -> dict[Key | None, Value]:
    """Key -> value of its last record; tombstoned keys are left out."""
    state: dict[Key | None, Value] = {}
    for r in items:
        state[r.key] = r.value
    return {k: v for k, v in state.items() if v is not None}


def cleaner(clock: ManualClock, fileio: FileIO | None = None, **kwargs: int) -> LogCleaner:
    return LogCleaner(fileio or OsFileIO(), clock, min_dirty_ratio=0.0, **kwargs)


def transient_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(TRANSIENT_SUFFIXES))


@pytest.fixture
def new_log(tmp_path: Path, clock: ManualClock) -> Callable[..., PartitionLog]:
    def opener(**overrides: str) -> PartitionLog:
        return PartitionLog.open(tmp_path / "t-0", compact_config(**overrides), clock=clock)

    return opener


def fill(
    log: PartitionLog, clock: ManualClock, count: int, keys: int, *, roll_every: int = 0
) -> None:
    for i in range(count):
        put(log, f"k{i % keys}".encode(), f"v{i}".encode(), clock)
        if roll_every and i % roll_every == roll_every - 1:
            log.roll()


# ---------------------------------------------------------------------------- what is kept


def test_latest_value_per_key_survives_and_older_ones_go(
    new_log: Callable[..., PartitionLog], clock: ManualClock
) -> None:
    log = new_log()
    fill(log, clock, 400, 10)
    before = records(log)
    active_base = log.segments()[-1].base_offset
    result = cleaner(clock).clean(log)
    after = records(log)
    assert result.cleaned
    assert result.segments_after < result.segments_before
    assert latest(after) == latest(before)
    original = {r.offset: r for r in before}
    assert all(original[r.offset] == r for r in after)  # offsets, timestamps, keys, values
    cleaned = [r for r in after if r.offset < active_base]
    keys = [r.key for r in cleaned[1:]]  # the log's first batch is kept (see test below)
    assert len(keys) == len(set(keys)) <= 10
    assert [r.offset for r in after if r.offset >= active_base] == [
        r.offset for r in before if r.offset >= active_base
    ]
    assert log.log_end_offset == 400


def test_records_keep_timestamps_headers_and_codec(
    new_log: Callable[..., PartitionLog], clock: ManualClock
) -> None:
    log = new_log(segment_bytes="4096")
    for i in range(120):
        codec = list(Codec)[i % len(Codec)]
        headers = (Header("h", f"{i}".encode()), Header("null", None))
        put(log, f"k{i % 9}".encode(), f"v{i}".encode() * 3, clock, headers=headers, codec=codec)
    log.roll()
    before = {r.offset: r for r in records(log)}
    codecs = {h.base_offset: h.codec for h, _ in stored_batches(log)}
    cleaner(clock).clean(log)
    kept = list(stored_batches(log))
    assert len(kept) < len(before)
    for header, batch in kept:
        assert header.codec == codecs[header.base_offset]
        for r in batch:
            assert r == before[r.offset]


def test_first_batch_stays_so_the_log_start_offset_does_not_move(
    new_log: Callable[..., PartitionLog], clock: ManualClock
) -> None:
    log = new_log()
    fill(log, clock, 200, 4)
    log.roll()
    cleaner(clock).clean(log)
    assert log.log_start_offset == 0
    first_header, first_records = next(stored_batches(log))
    assert (first_header.base_offset, first_records) == (0, [])
    gap = log.read(1, 1 << 20).data  # an offset compaction removed: the next batch is served
    assert decode_batch(gap)[0].base_offset > 1


def test_keyless_records_are_kept(
    new_log: Callable[..., PartitionLog], clock: ManualClock
) -> None:
    log = new_log()
    for i in range(60):
        put(log, None if i % 3 == 0 else b"k", f"v{i}".encode(), clock)
    log.roll()
    cleaner(clock).clean(log)
    assert [r.offset for r in records(log) if r.key is None] == list(range(0, 60, 3))


def test_min_compaction_lag_protects_recent_segments(
    new_log: Callable[..., PartitionLog], clock: ManualClock
) -> None:
    log = new_log(min_compaction_lag_ms=str(60_000))
    fill(log, clock, 100, 5)
    log.roll()
    before = records(log)
    work = cleaner(clock)
    assert not work.clean(log).cleaned
    assert records(log) == before
    clock.advance(60_000)
    assert work.clean(log).cleaned
    assert len(records(log)) < len(before)


def test_map_limit_cleans_a_prefix_and_later_passes_finish(
    new_log: Callable[..., PartitionLog], clock: ManualClock
) -> None:
    log = new_log()
    for i in range(300):
        put(log, f"k{i}".encode() if i < 200 else f"k{i % 50}".encode(), b"v", clock)
    log.roll()
    work = cleaner(clock, max_map_keys=40)
    first = work.clean(log)
    assert first.end_offset < 300
    while work.clean(log).cleaned:
        pass
    after = records(log)
    assert len(after) == 200
    assert {r.key for r in after} == {f"k{i}".encode() for i in range(200)}


# ---------------------------------------------------------------------------- tombstones


def test_tombstones_expire_after_delete_retention_ms(
    new_log: Callable[..., PartitionLog], clock: ManualClock
) -> None:
    log = new_log(delete_retention_ms=str(DAY_MS))
    fill(log, clock, 50, 5)
    put(log, b"k1", None, clock)
    put(log, b"k2", None, clock)
    fill(log, clock, 20, 1)  # only k0: the tombstones stay the latest for k1, k2
    log.roll()
    work = cleaner(clock)
    work.clean(log)
    kept = records(log)
    assert [r.key for r in kept if r.value is None] == [b"k1", b"k2"]
    assert not any(r.key in (b"k1", b"k2") and r.value is not None for r in kept)
    stamped = [h for h, b in stored_batches(log) if any(r.value is None for r in b)]
    assert all(h.attributes & DELETE_HORIZON_FLAG for h in stamped)
    assert all(h.base_timestamp == clock.now_ms() + DAY_MS for h in stamped)
    clock.advance(DAY_MS - 1)
    work.clean(log)
    assert [r.key for r in records(log) if r.value is None] == [b"k1", b"k2"]
    clock.advance(1)
    assert work.clean(log).cleaned  # a due horizon triggers a pass with nothing dirty
    assert not [r for r in records(log) if r.key in (b"k1", b"k2")]
    assert latest(records(log)) == latest(kept)


def test_horizon_counts_from_the_first_cleaning_not_the_record_time(
    new_log: Callable[..., PartitionLog], clock: ManualClock
) -> None:
    log = new_log(delete_retention_ms="1000")
    put(log, b"a", b"1", clock)
    put(log, b"a", None, clock)
    log.roll()
    clock.advance(10_000)  # the tombstone is old, but no cleaner has removed "a" yet
    work = cleaner(clock)
    work.clean(log)
    assert [r.value for r in records(log) if r.key == b"a"] == [None]
    clock.advance(1000)
    work.clean(log)
    assert [r for r in records(log) if r.key == b"a"] == []


# ---------------------------------------------------------------------------- idempotence


def test_idempotent_producer_dedupe_survives_compaction(
    new_log: Callable[..., PartitionLog], clock: ManualClock
) -> None:
    log = new_log()
    batches = [
        encode_batch([NewRecord(f"v{i}".encode(), b"key")], timestamp=clock.now_ms(),
                     producer_id=7, producer_epoch=0, base_sequence=i)
        for i in range(12)
    ]
    results = [log.append(b, wait_durable=False) for b in batches]
    log.roll()
    cleaner(clock).clean(log)
    assert [r.offset for r in records(log)] == [11]

    def check(partition: PartitionLog) -> None:
        for i in range(7, 12):
            again = partition.append(batches[i], wait_durable=False)
            assert again.duplicate
            assert again.base_offset == results[i].base_offset

    check(log)
    log.abandon()
    log = new_log()  # producer state rebuilt from the kept (empty) batch headers
    check(log)
    with pytest.raises(OutOfOrderSequenceError):
        log.append(batches[5])
    next_batch = encode_batch([NewRecord(b"v12", b"key")], producer_id=7, producer_epoch=0,
                              base_sequence=12)
    assert not log.append(next_batch).duplicate


# ---------------------------------------------------------------------------- reopen, readers


@pytest.mark.parametrize("clean_close", [True, False])
def test_reopen_after_compaction_gives_the_same_records(
    new_log: Callable[..., PartitionLog], clock: ManualClock, clean_close: bool
) -> None:
    log = new_log()
    fill(log, clock, 300, 7, roll_every=20)
    cleaner(clock).clean(log)
    before = records(log)
    log.flush()
    if clean_close:
        log.close()
    else:
        log.abandon()
    reopened = new_log()
    assert records(reopened) == before
    assert reopened.recovery.events == []


def test_readers_keep_their_snapshot_and_new_files_survive_old_segment_cleanup(
    new_log: Callable[..., PartitionLog], clock: ManualClock, tmp_path: Path
) -> None:
    log = new_log()
    fill(log, clock, 200, 5, roll_every=25)
    snapshot = log.segments()
    old_bytes = snapshot[0].read(0, snapshot[0].size)
    cleaner(clock).clean(log)
    after = records(log)
    assert snapshot[0].read(0, len(old_bytes)) == old_bytes  # a reader's descriptor still works
    clock.advance(31_000)
    log.apply_retention()  # closes the replaced segments; must not unlink their successors
    assert records(log) == after
    log.close()
    assert records(new_log()) == after
    assert transient_files(tmp_path / "t-0") == []


# ---------------------------------------------------------------------------- crash states


class _FaultyLog:
    """A LogFile whose fsync counts as a step of the FaultFileIO."""

    def __init__(self, inner: LogFile, fs: FaultFileIO) -> None:
        self._inner = inner
        self._fs = fs
        self.path = inner.path

    def size(self) -> int:
        return self._inner.size()

    def append(self, data: bytes | bytearray | memoryview) -> int:
        return self._inner.append(data)

    def pread(self, size: int, position: int) -> bytes:
        return self._inner.pread(size, position)

    def fsync(self) -> None:
        self._fs.step("fsync", self.path)
        self._inner.fsync()

    def truncate(self, size: int) -> None:
        self._inner.truncate(size)

    def preallocate(self, size: int) -> None:
        self._inner.preallocate(size)

    def trim(self) -> None:
        self._inner.trim()

    def close(self) -> None:
        self._inner.close()


class FaultFileIO(CrashFileIO):
    """Counts file-system steps once armed and fails the ``fail_at``-th with EIO.

    With ``die`` every later step fails too: the process is gone and cleans nothing up.
    """

    def __init__(self, fail_at: int = -1, *, die: bool = False) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.die = die
        self.on_step: Callable[[str], None] | None = None
        self.armed = False
        self.steps: list[str] = []

    def step(self, action: str, path: Path) -> None:
        if not self.armed:
            return
        self.steps.append(f"{action} {path.name}")
        if self.on_step is not None:
            self.on_step(self.steps[-1])
        index = len(self.steps) - 1
        if index == self.fail_at or (self.die and index > self.fail_at >= 0):
            raise OSError(errno.EIO, "injected fault", str(path))

    def open_log(self, path: Path, *, create: bool) -> LogFile:
        self.step("open", path)
        return _FaultyLog(super().open_log(path, create=create), self)

    def rename(self, source: Path, target: Path) -> None:
        self.step("rename", source)
        super().rename(source, target)

    def unlink(self, path: Path) -> None:
        self.step("unlink", path)
        super().unlink(path)

    def fsync_dir(self, path: Path) -> None:
        self.step("fsync_dir", path)
        super().fsync_dir(path)


@pytest.fixture(scope="module")
def template() -> Iterator[tuple[Path, list[Record]]]:
    """A closed partition of small segments (so groups merge), tombstones included."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "t-0"
        clock = ManualClock()
        log = PartitionLog.open(directory, compact_config(), clock=clock)
        for i in range(42):
            value = None if i in (20, 31) else f"v{i}".encode()
            put(log, f"k{i % 5}".encode(), value, clock)
            if i % SEGMENT_RECORDS == SEGMENT_RECORDS - 1:
                log.roll()
        original = records(log)
        log.close()
        yield directory, original


SEGMENT_RECORDS = 6


def copy_of(template: Path, target: Path) -> Path:
    shutil.copytree(template, target)
    return target


def compacted_reference(template: Path, tmp_path: Path) -> tuple[list[Record], list[str], int]:
    """Records after an undisturbed pass, its file-system steps, the end of its first group."""
    clock = ManualClock()
    fs = FaultFileIO()
    log = PartitionLog.open(copy_of(template, tmp_path / "ref"), compact_config(), fileio=fs,
                            clock=clock)
    fs.armed = True
    result = cleaner(clock, fs).clean(log)
    assert 1 < result.segments_after < result.segments_before  # several groups, some merged
    start = fs.steps.index("unlink 00000000000000000000.log")
    group = 0
    while fs.steps[start + group].endswith(".log"):  # step 3 unlinks the group's logs first
        group += 1
    return records(log), fs.steps, group * SEGMENT_RECORDS


@pytest.mark.parametrize("mode", ["error", "kill", "power_loss"])
def test_crash_at_every_step_of_the_swap_recovers_old_or_new(
    template: tuple[Path, list[Record]], tmp_path: Path, mode: str
) -> None:
    """``error``: the step fails and cleanup runs; ``kill``: the process dies at the step;
    ``power_loss``: it dies and what was not made durable is lost."""
    directory, original = template
    compacted, steps, _ = compacted_reference(directory, tmp_path)
    assert any(s.startswith("rename") and s.endswith(".log.swap") for s in steps)
    original_by_offset = {r.offset: r for r in original}
    new_offsets = {r.offset for r in compacted}
    for fail_at in range(len(steps)):
        clock = ManualClock()
        fs = FaultFileIO(fail_at, die=mode != "error")
        target = copy_of(directory, tmp_path / f"run{fail_at}")
        log = PartitionLog.open(target, compact_config(), fileio=fs, clock=clock)
        fs.armed = True
        with pytest.raises(StorageError):
            cleaner(clock, fs).clean(log)
        log.abandon()
        if mode == "power_loss":
            fs.crash(random.Random(fail_at))
        reopened = PartitionLog.open(target, compact_config(), clock=clock)
        got = records(reopened)
        offsets = {r.offset for r in got}
        context = f"failed at step {fail_at}: {steps[fail_at]}"
        assert all(original_by_offset[r.offset] == r for r in got), context
        assert new_offsets <= offsets, context
        assert latest(got) == latest(original), context
        assert reopened.log_end_offset == original[-1].offset + 1, context
        assert transient_files(target) == [], context
        reopened.close()


def fail_on(step: str) -> Callable[[list[str]], int]:
    return lambda steps: steps.index(step)


@pytest.mark.parametrize(
    ("fail_on_step", "expect_new", "left_over"),
    [
        # step 1 (writing): .cleaned files only; removed on open
        (fail_on("fsync 00000000000000000000.log.cleaned"), False, ".cleaned"),
        # step 2 (commit): the index swaps exist, the log is still .cleaned; rolled back
        (fail_on("rename 00000000000000000000.log.cleaned"), False, ".index.swap"),
        # step 3 before the commit point: old files and all swaps; rolled back
        (fail_on("unlink 00000000000000000000.log"), False, ".log.swap"),
        # step 3 after the commit point: b0.log is gone; the swap is completed
        (fail_on("rename 00000000000000000000.log.swap"), True, ".log.swap"),
    ],
)
def test_named_crash_states(
    template: tuple[Path, list[Record]],
    tmp_path: Path,
    fail_on_step: Callable[[list[str]], int],
    expect_new: bool,
    left_over: str,
) -> None:
    directory, original = template
    compacted, steps, first_group_end = compacted_reference(directory, tmp_path)
    clock = ManualClock()
    fs = FaultFileIO(fail_on_step(steps), die=True)
    target = copy_of(directory, tmp_path / "run")
    log = PartitionLog.open(target, compact_config(), fileio=fs, clock=clock)
    fs.armed = True
    with pytest.raises(StorageError):
        cleaner(clock, fs).clean(log)
    log.abandon()
    assert any(name.endswith(left_over) for name in transient_files(target))
    committed = not (target / "00000000000000000000.log").exists()
    assert committed == expect_new
    reopened = PartitionLog.open(target, compact_config(), clock=clock)
    got = records(reopened)
    assert latest(got) == latest(original)
    if expect_new:  # the first group is new, the others old
        assert [r for r in got if r.offset < first_group_end] == [
            r for r in compacted if r.offset < first_group_end
        ]
        assert [r for r in got if r.offset >= first_group_end] == [
            r for r in original if r.offset >= first_group_end
        ]
    else:
        assert got == original
    assert transient_files(target) == []
    assert reopened.read_only_reason is None


def test_failed_swap_makes_the_partition_read_only(
    template: tuple[Path, list[Record]], tmp_path: Path
) -> None:
    directory, original = template
    _, steps, _ = compacted_reference(directory, tmp_path)
    clock = ManualClock()
    fs = FaultFileIO(fail_on("rename 00000000000000000000.log.swap")(steps))
    log = PartitionLog.open(copy_of(directory, tmp_path / "run"), compact_config(), fileio=fs,
                            clock=clock)
    fs.armed = True
    with pytest.raises(StorageError):
        cleaner(clock, fs).clean(log)
    assert log.read_only_reason is not None
    assert records(log) == original  # readers still see the old segments' descriptors


def test_interrupted_swap_of_a_quarantine_rewrite_is_rolled_back(tmp_path: Path) -> None:
    directory = tmp_path / "t-0"
    directory.mkdir()
    (directory / "00000000000000000000.log").write_bytes(b"old")
    (directory / "00000000000000000000.log.swap").write_bytes(b"partial")
    finish_interrupted_swaps(directory, OsFileIO())
    assert sorted(p.name for p in directory.iterdir()) == ["00000000000000000000.log"]


def test_retention_racing_a_pass_leaves_no_swap(
    template: tuple[Path, list[Record]], tmp_path: Path
) -> None:
    directory, _ = template
    clock = ManualClock()
    config = compact_config(cleanup_policy="compact,delete", retention_bytes="2000")
    fs = FaultFileIO()
    log = PartitionLog.open(copy_of(directory, tmp_path / "run"), config, fileio=fs, clock=clock)
    fired: list[int] = []

    def retention_once(step: str) -> None:
        if step.startswith("open") and not fired:
            fired.append(log.apply_retention())

    fs.on_step = retention_once
    fs.armed = True
    before = records(log)
    result = cleaner(clock, fs).clean(log)
    assert fired[0] > 0
    assert result.segments_after == result.segments_before  # abandoned, nothing swapped
    assert transient_files(tmp_path / "run") == []
    assert records(log) == [r for r in before if r.offset >= log.log_start_offset]


# ---------------------------------------------------------------------------- broker


def test_broker_compacts_compact_topics_only(tmp_path: Path, clock: ManualClock) -> None:
    with Broker.open(tmp_path, clock=clock, background=False) as broker:
        small = {"segment.bytes": "1024", "durability": "async"}
        broker.create_topic("state", 1, {"cleanup.policy": "compact", **small})
        broker.create_topic("events", 1, small)
        for topic in ("state", "events"):
            fill(broker.partition(topic, 0), clock, 100, 3)
        events_before = records(broker.partition("events", 0))
        state_before = records(broker.partition("state", 0))
        broker.run_maintenance()
        assert records(broker.partition("state", 0)) == state_before  # interval not passed
        broker.run_maintenance(force_compaction=True)
        assert records(broker.partition("events", 0)) == events_before
        state_after = records(broker.partition("state", 0))
        assert len(state_after) < len(state_before)
        assert latest(state_after) == latest(state_before)


def test_broker_compacts_in_the_background(tmp_path: Path) -> None:
    settings = BrokerSettings(maintenance_interval_ms=10, compaction_check_interval_ms=20)
    with Broker.open(tmp_path, settings=settings) as broker:
        broker.create_topic("state", 1, {"cleanup.policy": "compact", "segment.bytes": "1024",
                                         "durability": "async"})
        log = broker.partition("state", 0)
        fill(log, ManualClock(), 100, 3)
        log.roll()
        deadline = time.monotonic() + 10
        while len(records(log)) > 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(records(log)) <= 5  # the first batch, one record per key, the last batch


def test_closing_the_cleaner_abandons_a_pass_before_its_commit_point(
    template: tuple[Path, list[Record]], tmp_path: Path
) -> None:
    directory, original = template
    clock = ManualClock()
    fs = FaultFileIO()
    target = copy_of(directory, tmp_path / "run")
    log = PartitionLog.open(target, compact_config(), fileio=fs, clock=clock)
    work = cleaner(clock, fs)
    fs.on_step = lambda step: work.close() if step.startswith("open") else None
    fs.armed = True
    assert not work.clean(log).cleaned
    assert records(log) == original
    assert transient_files(target) == []
    assert not work.clean(log).cleaned  # a closed cleaner does nothing


# ---------------------------------------------------------------------------- property


_ops = st.lists(
    st.tuples(st.integers(0, 5), st.one_of(st.none(), st.binary(min_size=0, max_size=40)),
              st.booleans()),
    min_size=1,
    max_size=80,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, cut=st.integers(1, 4))
def test_compaction_keeps_the_models_latest_values(
    ops: list[tuple[int, bytes | None, bool]], cut: int
) -> None:
    clock = ManualClock()
    model: dict[Key, Value] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "t-0"
        log = PartitionLog.open(directory, compact_config(delete_retention_ms="1000"),
                                clock=clock)
        for key_index, value, roll in ops:
            key = f"key{key_index}".encode()
            put(log, key, value, clock)
            model[key] = value
            if roll and key_index < cut:
                log.roll()
        log.roll()
        original = {r.offset: r for r in records(log)}
        work = cleaner(clock)
        work.clean(log)
        got = records(log)
        assert all(original[r.offset] == r for r in got)
        assert latest(got) == {k: v for k, v in model.items() if v is not None}
        last = {r.key: r for r in got}
        assert {k: r.value for k, r in last.items()} == model  # tombstones still there
        clock.advance(1000)
        work.clean(log)
        got = records(log)
        assert {r.key: r.value for r in got} == {k: v for k, v in model.items() if v is not None}
        log.abandon()
        assert records(PartitionLog.open(directory, compact_config(), clock=clock)) == got
