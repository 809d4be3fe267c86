"""Log compaction throughput: one pass over a partition of keyed records.

200,000 records of 100 bytes over 10,000 random keys, in batches of 100 records, sealed into
segments of ``segment.bytes``. records/s = 200,000 / time of one ``LogCleaner.clean`` (both
passes, the swap and its fsyncs). Run with
``pytest benchmarks/test_compaction_bench.py --benchmark-only``; ``MOLDAU_BENCH_COMPACT_RECORDS``
sets the record count.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from engine.clock import SystemClock
from engine.config import TopicConfig
from engine.log.compaction import LogCleaner
from engine.log.fileio import OsFileIO
from engine.log.partition_log import PartitionLog
from engine.records.batch import Codec, NewRecord, encode_batch

RECORDS = int(os.environ.get("MOLDAU_BENCH_COMPACT_RECORDS", "200000"))
KEYS = 10_000
PER_BATCH = 100


def _config() -> TopicConfig:
    return TopicConfig.from_dict(
        {"cleanup.policy": "compact", "segment.bytes": str(8 << 20), "durability": "async"}
    )


@pytest.fixture(scope="module", params=[Codec.NONE, Codec.LZ4], ids=["none", "lz4"])
def template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Codec]:
    codec: Codec = request.param
    directory = tmp_path_factory.mktemp(f"compact-{codec.name}") / "t-0"
    rng = random.Random(7)
    log = PartitionLog.open(directory, _config())
    for start in range(0, RECORDS, PER_BATCH):
        records = [
            NewRecord(rng.randbytes(50).hex().encode(), f"key-{rng.randrange(KEYS)}".encode())
            for _ in range(PER_BATCH)
        ]
        log.append(encode_batch(records, codec=codec, timestamp=start), wait_durable=False)
    log.roll()
    log.close()
    return directory, codec


def test_compact(
    benchmark: BenchmarkFixture, template: tuple[Path, Codec], tmp_path: Path
) -> None:
    directory, _ = template
    opened: list[PartitionLog] = []

    def setup() -> tuple[tuple[PartitionLog], dict[str, object]]:
        for log in opened:
            log.close()
        target = tmp_path / f"round{len(opened)}"
        shutil.copytree(directory, target)
        opened.append(PartitionLog.open(target, _config()))
        return (opened[-1],), {}

    def run(log: PartitionLog) -> None:
        result = LogCleaner(OsFileIO(), SystemClock(), min_dirty_ratio=0.0).clean(log)
        assert result.records_read == RECORDS
        assert result.records_kept <= KEYS + 2 * len(log.segments())

    benchmark.extra_info["records"] = RECORDS
    benchmark.pedantic(run, setup=setup, rounds=3)
    for log in opened:
        log.close()
    stats = benchmark.stats
    if stats is not None:
        benchmark.extra_info["records_per_s"] = round(RECORDS / stats.stats.mean)
