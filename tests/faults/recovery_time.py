"""Recovery time of one large partition log (RELIABILITY-PLAN T4): a benchmark, not a test.

    python -m tests.faults.recovery_time --gib 1 [--dir DIR]
    python -m tests.faults.recovery_time --gib 10 --partitions 100   # (c), a clean start
    python -m tests.faults.recovery_time --gib 10 --partitions 100 --unclean   # after a crash

Writes ``--gib`` GiB of 8.5 KiB lz4 batches (16 records of 1032 bytes) in 128 MiB segments
to one partition with the engine (no server), then leaves it as a crash would (no
clean-shutdown marker) and times:

- ``full``: ``PartitionLog.open`` with the recovery checkpoint deleted, so every segment is
  scanned (CRC-32C of every batch, index rebuild);
- ``tail``: the same with the checkpoint in place (only segments past it are scanned);

With ``--partitions N`` it measures case (c) instead: ``--gib`` GiB spread over one topic of N
partitions, written through the broker and closed cleanly, then the seconds from starting a
real server process (``python -m grpc_api``) to its "serving" line, three times. With
``--unclean`` the partitions are left as a crash leaves them and each server is killed with
SIGKILL, so every start recovers (the active segments are scanned and the producer state is
read from the last roll snapshot and the headers after it).

Prints one line per measurement, in seconds and seconds per GiB.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

from engine.broker import Broker
from engine.config import TopicConfig
from engine.log.files import RECOVERY_CHECKPOINT_FILE
from engine.log.partition_log import PartitionLog
from engine.records.batch import NewRecord, encode_batch
from engine.records.compression import Codec
from grpc_api.testing import ServerProcess


def _write(directory: Path, total_bytes: int) -> None:
    config = TopicConfig.from_dict({"durability": "async", "segment.bytes": str(128 * 2**20)})
    log = PartitionLog.open(directory, config)
    batch = _batch()
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


def _batch() -> bytes:
    payloads = [os.urandom(512) + b"compressible " * 40 for _ in range(64)]
    return encode_batch([NewRecord(payloads[i % 64]) for i in range(16)], codec=Codec.LZ4)


def _fill(data: Path, gib: float, partitions: int, unclean: bool) -> None:
    broker = Broker.open(data, background=False)
    broker.create_topic("big", partitions, {"durability": "async",
                                            "segment.bytes": str(128 * 2**20)})
    logs = [broker.partition("big", n) for n in range(partitions)]
    batch, total, target = _batch(), 0, int(gib * 2**30)
    while total < target:
        for log in logs:
            log.append(batch, wait_durable=False)
        total += len(batch) * partitions
    for log in logs:
        log.flush()
    if unclean:
        os._exit(0)  # a crash: no clean marker, no end snapshot, the directory lock let go
    broker.close()


def _start(root: Path, gib: float, partitions: int, *, unclean: bool) -> None:
    data = root / "data"
    started = time.perf_counter()
    writer = multiprocessing.get_context("fork").Process(
        target=_fill, args=(data, gib, partitions, unclean))
    writer.start()
    writer.join()
    kind = "unclean" if unclean else "clean"
    total = sum(p.stat().st_size for p in data.rglob("*.log"))
    print(f"wrote {total} bytes over {partitions} partitions in "
          f"{time.perf_counter() - started:.1f} s (left {kind})")
    for run in range(3):
        started = time.perf_counter()
        server = ServerProcess(data, env={"MOLDAU_LOG_LEVEL": "WARNING"})
        server.start()
        serving = time.perf_counter() - started
        if unclean:
            server.kill()  # so the next start is unclean too
        else:
            server.stop()
        print(f"{kind} start {run + 1}: {serving:.2f} s to SERVING")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--partitions", type=int, default=0,
                        help="case (c): a clean start with this many partitions")
    parser.add_argument("--unclean", action="store_true",
                        help="with --partitions: start after a crash instead (SIGKILL)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        if args.partitions:
            _start(root, args.gib, args.partitions, unclean=args.unclean)
            return 0
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
