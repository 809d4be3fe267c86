"""Clients that vanish mid-stream (RELIABILITY-PLAN T13: disconnects), against a live server.

Each round starts two child processes and SIGKILLs them at a random moment, which drops their
TCP connections with requests and responses in flight:

- a producer on a raw ProduceStream with an idempotent producer id, up to five batches in
  flight; the next round resumes after the last acknowledgement it printed, so it resends
  batches the broker may already hold (those must come back as duplicates);
- a Subscribe reader granting credit and never reading it all.

Half of the rounds also cancel a ProduceStream and a Subscribe from this process mid-flight.
Afterwards every batch is stored exactly once, offsets are contiguous, the server is alive,
and it logged no unexpected error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc

from engine.records.batch import NewRecord, decode_batches, encode_batch
from grpc_api.testing import ServerProcess
from moldau.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    fetch_pb2,
    fetch_pb2_grpc,
    produce_pb2,
    produce_pb2_grpc,
)
from tests.faults.harness import MODE, SCALE, make_rng

PRODUCER_ID = 4242
ENDLESS = 10**9  # killed producers send until they die
ROOT = str(Path(__file__).resolve().parents[2])

PRODUCER = textwrap.dedent("""
    import sys, threading, grpc
    from moldau.v1 import produce_pb2, produce_pb2_grpc
    from tests.faults.test_disconnects import batch
    address, start, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    window = threading.Semaphore(5)  # the broker remembers the last five batches
    def requests():
        for seq in range(start, total):
            window.acquire()
            yield produce_pb2.ProduceRequest(topic="dc", partition=0, record_batch=batch(seq),
                                             correlation_id=seq)
    with grpc.insecure_channel(address) as channel:
        stub = produce_pb2_grpc.ProduceServiceStub(channel)
        for ack in stub.ProduceStream(requests()):
            assert ack.HasField("response"), ack
            print("ack", ack.correlation_id, flush=True)
            window.release()
    print("done", flush=True)
""")

READER = textwrap.dedent("""
    import sys, grpc
    from moldau.v1 import fetch_pb2, fetch_pb2_grpc
    with grpc.insecure_channel(sys.argv[1]) as channel:
        stub = fetch_pb2_grpc.FetchServiceStub(channel)
        start = fetch_pb2.SubscribeStart(topic="dc", partition=0, offset=0, credit_bytes=65536)
        for reply in stub.Subscribe(iter([fetch_pb2.SubscribeRequest(start=start)] * 1)):
            print("got", reply.next_offset, flush=True)
""")


def batch(seq: int) -> bytes:
    """The idempotent batch with sequence ``seq`` (the same bytes on every resend)."""
    records = [NewRecord(f"dc:{seq}:{i}".encode().ljust(200, b".")) for i in range(10)]
    return encode_batch(records, producer_id=PRODUCER_ID, producer_epoch=0,
                        base_sequence=seq * 10, timestamp=1_700_000_000_000)


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT,
    )


def _cancel_mid_flight(address: str, start: int) -> None:
    """Open a produce stream and a subscription here and cancel both while busy."""
    with grpc.insecure_channel(address) as channel:
        produce = produce_pb2_grpc.ProduceServiceStub(channel)
        requests = iter([produce_pb2.ProduceRequest(
            topic="dc", partition=0, record_batch=batch(seq), correlation_id=seq
        ) for seq in range(max(0, start - 3), start)])
        call = produce.ProduceStream(requests)
        call.cancel()
        start_msg = fetch_pb2.SubscribeStart(topic="dc", partition=0, offset=0, credit_bytes=4096)
        sub = fetch_pb2_grpc.FetchServiceStub(channel).Subscribe(
            iter([fetch_pb2.SubscribeRequest(start=start_msg)])
        )
        next(iter(sub), None)
        sub.cancel()


def test_clients_killed_mid_stream_leave_nothing_half_done(tmp_path: Path) -> None:
    seed, rng = make_rng("disconnects")
    at = f"MOLDAU_SEED={seed} mode={MODE}"
    with ServerProcess(tmp_path / "data", env={"MOLDAU_LOG_LEVEL": "WARNING"}) as server:
        with grpc.insecure_channel(server.address) as channel:
            admin_pb2_grpc.AdminServiceStub(channel).CreateTopic(
                admin_pb2.CreateTopicRequest(name="dc", partitions=1)
            )
        next_seq = 0
        resumed_from: list[int] = []
        for round_ in range(SCALE.disconnect_rounds + 1):
            last = round_ == SCALE.disconnect_rounds
            resumed_from.append(next_seq)
            total = next_seq + 50 if last else ENDLESS
            producer = _spawn(PRODUCER, server.address, str(next_seq), str(total))
            reader = _spawn(READER, server.address)
            assert producer.stdout is not None
            if last:  # let the final producer finish
                output = producer.communicate(timeout=120)[0]
                assert "done" in output, f"{at}: final producer failed: {output[-500:]}"
            else:
                time.sleep(rng.uniform(0.3, 1.5))
                os.kill(producer.pid, signal.SIGKILL)
                output = producer.communicate()[0]
            # a producer killed while writing leaves its last line cut short ("ack " or
            # "ack 12" of 123): only lines that reached their newline count
            for line in output.split("\n")[:-1]:
                if line.startswith("ack "):
                    next_seq = max(next_seq, int(line.split()[1]) + 1)
            os.kill(reader.pid, signal.SIGKILL)
            reader.communicate()
            if round_ % 2:
                _cancel_mid_flight(server.address, next_seq)
        print(f"{at}: producers resumed from batches {resumed_from}", file=sys.stderr)
        # most killed producers got acknowledgements before they died (a child killed while
        # still importing gets none)
        assert len(set(resumed_from)) > len(resumed_from) // 2, f"{at}: {resumed_from}"
        values = _read_everything(server.address)
        expected = [f"dc:{s}:{i}".encode().ljust(200, b".") for s in range(total)
                    for i in range(10)]
        assert values == expected, f"{at}: {len(values)} records stored, {len(expected)} sent " \
            "once each (duplicates, gaps or reordering)"
        assert server.process is not None, at
        assert server.process.poll() is None, f"{at}: the server died"
        log = server.log_text()
    assert "Traceback" not in log, f"{at}\n{log[-3000:]}"
    assert "internal error" not in log, f"{at}\n{log[-3000:]}"


def _read_everything(address: str) -> list[bytes]:
    values: list[bytes] = []
    offset = 0
    with grpc.insecure_channel(address) as channel:
        fetch = fetch_pb2_grpc.FetchServiceStub(channel)
        while True:
            reply = fetch.Fetch(fetch_pb2.FetchRequest(topic="dc", partition=0, offset=offset),
                                timeout=10)
            for record in decode_batches(reply.record_batches):
                if record.offset >= offset:
                    assert record.offset == len(values), "offsets are not contiguous"
                    values.append(record.value or b"")
            if reply.next_offset >= reply.high_watermark:
                return values
            offset = reply.next_offset
