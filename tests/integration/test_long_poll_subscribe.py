"""Readers that wait: long-poll Fetch and the credit-based Subscribe stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from engine.records.batch import decode_batches, encode_batch
from engine.records.record import NewRecord
from grpc_api.testing import ServerProcess
from moldau.v1 import common_pb2, fetch_pb2, fetch_pb2_grpc, produce_pb2, produce_pb2_grpc
from tests.integration.support import Stubs

S = grpc.StatusCode


def _produce(stubs: Stubs, topic: str, batch: bytes) -> int:
    reply = stubs.produce.Produce(
        produce_pb2.ProduceRequest(topic=topic, partition=0, record_batch=batch)
    )
    return reply.results[0].base_offset


def test_long_poll_returns_soon_after_a_produce(
    stubs: Stubs, server: ServerProcess, topic: str
) -> None:
    batch = encode_batch([NewRecord(b"wake up")])

    async def scenario() -> tuple[fetch_pb2.FetchResponse, float]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            fetch = fetch_pb2_grpc.FetchServiceStub(channel)
            produce = produce_pb2_grpc.ProduceServiceStub(channel)
            call = fetch.Fetch(
                fetch_pb2.FetchRequest(topic=topic, partition=0, offset=0, max_wait_ms=10_000)
            )
            await asyncio.sleep(0.3)  # the fetch is now waiting on the partition
            await produce.Produce(
                produce_pb2.ProduceRequest(topic=topic, partition=0, record_batch=batch)
            )
            produced = time.monotonic()
            response = await call
            return response, time.monotonic() - produced

    response, after_produce_s = asyncio.run(scenario())
    assert [r.value for r in decode_batches(response.record_batches)] == [b"wake up"]
    assert after_produce_s < 1.0


def test_long_poll_times_out_empty(stubs: Stubs, topic: str) -> None:
    started = time.monotonic()
    response = stubs.fetch.Fetch(
        fetch_pb2.FetchRequest(topic=topic, partition=0, offset=0, max_wait_ms=300)
    )
    elapsed = time.monotonic() - started
    assert response.record_batches == b""
    assert response.next_offset == 0
    assert 0.25 <= elapsed < 3.0


async def _requests(queue: asyncio.Queue[fetch_pb2.SubscribeRequest | None]) -> AsyncIterator[
    fetch_pb2.SubscribeRequest
]:
    while (item := await queue.get()) is not None:
        yield item


def _start(topic: str, credit: int, **kw: object) -> fetch_pb2.SubscribeRequest:
    return fetch_pb2.SubscribeRequest(
        start=fetch_pb2.SubscribeStart(topic=topic, partition=0, credit_bytes=credit, **kw)
    )


def test_subscribe_pushes_new_batches_within_credit(
    stubs: Stubs, server: ServerProcess, topic: str
) -> None:
    batch = encode_batch([NewRecord(b"x" * 200)])  # every batch has the same size
    size = len(batch)
    _produce(stubs, topic, batch)  # one batch before subscribing

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address) as channel:
            fetch = fetch_pb2_grpc.FetchServiceStub(channel)
            queue: asyncio.Queue[fetch_pb2.SubscribeRequest | None] = asyncio.Queue()
            queue.put_nowait(_start(topic, credit=3 * size, offset=0))
            call = fetch.Subscribe(_requests(queue))
            first = await call.read()
            assert (first.record_batches, first.next_offset) == (b"", 0)
            existing = await call.read()
            assert (len(existing.record_batches), existing.next_offset) == (size, 1)
            for expected in (2, 3):  # pushed as they are appended
                await asyncio.to_thread(_produce, stubs, topic, batch)
                pushed = await asyncio.wait_for(call.read(), 5)
                assert pushed.next_offset == expected
            await asyncio.to_thread(_produce, stubs, topic, batch)  # credit is spent
            await asyncio.to_thread(_produce, stubs, topic, batch)
            read = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait({read}, timeout=0.4)
            assert not done  # nothing is pushed without credit
            queue.put_nowait(fetch_pb2.SubscribeRequest(credit_bytes=size))
            pushed = await asyncio.wait_for(read, 5)
            assert (len(pushed.record_batches), pushed.next_offset) == (size, 4)
            queue.put_nowait(None)  # half-close: the call ends once the credit is spent
            assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
            assert await call.code() == S.OK

    asyncio.run(scenario())


def test_subscribe_delivers_an_oversize_batch_and_starts_from_a_spec(
    stubs: Stubs, server: ServerProcess, topic: str
) -> None:
    big = encode_batch([NewRecord(b"y" * 5000)])
    for _ in range(3):
        _produce(stubs, topic, big)

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.address) as channel:
            fetch = fetch_pb2_grpc.FetchServiceStub(channel)
            queue: asyncio.Queue[fetch_pb2.SubscribeRequest | None] = asyncio.Queue()
            spec = common_pb2.OffsetSpec(kind=common_pb2.OffsetSpec.EARLIEST)
            queue.put_nowait(_start(topic, credit=10, spec=spec))
            call = fetch.Subscribe(_requests(queue))
            assert (await call.read()).next_offset == 0  # the confirmation
            pushed = await asyncio.wait_for(call.read(), 5)  # one batch over the credit
            assert (len(pushed.record_batches), pushed.next_offset) == (len(big), 1)
            read = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait({read}, timeout=0.3)
            assert not done  # the credit is now zero, not -4990: the next grant moves on
            queue.put_nowait(fetch_pb2.SubscribeRequest(credit_bytes=10))
            pushed = await asyncio.wait_for(read, 5)
            assert (len(pushed.record_batches), pushed.next_offset) == (len(big), 2)
            queue.put_nowait(None)
            assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF

            # a client that closes its side at once gets the confirmation, then the end
            latest = common_pb2.OffsetSpec(kind=common_pb2.OffsetSpec.LATEST)
            call = fetch.Subscribe(iter([_start(topic, credit=0, spec=latest)]))
            assert [r.next_offset async for r in call] == [3]

    asyncio.run(scenario())


def test_subscribe_errors(stubs: Stubs, server: ServerProcess, topic: str) -> None:
    async def status(requests: list[fetch_pb2.SubscribeRequest]) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(server.address) as channel:
            call = fetch_pb2_grpc.FetchServiceStub(channel).Subscribe(iter(requests))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            return info.value.code()

    assert asyncio.run(status([_start("no-such-topic", 10)])) == S.NOT_FOUND
    assert asyncio.run(status([_start(topic, 10, offset=99)])) == S.OUT_OF_RANGE
    assert asyncio.run(status([_start(topic, -1)])) == S.INVALID_ARGUMENT
    assert (
        asyncio.run(status([fetch_pb2.SubscribeRequest(credit_bytes=5)])) == S.INVALID_ARGUMENT
    )
    assert (
        asyncio.run(status([_start(topic, 10), fetch_pb2.SubscribeRequest(credit_bytes=-5)]))
        == S.INVALID_ARGUMENT
    )


def test_subscribe_ends_when_the_topic_is_deleted(
    stubs: Stubs, server: ServerProcess, new_topic: Callable[..., str]
) -> None:
    from moldau.v1 import admin_pb2

    topic = new_topic()

    async def scenario() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(server.address) as channel:
            queue: asyncio.Queue[fetch_pb2.SubscribeRequest | None] = asyncio.Queue()
            queue.put_nowait(_start(topic, 1000, offset=0))
            call = fetch_pb2_grpc.FetchServiceStub(channel).Subscribe(_requests(queue))
            await call.read()
            await asyncio.to_thread(
                stubs.admin.DeleteTopic, admin_pb2.DeleteTopicRequest(name=topic)
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call.read(), 5)
            queue.put_nowait(None)
            return info.value.code()

    assert asyncio.run(scenario()) == S.NOT_FOUND
