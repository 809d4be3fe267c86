"""kill -9 of a process appending at full speed (RELIABILITY-PLAN T1, engine level).

A child process appends batches and prints each acknowledgement; the parent SIGKILLs it at a
random moment, reopens the partition, and checks that every acknowledged record is present
with its content, offsets are contiguous, and appends continue from the log end.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.config import TopicConfig
from engine.log.partition_log import PartitionLog
from engine.records.batch import decode_batches

CYCLES = int(os.environ.get("MOLDAU_KILL_CYCLES", "20"))

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from engine.config import TopicConfig
    from engine.log.partition_log import PartitionLog
    from engine.records.batch import NewRecord, encode_batch

    directory, durability, start_tag = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = TopicConfig.from_dict({"segment.bytes": "65536", "durability": durability})
    log = PartitionLog.open(Path(directory), config)
    print("ready", log.log_end_offset, flush=True)
    tag = start_tag
    while True:
        values = [f"{tag}:{i}".encode().ljust(100, b".") for i in range(20)]
        result = log.append(encode_batch([NewRecord(v) for v in values]))
        print("ack", result.base_offset, result.last_offset, tag, flush=True)
        tag += 1
    """
)


def _read_all(log: PartitionLog) -> dict[int, bytes | None]:
    out: dict[int, bytes | None] = {}
    offset = log.log_start_offset
    while offset < log.high_watermark:
        records = [r for r in decode_batches(log.read(offset, 1 << 20).data) if r.offset >= offset]
        for record in records:
            out[record.offset] = record.value
        offset = records[-1].offset + 1
    return out


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["fsync", "async"])
def test_kill9_loses_no_acknowledged_record(tmp_path: Path, durability: str) -> None:
    seed = int(os.environ.get("MOLDAU_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    directory = tmp_path / "p-0"
    acked: dict[int, bytes] = {}
    tag = 0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    for cycle in range(CYCLES):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), durability, str(tag)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        assert ready[0] == "ready", ready
        assert int(ready[1]) >= (max(acked) + 1 if acked else 0)
        deadline = time.monotonic() + rng.uniform(0.05, 0.4)
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line.endswith("\n"):
                break
            _, base, last, batch_tag = line.split()
            for i, offset in enumerate(range(int(base), int(last) + 1)):
                acked[offset] = f"{batch_tag}:{i}".encode().ljust(100, b".")
            tag = int(batch_tag) + 1
        os.kill(child.pid, signal.SIGKILL)
        # acknowledgements already printed but not yet read still count
        for line in child.stdout:
            if not line.endswith("\n"):
                break  # the kill cut this acknowledgement short: it was never fully sent
            _, base, last, batch_tag = line.split()
            for i, offset in enumerate(range(int(base), int(last) + 1)):
                acked[offset] = f"{batch_tag}:{i}".encode().ljust(100, b".")
            tag = int(batch_tag) + 1
        child.wait()
        child.stdout.close()
        config = TopicConfig.from_dict({"segment.bytes": "65536", "durability": durability})
        log = PartitionLog.open(directory, config)
        stored = _read_all(log)
        assert sorted(stored) == list(range(len(stored))), f"seed={seed} cycle={cycle}: hole"
        for offset, value in acked.items():
            assert stored.get(offset) == value, f"seed={seed} cycle={cycle}: lost {offset}"
        log.close() if cycle % 2 else log.abandon()
    assert len(acked) > 0
