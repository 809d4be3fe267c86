"""Work queues end to end: receive+ack over gRPC ``Consume`` streams to a real server process.

``CONSUMERS`` Consume streams (the generated asyncio stubs, one event loop in this process)
share one queue over a ``PARTITIONS``-partition topic pre-filled with ``RECORDS`` records of
100 bytes. Each stream starts with ``CREDIT`` records of credit; for every pushed batch it
sends one message acking the whole batch and granting as much credit again, with a
correlation id, and counts the records the server confirms acked (durable: ``__queue_state``
is ``durability=fsync``, acks of all streams group-commit). A round ends when every record is
confirmed acked; each round declares a fresh queue over the same topic.

- ``test_consume_ack_4_consumers``: records/s = RECORDS / median (target >= 100,000).

The client shares the machine with the server, so its decoding counts against the figure.
With ``--benchmark-disable`` (the smoke run) the topic holds ``SMOKE_RECORDS``.

    .venv/bin/pytest benchmarks/test_queue_grpc_bench.py --benchmark-only \\
        --benchmark-columns=min,median,max,rounds
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from engine.records.batch import encode_batch
from engine.records.record import NewRecord
from grpc_api.testing import ServerProcess
from moldau.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    produce_pb2,
    produce_pb2_grpc,
    queues_pb2,
    queues_pb2_grpc,
)

PARTITIONS = 4
RECORDS = 100_000
SMOKE_RECORDS = 4_000
CONSUMERS = 4
CREDIT = 2_000
MAX_BATCH = 500
ROUNDS = 5
Q = queues_pb2
_queues = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
           ) -> Iterator[tuple[ServerProcess, int]]:
    process = ServerProcess(tmp_path_factory.mktemp("queue-grpc-bench") / "data",
                            env={"MOLDAU_LOG_LEVEL": "WARNING"})
    process.start()
    smoke = request.config.getoption("benchmark_disable")
    records = SMOKE_RECORDS if smoke else RECORDS
    with grpc.insecure_channel(process.address) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).CreateTopic(
            admin_pb2.CreateTopicRequest(name="jobs", partitions=PARTITIONS))
        produce = produce_pb2_grpc.ProduceServiceStub(channel)
        batch = encode_batch([NewRecord(b"x" * 100)] * 1000)
        for number in range(records // 1000):
            produce.Produce(produce_pb2.ProduceRequest(topic="jobs",
                                                       partition=number % PARTITIONS,
                                                       record_batch=batch))
    yield process, records
    process.stop()


async def _consumer(stub: queues_pb2_grpc.QueueServiceStub, queue: str, total: int,
                    acked: list[int], done: asyncio.Event) -> None:
    outbox: asyncio.Queue[Q.ConsumeRequest | None] = asyncio.Queue()
    outbox.put_nowait(Q.ConsumeRequest(start=Q.ConsumeStart(queue=queue, max_batch=MAX_BATCH),
                                       credit=CREDIT))

    async def requests() -> AsyncIterator[Q.ConsumeRequest]:
        while (message := await outbox.get()) is not None:
            yield message

    call = stub.Consume(requests())
    correlation = 0
    try:
        async for response in call:
            deliveries = response.deliveries
            if deliveries:
                correlation += 1
                outbox.put_nowait(Q.ConsumeRequest(ack=[d.lease_id for d in deliveries],
                                                   credit=len(deliveries),
                                                   correlation_id=correlation))
            if response.settled.correlation_id:
                acked[0] += len(response.settled.acked)
                if acked[0] >= total:
                    done.set()
            if done.is_set():
                break
    finally:
        outbox.put_nowait(None)
        call.cancel()


async def _round(address: str, queue: str, total: int) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = queues_pb2_grpc.QueueServiceStub(channel)
        acked = [0]
        done = asyncio.Event()
        tasks = [asyncio.create_task(_consumer(stub, queue, total, acked, done))
                 for _ in range(CONSUMERS)]
        await done.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return acked[0]


def test_consume_ack_4_consumers(benchmark: BenchmarkFixture,
                                 server: tuple[ServerProcess, int]) -> None:
    process, records = server
    loop = asyncio.new_event_loop()

    def declare() -> tuple[tuple[str], dict[str, object]]:
        name = f"bench-{next(_queues)}"
        with grpc.insecure_channel(process.address) as channel:
            queues_pb2_grpc.QueueServiceStub(channel).DeclareQueue(Q.DeclareQueueRequest(
                config=Q.QueueConfig(name=name, topic="jobs", lease_ms=600_000)))
        return (name,), {}

    def run(queue: str) -> int:
        return loop.run_until_complete(_round(process.address, queue, records))

    benchmark.extra_info["records_per_round"] = records
    acked = benchmark.pedantic(run, setup=declare, rounds=ROUNDS, iterations=1)
    loop.close()
    assert acked == records
