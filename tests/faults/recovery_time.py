"""Recovery time of one large partition log (RELIABILITY-PLAN T4): a benchmark, not a test.

    python -m tests.faults.recovery_time --gib 1 [--dir DIR]

Writes ``--gib`` GiB of 8.5 KiB lz4 batches (16 records of 1032 bytes) in 128 MiB segments
to one partition with the engine (no server), then leaves it as a crash would (no
clean-shutdown marker) and times:

- ``full``: ``PartitionLog.open`` with the recovery checkpoint deleted, so every segment is
  scanned (CRC-32C of every batch, index rebuild);
- ``tail``: the same with the checkpoint in place (only segments past it are scanned);

Prints one line per measurement, in seconds and seconds per GiB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from engine.config import TopicConfig
from engine.log.files import RECOVERY_CHECKPOINT_FILE
from engine.log.partition_log import PartitionLog
from engine.records.batch import NewRecord, encode_batch
from engine.records.compression import Codec


def _write(directory: Path, total_bytes: int) -> None:
    config = TopicConfig.from_dict({"durability": "async", "segment.bytes": str(128 * 2**20)})
    log = PartitionLog.open(directory, config)
    payloads = [os.urandom(512) + b"compressible " * 40 for _ in range(64)]
    records = [NewRecord(payloads[i % 64]) for i in range(16)]
    batch = encode_batch(records, codec=Codec.LZ4)
    while log.size_bytes < total_bytes:
        log.append(batch, wait_durable=False)
    log.flush()
    log.abandon()


def _time_open(directory: Path) -> float:
    config = TopicConfig.from_dict({"durability": "async", "segment.bytes": str(128 * 2**20)})
    started = time.perf_counter()
    log = PartitionLog.open(directory, config)
    elapsed = time.perf_counter() - started
    log.abandon()  # stays unclean for the next measurement
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        partition = root / "data" / "big-0"
        started = time.perf_counter()
        _write(partition, int(args.gib * 2**30))
        size = sum(p.stat().st_size for p in partition.glob("*.log"))
        gib = size / 2**30
        print(f"wrote {size} bytes in {time.perf_counter() - started:.1f} s")
        tail = _time_open(partition)
        checkpoint = partition / RECOVERY_CHECKPOINT_FILE
        checkpoint.unlink(missing_ok=True)
        full = _time_open(partition)
        print(f"tail: {tail:.2f} s; full: {full:.2f} s = {full / gib:.2f} s/GiB "
              f"({size / full / 1e6:.0f} MB/s)")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
