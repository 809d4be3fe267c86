"""The fast paths over a real server: group-committed ProduceStream, batched Subscribe pushes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from engine.records.batch import decode_batches, encode_values, iter_batches
from grpc_api.fetch import SUBSCRIBE_PUSH_BYTES
from grpc_api.testing import ServerProcess
from moldau.v1 import common_pb2, fetch_pb2, fetch_pb2_grpc, produce_pb2, produce_pb2_grpc
from tests.integration.support import Stubs


@pytest.mark.parametrize("durability", ["fsync", "async"])
def test_pipelined_stream_acks_every_request_in_order_per_partition(
    server: ServerProcess, stubs: Stubs, new_topic: Callable[..., str], durability: str
) -> None:
    """Many requests in flight share fsyncs; acks of one partition still leave in order."""
    topic = new_topic(2, {"durability": durability})
    batch = encode_values([b"v" * 50] * 5)
    requests = [
        produce_pb2.ProduceRequest(
            topic=topic, partition=i % 2, record_batch=batch, correlation_id=i
        )
        for i in range(300)
    ]
    # plain records spread over both partitions, and a bad batch, among the batches
    requests.insert(50, produce_pb2.ProduceRequest(
        topic=topic, correlation_id=1000,
        records=produce_pb2.RecordList(records=[common_pb2.Record(value=b"p")] * 4),
    ))
    requests.insert(80, produce_pb2.ProduceRequest(
        topic=topic, partition=0, record_batch=b"not a batch" * 10, correlation_id=1001
    ))

    async def run() -> list[produce_pb2.ProduceStreamResponse]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = produce_pb2_grpc.ProduceServiceStub(channel)
            return [ack async for ack in stub.ProduceStream(iter(requests))]

    acks = asyncio.run(run())
    assert sorted(a.correlation_id for a in acks) == sorted(r.correlation_id for r in requests)
    by_id = {a.correlation_id: a for a in acks}
    assert by_id[1001].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [r.last_offset - r.base_offset + 1 for r in by_id[1000].response.results] == [2, 2]
    for partition in (0, 1):
        batch_acks = [
            a for a in acks if a.correlation_id < 300 and a.correlation_id % 2 == partition
        ]
        ids = [a.correlation_id for a in batch_acks]
        assert ids == sorted(ids)  # acknowledged in the order sent
        bases = [a.response.results[0].base_offset for a in batch_acks]
        assert bases == sorted(bases)
        assert len(set(bases)) == 150
        reply = stubs.fetch.Fetch(
            fetch_pb2.FetchRequest(topic=topic, partition=partition, offset=0)
        )
        assert reply.high_watermark == 150 * 5 + 2  # every acknowledged record is readable


async def _credit(
    start: fetch_pb2.SubscribeRequest, grants: asyncio.Queue[int | None]
) -> AsyncIterator[fetch_pb2.SubscribeRequest]:
    yield start
    while (credit := await grants.get()) is not None:
        yield fetch_pb2.SubscribeRequest(credit_bytes=credit)


def test_subscribe_catching_up_pushes_several_whole_batches_within_credit(
    server: ServerProcess, stubs: Stubs, topic: str
) -> None:
    batch = encode_values([b"r" * 100] * 100)  # ~11 KB
    count = 120  # ~1.3 MB: more than one push
    acks = stubs.produce.ProduceStream(iter(
        [produce_pb2.ProduceRequest(topic=topic, partition=0, record_batch=batch)] * count
    ))
    assert len(list(acks)) == count
    credit = 10 * 1024 * 1024

    async def consume() -> list[bytes]:
        grants: asyncio.Queue[int | None] = asyncio.Queue()
        start = fetch_pb2.SubscribeRequest(start=fetch_pb2.SubscribeStart(
            topic=topic, partition=0, offset=0, credit_bytes=credit
        ))
        pushes = []
        async with grpc.aio.insecure_channel(server.address) as channel:
            call = fetch_pb2_grpc.FetchServiceStub(channel).Subscribe(_credit(start, grants))
            async for push in call:
                if push.record_batches:
                    pushes.append(push.record_batches)
                if push.next_offset >= count * 100:
                    break
            grants.put_nowait(None)
            call.cancel()
        return pushes

    pushes = asyncio.run(consume())
    assert 1 < len(pushes) < count  # several batches per push, more than one push
    assert all(len(p) <= SUBSCRIBE_PUSH_BYTES for p in pushes)
    data = b"".join(pushes)
    assert len(data) == count * len(batch) <= credit
    headers = [header for _, header in iter_batches(data)]  # whole, CRC-valid batches
    assert [h.base_offset for h in headers] == list(range(0, count * 100, 100))
    assert all(h.size == len(batch) for h in headers)


def test_small_and_large_async_batches_land_and_are_acked_in_the_order_sent(
    server: ServerProcess, stubs: Stubs, new_topic: Callable[..., str]
) -> None:
    """Small and 80 KB batches of an async topic (and a bad one) on one pipelined stream:
    acknowledged in the order sent, stored at consecutive offsets, read back in that order."""
    topic = new_topic(1, {"durability": "async"})
    requests = []
    for i in range(200):
        size = 80_000 if i % 7 == 3 else 40
        requests.append(produce_pb2.ProduceRequest(
            topic=topic, partition=0, correlation_id=i,
            record_batch=encode_values([b"%05d" % i + b"." * size])))
    requests.insert(100, produce_pb2.ProduceRequest(
        topic=topic, partition=0, record_batch=b"not a batch" * 10, correlation_id=999))

    async def run() -> list[produce_pb2.ProduceStreamResponse]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = produce_pb2_grpc.ProduceServiceStub(channel)
            return [ack async for ack in stub.ProduceStream(iter(requests))]

    acks = asyncio.run(run())
    assert [a.correlation_id for a in acks] == [r.correlation_id for r in requests]
    assert acks[100].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    good = [a for a in acks if a.correlation_id != 999]
    assert [a.response.results[0].base_offset for a in good] == list(range(200))
    values = []
    offset = 0
    while offset < 200:
        reply = stubs.fetch.Fetch(fetch_pb2.FetchRequest(topic=topic, partition=0,
                                                         offset=offset, max_bytes=1 << 21))
        values += [r.value[:5] for r in decode_batches(reply.record_batches)]
        offset = reply.next_offset
    assert values == [b"%05d" % i for i in range(200)]
