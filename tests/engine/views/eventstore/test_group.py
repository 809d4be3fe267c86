"""Group commit of pipelined appends: ``EventStore.append_group`` and its batch encoder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import (
    DuplicateEventIdError,
    InvalidEventStoreRequestError,
    WrongExpectedVersionError,
)
from engine.records.batch import decode_batch, encode_batch
from engine.views.eventstore import ANY, NO_STREAM, EventData, EventStore, _cevents, codec
from engine.views.eventstore.codec import _event_records, encode_event_group
from engine.views.eventstore.packed import SPAN, PackedEvents


def _e(event_type: str) -> EventData:
    return EventData(event_type, b"{}")


def _ids(events: list[EventData]) -> list[bytes]:
    return [str(e.event_id).encode() for e in events]


events_strategy = st.lists(st.builds(
    EventData, type=st.text(min_size=1, max_size=300).filter(lambda t: len(t.encode()) <= 256),
    data=st.binary(max_size=20_000), metadata=st.binary(max_size=300),
    type_version=st.integers(0, 2**31 - 1), event_id=st.uuids()), min_size=1, max_size=5)


@given(groups=st.lists(st.tuples(st.binary(min_size=1, max_size=200),
                                 st.integers(0, 2**40), events_strategy), min_size=1,
                       max_size=4),
       timestamp=st.integers(0, 2**45))
def test_group_encoder_matches_the_generic_encoder(
        groups: list[tuple[bytes, int, list[EventData]]], timestamp: int) -> None:
    fast = encode_event_group([(k, v, e, _ids(e)) for k, v, e in groups], timestamp)
    records = [r for k, v, e in groups for r in _event_records(k, v, e)]
    assert fast == encode_batch(records, timestamp=timestamp)
    _, decoded = decode_batch(fast, max_batch_bytes=len(fast))
    assert len(decoded) == sum(len(e) for _, _, e in groups)


def test_group_appends_are_judged_in_order(store: EventStore) -> None:
    repeated = _e("R")
    outcomes, end = store.append_group("orders", 0, [
        ("order-1", NO_STREAM, [_e("A")]),
        ("order-1", 0, [_e("B"), _e("C")]),  # sees the version the first one claimed
        ("order-1", 0, [_e("D")]),  # stale: fails alone
        ("order-2", ANY, [repeated]),
        ("order-3", ANY, [repeated]),  # same id elsewhere: refused after a flush
        ("", ANY, [_e("E")]),
        ("order-1", 2, [_e("F")]),
    ])
    store.wait_durable("orders", 0, end)
    first, second, stale, other, reused, bad, last = outcomes
    assert (first.first_version, second.first_version, second.last_version) == (0, 1, 2)
    assert isinstance(stale, WrongExpectedVersionError)
    assert stale.current == 2
    assert other.first_version == 0
    assert isinstance(reused, DuplicateEventIdError)
    assert isinstance(bad, InvalidEventStoreRequestError)
    assert last.last_version == 3
    assert [e.type for e in store.read_stream("orders", "order-1").events] == ["A", "B", "C", "F"]
    again, _ = store.append_group("orders", 0, [("order-1", NO_STREAM, [_e("X")])])
    assert isinstance(again[0], WrongExpectedVersionError)
    retried, _ = store.append_group("orders", 0, [("order-2", NO_STREAM, [repeated])])
    assert retried[0].duplicate


def test_group_refuses_a_stream_of_another_partition(store: EventStore) -> None:
    store.create_store_topic("wide", 4)
    stream = next(f"s-{n}" for n in range(100) if store.partition_for("wide", f"s-{n}") != 0)
    outcomes, end = store.append_group("wide", 0, [(stream, ANY, [_e("A")])])
    assert isinstance(outcomes[0], InvalidEventStoreRequestError)
    assert end == 0


def _packed(events: list[EventData], junk: bytes = b"") -> PackedEvents:
    """``events`` as a front end packs them: fields somewhere in one byte string."""
    raw = bytearray(junk)
    spans = bytearray()
    for event in events:
        at = []
        for field in (event.type.encode(), event.data, event.metadata):
            at += [len(raw), len(field)]
            raw += field + junk
        spans += SPAN.pack(*at, event.type_version)
    return PackedEvents(bytes(raw), bytes(spans), _ids(events), 0)


def test_the_c_encoder_is_built() -> None:
    assert codec.NATIVE, "engine.views.eventstore._cevents was not built: pip install -e ."


@given(groups=st.lists(st.tuples(st.binary(min_size=1, max_size=200),
                                 st.integers(0, 2**40), events_strategy, st.booleans()),
                       min_size=1, max_size=4),
       timestamp=st.integers(0, 2**45), junk=st.binary(max_size=3))
def test_packed_events_encode_as_the_python_loop_does(
        groups: list[tuple[bytes, int, list[EventData], bool]], timestamp: int,
        junk: bytes) -> None:
    mixed = [(k, v, _packed(e, junk) if pack else e, _ids(e)) for k, v, e, pack in groups]
    reference = [(k, v, e, _ids(e)) for k, v, e, _ in groups]
    assert encode_event_group(mixed, timestamp) == encode_event_group(reference, timestamp)


@given(events=events_strategy)
def test_packed_events_are_the_events(events: list[EventData]) -> None:
    packed = _packed(events, b"\x00")
    assert list(packed) == events
    assert len(packed) == len(events)
    assert packed[-1] == events[-1]
    assert packed[1:] == events[1:]


def test_packed_events_refuse_spans_that_do_not_fit() -> None:
    packed = _packed([_e("A")])
    with pytest.raises(ValueError, match="span bytes"):
        PackedEvents(packed.raw, packed.spans + b"\x00", packed.ids, 0)
    outside = SPAN.pack(0, 1, 0, len(packed.raw) + 1, 0, 0, 1)  # data runs past raw
    with pytest.raises(ValueError, match="outside raw"):
        _cevents.encode(packed.raw, outside, packed.ids, b"\x02k", 0, 0)


def test_a_packed_append_goes_through_the_group(store: EventStore) -> None:
    events = [_e("A"), _e("B")]
    outcomes, end = store.append_group("orders", 0, [
        ("order-1", NO_STREAM, _packed(events)),
        ("order-1", 1, _packed([_e("C")])),
        ("order-1", 1, _packed([_e("D")])),  # stale
        ("order-2", ANY, _packed(events)),  # the same ids again, elsewhere
    ])
    store.wait_durable("orders", 0, end)
    first, second, stale, repeated = outcomes
    assert (first.first_version, first.last_version, second.first_version) == (0, 1, 2)
    assert isinstance(stale, WrongExpectedVersionError)
    assert isinstance(repeated, DuplicateEventIdError)
    read = store.read_stream("orders", "order-1")
    assert [e.type for e in read.events] == ["A", "B", "C"]
    assert [e.event_id for e in read.events][:2] == [e.event_id for e in events]
    retry, _ = store.append_group("orders", 0, [("order-1", NO_STREAM, _packed(events))])
    assert retry[0].duplicate
    assert retry[0].first_version == 0
