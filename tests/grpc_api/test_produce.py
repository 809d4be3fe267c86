"""ProduceServicer in-process, against a real Broker in a temporary directory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from engine.broker import Broker
from engine.errors import DiskFullError
from engine.log.partition_log import AppendResult
from engine.partitioner import partition_for_key
from grpc_api.config import ServerConfig
from grpc_api.produce import ProduceServicer
from grpc_api.runtime import Runtime
from moldau.v1 import common_pb2, produce_pb2


class FakeContext:
    def __init__(self) -> None:
        self.code: Any = None
        self.details = ""

    async def abort(self, code: Any, details: str, trailing_metadata: Any = ()) -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime(ServerConfig(worker_threads=4, max_batch_bytes=64 * 1024))
    broker = Broker.open(tmp_path / "data", background=False)
    broker.create_topic("t", 3)
    runtime.set_broker(broker)
    yield runtime
    broker.close()
    runtime.executor.shutdown()


def _records(*keys: bytes | None) -> produce_pb2.RecordList:
    return produce_pb2.RecordList(
        records=[
            common_pb2.Record(value=b"v") if key is None else common_pb2.Record(key=key, value=b"v")
            for key in keys
        ]
    )


def _produce(runtime: Runtime, request: produce_pb2.ProduceRequest) -> Any:
    return asyncio.run(ProduceServicer(runtime).Produce(request, FakeContext()))


def test_keyed_records_follow_murmur2_and_unkeyed_round_robin(runtime: Runtime) -> None:
    keys = [b"a", b"b", b"c", b"d"]
    reply = _produce(
        runtime, produce_pb2.ProduceRequest(topic="t", records=_records(*keys, None, None, None))
    )
    counts = {r.partition: r.last_offset - r.base_offset + 1 for r in reply.results}
    expected = dict.fromkeys(range(3), 1)  # the three unkeyed records: one per partition
    for key in keys:
        partition = partition_for_key(key, 3)
        expected[partition] += 1
    assert counts == expected


def test_partial_failure_reports_per_partition(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = runtime.broker()
    real_append = broker.append

    def append(topic: str, partition: int, batch: bytes) -> AppendResult:
        if partition == 1:
            raise DiskFullError("disk full; retry once space is freed")
        return real_append(topic, partition, batch)

    monkeypatch.setattr(broker, "append", append)
    reply = _produce(runtime, produce_pb2.ProduceRequest(topic="t", records=_records(None)))
    assert [r.partition for r in reply.results] == [0]
    reply = _produce(
        runtime, produce_pb2.ProduceRequest(topic="t", records=_records(None, None, None))
    )
    by_partition = {r.partition: r for r in reply.results}
    assert by_partition[1].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert by_partition[1].base_offset == -1
    assert not by_partition[2].HasField("error")


def test_every_part_failing_fails_the_call(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def append(topic: str, partition: int, batch: bytes) -> AppendResult:
        raise DiskFullError("disk full")

    monkeypatch.setattr(runtime.broker(), "append", append)
    context = FakeContext()
    servicer = ProduceServicer(runtime)
    request = produce_pb2.ProduceRequest(topic="t", partition=0, records=_records(b"k"))
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(servicer.Produce(request, context))
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_encoded_records_over_max_batch_bytes(runtime: Runtime) -> None:
    context = FakeContext()
    request = produce_pb2.ProduceRequest(
        topic="t",
        partition=0,
        records=produce_pb2.RecordList(records=[common_pb2.Record(value=bytes(70 * 1024))]),
    )
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(ProduceServicer(runtime).Produce(request, context))
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_batch_bytes" in context.details
