"""The client's pipelined-append encoder: byte for byte what protobuf writes, or protobuf's
own path (and its errors) for anything but the plain case."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moldau import ANY, NO_STREAM, STREAM_EXISTS, EventData, _cappend, _eventstore_wire
from moldau._eventstore_wire import encode_append, fill_append
from moldau.v1 import eventstore_pb2 as pb

_events = st.lists(st.builds(
    EventData, type=st.text(max_size=20), data=st.binary(max_size=50),
    metadata=st.binary(max_size=10), type_version=st.integers(-2**31, 2**31 - 1),
    event_id=st.uuids()), max_size=5)
_expected = st.one_of(st.integers(0, 2**63 - 1), st.sampled_from([ANY, NO_STREAM, STREAM_EXISTS]))


def _protobuf(correlation_id: int, topic: str, stream: str, expected: int,
              events: list[Any]) -> bytes:
    message = pb.AppendStreamRequest()
    item = message.appends.add(correlation_id=correlation_id)
    fill_append(item.append, topic, stream, expected, events)
    return message.SerializeToString()


def test_the_client_encoder_is_built() -> None:
    assert _eventstore_wire.NATIVE, "moldau._cappend was not built: pip install -e ."


@given(correlation_id=st.integers(0, 2**64 - 1), topic=st.text(max_size=10),
       stream=st.text(max_size=10), expected=_expected, events=_events)
def test_c_writes_what_protobuf_writes(correlation_id: int, topic: str, stream: str,
                                       expected: int, events: list[EventData]) -> None:
    want = _protobuf(correlation_id, topic, stream, expected, events)
    field = 3 if expected >= 0 else 4
    value = expected if expected >= 0 else {ANY: 1, NO_STREAM: 2, STREAM_EXISTS: 3}[expected]
    assert _cappend.encode(correlation_id, topic, stream, field, value, events) == want
    assert encode_append(correlation_id, topic, stream, expected, iter(events)) == want


def test_appends_concatenate_into_one_message() -> None:
    first = [EventData("A", b"1")]
    second = [EventData("B", b"2", b"m", 3)]
    joined = encode_append(1, "t", "s", NO_STREAM, first) + encode_append(2, "t", "s", 0, second)
    message = pb.AppendStreamRequest.FromString(joined)
    assert [item.correlation_id for item in message.appends] == [1, 2]
    assert message.appends[1].append.events[0].event_id == str(second[0].event_id)


class _OddId(uuid.UUID):
    def __str__(self) -> str:
        return "odd"


@pytest.mark.parametrize("event", [
    EventData("A\ud800", b""),  # not encodable as UTF-8
    EventData("A", bytearray(b"x")),  # type: ignore[arg-type]
    EventData("A", b"", type_version=2**31),
    EventData("A", b"", event_id=_OddId(int=5)),
])
def test_anything_unusual_goes_the_protobuf_way(event: EventData) -> None:
    assert _cappend.encode(1, "t", "s", 3, 0, [event]) is None
    try:
        want: bytes | type[Exception] = _protobuf(1, "t", "s", 0, [event])
    except (ValueError, TypeError) as exc:
        with pytest.raises(type(exc)):
            encode_append(1, "t", "s", 0, [event])
        return
    assert encode_append(1, "t", "s", 0, [event]) == want


@pytest.mark.parametrize(("expected", "message"), [
    (-3, "expected version -3 is not valid"), (2**63, "out of range"),
    (1.5, "must be an int"), (True, "must be an int"), ("0", "must be an int")])
def test_a_bad_expected_version_is_refused_as_before(expected: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_append(1, "t", "s", expected, [EventData("A", b"")])
