"""The hand-written response encoding matches the generated protobuf code byte for byte."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpc_api.wire import RawBatches, batches_serializer, encode_varint
from moldau.v1 import fetch_pb2

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
MESSAGES = pytest.mark.parametrize(
    "message_type", [fetch_pb2.FetchResponse, fetch_pb2.SubscribeResponse]
)


@MESSAGES
@given(data=st.binary(max_size=300), high=INT64, start=INT64, next_=INT64)
def test_raw_batches_serialize_like_the_generated_message(
    message_type: Any, data: bytes, high: int, start: int, next_: int
) -> None:
    serialize = batches_serializer(message_type)
    expected = message_type(
        record_batches=data, high_watermark=high, log_start_offset=start, next_offset=next_
    ).SerializeToString()
    assert serialize(RawBatches(data, high, start, next_)) == expected
    parsed = message_type.FromString(serialize(RawBatches(data, high, start, next_)))
    assert (parsed.record_batches, parsed.next_offset) == (data, next_)


@MESSAGES
def test_large_batches_and_zero_fields(message_type: Any) -> None:
    serialize = batches_serializer(message_type)
    data = bytes(range(256)) * 5000
    for raw in (RawBatches(data, 7, 0, 9), RawBatches(b"", 0, 0, 0)):
        expected = message_type(
            record_batches=raw.record_batches, high_watermark=raw.high_watermark,
            log_start_offset=raw.log_start_offset, next_offset=raw.next_offset,
        ).SerializeToString()
        assert serialize(raw) == expected


def test_generated_messages_pass_through() -> None:
    response = fetch_pb2.FetchResponse(next_offset=3)
    response.records.add(offset=2, value=b"v")
    assert batches_serializer(fetch_pb2.FetchResponse)(response) == response.SerializeToString()


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
     (-1, b"\xff" * 9 + b"\x01")],
)
def test_varint(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
