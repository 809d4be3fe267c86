"""Wall-clock jumps of +-1 h through the engine's injectable clock (RELIABILITY-PLAN T13).

In process, with :class:`engine.clock.ManualClock`: ``set_wall`` moves only the wall clock
(what NTP stepping a host's clock does); the monotonic clock goes on. What must hold:

- offsets stay contiguous and increasing whatever the wall clock does;
- each segment's time index is the running maximum of its batches' timestamps, strictly
  increasing, and ``offset_for_time`` answers as a scan of the whole log would; before and
  after a clean or an unclean reopen;
- retention (the segment's largest timestamp against ``retention.ms``, as Kafka's) deletes
  nothing written after a jump, and nothing at all for a jump shorter than ``retention.ms``;
- queue leases expire on the monotonic clock: a wall jump neither expires nor extends them.

Both timestamp types run: ``LogAppendTime`` (the broker's clock stamps each batch) and
``CreateTime`` with the producer on the same host (its timestamps jump with the clock).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.broker import Broker
from engine.clock import ManualClock
from engine.config import TopicConfig
from engine.log.partition_log import PartitionLog
from engine.records.batch import encode_batch
from engine.records.record import NewRecord
from engine.views.queues import QueueConfig, QueueManager

T0 = 1_700_000_000_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
#: Wall-clock jumps applied between rounds of appends (ms); every round appends 40 batches.
JUMPS = (0, -HOUR_MS, +2 * HOUR_MS, -HOUR_MS, +HOUR_MS, -HOUR_MS)
TIMESTAMP_TYPES = ("LogAppendTime", "CreateTime")


def _open(path: Path, clock: ManualClock, **config: str) -> PartitionLog:
    base = {"segment.bytes": "4096", "index.interval.bytes": "200"}
    return PartitionLog.open(path, TopicConfig.from_dict({**base, **config}), clock=clock)


def _append_round(plog: PartitionLog, clock: ManualClock, batches: int, tag: str) -> list[int]:
    """Append ``batches`` 3-record batches, 1 s apart; returns their base offsets."""
    bases = []
    for n in range(batches):
        now = clock.now_ms()
        records = [NewRecord(f"{tag}:{n}:{i}".encode().ljust(60, b"."), None, (), now + i)
                   for i in range(3)]
        bases.append(plog.append(encode_batch(records)).base_offset)
        clock.advance(1000)
    return bases


def _batches(plog: PartitionLog) -> list[list[tuple[int, int]]]:
    """Per segment, ``(base offset, max timestamp)`` of each stored batch, from the log."""
    return [[(item.header.base_offset, item.header.max_timestamp)
             for item in segment.iter_headers(0)] for segment in plog.segments()]


def _check_time_indexes(plog: PartitionLog, where: str) -> None:
    """Every segment's time index is its running maximum, sampled; largest timestamp right."""
    for segment, batches in zip(plog.segments(), _batches(plog), strict=True):
        index = segment.time_index
        entries = [index.entry(slot) for slot in range(index.entries)]
        stamps = [ts for ts, _ in entries]
        assert stamps == sorted(set(stamps)), f"{where}: {segment.base_offset}: {entries}"
        offsets = [offset for _, offset in entries]
        assert offsets == sorted(offsets), f"{where}: {segment.base_offset}: {entries}"
        by_offset = dict(batches)
        for timestamp, offset in entries:
            up_to = [ts for base, ts in batches if base <= offset]
            assert by_offset.get(offset) == timestamp == max(up_to), (
                f"{where}: segment {segment.base_offset}: entry ({timestamp}, {offset}) is not "
                f"the running maximum of the batches up to it"
            )
        if batches:
            assert segment.largest_timestamp == max(ts for _, ts in batches), where


def _first_at_or_after(plog: PartitionLog, timestamp: int) -> int | None:
    """What ``offset_for_time`` must answer: a scan of every batch in log order."""
    for batches in _batches(plog):
        for base, max_timestamp in batches:
            if max_timestamp >= timestamp:
                return base
    return None


def _check_time_lookups(plog: PartitionLog, probes: list[int], where: str) -> None:
    for probe in probes:
        assert plog.offset_for_time(probe) == _first_at_or_after(plog, probe), (
            f"{where}: offset_for_time({probe})"
        )


@pytest.mark.parametrize("timestamp_type", TIMESTAMP_TYPES)
def test_offsets_and_time_index_hold_through_wall_clock_jumps(
    tmp_path: Path, timestamp_type: str
) -> None:
    clock = ManualClock(now_ms=T0)
    plog = _open(tmp_path / "p-0", clock, **{"message.timestamp.type": timestamp_type})
    bases: list[int] = []
    probes: list[int] = []
    for round_, jump in enumerate(JUMPS):
        clock.set_wall(clock.now_ms() + jump)
        probes += [clock.now_ms() - 1, clock.now_ms(), clock.now_ms() + 20_500]
        bases += _append_round(plog, clock, 40, f"r{round_}")
    assert bases == [3 * n for n in range(len(JUMPS) * 40)], "offsets not contiguous"
    assert plog.log_end_offset == 3 * len(bases)
    assert plog.segment_count > 10  # jumps happened inside and across many segments
    stamps = [ts for batches in _batches(plog) for _, ts in batches]
    assert stamps != sorted(stamps)  # the stored timestamps did go backwards
    probes += [T0 - 2 * HOUR_MS, T0 + 3 * HOUR_MS, *random.Random(5).sample(stamps, 40)]

    _check_time_indexes(plog, f"{timestamp_type} live")
    _check_time_lookups(plog, probes, f"{timestamp_type} live")
    expected = {probe: plog.offset_for_time(probe) for probe in probes}

    plog.close()  # clean: sealed segments are trusted, indexes loaded
    plog = _open(tmp_path / "p-0", clock, **{"message.timestamp.type": timestamp_type})
    _check_time_indexes(plog, f"{timestamp_type} clean reopen")
    assert {probe: plog.offset_for_time(probe) for probe in probes} == expected
    assert _append_round(plog, clock, 1, "after") == [plog.log_end_offset - 3]

    plog.abandon()  # unclean: the tail is scanned and its indexes rebuilt
    plog = _open(tmp_path / "p-0", clock, **{"message.timestamp.type": timestamp_type})
    assert plog.log_end_offset == 3 * (len(bases) + 1)
    _check_time_indexes(plog, f"{timestamp_type} unclean reopen")
    _check_time_lookups(plog, probes, f"{timestamp_type} unclean reopen")
    plog.close()


@pytest.mark.parametrize("timestamp_type", TIMESTAMP_TYPES)
@pytest.mark.parametrize("jump_ms", [-HOUR_MS, HOUR_MS])
def test_a_jump_shorter_than_retention_deletes_nothing(
    tmp_path: Path, timestamp_type: str, jump_ms: int
) -> None:
    clock = ManualClock(now_ms=T0)
    plog = _open(tmp_path / "p-0", clock, **{"message.timestamp.type": timestamp_type,
                                             "retention.ms": str(2 * HOUR_MS)})
    _append_round(plog, clock, 60, "before")
    clock.set_wall(clock.now_ms() + jump_ms)
    assert plog.apply_retention() == 0
    _append_round(plog, clock, 60, "after")
    clock.set_wall(clock.now_ms() - jump_ms)  # the clock is corrected
    assert plog.apply_retention() == 0
    _append_round(plog, clock, 10, "corrected")
    assert plog.apply_retention() == 0
    assert plog.log_start_offset == 0
    plog.close()


@pytest.mark.parametrize("timestamp_type", TIMESTAMP_TYPES)
def test_retention_keeps_segments_written_after_a_backward_jump(
    tmp_path: Path, timestamp_type: str
) -> None:
    """Written while the clock was an hour behind, then the clock is corrected: segments that
    look an hour old are not deleted before the older ones, and not before their own age (by
    the monotonic clock) passes retention.ms."""
    clock = ManualClock(now_ms=T0)
    plog = _open(tmp_path / "p-0", clock, **{"message.timestamp.type": timestamp_type,
                                             "retention.ms": str(30 * MINUTE_MS)})
    _append_round(plog, clock, 60, "old")
    clock.set_wall(clock.now_ms() - HOUR_MS)
    first_new = plog.log_end_offset
    _append_round(plog, clock, 60, "new")
    assert plog.apply_retention() == 0
    clock.set_wall(clock.now_ms() + HOUR_MS)  # corrected: "new" segments look 1 h old
    assert plog.apply_retention() == 0
    assert plog.log_start_offset == 0
    clock.advance(25 * MINUTE_MS)  # "old" is 27 min old, "new" 25: both younger than 30
    assert plog.apply_retention() == 0
    clock.advance(10 * MINUTE_MS)  # now both are over 30 min old
    assert plog.apply_retention() > 0
    assert plog.log_start_offset > first_new
    plog.close()


@pytest.mark.parametrize("timestamp_type", TIMESTAMP_TYPES)
def test_retention_keeps_segments_written_after_a_forward_jump(
    tmp_path: Path, timestamp_type: str
) -> None:
    """Written while the clock was an hour ahead, then the clock is corrected: those segments
    stay until their own timestamps are older than retention.ms. Segments written before a
    forward jump longer than retention.ms are deleted at once: retention follows the wall
    clock, as Kafka's does."""
    clock = ManualClock(now_ms=T0)
    plog = _open(tmp_path / "p-0", clock, **{"message.timestamp.type": timestamp_type,
                                             "retention.ms": str(30 * MINUTE_MS)})
    _append_round(plog, clock, 60, "old")
    clock.set_wall(clock.now_ms() + HOUR_MS)
    first_new = plog.log_end_offset
    _append_round(plog, clock, 60, "new")
    new_segments = [s.base_offset for s in plog.segments() if s.base_offset >= first_new]
    assert len(new_segments) > 1
    assert plog.apply_retention() > 0  # "old" is an hour old by the wall clock
    assert plog.log_start_offset == first_new
    clock.set_wall(clock.now_ms() - HOUR_MS)
    clock.advance(45 * MINUTE_MS)  # "new" is in the future, then 45 min old in real time
    assert plog.apply_retention() == 0
    assert [s.base_offset for s in plog.segments()][: len(new_segments)] == new_segments
    clock.advance(50 * MINUTE_MS)  # now its timestamps are 35 min old
    assert plog.apply_retention() > 0
    plog.close()


# ---------------------------------------------------------------------- queue leases


@pytest.fixture
def queues(tmp_path: Path) -> Iterator[tuple[ManualClock, Broker, QueueManager]]:
    clock = ManualClock(now_ms=T0)
    broker = Broker.open(tmp_path / "data", background=False, clock=clock)
    broker.create_topic("jobs", 1)
    manager = QueueManager.open(broker, clock, state_partitions=1, rng=random.Random(7))
    manager.declare(QueueConfig(name="work", topic="jobs", lease_ms=60_000))
    broker.partition("jobs", 0).append(encode_batch([NewRecord(b"a"), NewRecord(b"b")]))
    yield clock, broker, manager
    manager.close()
    broker.close()


@pytest.mark.parametrize("jump_ms", [HOUR_MS, -HOUR_MS])
def test_leases_expire_on_the_monotonic_clock(
    queues: tuple[ManualClock, Broker, QueueManager], jump_ms: int
) -> None:
    clock, _broker, manager = queues
    first = manager.receive("work", 1)
    assert [d.value for d in first] == [b"a"]
    clock.set_wall(clock.now_ms() + jump_ms)  # a wall jump far past (or before) the lease
    assert manager.run_due() == 0
    second = manager.receive("work", 2)
    assert [d.value for d in second] == [b"b"]  # "a" is still leased
    clock.advance(59_000)
    assert manager.run_due() == 0
    assert manager.receive("work", 2) == []
    assert manager.ack("work", [first[0].lease]).succeeded == (first[0].lease,)
    clock.advance(1_001)  # the monotonic lease of "b" (60 s) ran out: the only expiry
    assert manager.run_due() == 1
    again = manager.receive("work", 2)
    assert [(d.value, d.delivery_count) for d in again] == [(b"b", 2)]
    assert manager.describe("work").counters.expired == 1
