"""Every refused request gets the status code that says what went wrong, never INTERNAL."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from engine.records.batch import encode_batch
from engine.records.record import NewRecord
from moldau.v1 import common_pb2, fetch_pb2, produce_pb2
from tests.integration.support import LIMITS, Stubs

S = grpc.StatusCode
MAX_REQUEST_BYTES = int(LIMITS["MOLDAU_MAX_REQUEST_BYTES"])
MAX_BATCH_BYTES = int(LIMITS["MOLDAU_MAX_BATCH_BYTES"])


def _status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _produce(stubs: Stubs, topic: str, batch: bytes, partition: int = 0) -> object:
    return stubs.produce.Produce(
        produce_pb2.ProduceRequest(topic=topic, partition=partition, record_batch=batch)
    )


def _fetch(stubs: Stubs, topic: str, **kw: object) -> object:
    return stubs.fetch.Fetch(fetch_pb2.FetchRequest(topic=topic, **kw))


BATCH = encode_batch([NewRecord(b"value", key=b"key")])


def test_unknown_topic(stubs: Stubs) -> None:
    code, details = _status(lambda: _produce(stubs, "no-such-topic", BATCH))
    assert code == S.NOT_FOUND
    assert "no-such-topic" in details
    assert _status(lambda: _fetch(stubs, "no-such-topic"))[0] == S.NOT_FOUND


def test_bad_partition(stubs: Stubs, topic: str) -> None:
    code, details = _status(lambda: _produce(stubs, topic, BATCH, partition=5))
    assert code == S.NOT_FOUND
    assert "partition 5" in details
    assert _status(lambda: _fetch(stubs, topic, partition=-1))[0] == S.NOT_FOUND


def test_corrupt_batch_is_refused_by_its_crc(stubs: Stubs, topic: str) -> None:
    corrupt = bytearray(BATCH)
    corrupt[-3] ^= 0x40  # a byte of the value, covered by the CRC
    code, details = _status(lambda: _produce(stubs, topic, bytes(corrupt)))
    assert code == S.INVALID_ARGUMENT
    assert "CRC" in details
    assert _status(lambda: _produce(stubs, topic, b"not a batch at all"))[0] == (
        S.INVALID_ARGUMENT
    )
    assert _fetch(stubs, topic).high_watermark == 0  # nothing was stored


def test_oversize_requests_and_batches(stubs: Stubs, new_topic: Callable[..., str]) -> None:
    topic = new_topic(1, {"max.message.bytes": "2048"})
    huge = encode_batch([NewRecord(b"h" * (MAX_REQUEST_BYTES + 10))])
    code, _ = _status(lambda: _produce(stubs, topic, huge))
    assert code == S.RESOURCE_EXHAUSTED  # grpc's max_receive_message_length
    big = encode_batch([NewRecord(b"b" * (MAX_BATCH_BYTES + 10))])
    code, details = _status(lambda: _produce(stubs, topic, big))
    assert (code, "max_batch_bytes" in details) == (S.RESOURCE_EXHAUSTED, True)
    over_topic_limit = encode_batch([NewRecord(b"t" * 4096)])
    code, details = _status(lambda: _produce(stubs, topic, over_topic_limit))
    assert (code, "max.message.bytes" in details) == (S.RESOURCE_EXHAUSTED, True)
    many = produce_pb2.RecordList(
        records=[common_pb2.Record(value=bytes(1000)) for _ in range(MAX_BATCH_BYTES // 1000 + 5)]
    )
    code, details = _status(
        lambda: stubs.produce.Produce(
            produce_pb2.ProduceRequest(topic=topic, partition=0, records=many)
        )
    )
    assert (code, "max_batch_bytes" in details) == (S.RESOURCE_EXHAUSTED, True)


def test_fetch_limits(stubs: Stubs, topic: str) -> None:
    code, details = _status(lambda: _fetch(stubs, topic, max_bytes=64 * 1024 * 1024))
    assert (code, "max_fetch_bytes" in details) == (S.RESOURCE_EXHAUSTED, True)
    code, details = _status(lambda: _fetch(stubs, topic, decoded=True, max_records=1_000_000))
    assert (code, "max_fetch_records" in details) == (S.RESOURCE_EXHAUSTED, True)
    assert _status(lambda: _fetch(stubs, topic, max_bytes=-1))[0] == S.INVALID_ARGUMENT


def test_out_of_range_offset_names_the_valid_range(stubs: Stubs, topic: str) -> None:
    _produce(stubs, topic, BATCH)
    code, details = _status(lambda: _fetch(stubs, topic, offset=99))
    assert code == S.OUT_OF_RANGE
    assert "[0, 1)" in details


def test_bad_produce_requests(stubs: Stubs, topic: str) -> None:
    def produce(**fields: object) -> object:
        return stubs.produce.Produce(produce_pb2.ProduceRequest(topic=topic, **fields))

    cases = [
        ({"record_batch": BATCH}, "partition is required"),
        ({"partition": 0}, "record_batch or records"),
        ({"records": produce_pb2.RecordList()}, "at least one record"),
        (
            {"records": produce_pb2.RecordList(records=[common_pb2.Record()], compression=9)},
            "compression 9",
        ),
    ]
    for fields, words in cases:
        code, details = _status(lambda fields=fields: produce(**fields))
        assert (code, words in details) == (S.INVALID_ARGUMENT, True), details
    code, _ = _status(lambda: stubs.produce.Produce(produce_pb2.ProduceRequest(partition=0)))
    assert code == S.INVALID_ARGUMENT


def _idempotent(sequence: int, epoch: int = 0, count: int = 5) -> bytes:
    return encode_batch(
        [NewRecord(b"x") for _ in range(count)],
        producer_id=42,
        producer_epoch=epoch,
        base_sequence=sequence,
    )


def test_idempotent_producer_duplicate_gap_and_fencing(stubs: Stubs, topic: str) -> None:
    first = _produce(stubs, topic, _idempotent(0)).results[0]  # type: ignore[attr-defined]
    again = _produce(stubs, topic, _idempotent(0)).results[0]  # type: ignore[attr-defined]
    assert (again.base_offset, again.last_offset, again.duplicate) == (
        first.base_offset, first.last_offset, True,
    )
    code, details = _status(lambda: _produce(stubs, topic, _idempotent(10)))
    assert code == S.FAILED_PRECONDITION
    assert "sequence" in details
    _produce(stubs, topic, _idempotent(0, epoch=1))
    code, details = _status(lambda: _produce(stubs, topic, _idempotent(5, epoch=0)))
    assert code == S.FAILED_PRECONDITION
    assert "fenced" in details
