"""AppendStream's C parser against its reference (protobuf, then ``event_data`` per event).

Whatever the C parser accepts it must read exactly as the reference does; it may decline
anything (None: the reference then runs), but never the plain messages clients send.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import moldau
from engine.views.eventstore import ANY, NO_STREAM, STREAM_EXISTS, EventData
from engine.views.eventstore.packed import PackedEvents
from grpc_api import _cappend, append_wire
from grpc_api.append_wire import ParsedAppends, decode_appends, decode_appends_python
from grpc_api.errors import InvalidRequestError
from moldau._eventstore_wire import fill_append
from moldau.v1 import eventstore_pb2 as pb
from moldau.v1.eventstore_pb2 import AppendStreamRequest

_text = st.text(max_size=12)
_plain_type = st.text(min_size=1, max_size=20).filter(
    lambda t: not t.startswith("$") and len(t.encode()) <= 256)
_plain_id = st.one_of(st.just(""), st.uuids().map(str))
_any_id = st.one_of(_plain_id, st.uuids().map(lambda u: str(u).upper()),
                    st.uuids().map(lambda u: "{" + str(u) + "}"), st.uuids().map(lambda u: u.hex),
                    st.text(max_size=40))
_any_type = st.one_of(_plain_type, st.just(""), st.just("$deleted"), st.text(max_size=5),
                      st.text(min_size=257, max_size=260))


def _event(plain: bool) -> st.SearchStrategy[pb.EventToAppend]:
    return st.builds(
        pb.EventToAppend, type=_plain_type if plain else _any_type,
        data=st.binary(max_size=40), metadata=st.binary(max_size=10),
        type_version=st.integers(0, 2**31 - 1) if plain else st.integers(-2**31, 2**31 - 1),
        event_id=_plain_id if plain else _any_id)


def _append(plain: bool) -> st.SearchStrategy[pb.PipelinedAppend]:
    @st.composite
    def build(draw: Any) -> pb.PipelinedAppend:
        item = pb.PipelinedAppend(correlation_id=draw(st.integers(0, 2**64 - 1)))
        request = item.append
        request.topic = draw(_text)
        request.stream = draw(_text)
        kind = draw(st.sampled_from(["exact", "special"] if plain else
                                    ["exact", "special", "none"]))
        if kind == "exact":
            request.exact = draw(st.integers(0 if plain else -5, 2**63 - 1))
        elif kind == "special":
            request.special = draw(st.integers(1, 3) if plain else st.integers(0, 5))
        events = draw(st.lists(_event(plain), max_size=4))
        if plain:  # ids distinct within an append, as the reference demands
            seen: set[str] = set()
            for event in events:
                if event.event_id in seen:
                    event.event_id = ""
                seen.add(event.event_id)
        request.events.extend(events)
        return item
    return build()


def _message(plain: bool) -> st.SearchStrategy[bytes]:
    return st.lists(_append(plain), max_size=4).map(
        lambda items: AppendStreamRequest(appends=items).SerializeToString())


def _c(raw: bytes) -> list[Any] | None:
    return _cappend.parse(raw, PackedEvents, ANY, NO_STREAM, STREAM_EXISTS)


def _same(raw: bytes, native: list[Any]) -> None:
    """The C reading of ``raw`` equals the reference's, random ids aside."""
    reference = decode_appends_python(raw)
    assert reference.error is None, "C accepted a message protobuf refuses"
    message = AppendStreamRequest.FromString(raw)
    assert len(native) == len(reference.appends) == len(message.appends)
    for got, want, item in zip(native, reference.appends, message.appends, strict=True):
        assert got[:4] == want[:4]
        assert not isinstance(want[4], InvalidRequestError), want[4]
        packed, events = got[4], want[4]
        assert isinstance(packed, PackedEvents)
        assert len(packed) == len(events)
        for mine, theirs, sent in zip(packed, events, item.append.events, strict=True):
            if sent.event_id:
                assert mine == theirs
            else:  # a fresh random id on both sides
                assert (mine.type, mine.data, mine.metadata, mine.type_version) == (
                    theirs.type, theirs.data, theirs.metadata, theirs.type_version)
                assert mine.event_id.version == 4
                assert str(mine.event_id).encode() in packed.ids


def test_the_c_parser_is_built() -> None:
    assert append_wire.NATIVE, "grpc_api._cappend was not built: pip install -e ."


@settings(max_examples=300)
@given(raw=_message(plain=True))
def test_plain_messages_take_the_c_path_and_read_the_same(raw: bytes) -> None:
    native = _c(raw)
    assert native is not None, "a plain message went the slow way"
    _same(raw, native)


@settings(max_examples=300)
@given(raw=_message(plain=False))
def test_any_message_reads_the_same_or_goes_to_protobuf(raw: bytes) -> None:
    native = _c(raw)
    if native is not None:
        _same(raw, native)
    parsed = decode_appends(raw)
    assert parsed.error is None
    assert len(parsed.appends) == len(AppendStreamRequest.FromString(raw).appends)


@settings(max_examples=500)
@given(raw=_message(plain=True), cut=st.integers(0, 10_000), flips=st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    tail=st.binary(max_size=6))
def test_mangled_bytes_never_read_differently(raw: bytes, cut: int,
                                              flips: list[tuple[int, int]],
                                              tail: bytes) -> None:
    mangled = bytearray(raw[:cut % (len(raw) + 1)] + tail)
    for at, value in flips:
        if mangled:
            mangled[at % len(mangled)] = value
    data = bytes(mangled)
    native = _c(data)
    if native is not None:
        _same(data, native)
    parsed = decode_appends(data)  # never raises: an undecodable message carries its error
    assert isinstance(parsed, ParsedAppends)


def test_an_undecodable_message_carries_a_clear_error() -> None:
    parsed = decode_appends(b"\x0a\xff\xff")
    assert isinstance(parsed.error, InvalidRequestError)
    assert "AppendStreamRequest" in str(parsed.error)
    assert parsed.appends == []


def test_one_bad_append_sends_the_message_the_reference_way() -> None:
    good = pb.PipelinedAppend(correlation_id=1, append=pb.AppendToStreamRequest(
        topic="t", stream="s", special=pb.EXPECTED_VERSION_ANY,
        events=[pb.EventToAppend(type="A", event_id=str(uuid.uuid4()))]))
    bad = pb.PipelinedAppend(correlation_id=2, append=pb.AppendToStreamRequest(
        topic="t", stream="s", special=pb.EXPECTED_VERSION_ANY,
        events=[pb.EventToAppend(type="A", event_id="not-a-uuid")]))
    raw = AppendStreamRequest(appends=[good, bad]).SerializeToString()
    assert _c(raw) is None
    first, second = decode_appends(raw).appends
    assert isinstance(first[4], list)
    assert first[4][0].type == "A"
    assert isinstance(second[4], InvalidRequestError)
    assert "not a UUID" in str(second[4])


def test_the_python_client_sends_plain_messages() -> None:
    message = AppendStreamRequest()  # the client's own encoder fills it
    for number in range(3):
        item = message.appends.add()
        item.correlation_id = number
        fill_append(item.append, "orders", f"order-{number}", moldau.NO_STREAM if number else 4,
                    [moldau.EventData("Placed", b"{}", b"m", 2) for _ in range(number + 1)])
    raw = message.SerializeToString()
    native = _c(raw)
    assert native is not None
    _same(raw, native)
    assert [n[3] for n in native] == [4, NO_STREAM, NO_STREAM]


@pytest.mark.parametrize(("special", "engine"), [(1, ANY), (2, NO_STREAM), (3, STREAM_EXISTS)])
def test_special_versions_map_to_the_engine_values(special: int, engine: int) -> None:
    raw = AppendStreamRequest(appends=[pb.PipelinedAppend(append=pb.AppendToStreamRequest(
        topic="t", stream="s", special=special,  # type: ignore[arg-type]
        events=[pb.EventToAppend(type="A", data=b"x")]))]).SerializeToString()
    (item,) = _c(raw) or []
    assert item[3] == engine
    (event,) = item[4]
    assert event == EventData("A", b"x", b"", 1, event.event_id)
