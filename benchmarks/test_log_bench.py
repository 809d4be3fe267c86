"""Partition-log throughput: append and read of pre-encoded batches, and recovery.

Each batch holds 1,000 records of 100 bytes, as a producer would send it. Run with
``make bench`` (or ``pytest benchmarks/test_log_bench.py --benchmark-only``);
``MOLDAU_BENCH_RECOVERY_MB`` sets the size of the log the recovery benchmark scans
(1024 for the 1 GiB figure in docs/performance.md; small by default so CI stays fast).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from engine.config import TopicConfig
from engine.log.partition_log import PartitionLog
from engine.records.batch import encode_values

RECORDS_PER_BATCH = 1_000
BATCHES = int(os.environ.get("MOLDAU_BENCH_BATCHES", "200"))
RECOVERY_MB = int(os.environ.get("MOLDAU_BENCH_RECOVERY_MB", "16"))


@pytest.fixture(scope="module")
def batch() -> bytes:
    return encode_values([os.urandom(50).hex().encode() for _ in range(RECORDS_PER_BATCH)])


def _fresh(tmp_path: Path, name: str, **config: str) -> PartitionLog:
    directory = tmp_path / name
    return PartitionLog.open(directory, TopicConfig.from_dict(config))


class _Logs:
    """Opens a fresh log per round and closes the previous one outside the timed part.

    Closing an ``async`` log fsyncs everything it buffered; timing that would charge the
    page-cache write-back to the append benchmark.
    """

    def __init__(self, tmp_path: Path, **config: str) -> None:
        self._tmp_path = tmp_path
        self._config = config
        self._open: list[PartitionLog] = []

    def setup(self) -> tuple[tuple[PartitionLog], dict[str, object]]:
        self.close()
        log = _fresh(self._tmp_path, f"round{len(list(self._tmp_path.iterdir()))}", **self._config)
        self._open.append(log)
        return (log,), {}

    def close(self) -> None:
        for log in self._open:
            log.close()
        self._open.clear()


@pytest.mark.parametrize("durability", ["async", "fsync"])
def test_append(
    benchmark: BenchmarkFixture, tmp_path: Path, batch: bytes, durability: str
) -> None:
    """One appender thread; records/s = RECORDS_PER_BATCH * BATCHES / time."""
    logs = _Logs(tmp_path, durability=durability)

    def run(log: PartitionLog) -> None:
        for _ in range(BATCHES):
            log.append(batch)

    benchmark.extra_info["records"] = RECORDS_PER_BATCH * BATCHES
    benchmark.pedantic(run, setup=logs.setup, rounds=7)
    logs.close()


def test_append_group_commit_4_threads(
    benchmark: BenchmarkFixture, tmp_path: Path, batch: bytes
) -> None:
    """Four appenders share fsyncs under the default durability."""
    logs = _Logs(tmp_path)

    def run(log: PartitionLog) -> None:
        def worker() -> None:
            for _ in range(BATCHES // 4):
                log.append(batch)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    benchmark.extra_info["records"] = RECORDS_PER_BATCH * (BATCHES // 4) * 4
    benchmark.pedantic(run, setup=logs.setup, rounds=7)
    logs.close()


def test_sequential_read(benchmark: BenchmarkFixture, tmp_path: Path, batch: bytes) -> None:
    """Read everything back in 1 MiB fetches; CRC-checked on the way out."""
    log = _fresh(tmp_path, "r", durability="async")
    for _ in range(BATCHES):
        log.append(batch)

    def run() -> int:
        offset = 0
        total = 0
        while offset < log.high_watermark:
            data = log.read(offset, 1 << 20).data
            total += len(data)
            offset = _next_offset(data)
        return total

    benchmark.extra_info["records"] = RECORDS_PER_BATCH * BATCHES
    assert benchmark(run) == log.size_bytes
    log.close()


def _next_offset(data: bytes) -> int:
    """Offset after the last batch in ``data``, from its header only."""
    position = 0
    last = 0
    while position < len(data):
        base = int.from_bytes(data[position : position + 8], "big")
        length = int.from_bytes(data[position + 8 : position + 12], "big")
        delta = int.from_bytes(data[position + 23 : position + 27], "big")
        last = base + delta + 1
        position += 12 + length
    return last


def test_recovery_scan(benchmark: BenchmarkFixture, tmp_path: Path, batch: bytes) -> None:
    """Unclean open of a log with no checkpoint: every batch's CRC is checked, indexes rebuilt."""
    directory = tmp_path / "rec"
    config = TopicConfig.from_dict({"durability": "async", "segment.bytes": str(256 << 20)})
    log = PartitionLog.open(directory, config)
    while log.size_bytes < RECOVERY_MB << 20:
        log.append(batch)
    size = log.size_bytes
    log.close()

    def setup() -> tuple[tuple[()], dict[str, object]]:
        (directory / ".clean_shutdown").unlink(missing_ok=True)
        (directory / "recovery-point.checkpoint").unlink(missing_ok=True)
        return (), {}

    def run() -> PartitionLog:
        recovered = PartitionLog.open(directory, config)
        recovered.close()
        return recovered

    benchmark.extra_info["bytes"] = size
    recovered = benchmark.pedantic(run, setup=setup, rounds=3)
    assert recovered.recovery.bytes_scanned == size


def test_append_pipelined_fsync(benchmark: BenchmarkFixture, tmp_path: Path, batch: bytes) -> None:
    """A pipelining producer: 8 batches appended, then one wait for their group fsync."""
    logs = _Logs(tmp_path)

    def run(log: PartitionLog) -> None:
        for _ in range(BATCHES // 8):
            last = 0
            for _ in range(8):
                last = log.append(batch, wait_durable=False).last_offset
            log.wait_durable(last + 1)

    benchmark.extra_info["records"] = RECORDS_PER_BATCH * (BATCHES // 8) * 8
    benchmark.pedantic(run, setup=logs.setup, rounds=7)
    logs.close()
