"""End-to-end gRPC throughput and latency against a real server subprocess.

Each throughput round moves pre-encoded batches of 1,000 x 100-byte records (the Python
client's fast path); ``extra_info["records_per_round"]`` turns a round time into records/s.
Produce runs against a ``durability=fsync`` topic (the default: acknowledged after fsync) and
an ``async`` one (acknowledged from the page cache). Fetch reads with unary calls, Subscribe
with one push stream granting credit as it consumes.

The latency benchmark produces small batches at a fixed rate (10,000 records/s for
``MOLDAU_BENCH_E2E_SECONDS``, 2 s by default) on a ProduceStream while a Subscribe consumer
receives them, and reports the produce-to-consume latency percentiles in ``extra_info``
(``p50_ms``, ``p99_ms``, ``max_ms``; one sample per batch: the time from handing the request
to gRPC until the push carrying it arrives); its round time means nothing.

Runs once in CI with ``--benchmark-disable``, so the rounds are few and the setup is small.

    .venv/bin/pytest benchmarks/test_grpc_bench.py --benchmark-only \
        --benchmark-columns=min,median,max,rounds
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from engine.records.batch import LOG_OVERHEAD, encode_values
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
SUBSCRIBE_CREDIT_BYTES = 8 * 1024 * 1024  # the consumer's window, topped up as it consumes

E2E_RECORDS_PER_S = 10_000
E2E_RECORDS_PER_BATCH = 10  # one batch per millisecond
E2E_SECONDS = float(os.environ.get("MOLDAU_BENCH_E2E_SECONDS", "2"))

_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
_BASE_AND_LENGTH = struct.Struct(">qi")

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
    with grpc.insecure_channel(server.address, options=_CHANNEL_OPTIONS) as channel:
        yield channel


@pytest.fixture(scope="module")
def batch() -> bytes:
    return encode_values([bytes(range(RECORD_BYTES))] * RECORDS_PER_BATCH)


def _topic(channel: grpc.Channel, durability: str = "fsync") -> str:
    name = f"bench-{next(_topics)}"
    admin_pb2_grpc.AdminServiceStub(channel).CreateTopic(
        admin_pb2.CreateTopicRequest(
            name=name, partitions=1, configs={"durability": durability}
        )
    )
    return name


def _fill(channel: grpc.Channel, topic: str, batch: bytes, count: int) -> None:
    produce = produce_pb2_grpc.ProduceServiceStub(channel)
    acks = produce.ProduceStream(
        iter([produce_pb2.ProduceRequest(topic=topic, partition=0, record_batch=batch)
              for _ in range(count)])
    )
    assert len(list(acks)) == count


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
    return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)


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
    _fill(channel, topic, batch, FETCH_BATCHES)
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


class _Credit:
    """A Subscribe request stream: ``start`` with the initial window, then credit grants."""

    def __init__(self, start: fetch_pb2.SubscribeStart) -> None:
        self._queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._start = start

    def grant(self, credit_bytes: int) -> None:
        self._queue.put_nowait(credit_bytes)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def requests(self) -> AsyncIterator[fetch_pb2.SubscribeRequest]:
        yield fetch_pb2.SubscribeRequest(start=self._start)
        while (credit := await self._queue.get()) is not None:
            yield fetch_pb2.SubscribeRequest(credit_bytes=credit)


def _subscribe(stub: Any, topic: str, offset: int) -> tuple[_Credit, Any]:
    credit = _Credit(
        fetch_pb2.SubscribeStart(
            topic=topic, partition=0, offset=offset, credit_bytes=SUBSCRIBE_CREDIT_BYTES
        )
    )
    return credit, stub.Subscribe(credit.requests())


def test_subscribe(
    benchmark: Any,
    channel: grpc.Channel,
    aio_channel: tuple[asyncio.AbstractEventLoop, Any],
    batch: bytes,
) -> None:
    loop, async_channel = aio_channel
    topic = _topic(channel)
    _fill(channel, topic, batch, FETCH_BATCHES)
    stub = fetch_pb2_grpc.FetchServiceStub(async_channel)
    end = FETCH_BATCHES * RECORDS_PER_BATCH

    async def consume() -> None:
        credit, call = _subscribe(stub, topic, 0)
        async for push in call:
            if push.record_batches:
                credit.grant(len(push.record_batches))
            if push.next_offset >= end:
                break
        credit.close()
        call.cancel()

    _run(benchmark, lambda: loop.run_until_complete(consume()), end)


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def _e2e_latencies_ms(async_channel: Any, topic: str) -> list[float]:
    """Produce at a fixed rate while a subscriber receives; one latency per batch, in ms."""
    batches = int(E2E_SECONDS * E2E_RECORDS_PER_S / E2E_RECORDS_PER_BATCH)
    interval_s = E2E_RECORDS_PER_BATCH / E2E_RECORDS_PER_S
    end = batches * E2E_RECORDS_PER_BATCH
    values = [bytes(RECORD_BYTES)] * E2E_RECORDS_PER_BATCH
    sent_at: list[float] = []  # batch i holds offsets [i * per_batch, (i + 1) * per_batch)
    latencies: list[float] = []

    async def requests() -> AsyncIterator[produce_pb2.ProduceRequest]:
        start = time.perf_counter()
        for i in range(batches):
            delay = start + i * interval_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            request = produce_pb2.ProduceRequest(
                topic=topic, partition=0, record_batch=encode_values(values), correlation_id=i
            )
            sent_at.append(time.perf_counter())
            yield request

    async def produce() -> None:
        acks = [ack async for ack in produce_stub.ProduceStream(requests())]
        assert not any(ack.HasField("error") for ack in acks)

    async def consume() -> None:
        credit, call = _subscribe(fetch_stub, topic, 0)
        async for push in call:
            received = time.perf_counter()
            data = push.record_batches
            position = 0
            while position < len(data):
                base_offset, length = _BASE_AND_LENGTH.unpack_from(data, position)
                latencies.append((received - sent_at[base_offset // E2E_RECORDS_PER_BATCH]) * 1e3)
                position += LOG_OVERHEAD + length
            if data:
                credit.grant(len(data))
            if push.next_offset >= end:
                break
        credit.close()
        call.cancel()

    produce_stub = produce_pb2_grpc.ProduceServiceStub(async_channel)
    fetch_stub = fetch_pb2_grpc.FetchServiceStub(async_channel)
    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.05)  # let the subscription start before the first record
    await asyncio.wait_for(produce(), E2E_SECONDS + 30)
    await asyncio.wait_for(consumer, 30)
    return latencies


def test_e2e_latency(
    benchmark: Any, channel: grpc.Channel, aio_channel: tuple[asyncio.AbstractEventLoop, Any]
) -> None:
    """p50/p99 produce-to-consume latency at 10,000 records/s (fsync topic, small batches)."""
    loop, async_channel = aio_channel
    topic = _topic(channel)
    latencies: list[float] = []
    # write back what the throughput benchmarks left dirty, so their writeback does not land
    # in this measurement's fsyncs
    os.sync()

    def run() -> None:
        latencies.extend(loop.run_until_complete(_e2e_latencies_ms(async_channel, topic)))

    benchmark.pedantic(run, rounds=1, iterations=1)
    latencies.sort()
    assert len(latencies) == int(E2E_SECONDS * E2E_RECORDS_PER_S / E2E_RECORDS_PER_BATCH)
    benchmark.extra_info.update(
        records_per_s=E2E_RECORDS_PER_S,
        records_per_batch=E2E_RECORDS_PER_BATCH,
        seconds=E2E_SECONDS,
        p50_ms=round(_percentile(latencies, 0.50), 3),
        p99_ms=round(_percentile(latencies, 0.99), 3),
        max_ms=round(latencies[-1], 3),
    )
    print(f"\ne2e latency: p50 {benchmark.extra_info['p50_ms']} ms, "
          f"p99 {benchmark.extra_info['p99_ms']} ms, max {benchmark.extra_info['max_ms']} ms")
