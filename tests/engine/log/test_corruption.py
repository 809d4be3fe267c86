"""Corruption of segments, indexes, checkpoints and markers (RELIABILITY-PLAN T3, CI mode).

Each trial builds a small partition (several segments, mixed codecs, keys, headers and
idempotent batches), remembers every batch and where it sits on disk, closes it cleanly or
abandons it, applies ONE damage, reopens it and checks what a consumer could observe:

- opening never raises;
- every batch served passes the client's own CRC check and decodes to exactly the records
  appended at those offsets (nothing corrupt, nothing invented), walking from the log start
  to the high watermark and at random offsets;
- reads raise nothing but ``CorruptLogError`` / ``OffsetOutOfRangeError``, and
  ``CorruptLogError`` only inside a damaged segment that recovery did not scan;
- a batch the damage did not touch is never silently skipped, and in every segment recovery
  scanned it is readable; what recovery cut is reported in ``log.recovery.events`` (torn tail
  truncated, damage in the middle quarantined to ``quarantine/``) byte for byte;
- after a clean shutdown sealed segments are trusted: a flip inside records is not found at
  startup but on read (``CorruptLogError``) and by :func:`engine.log.scrub.scrub`;
- index, checkpoint and marker damage loses nothing: all records and lookups stay right;
- appends continue at an offset above every surviving one.

Damage no checksum can see, which the checks allow for (RecordBatch v2 limits, as in Kafka):
the partition leader epoch (bytes 12-15) is outside the CRC and unused on a single node, so a
flip there is invisible and harmless. The base offset (bytes 0-7) is outside the CRC too, and
only neighbouring offsets can contradict a changed one: with none left to do so (the last
batch of the log, or a neighbour damaged as well) a batch may come back at a shifted base
offset with its records intact. A time index cut to whole entries is a valid, shorter index;
the segment's largest timestamp may then read low, so time lookups are not checked for it.

Seeds: ``MOLDAU_SEED`` (printed in every failure), ``MOLDAU_CORRUPTION_TRIAL`` to rerun one
trial, ``MOLDAU_CORRUPTION_TRIALS`` for the total (CI default 520; nightly 20000). Damage the
random trials reach only rarely has a deterministic regression test at the end.
"""

from __future__ import annotations

import bisect
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.clock import ManualClock
from engine.config import TopicConfig
from engine.errors import CorruptLogError, OffsetOutOfRangeError
from engine.log.fileio import LogFile, OsFileIO, OsLogFile
from engine.log.files import (
    CLEAN_SHUTDOWN_FILE,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    QUARANTINE_DIR,
    RECOVERY_CHECKPOINT_FILE,
    TIMEINDEX_SUFFIX,
    segment_path,
)
from engine.log.partition_log import PartitionLog
from engine.log.recovery import RecoveryEvent
from engine.log.scrub import scrub
from engine.records.batch import (
    BatchHeader,
    Header,
    NewRecord,
    Record,
    decode_batch,
    decode_batches,
    encode_batch,
    validate_batch,
)
from engine.records.compression import Codec
from engine.records.errors import RecordError

SEED = int(os.environ.get("MOLDAU_SEED", str(random.randrange(2**32))))
TOTAL_TRIALS = int(os.environ.get("MOLDAU_CORRUPTION_TRIALS", "520"))
ONLY_TRIAL = os.environ.get("MOLDAU_CORRUPTION_TRIAL")

KINDS = {  # damage kind -> share of the trials
    "bitflip": 0.24,
    "truncate": 0.12,
    "zero_page": 0.09,
    "garbage_page": 0.09,
    "append_garbage": 0.10,
    "index": 0.18,
    "checkpoint": 0.10,
    "clean_marker": 0.08,
}
PAGE = 4096
EPOCH_BYTES = range(12, 16)  # partitionLeaderEpoch: not covered by the CRC
BASE_OFFSET_BYTES = range(8)
BASE_TIME_MS = 1_700_000_000_000


def _trials(kind: str) -> list[int]:
    if ONLY_TRIAL is not None:
        return [int(ONLY_TRIAL)]
    return list(range(max(1, round(TOTAL_TRIALS * KINDS[kind]))))


# ---------------------------------------------------------------------------- the partition


@dataclass(frozen=True, slots=True)
class Stored:
    """One appended batch: what readers must get back, and where it sits on disk."""

    base_offset: int
    last_offset: int
    max_timestamp: int
    records: tuple[Record, ...]
    segment: int
    position: int
    size: int


@dataclass(slots=True)
class Built:
    directory: Path
    config: TopicConfig
    clock: ManualClock
    batches: list[Stored]
    segments: list[int]
    clean: bool


def _random_records(rng: random.Random, now_ms: int) -> list[NewRecord]:
    records = []
    for _ in range(rng.choice((1, 1, 2, 3, 5, 8, 13))):
        size = min(1500, int(rng.paretovariate(0.9) * 20) - 20)
        kind = rng.random()
        if kind < 0.05:
            value: bytes | None = None
        elif kind < 0.5:
            value = rng.randbytes(size)
        else:  # compressible
            value = (b"moldau-%d-" % rng.randrange(100)) * (size // 10 + 1)
        key = rng.randbytes(rng.randint(0, 12)) if rng.random() < 0.4 else None
        headers: tuple[Header, ...] = ()
        if rng.random() < 0.2:
            headers = (Header("h", rng.randbytes(3)), Header("trace", None))
        timestamp = now_ms + rng.randint(-5_000, 5_000) if rng.random() < 0.7 else None
        records.append(NewRecord(value, key, headers, timestamp))
    return records


def _expected(records: list[NewRecord], base_offset: int, default_ts: int) -> tuple[Record, ...]:
    return tuple(
        Record(
            base_offset + i,
            default_ts if r.timestamp is None else r.timestamp,
            r.key,
            r.value,
            r.headers,
        )
        for i, r in enumerate(records)
    )


class _UnsyncedLogFile(OsLogFile):
    def fsync(self) -> None:
        """Building needs no durability: every trial reads back from the page cache."""


class _UnsyncedIO(OsFileIO):
    """The real file system without fsync, to keep hundreds of trials fast."""

    def open_log(self, path: Path, *, create: bool) -> LogFile:
        return _UnsyncedLogFile(path, os.open(path, os.O_RDWR | (os.O_CREAT if create else 0)))

    def fsync_dir(self, path: Path) -> None:
        pass

    def write_atomic(self, path: Path, data: bytes) -> None:
        path.with_name(path.name + ".tmp").write_bytes(data)
        self.rename(path.with_name(path.name + ".tmp"), path)


def _build(directory: Path, rng: random.Random) -> tuple[PartitionLog, Built]:
    config = TopicConfig.from_dict(
        {
            "segment.bytes": rng.choice((4096, 6144, 8192, 12288)),
            "segment.index.bytes": 4096,
            "index.interval.bytes": rng.choice((0, 256, 1024, 4096)),
            "durability": rng.choice(("fsync", "async", "async")),
            # the damage model works on files that end at their data; the zeros that
            # preallocation leaves after a crash are covered in test_partition_log and by the
            # power-loss tests
            "segment.preallocate.bytes": 0,
        }
    )
    clock = ManualClock()
    log = PartitionLog.open(directory, config, clock=clock, fileio=_UnsyncedIO())
    target = config.segment_bytes * rng.uniform(2.2, 4.5)
    sequences: dict[int, int] = {}
    appended: dict[int, tuple[int, int, tuple[Record, ...]]] = {}
    while log.size_bytes < target:
        clock.advance(rng.randint(0, 2_000))
        records = _random_records(rng, clock.now_ms())
        producer_id = rng.choice((-1, -1, -1, 7, 8))
        sequence = sequences.get(producer_id, 0) if producer_id >= 0 else -1
        data = encode_batch(
            records,
            codec=rng.choice((Codec.NONE, Codec.NONE, *Codec)),
            timestamp=clock.now_ms(),
            producer_id=producer_id,
            producer_epoch=0 if producer_id >= 0 else -1,
            base_sequence=sequence,
        )
        if producer_id >= 0:
            sequences[producer_id] = sequence + len(records)
        result = log.append(data)
        header = validate_batch(data)
        appended[result.base_offset] = (
            result.last_offset,
            header.max_timestamp,
            _expected(records, result.base_offset, clock.now_ms()),
        )
    batches = []
    for segment in log.segments():
        for item in segment.iter_headers(0):
            last, max_ts, records = appended.pop(item.header.base_offset)
            batches.append(
                Stored(item.header.base_offset, last, max_ts, records,
                       segment.base_offset, item.position, item.header.size)
            )
    assert not appended, "every appended batch is on disk"
    segments = [s.base_offset for s in log.segments()]
    return log, Built(directory, config, clock, batches, segments, clean=False)


# ---------------------------------------------------------------------------- damage


@dataclass(slots=True)
class Damage:
    """What one trial did to the files, in terms the checks can compare against."""

    kind: str
    detail: str
    segment: int | None = None  # the .log file whose bytes changed
    changed: list[int] = field(default_factory=list)  # positions whose byte differs
    cut_from: int | None = None  # truncated to this size
    size_after: int = 0  # the .log size when the partition was reopened
    checkpoint: int | None = None  # the recovery point the damaged checkpoint holds, if valid
    time_prefix: bool = False  # a time index cut to whole entries (see _damage_index)
    zero_tail: bool = False  # appended garbage that is all zeros: "trimmed", not torn
    zeros_before_cut: int = 0  # truncate: zero bytes just before the cut

    def touches(self, batch: Stored) -> bool:
        if batch.segment != self.segment:
            return False
        end = batch.position + batch.size
        if self.cut_from is not None and end > self.cut_from:
            return True
        i = bisect.bisect_left(self.changed, batch.position)
        return i < len(self.changed) and self.changed[i] < end

    def harmless(self, batch: Stored) -> bool:
        """Touched only in the leader epoch: no checksum can tell, and no reader cares."""
        if self.cut_from is not None and batch.position + batch.size > self.cut_from:
            return False
        inside = [p - batch.position for p in self.changed
                  if batch.position <= p < batch.position + batch.size]
        return bool(inside) and all(p in EPOCH_BYTES for p in inside)

    def header_touched(self, batch: Stored) -> bool:
        return any(batch.position <= p < batch.position + 61 for p in self.changed)


def _rewrite(path: Path, mutate: Callable[[bytearray], bytearray]) -> tuple[list[int], int]:
    before = path.read_bytes()
    after = mutate(bytearray(before))
    path.write_bytes(after)
    changed = [i for i in range(min(len(before), len(after))) if before[i] != after[i]]
    return changed, len(after)


def _pareto_length(rng: random.Random, alpha: float, limit: int) -> int:
    return max(1, min(limit, int(rng.paretovariate(alpha))))


def _damage_log_file(rng: random.Random, built: Built, kind: str) -> Damage:
    """Bit flips, truncation, page overwrites and appended garbage in one ``.log`` file."""
    active = built.segments[-1]
    base = active if kind == "append_garbage" or rng.random() < 0.3 else rng.choice(built.segments)
    path = segment_path(built.directory, base, LOG_SUFFIX)
    size = path.stat().st_size
    page = rng.randrange(max(1, -(-size // PAGE))) * PAGE
    damage = Damage(kind, "", base)
    if kind == "bitflip":
        hi = min(page + PAGE, size)
        spots = sorted({rng.randrange(page, hi) for _ in range(rng.randint(1, 8))})
        bits = [1 << rng.randrange(8) for _ in spots]

        def flip(data: bytearray) -> bytearray:
            for spot, bit in zip(spots, bits, strict=True):
                data[spot] ^= bit
            return data

        damage.changed, damage.size_after = _rewrite(path, flip)
        damage.detail = f"flipped bytes {spots} of segment {base}"
    elif kind == "truncate":
        cut = size - _pareto_length(rng, 0.6, size)
        kept = path.read_bytes()[:cut]
        damage.zeros_before_cut = len(kept) - len(kept.rstrip(b"\0"))
        damage.changed, damage.size_after = _rewrite(path, lambda d: d[:cut])
        damage.cut_from = cut
        damage.detail = f"segment {base} truncated from {size} to {cut} bytes"
    elif kind in ("zero_page", "garbage_page"):
        hi = min(page + PAGE, size)
        fill = bytes(hi - page) if kind == "zero_page" else rng.randbytes(hi - page)
        damage.changed, damage.size_after = _rewrite(path, lambda d: d[:page] + fill + d[hi:])
        damage.detail = f"bytes {page}..{hi} of segment {base} overwritten ({kind})"
    else:
        n = _pareto_length(rng, 0.7, 8192)
        style = rng.choice(("random", "zeros", "replay"))
        if style == "random":
            tail = rng.randbytes(n)
        elif style == "zeros":
            tail = bytes(n)
        else:  # a misdirected write: earlier bytes of this segment, often whole batches
            own = [b for b in built.batches if b.segment == base]
            first = rng.choice(own)
            tail = path.read_bytes()[first.position : first.position + rng.choice((first.size, n))]
        damage.changed, damage.size_after = _rewrite(path, lambda d: d + tail)
        damage.zero_tail = not any(tail)
        damage.detail = f"{len(tail)} bytes of {style} garbage appended to segment {base}"
    return damage


def _damage_index(rng: random.Random, built: Built) -> Damage:
    """Delete, shuffle, swap or garble ``.index`` / ``.timeindex`` files (derived data)."""
    suffix = rng.choice((INDEX_SUFFIX, TIMEINDEX_SUFFIX))
    entry = 8 if suffix == INDEX_SUFFIX else 12
    base = rng.choice(built.segments)
    path = segment_path(built.directory, base, suffix)
    action = rng.choice(("delete", "delete_both", "shuffle", "swap", "garble", "flip", "cut"))
    data = bytearray(path.read_bytes())
    if action == "delete":
        path.unlink()
    elif action == "delete_both":
        path.unlink()
        segment_path(built.directory, base, INDEX_SUFFIX if entry == 12 else TIMEINDEX_SUFFIX
                     ).unlink()
    elif action == "shuffle":
        entries = [data[i : i + entry] for i in range(0, len(data) - entry + 1, entry)]
        rng.shuffle(entries)
        path.write_bytes(b"".join(entries))
    elif action == "swap":
        other = segment_path(built.directory, rng.choice(built.segments), suffix)
        swapped = other.read_bytes()
        other.write_bytes(bytes(data))
        path.write_bytes(swapped)
    elif action == "garble":
        at = rng.randrange(len(data) + 1)
        path.write_bytes(bytes(data[:at]) + rng.randbytes(rng.randint(1, 64)))
    elif action == "flip":
        for _ in range(rng.randint(1, 4)):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
    else:
        keep = rng.randrange(len(data) + 1)
        path.write_bytes(bytes(data[:keep]))
        if entry == 12 and keep % entry == 0 and keep < len(data):
            # a shorter but valid time index: nothing short of walking every header of the
            # segment at startup can tell, so its largest timestamp may read low (time
            # lookups may skip the segment); offsets and records are unaffected
            return Damage("index", f"{action} {path.name} to a valid prefix", time_prefix=True)
    return Damage("index", f"{action} {path.name}")


def _damage_checkpoint(rng: random.Random, built: Built) -> Damage:
    path = built.directory / RECOVERY_CHECKPOINT_FILE
    action = rng.choice(("missing", "garbled", "stale", "stale", "future"))
    damage = Damage("checkpoint", action)
    if action == "missing":
        path.unlink(missing_ok=True)
    elif action == "garbled":
        path.write_bytes(rng.choice((b"", b"1\n", b"2\n5\n", b"1\n-4\n", rng.randbytes(12))))
    else:
        value = rng.randrange(built.segments[-1] + 1) if action == "stale" else 10**12
        path.write_bytes(f"1\n{value}\n".encode())
        damage.checkpoint = value
        damage.detail = f"{action} checkpoint {value}"
    return damage


def _apply_damage(rng: random.Random, built: Built, kind: str) -> Damage:
    marker = built.directory / CLEAN_SHUTDOWN_FILE
    if kind == "clean_marker":
        if built.clean:
            marker.unlink()
            return Damage(kind, "clean-shutdown marker removed")
        marker.write_bytes(b"")  # a stale marker over an unclean shutdown
        built.clean = True
        return Damage(kind, "stale clean-shutdown marker after a crash")
    if kind == "index":
        return _damage_index(rng, built)
    if kind == "checkpoint":
        damage = _damage_checkpoint(rng, built)
        if damage.checkpoint is None and not built.clean:
            damage.checkpoint = 0  # unreadable: recovery must scan everything
        return damage
    return _damage_log_file(rng, built, kind)


# ---------------------------------------------------------------------------- the checks


class Checker:
    """Reads a reopened partition the way a careful client would and judges every answer."""

    def __init__(
        self, log: PartitionLog, built: Built, damage: Damage, ctx: str, rng: random.Random
    ) -> None:
        self.log = log
        self.built = built
        self.damage = damage
        self.ctx = ctx
        self.rng = rng
        self.by_base = {b.base_offset: b for b in built.batches}
        self.bases = sorted(self.by_base)
        self.scanned = {s.base_offset for s in log.segments() if s.needs_recovery}
        self.served: dict[int, Stored] = {}
        self.highest_served = -1  # as served: a shifted batch counts where it was served
        self.error_segments: set[int] = set()
        self._decoded: dict[bytes, tuple[BatchHeader, list[Record]]] = {}

    def fail(self, message: str) -> None:
        pytest.fail(f"{self.ctx}: {message}", pytrace=True)

    def lenient(self, segment: int) -> bool:
        """A damaged segment that recovery did not scan: damage surfaces on read."""
        return segment == self.damage.segment and segment not in self.scanned

    def lost_ok(self, batch: Stored) -> bool:
        return self.damage.touches(batch)

    # ------------------------------------------------------------------ reading

    def read(self, offset: int, max_bytes: int) -> list[tuple[BatchHeader, list[Record]]] | None:
        """Client-checked batches of one read; None when it raised CorruptLogError."""
        try:
            result = self.log.read(offset, max_bytes)
        except CorruptLogError as exc:
            segment = int(Path(exc.path).name.split(".")[0])
            if not self.lenient(segment):
                self.fail(f"read({offset}) raised {exc!r} outside a damaged, unscanned segment")
            self.error_segments.add(segment)
            return None
        except OffsetOutOfRangeError as exc:
            self.fail(f"read({offset}) inside [log start, high watermark) raised {exc!r}")
            raise
        except Exception as exc:  # any other type is the failure being tested
            self.fail(f"read({offset}) raised {type(exc).__name__}: {exc}")
            raise
        batches = self._client_side(result.data, offset)
        previous = offset - 1
        for header, records in batches:
            stored = self._match(header, records)
            self._no_silent_skip(previous + 1, stored.base_offset, offset)
            previous = stored.last_offset
            self.served[stored.base_offset] = stored
            self.highest_served = max(self.highest_served, header.last_offset)
        if not batches:
            self._no_silent_skip(offset, 2**63, offset)
        return batches

    def _client_side(self, data: bytes, offset: int) -> list[tuple[BatchHeader, list[Record]]]:
        out = []
        position = 0
        while position < len(data):
            batch = data[position : position + 12 + int.from_bytes(data[position + 8 :][:4])]
            decoded = self._decoded.get(batch)
            if decoded is None:
                try:
                    validate_batch(batch)
                    decoded = decode_batch(batch)
                except RecordError as exc:
                    self.fail(f"read({offset}) served a corrupt batch at byte {position}: {exc}")
                    raise
                self._decoded[batch] = decoded
            out.append(decoded)
            position += decoded[0].size
        if out and out[0][0].last_offset < offset:
            self.fail(f"read({offset}) starts with a batch ending at {out[0][0].last_offset}")
        return out

    def _match(self, header: BatchHeader, records: list[Record]) -> Stored:
        stored = self.by_base.get(header.base_offset)
        if stored is not None and tuple(records) == stored.records:
            return stored
        for batch in self.built.batches:  # the blind spot (see the module docstring)
            moved = header.base_offset - batch.base_offset
            if self.unprovable_offset(batch) and list(batch.records) == [
                r._replace(offset=r.offset - moved) for r in records
            ]:
                return batch
        self.fail(f"served batch {header.base_offset}..{header.last_offset} holds records "
                  "never appended at those offsets")
        raise AssertionError

    def unprovable_offset(self, batch: Stored) -> bool:
        """A flipped base offset no neighbour can contradict: the last batch of the log, or
        one whose neighbour in the segment is damaged too."""
        damage = self.damage
        inside = [p - batch.position for p in damage.changed
                  if batch.position <= p < batch.position + batch.size]
        if not inside or not all(p in (*BASE_OFFSET_BYTES, *EPOCH_BYTES) for p in inside):
            return False
        own = [b for b in self.built.batches if b.segment == batch.segment]
        i = own.index(batch)
        neighbours = own[max(i - 1, 0) : i] + own[i + 1 : i + 2]
        last = batch is self.built.batches[-1]
        return last or any(damage.touches(b) and not damage.harmless(b) for b in neighbours)

    def _no_silent_skip(self, start: int, stop: int, requested: int) -> None:
        """Every stored batch ending at or after ``start`` and beginning before ``stop``."""
        i = bisect.bisect_right(self.bases, start) - 1
        for base in self.bases[max(i, 0) :]:
            if base >= stop:
                break
            batch = self.by_base[base]
            if batch.last_offset >= start and not self.lost_ok(batch):
                self.fail(
                    f"read({requested}) skipped untouched batch {base}..{batch.last_offset} "
                    f"(segment {batch.segment}, byte {batch.position})"
                )

    def next_after(self, offset: int) -> int:
        i = bisect.bisect_right(self.bases, offset)
        if i and self.by_base[self.bases[i - 1]].last_offset >= offset:
            return self.by_base[self.bases[i - 1]].last_offset + 1
        return self.bases[i] if i < len(self.bases) else 2**62

    def walk(self) -> None:
        offset = self.log.log_start_offset
        high_watermark = self.log.high_watermark
        while offset < high_watermark:
            batches = self.read(offset, self.rng.choice((1, 500, 4096, 1 << 16)))
            if batches is None:
                offset = self.next_after(offset)
            elif not batches:
                break
            else:
                offset = batches[-1][0].last_offset + 1
        for batch in self.built.batches:
            if batch.base_offset in self.served or self.lost_ok(batch):
                continue
            if batch.segment not in self.error_segments:
                self.fail(
                    f"untouched batch {batch.base_offset} (segment {batch.segment}) was never "
                    "served by a walk from the log start"
                )

    def random_reads(self, count: int) -> None:
        start, end = self.log.log_start_offset, self.log.high_watermark
        for _ in range(count):
            if end > start:
                self.read(self.rng.randrange(start, end), self.rng.choice((1, 2048, 1 << 20)))
        for offset in (end + 1, end + 10**6, start - 1):
            if offset < 0:
                continue
            try:
                self.log.read(offset, 100)
            except OffsetOutOfRangeError:
                continue
            self.fail(f"read({offset}) outside [{start}, {end}] did not raise OffsetOutOfRange")
        if self.log.read(end, 100).data:
            self.fail(f"read at the high watermark {end} returned data")

    def time_lookups(self) -> None:
        """offset_for_time against the model (only when no batch was damaged)."""
        stamps = [b.max_timestamp for b in self.built.batches]
        for stamp in [*self.rng.sample(stamps, min(6, len(stamps))), min(stamps) - 1, 2**62]:
            target = stamp + self.rng.choice((-1, 0, 0, 1))
            expected = next((b.base_offset for b in self.built.batches
                             if b.max_timestamp >= target), None)
            got = self.log.offset_for_time(target)
            if got != expected:
                self.fail(f"offset_for_time({target}) = {got}, expected {expected}")

    # ------------------------------------------------------------------ recovery report

    def recovery_report(self, sizes_before: dict[int, int]) -> None:
        """Events name scanned segments, account for every byte cut, and quarantine is kept."""
        events = self.log.recovery.events
        segments = {s.base_offset: s for s in self.log.segments()}
        last = self.built.segments[-1]
        for event in events:
            if event.segment_base_offset not in self.scanned:
                self.fail(f"event {event} names a segment recovery did not scan")
            if event.kind == "truncated" and event.segment_base_offset != last:
                self.fail(f"event {event}: only the last segment may lose a torn tail")
            if event.kind == "quarantined":
                kept = Path(event.quarantine_file)
                if kept.parent != self.built.directory / QUARANTINE_DIR:
                    self.fail(f"event {event}: quarantine file outside {QUARANTINE_DIR}/")
                if kept.stat().st_size != event.length:
                    self.fail(f"event {event}: quarantine file holds {kept.stat().st_size} bytes")
        for base, segment in segments.items():
            cut = sum(e.length for e in events if e.segment_base_offset == base)
            if sizes_before[base] - segment.size != cut:
                self.fail(
                    f"segment {base} went from {sizes_before[base]} to {segment.size} bytes "
                    f"but the events report {cut} bytes cut"
                )
        self._damage_reported(events)

    def _damage_reported(self, events: list[RecoveryEvent]) -> None:
        segment = self.damage.segment
        if segment is None or segment not in self.scanned:
            return
        own = sorted((b for b in self.built.batches if b.segment == segment),
                     key=lambda b: b.position)
        lost = [b for b in own if b.base_offset not in self.served and self.lost_ok(b)]
        if not lost:
            return
        kinds = {e.kind for e in events if e.segment_base_offset == segment}
        survivor_after = any(b.position > lost[0].position and not self.lost_ok(b) for b in own)
        if survivor_after and "quarantined" not in kinds:
            self.fail(f"batch {lost[0].base_offset} lost in the middle but nothing quarantined")
        if not kinds and any(b.position < self.damage.size_after for b in lost):
            self.fail(f"batch {lost[0].base_offset} lost without a recovery event")

    def torn_tail(self) -> None:
        """Garbage after the active segment's last batch, or a cut inside that batch, is cut
        at exactly that batch boundary and reported with the last offset kept (as "trimmed"
        when the garbage is zeros only, like the space preallocation leaves)."""
        damage, last = self.damage, self.built.segments[-1]
        own = [b for b in self.built.batches if b.segment == last]
        if damage.segment != last or damage.kind not in ("truncate", "append_garbage"):
            return
        if damage.kind == "truncate":
            assert damage.cut_from is not None
            torn = [b for b in own if b.position < damage.cut_from < b.position + b.size]
            if not torn:
                return  # cut at a batch boundary: indistinguishable from a shorter log
            kept, at = [b for b in own if b.position < torn[0].position], torn[0].position
        else:
            kept, at = own, own[-1].position + own[-1].size
        # what is left of a cut batch may be zeros only (a base offset's high bytes): then it
        # looks like preallocated space, and nothing that was whole is lost either way
        zeros = damage.zero_tail or (
            damage.kind == "truncate" and damage.cut_from is not None
            and damage.cut_from - at <= damage.zeros_before_cut)
        kind = "trimmed" if zeros else "truncated"
        expected = (kind, at, damage.size_after - at,
                    kept[-1].last_offset if kept else last - 1)
        events = [(e.kind, e.position, e.length, e.last_valid_offset)
                  for e in self.log.recovery.events]
        if events != [expected]:
            self.fail(f"torn tail reported as {events}, expected {[expected]}")

    def design(self, recovery_point: int | None) -> None:
        """Which segments the open scanned, by the rules of ARCHITECTURE.md section 3."""
        last = self.built.segments[-1]
        if not self.built.clean and recovery_point is not None:
            for base in self.built.segments:
                if (base >= recovery_point or base == last) and base not in self.scanned:
                    self.fail(f"unclean open did not scan segment {base} (recovery point "
                              f"{recovery_point})")
        segment = self.damage.segment
        flips_in_records = (
            self.damage.kind == "bitflip"
            and self.built.clean
            and segment != last
            and not any(self.damage.header_touched(b) for b in self.built.batches
                        if b.segment == segment)
        )
        if flips_in_records:
            if segment in self.scanned or self.log.recovery.events:
                self.fail("a clean open scanned a sealed segment whose records were flipped")
            for batch in self.built.batches:
                if self.damage.touches(batch):
                    try:
                        self.log.read(batch.base_offset, 1)
                    except CorruptLogError:
                        continue
                    self.fail(f"read of flipped batch {batch.base_offset} did not raise")

    def scrub_finds_damage(self) -> None:
        """Scrub reports damage only where recovery left it, and all of it in sealed segments."""
        report = scrub(self.log)
        for damaged in report.damaged:
            if not self.lenient(damaged.segment_base_offset):
                self.fail(f"scrub reported {damaged} in a healthy or recovered segment")
        segment = self.damage.segment
        if segment is None or not self.lenient(segment) or segment == self.built.segments[-1]:
            return
        ranges = [d for d in report.damaged if d.segment_base_offset == segment]
        for batch in self.built.batches:
            if (
                not self.damage.touches(batch)
                or self.damage.harmless(batch)
                or self.unprovable_offset(batch)
            ):
                continue
            if self.damage.cut_from is not None and batch.position >= self.damage.cut_from:
                continue  # gone with the cut end of the file
            end = batch.position + batch.size
            if not any(d.position < end and batch.position < d.position + d.length
                       for d in ranges):
                self.fail(f"scrub missed damaged batch {batch.base_offset} at byte "
                          f"{batch.position}: {report.damaged}")


# ---------------------------------------------------------------------------- the trial


def _append_after(checker: Checker, log: PartitionLog) -> Stored:
    """Appends continue above every offset that survived and read back intact."""
    built = checker.built
    records = [NewRecord(b"after-reopen", None, (), BASE_TIME_MS)]
    try:
        result = log.append(encode_batch(records, timestamp=BASE_TIME_MS))
    except Exception as exc:  # the failure being tested
        checker.fail(f"append after reopen raised {type(exc).__name__}: {exc}")
        raise
    alive = [checker.highest_served]
    alive += [b.last_offset for b in built.batches if not checker.damage.touches(b)]
    if result.base_offset <= max(alive):
        checker.fail(f"append after reopen got offset {result.base_offset}, not above the "
                     f"surviving offset {max(alive)}")
    stored = Stored(result.base_offset, result.last_offset, BASE_TIME_MS,
                    _expected(records, result.base_offset, BASE_TIME_MS), -1, -1, 0)
    checker.by_base[stored.base_offset] = stored
    checker.bases = sorted(checker.by_base)
    got = checker.read(result.base_offset, 1)
    if not got or got[0][0].base_offset != result.base_offset:
        checker.fail(f"the batch appended after reopen is not readable: {got}")
    return stored


def _reopen(built: Built, ctx: str) -> PartitionLog:
    try:
        return PartitionLog.open(built.directory, built.config, clock=built.clock)
    except Exception as exc:  # the failure being tested
        pytest.fail(f"{ctx}: opening the damaged partition raised {type(exc).__name__}: {exc}")


def run_trial(root: Path, kind: str, trial: int) -> None:
    rng = random.Random(f"{SEED}:{kind}:{trial}")
    ctx = f"MOLDAU_SEED={SEED} MOLDAU_CORRUPTION_TRIAL={trial} kind={kind}"
    directory = root / f"{kind}-{trial}" / "p-0"
    log, built = _build(directory, rng)
    built.clean = kind != "checkpoint" and rng.random() < 0.5
    if kind == "clean_marker":
        built.clean = rng.random() < 0.8
    if built.clean:
        log.close()
    else:
        log.abandon()
    damage = _apply_damage(rng, built, kind)
    ctx += f" clean={built.clean} damage: {damage.detail}"
    recovery_point = damage.checkpoint if kind == "checkpoint" else built.segments[-1]
    sizes_before = {b: segment_path(directory, b, LOG_SUFFIX).stat().st_size
                    for b in built.segments}
    reopened = _reopen(built, ctx)
    checker = Checker(reopened, built, damage, ctx, rng)
    checker.walk()
    checker.random_reads(12)
    checker.recovery_report(sizes_before)
    checker.torn_tail()
    checker.design(recovery_point)
    checker.scrub_finds_damage()
    if damage.segment is None:  # indexes, checkpoint, marker: nothing may be lost or moved
        if reopened.recovery.events:
            checker.fail(f"no data was damaged, yet recovery reported {reopened.recovery.events}")
        if len(checker.served) != len(built.batches):
            checker.fail(f"served {len(checker.served)} of {len(built.batches)} batches")
        if not damage.time_prefix:
            checker.time_lookups()
    appended = _append_after(checker, reopened)
    if trial % 3 == 0:  # and once more, cleanly: recovery's result is stable
        served = set(checker.served)
        reopened.close()
        again = _reopen(built, ctx + " (second open)")
        second = Checker(again, built, damage, ctx + " (second open)", rng)
        second.by_base[appended.base_offset] = appended
        second.bases = sorted(second.by_base)
        second.walk()
        if not served <= set(second.served):
            checker.fail(f"second open lost batches {sorted(served - set(second.served))}")
        again.close()
    else:
        reopened.close()
    shutil.rmtree(directory.parent)


@pytest.mark.parametrize("kind", list(KINDS))
def test_corruption(tmp_path: Path, kind: str) -> None:
    for trial in _trials(kind):
        try:
            run_trial(tmp_path, kind, trial)
        except pytest.fail.Exception:
            raise
        except Exception as exc:  # an engine call raised: the failure gets its seed too
            where = f"MOLDAU_SEED={SEED} MOLDAU_CORRUPTION_TRIAL={trial} kind={kind}"
            raise AssertionError(f"{where}: {type(exc).__name__}: {exc}") from exc


def test_flipped_base_offset_ending_a_segment_keeps_the_next_one(tmp_path: Path) -> None:
    """Regression: a trusted segment's last batch with its base offset flipped upward made
    the scan of the next segment reject all of it (the whole active segment was cut)."""
    config = TopicConfig.from_dict({"segment.bytes": 4096, "segment.preallocate.bytes": 0})
    log = PartitionLog.open(tmp_path / "p-0", config, clock=ManualClock())
    for i in range(60):
        log.append(encode_batch([NewRecord(b"%d" % i * 30)], timestamp=BASE_TIME_MS))
    penultimate = log.segments()[-2]
    last = list(penultimate.iter_headers(0))[-1]
    end = log.log_end_offset
    log.abandon()
    with penultimate.log.path.open("r+b") as f:
        f.seek(last.position + 6)
        byte = f.read(1)[0]
        f.seek(last.position + 6)
        f.write(bytes([byte ^ 4]))  # base offset + 1024, outside the CRC
    reopened = PartitionLog.open(tmp_path / "p-0", config, clock=ManualClock())
    assert reopened.log_end_offset == end
    events = [(e.kind, e.segment_base_offset, e.length) for e in reopened.recovery.events]
    assert events == [("quarantined", penultimate.base_offset, last.header.size)]
    reopened.close()


def test_a_flipped_base_offset_in_a_trusted_segment_is_never_served(tmp_path: Path) -> None:
    """Regression: after a clean shutdown the CRC cannot see a changed base offset, and reads
    served the batch at offsets 2 higher, over its neighbour's (alone, and inside a longer
    read). Now it is not served, the read of it raises, and the scrub names it."""
    config = TopicConfig.from_dict(
        {"segment.bytes": 8192, "index.interval.bytes": 300, "segment.preallocate.bytes": 0}
    )
    log = PartitionLog.open(tmp_path / "p-0", config, clock=ManualClock())
    for i in range(60):
        log.append(encode_batch([NewRecord(b"%03d" % i * 25)] * 4, timestamp=BASE_TIME_MS))
    segment = log.segments()[0]
    items = list(segment.iter_headers(0))
    before, flipped = items[len(items) // 2 - 1 : len(items) // 2 + 1]
    log.close()
    with segment.log.path.open("r+b") as f:
        f.seek(flipped.position + 7)
        byte = f.read(1)[0]
        f.seek(flipped.position + 7)
        f.write(bytes([byte ^ 2]))  # base offset + 2: it overlaps the next batch
    reopened = PartitionLog.open(tmp_path / "p-0", config, clock=ManualClock())
    served = [r.offset for r in decode_batches(reopened.read(before.header.base_offset,
                                                              1 << 20).data)]
    assert served == list(range(before.header.base_offset, flipped.header.base_offset))
    with pytest.raises(CorruptLogError):
        reopened.read(flipped.header.base_offset, 1)
    report = scrub(reopened)
    assert [(d.position, d.length) for d in report.damaged] == [
        (flipped.position, flipped.header.size)
    ]
    reopened.close()


def test_a_segment_end_lowered_into_a_gap_loses_the_batch_before_it_not_its_neighbour(
    tmp_path: Path,
) -> None:
    """Regression (MOLDAU_SEED=3297213834 trial 52): damage, then an intact batch, then the
    segment's last batch with its base offset lowered into the damaged range. Recovery took
    the intact batch for the changed one, quarantined it and served the last batch at the
    wrong offsets; the next segment's base offset says which of the two moved."""
    config = TopicConfig.from_dict({"segment.bytes": 4096, "segment.preallocate.bytes": 0})
    log = PartitionLog.open(tmp_path / "p-0", config, clock=ManualClock())
    for i in range(60):
        log.append(encode_batch([NewRecord(b"%d" % i * 30)], timestamp=BASE_TIME_MS))
    segment = log.segments()[-2]
    first, second, intact, lowered = list(segment.iter_headers(0))[-4:]
    end = log.log_end_offset
    log.abandon()
    with segment.log.path.open("r+b") as f:
        for damaged in (first, second):  # inside the records: the CRC sees it
            f.seek(damaged.position + damaged.header.size - 3)
            byte = f.read(1)[0]
            f.seek(damaged.position + damaged.header.size - 3)
            f.write(bytes([byte ^ 1]))
        f.seek(lowered.position)  # outside the CRC: it now claims the second one's offset
        f.write(second.header.base_offset.to_bytes(8, "big"))
    reopened = PartitionLog.open(tmp_path / "p-0", config, clock=ManualClock())
    assert reopened.log_end_offset == end
    served = decode_batch(reopened.read(intact.header.base_offset, 1).data)[1]
    assert [r.value for r in served] == [b"%d" % (intact.header.base_offset) * 30]
    events = [(e.kind, e.length) for e in reopened.recovery.events]
    assert events == [
        ("quarantined", first.header.size + second.header.size),
        ("quarantined", lowered.header.size),
    ]
    reopened.close()


def test_a_flipped_batch_after_the_intact_neighbour_has_no_vote(tmp_path: Path) -> None:
    """Regression (MOLDAU_SEED=2377567020 trial 34): damage, a batch with its base offset
    flipped upward, an intact batch, then another batch with its base offset flipped. The
    third was asked whether the intact batch or the first flipped one had moved; agreeing
    with neither, its "no" kept the flipped batch, and every batch after it was cut as a
    torn tail. A batch that agrees with neither has no vote now."""
    config = TopicConfig.from_dict({"segment.preallocate.bytes": 0})
    log = PartitionLog.open(tmp_path / "p-0", config, clock=ManualClock())
    for i in range(20):
        log.append(encode_batch([NewRecord(b"%d" % i * 30)], timestamp=BASE_TIME_MS))
    segment = log.segments()[-1]
    items = list(segment.iter_headers(0))
    damaged, flipped, intact, flipped_too = items[8:12]
    log.abandon()
    with segment.log.path.open("r+b") as f:
        f.seek(damaged.position + damaged.header.size - 3)  # inside the records: the CRC sees it
        byte = f.read(1)[0]
        f.seek(damaged.position + damaged.header.size - 3)
        f.write(bytes([byte ^ 1]))
        for batch, bit in ((flipped, 1 << 24), (flipped_too, 1 << 22)):  # outside the CRC
            f.seek(batch.position)
            f.write((batch.header.base_offset ^ bit).to_bytes(8, "big"))
    reopened = PartitionLog.open(tmp_path / "p-0", config, clock=ManualClock())
    lost = {damaged.header.base_offset, flipped.header.base_offset,
            flipped_too.header.base_offset}
    served = [r.offset for r in decode_batches(reopened.read(0, 1 << 20).data)]
    offset = served[-1] + 1
    while offset < reopened.log_end_offset:  # past the holes the damage left
        served += [r.offset for r in decode_batches(reopened.read(offset, 1 << 20).data)]
        offset = max(served[-1] + 1, offset + 1)
    assert [o for o in range(20) if o not in lost] == [o for o in served if o < 20]
    assert intact.header.base_offset in served
    assert reopened.log_end_offset == 20
    assert "truncated" not in [e.kind for e in reopened.recovery.events]
    reopened.close()
