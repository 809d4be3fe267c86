"""Bit flips in sealed segments, read through a live server (RELIABILITY-PLAN T3, end to end).

After a clean shutdown the broker trusts its sealed segments and does not scan them at
startup, so bit rot there is found on read. Each trial flips one random bit inside the
CRC-covered part (CRC included) of a random batch of a sealed segment, starts the server and
walks the partition one batch per Fetch. Required: every batch served passes the client's own
CRC check and holds exactly the records produced at those offsets; the damaged batch is
reported, either on read (its offsets answer DATA_LOSS with a message naming the damage) or
at startup (a flip in lastOffsetDelta makes the segment overlap the next one, so recovery
scans it, quarantines the batch and logs it byte for byte); the batches after it stay
readable; the server stays up. Each trial starts from a copy of the undamaged partition.

The engine-level corruption matrix (header fields, indexes, checkpoints, truncation, garbage)
is tests/engine/log/test_corruption.py and test_scrub.py; this test adds the gRPC path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc

from engine.records.batch import decode_batches, iter_batches
from grpc_api.testing import ServerProcess
from moldau.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    fetch_pb2,
    fetch_pb2_grpc,
    produce_pb2,
    produce_pb2_grpc,
)
from tests.faults.harness import MODE, SCALE, batch_spans, make_rng, sealed_segments

CRC_POSITION = 17  # the CRC and everything after it in a batch is checked by it


def _produce(address: str, batches: int) -> dict[int, bytes]:
    expected: dict[int, bytes] = {}
    with grpc.insecure_channel(address) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).CreateTopic(admin_pb2.CreateTopicRequest(
            name="rot", partitions=1, configs={"segment.bytes": str(32 * 1024)}
        ))
        produce = produce_pb2_grpc.ProduceServiceStub(channel)
        for n in range(batches):
            values = [f"{n}:{i}:".encode().ljust(300, b"v") for i in range(5)]
            reply = produce.Produce(produce_pb2.ProduceRequest(
                topic="rot", partition=0, records=produce_pb2.RecordList(
                    records=[common_pb2.Record(value=v) for v in values],
                    compression=(common_pb2.COMPRESSION_LZ4 if n % 2
                                 else common_pb2.COMPRESSION_NONE),
                ),
            ))
            base = reply.results[0].base_offset
            expected.update((base + i, v) for i, v in enumerate(values))
    return expected


def _walk(address: str, expected: dict[int, bytes],
          damaged: range, at: str) -> tuple[int, list[str]]:
    """Fetch batch by batch; returns (records served, DATA_LOSS messages).

    DATA_LOSS is allowed from the damaged batch on: a damaged header may claim later offsets,
    hiding the batches after it until a restart scans the segment.
    """
    served = 0
    losses: list[str] = []
    end = max(expected) + 1
    offset = 0
    with grpc.insecure_channel(address) as channel:
        fetch = fetch_pb2_grpc.FetchServiceStub(channel)
        while offset < end:
            request = fetch_pb2.FetchRequest(topic="rot", partition=0, offset=offset, max_bytes=1)
            future = fetch.Fetch.future(request, timeout=10)
            error = future.exception()
            if error is not None:
                assert error.code() == grpc.StatusCode.DATA_LOSS, f"{at}: {error}"
                assert offset >= damaged.start, f"{at}: DATA_LOSS at {offset} before {damaged}"
                losses.append(error.details() or "")
                offset += 1
                continue
            reply = future.result()
            data = reply.record_batches
            list(iter_batches(data))  # the client's own CRC check of every batch served
            for record in decode_batches(data):
                if record.offset >= offset:
                    assert record.offset not in damaged, f"{at}: damaged batch served as valid"
                    assert record.value == expected[record.offset], f"{at}: {record.offset}"
                    served += 1
            assert reply.next_offset > offset, f"{at}: no progress at {offset}"
            offset = reply.next_offset
    return served, losses


def _flip_and_check(data_dir: Path, path: Path, span: tuple[int, int, int, int], byte: int,
                    bit: int, expected: dict[int, bytes], at: str) -> None:
    """Flip one bit, then require it reported (on read or at startup) and, after a restart,
    every undamaged record readable again."""
    env = {"MOLDAU_LOG_LEVEL": "WARNING"}
    position, end, base, last = span
    damaged = bytearray(path.read_bytes())
    damaged[byte] ^= 1 << bit
    path.write_bytes(bytes(damaged))
    at += f" flip at {path.name}:{byte} bit {bit} (byte {byte - position} of the batch)"
    undamaged = len(expected) - (last - base + 1)
    with ServerProcess(data_dir, env=env) as server:
        served, losses = _walk(server.address, expected, range(base, last + 1), at)
        assert server.process is not None, at
        assert server.process.poll() is None, f"{at}: the server died"
    quarantined = f"{path.name}: {end - position} damaged bytes at byte {position} quarantined"
    if losses:  # found on read: the message says so, and a restart recovers the rest
        assert all("damaged" in m or "corrupt" in m.lower() for m in losses), f"{at}: {losses}"
        with ServerProcess(data_dir, env=env) as server:
            served, losses = _walk(server.address, expected, range(base, last + 1), at)
        assert not losses, f"{at}: the restart did not recover the partition: {losses[:3]}"
    log = server.log_text()
    assert quarantined in log, f"{at}: the damage was never quarantined:\n{log[-2000:]}"
    assert served == undamaged, f"{at}: {served} of {undamaged} undamaged records served"


def test_bit_flips_in_sealed_segments_are_reported_never_served(tmp_path: Path) -> None:
    seed, rng = make_rng("bitflip")
    data_dir = tmp_path / "data"
    with ServerProcess(data_dir, env={"MOLDAU_LOG_LEVEL": "WARNING"}) as server:
        expected = _produce(server.address, 120)
    partition_dir = data_dir / "rot-0"
    pristine = tmp_path / "pristine"
    shutil.copytree(partition_dir, pristine)
    segments = sealed_segments(partition_dir)
    assert len(segments) >= 3
    for trial in range(SCALE.bitflip_trials):
        shutil.rmtree(partition_dir)  # recovery rewrites files: each trial starts from a copy
        shutil.copytree(pristine, partition_dir)
        path = rng.choice(segments)
        span = rng.choice(batch_spans(path))
        byte = rng.randrange(span[0] + CRC_POSITION, span[1])
        _flip_and_check(data_dir, path, span, byte, rng.randrange(8), expected,
                        f"MOLDAU_SEED={seed} mode={MODE} trial={trial}")


def test_damaged_header_hiding_later_batches_is_recovered_by_a_restart(tmp_path: Path) -> None:
    """Regression: a flip in lastOffsetDelta's high byte makes a middle batch claim offsets of
    the next segment. Startup trusts the sealed segment (clean shutdown), so reads of every
    later offset in it answered DATA_LOSS, and "restart the broker to recover the partition"
    did not help: the next clean start trusted it again. Now a read that finds damage makes
    the next start scan that segment, which quarantines the batch."""
    data_dir = tmp_path / "data"
    with ServerProcess(data_dir, env={"MOLDAU_LOG_LEVEL": "WARNING"}) as server:
        expected = _produce(server.address, 120)
    path = sealed_segments(data_dir / "rot-0")[1]
    spans = batch_spans(path)
    span = spans[len(spans) // 3]
    _flip_and_check(data_dir, path, span, span[0] + 24, 7, expected, "lastOffsetDelta")
