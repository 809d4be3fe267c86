"""End-to-end gRPC throughput against a real server subprocess.

Each round moves pre-encoded batches of 1,000 x 100-byte records (the Python client's fast
path); ``extra_info["records_per_round"]`` turns a round time into records/s. Produce runs
against a ``durability=fsync`` topic (the default: acknowledged after fsync) and an ``async``
one (acknowledged from the page cache). Runs once in CI with ``--benchmark-disable``, so the
rounds are few and the setup is small.

    .venv/bin/pytest benchmarks/test_grpc_bench.py --benchmark-only \
        --benchmark-columns=min,median,max,rounds
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from engine.records.batch import encode_batch
from engine.records.record import NewRecord
from grpc_api.testing import ServerProcess
from moldau.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    fetch_pb2,
    fetch_pb2_grpc,
    produce_pb2,
    produce_pb2_grpc,
)

RECORDS_PER_BATCH = 1_000
RECORD_BYTES = 100
STREAM_BATCHES = 50  # requests in flight on one ProduceStream per round
FETCH_BATCHES = 100
ROUNDS = 15

_topics = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("bench") / "data", env={"MOLDAU_LOG_LEVEL": "WARNING"}
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        yield channel


@pytest.fixture(scope="module")
def batch() -> bytes:
    value = bytes(range(RECORD_BYTES))
    return encode_batch([NewRecord(value) for _ in range(RECORDS_PER_BATCH)])


def _topic(channel: grpc.Channel, durability: str = "fsync") -> str:
    name = f"bench-{next(_topics)}"
    admin_pb2_grpc.AdminServiceStub(channel).CreateTopic(
        admin_pb2.CreateTopicRequest(
            name=name, partitions=1, configs={"durability": durability}
        )
    )
    return name


def _run(benchmark: Any, function: Any, records_per_round: int) -> None:
    benchmark.extra_info["records_per_round"] = records_per_round
    benchmark.pedantic(function, rounds=ROUNDS, iterations=1, warmup_rounds=1)


DURABILITY = pytest.mark.parametrize("durability", ["fsync", "async"])


@DURABILITY
def test_produce_unary(
    benchmark: Any, channel: grpc.Channel, batch: bytes, durability: str
) -> None:
    stub = produce_pb2_grpc.ProduceServiceStub(channel)
    topic = _topic(channel, durability)
    request = produce_pb2.ProduceRequest(topic=topic, partition=0, record_batch=batch)

    def produce() -> None:
        stub.Produce(request)

    _run(benchmark, produce, RECORDS_PER_BATCH)


@pytest.fixture(scope="module")
def aio_channel(server: ServerProcess) -> Iterator[tuple[asyncio.AbstractEventLoop, Any]]:
    """An asyncio channel on a loop kept for the module: a pipelining client is asynchronous."""
    loop = asyncio.new_event_loop()
    aio_channel = loop.run_until_complete(_open_aio(server.address))
    yield loop, aio_channel
    loop.run_until_complete(aio_channel.close())
    loop.close()


async def _open_aio(address: str) -> Any:
    return grpc.aio.insecure_channel(address)


@DURABILITY
def test_produce_stream(
    benchmark: Any,
    channel: grpc.Channel,
    aio_channel: tuple[asyncio.AbstractEventLoop, Any],
    batch: bytes,
    durability: str,
) -> None:
    loop, async_channel = aio_channel
    stub = produce_pb2_grpc.ProduceServiceStub(async_channel)
    topic = _topic(channel, durability)
    requests = [
        produce_pb2.ProduceRequest(topic=topic, partition=0, record_batch=batch, correlation_id=i)
        for i in range(STREAM_BATCHES)
    ]

    async def stream() -> None:
        acks = [ack async for ack in stub.ProduceStream(iter(requests))]
        assert len(acks) == STREAM_BATCHES
        assert not any(ack.HasField("error") for ack in acks)

    _run(benchmark, lambda: loop.run_until_complete(stream()), STREAM_BATCHES * RECORDS_PER_BATCH)


def test_fetch(benchmark: Any, channel: grpc.Channel, batch: bytes) -> None:
    topic = _topic(channel)
    produce = produce_pb2_grpc.ProduceServiceStub(channel)
    acks = produce.ProduceStream(
        iter([produce_pb2.ProduceRequest(topic=topic, partition=0, record_batch=batch)
              for _ in range(FETCH_BATCHES)])
    )
    assert len(list(acks)) == FETCH_BATCHES
    stub = fetch_pb2_grpc.FetchServiceStub(channel)
    end = FETCH_BATCHES * RECORDS_PER_BATCH

    def fetch_all() -> None:
        offset = 0
        while offset < end:
            reply = stub.Fetch(
                fetch_pb2.FetchRequest(topic=topic, partition=0, offset=offset,
                                       max_bytes=4 * 1024 * 1024)
            )
            offset = reply.next_offset

    _run(benchmark, fetch_all, end)

