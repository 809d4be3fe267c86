"""Simulated power loss at hundreds of random points (RELIABILITY-PLAN T2).

With the default ``durability=fsync`` no acknowledged record may be lost. With
``durability=async`` only the suffix after the last completed flush may be lost, never a hole.
Recovery must never raise.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from engine.clock import ManualClock
from engine.config import TopicConfig
from engine.errors import OutOfOrderSequenceError
from engine.log.partition_log import PartitionLog
from engine.records.batch import decode_batches

from .conftest import make_batch
from .crashfs import CrashFileIO

CRASH_POINTS = int(os.environ.get("MOLDAU_POWER_LOSS_POINTS", "300"))


def _values(log: PartitionLog) -> dict[int, bytes | None]:
    out: dict[int, bytes | None] = {}
    offset = log.log_start_offset
    while offset < log.high_watermark:
        data = log.read(offset, 1 << 20).data
        records = [r for r in decode_batches(data) if r.offset >= offset]
        for record in records:
            out[record.offset] = record.value
        offset = records[-1].offset + 1
    return out


@pytest.mark.parametrize("durability", ["fsync", "async"])
def test_power_loss_never_loses_acknowledged_records(tmp_path: Path, durability: str) -> None:
    seed = int(os.environ.get("MOLDAU_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    clock = ManualClock()
    config = TopicConfig.from_dict(
        {"segment.bytes": "6000", "durability": durability, "index.interval.bytes": "512"}
    )
    directory = tmp_path / "p-0"
    appended: dict[int, bytes | None] = {}  # offset -> value, everything ever appended
    durable_end = 0  # offsets below this must survive
    points = CRASH_POINTS if durability == "fsync" else CRASH_POINTS // 2
    for point in range(points):
        fs = CrashFileIO()
        log = PartitionLog.open(directory, config, fileio=fs, clock=clock)
        survived = _values(log)
        # everything acknowledged survives, with the same content
        for offset in range(durable_end):
            assert survived.get(offset) == appended[offset], (
                f"seed={seed} point={point}: acknowledged offset {offset} lost or changed"
            )
        # what survived is a prefix of what was written: no holes, nothing invented
        assert sorted(survived) == list(range(len(survived))), f"seed={seed}: hole in the log"
        for offset, value in survived.items():
            assert appended.get(offset) == value, f"seed={seed}: offset {offset} invented"
        for offset in [o for o in appended if o >= len(survived)]:
            del appended[offset]
        assert log.log_end_offset == len(survived)
        durable_end = len(survived) if durability == "async" else durable_end
        for _ in range(rng.randint(0, 6)):
            count = rng.randint(1, 20)
            tag = rng.randrange(10**9)
            result = log.append(make_batch(count, size=rng.randint(1, 300), tag=tag))
            batch_values = [
                r.value for r in decode_batches(log.read(result.base_offset, 1 << 20).data)
                if r.offset >= result.base_offset
            ][:count]
            for i, value in enumerate(batch_values):
                appended[result.base_offset + i] = value
            if durability == "fsync":
                durable_end = result.last_offset + 1
            elif rng.random() < 0.3:
                log.flush()
                durable_end = log.log_end_offset
        log.abandon()
        fs.crash(rng)
    final = PartitionLog.open(directory, config, clock=clock)
    assert all(final.read(o, 1).data for o in range(0, durable_end, 97))
    final.close()


def test_idempotent_retry_after_power_loss_is_deduplicated(tmp_path: Path) -> None:
    rng = random.Random(7)
    config = TopicConfig.from_dict({"segment.bytes": "4096"})
    directory = tmp_path / "p-0"
    sequence = 0
    for _ in range(50):
        fs = CrashFileIO()
        log = PartitionLog.open(directory, config, fileio=fs)
        batch = make_batch(3, producer_id=42, producer_epoch=0, base_sequence=sequence)
        first = log.append(batch)
        retry = log.append(batch)
        assert retry.duplicate
        assert retry.base_offset == first.base_offset
        sequence += 3
        with pytest.raises(OutOfOrderSequenceError):
            log.append(make_batch(1, producer_id=42, producer_epoch=0, base_sequence=sequence + 5))
        log.abandon()
        fs.crash(rng)
        reopened = PartitionLog.open(directory, config, fileio=CrashFileIO())
        again = reopened.append(batch)
        assert again.duplicate
        assert again.base_offset == first.base_offset
        reopened.abandon()
