"""Produce and Fetch over a real server: every codec, plain records, streams, decoded reads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from engine.partitioner import partition_for_key
from engine.records.batch import decode_batch, decode_batches, encode_batch
from engine.records.compression import Codec
from engine.records.record import Header, NewRecord
from grpc_api.testing import ServerProcess
from moldau.v1 import common_pb2, fetch_pb2, produce_pb2, produce_pb2_grpc
from tests.integration.support import Stubs

S = grpc.StatusCode


def _records(count: int, tag: str = "") -> list[NewRecord]:
    return [
        NewRecord(
            value=f"value-{tag}{i}".encode() * 3,
            key=None if i % 3 == 0 else f"key-{i}".encode(),
            headers=(Header("h", b"1"), Header("null", None)) if i % 2 else (),
            timestamp=1_700_000_000_000 + i,
        )
        for i in range(count)
    ]


def _fetch(stubs: Stubs, topic: str, offset: int = 0, partition: int = 0, **kw: object) -> (
    fetch_pb2.FetchResponse
):
    return stubs.fetch.Fetch(
        fetch_pb2.FetchRequest(topic=topic, partition=partition, offset=offset, **kw)
    )


@pytest.mark.parametrize("codec", list(Codec), ids=lambda c: c.name)
def test_pre_encoded_batches_come_back_identical(stubs: Stubs, topic: str, codec: Codec) -> None:
    sent = [encode_batch(_records(20, str(n)), codec=codec) for n in range(3)]
    offsets = []
    for batch in sent:
        reply = stubs.produce.Produce(
            produce_pb2.ProduceRequest(topic=topic, partition=0, record_batch=batch)
        )
        (result,) = reply.results
        offsets.append((result.base_offset, result.last_offset))
    assert offsets == [(0, 19), (20, 39), (40, 59)]

    fetched = _fetch(stubs, topic, max_bytes=1024 * 1024)
    assert fetched.high_watermark == 60
    assert fetched.next_offset == 60
    position = 0
    for batch in sent:
        stored = fetched.record_batches[position : position + len(batch)]
        # identical except the base offset the broker assigned (not covered by the CRC)
        assert stored[8:] == batch[8:]
        position += len(batch)
    assert position == len(fetched.record_batches)
    records = list(decode_batches(fetched.record_batches))
    expected = [r for n in range(3) for r in _records(20, str(n))]
    assert [(r.key, r.value, r.headers, r.timestamp) for r in records] == [
        (r.key, r.value, r.headers, r.timestamp) for r in expected
    ]
    assert [r.offset for r in records] == list(range(60))


def _plain(record: NewRecord) -> common_pb2.Record:
    message = common_pb2.Record(
        headers=[
            common_pb2.Header(key=h.key, value=h.value)
            if h.value is not None
            else common_pb2.Header(key=h.key)
            for h in record.headers
        ]
    )
    if record.key is not None:
        message.key = record.key
    if record.value is not None:
        message.value = record.value
    if record.timestamp is not None:
        message.timestamp_ms = record.timestamp
    return message


def test_plain_records_to_a_partition_and_decoded_fetch(
    stubs: Stubs, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(2)
    records = [*_records(5), NewRecord(value=None, key=b"tombstone")]
    reply = stubs.produce.Produce(
        produce_pb2.ProduceRequest(
            topic=topic,
            partition=1,
            records=produce_pb2.RecordList(
                records=[_plain(r) for r in records], compression=common_pb2.COMPRESSION_ZSTD
            ),
        )
    )
    assert [(r.partition, r.base_offset, r.last_offset) for r in reply.results] == [(1, 0, 5)]
    raw = _fetch(stubs, topic, partition=1)
    header, stored = decode_batch(raw.record_batches)
    assert header.codec == Codec.ZSTD
    assert [(r.key, r.value, r.headers) for r in stored] == [
        (r.key, r.value, r.headers) for r in records
    ]

    decoded = _fetch(stubs, topic, offset=2, partition=1, decoded=True)
    assert decoded.record_batches == b""
    assert [r.offset for r in decoded.records] == [2, 3, 4, 5]
    assert decoded.next_offset == 6
    last = decoded.records[-1]
    assert (last.HasField("key"), last.HasField("value")) == (True, False)
    third = decoded.records[1]
    assert [(h.key, h.HasField("value")) for h in third.headers] == [("h", True), ("null", False)]
    assert third.timestamp_ms == 1_700_000_000_003

    limited = _fetch(stubs, topic, partition=1, decoded=True, max_records=2)
    assert [r.offset for r in limited.records] == [0, 1]
    assert limited.next_offset == 2


def test_plain_records_without_partition_are_partitioned_like_kafka(
    stubs: Stubs, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(3)
    keys = [f"user-{i}".encode() for i in range(12)]
    request = produce_pb2.ProduceRequest(
        topic=topic,
        records=produce_pb2.RecordList(
            records=[common_pb2.Record(key=k, value=b"v") for k in keys]
            + [common_pb2.Record(value=b"unkeyed") for _ in range(6)]
        ),
    )
    reply = stubs.produce.Produce(request)
    assert [r.partition for r in reply.results] == sorted({r.partition for r in reply.results})
    counts = {r.partition: r.last_offset - r.base_offset + 1 for r in reply.results}
    for partition in range(3):
        fetched = _fetch(stubs, topic, partition=partition, decoded=True)
        got_keys = [r.key for r in fetched.records if r.HasField("key")]
        assert got_keys == [k for k in keys if partition_for_key(k, 3) == partition]
        unkeyed = [r for r in fetched.records if not r.HasField("key")]
        assert len(unkeyed) == 2  # round-robin spreads the 6 unkeyed records evenly
        assert counts.get(partition, 0) == len(fetched.records)


def test_fetch_of_a_middle_offset_starts_at_its_batch(stubs: Stubs, topic: str) -> None:
    stubs.produce.Produce(
        produce_pb2.ProduceRequest(
            topic=topic, partition=0, record_batch=encode_batch(_records(10))
        )
    )
    fetched = _fetch(stubs, topic, offset=4)
    header, _ = decode_batch(fetched.record_batches)
    assert header.base_offset == 0  # whole batches: the client skips offsets below 4
    assert fetched.next_offset == 10
    empty = _fetch(stubs, topic, offset=10)
    assert (empty.record_batches, empty.next_offset, empty.high_watermark) == (b"", 10, 10)


def test_fetch_respects_max_bytes_but_returns_at_least_one_batch(stubs: Stubs, topic: str) -> None:
    batch = encode_batch([NewRecord(b"x" * 2000)])
    for _ in range(5):
        stubs.produce.Produce(
            produce_pb2.ProduceRequest(topic=topic, partition=0, record_batch=batch)
        )
    one = _fetch(stubs, topic, max_bytes=10)
    assert len(one.record_batches) == len(batch)
    assert one.next_offset == 1
    two = _fetch(stubs, topic, offset=1, max_bytes=2 * len(batch) + 10)
    assert len(two.record_batches) == 2 * len(batch)
    assert two.next_offset == 3


def test_produce_stream_acks_each_request_and_survives_errors(
    server: ServerProcess, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(2)
    batch = encode_batch(_records(10))

    def requests() -> list[produce_pb2.ProduceRequest]:
        out = [
            produce_pb2.ProduceRequest(
                topic=topic, partition=i % 2, record_batch=batch, correlation_id=100 + i
            )
            for i in range(40)
        ]
        out.insert(5, produce_pb2.ProduceRequest(topic="missing-topic", partition=0,
                                                 record_batch=batch, correlation_id=7))
        out.insert(9, produce_pb2.ProduceRequest(topic=topic, record_batch=batch,
                                                 correlation_id=8))
        return out

    async def run() -> list[produce_pb2.ProduceStreamResponse]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = produce_pb2_grpc.ProduceServiceStub(channel)
            return [ack async for ack in stub.ProduceStream(iter(requests()))]

    acks = asyncio.run(run())
    by_id = {ack.correlation_id: ack for ack in acks}
    assert len(acks) == len(by_id) == 42
    assert by_id[7].error.code == S.NOT_FOUND.value[0]
    assert "missing-topic" in by_id[7].error.message
    assert by_id[8].error.code == S.INVALID_ARGUMENT.value[0]
    assert "partition is required" in by_id[8].error.message
    for partition in (0, 1):
        # requests for one partition are appended in the order sent
        bases = [
            by_id[100 + i].response.results[0].base_offset for i in range(partition, 40, 2)
        ]
        assert bases == list(range(0, 200, 10))
