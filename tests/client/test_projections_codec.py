"""The replay codec against the engine's own event encoder: fast path, slow path, skips."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.records import Codec, Header, NewRecord, encode_batch, parse_header
from engine.views.eventstore.codec import encode_control, encode_events
from engine.views.eventstore.types import EventData
from moldau._replay_codec import StoredEvent, decode_events, stream_matcher
from moldau.errors import CorruptRecordError


def _decode(batch: bytes, first_offset: int = 0, matcher=None) -> tuple[list[StoredEvent], int]:  # type: ignore[no-untyped-def]
    out: list[StoredEvent] = []
    skipped = decode_events(batch, 0, parse_header(batch, 0), "t", 3, first_offset, out, matcher)
    return out, skipped


events_strategy = st.lists(
    st.builds(
        EventData,
        type=st.text(min_size=1, max_size=80).filter(lambda t: not t.startswith("$")),
        data=st.binary(max_size=300),
        metadata=st.binary(max_size=200),
        type_version=st.integers(0, 10**6),
        event_id=st.uuids(),
    ),
    min_size=1, max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(events=events_strategy, first_version=st.integers(0, 10**9),
       stream=st.text(min_size=1, max_size=300))
def test_decodes_what_the_event_store_writes(events: list[EventData], first_version: int,
                                             stream: str) -> None:
    batch = encode_events(stream.encode(), first_version, events, 1_700_000_000_000)
    decoded, skipped = _decode(batch)
    assert skipped == 0
    assert [(e.stream, e.version, e.type, e.type_version, e.event_id, e.data, e.metadata,
             e.partition, e.offset, e.timestamp_ms) for e in decoded] == [
        (stream, first_version + i, ev.type, ev.type_version, str(ev.event_id), ev.data,
         ev.metadata, 3, i, 1_700_000_000_000) for i, ev in enumerate(events)]


def test_type_that_looks_like_the_next_header_takes_the_slow_path() -> None:
    tricky = "A\x1ees.type_version\x021B"
    batch = encode_events(b"order-1", 0, [EventData(tricky, b"{}")], 5)
    decoded, _ = _decode(batch)
    assert decoded[0].type == tricky
    assert decoded[0].type_version == 1


def test_headers_in_another_order_and_foreign_records() -> None:
    event_id = str(uuid.uuid4()).encode()
    records = [
        NewRecord(b"data", b"order-1", (Header("es.type", b"Placed"), Header("x", b"y"),
                                        Header("es.id", event_id), Header("es.version", b"7"))),
        NewRecord(b"plain", b"order-1", ()),
        NewRecord(b"no key", None, (Header("es.type", b"Placed"),)),
    ]
    decoded, skipped = _decode(encode_batch(records, timestamp=1))
    assert [(e.version, e.type, e.type_version, e.event_id) for e in decoded] == [
        (7, "Placed", 1, event_id.decode())]
    assert skipped == 2


def test_control_records_filters_and_first_offset() -> None:
    assert _decode(encode_control(b"order-1", True, 3, 1)) == ([], 1)
    batch = encode_events(b"order-1", 0, [EventData("A", b"1"), EventData("B", b"2")], 1)
    assert [e.type for e in _decode(batch, first_offset=1)[0]] == ["B"]
    assert _decode(batch, matcher=stream_matcher(None, "customer"))[0] == []
    assert len(_decode(batch, matcher=stream_matcher(None, "order-*"))[0]) == 2
    assert len(_decode(batch, matcher=stream_matcher("order-1", None))[0]) == 2


def test_compressed_batches() -> None:
    events = [EventData("A", b"x" * 100) for _ in range(50)]
    plain = encode_events(b"order-1", 0, events, 1)
    records = [NewRecord(e.data, b"order-1", (
        Header("es.version", b"%d" % i), Header("es.id", str(e.event_id).encode()),
        Header("es.type", b"A"), Header("es.type_version", b"1"))) for i, e in enumerate(events)]
    packed = encode_batch(records, timestamp=1, codec=Codec.ZSTD)
    assert len(packed) < len(plain)
    assert [e.data for e in _decode(packed)[0]] == [e.data for e in events]


def test_garbage_records_raise_corrupt_record_error() -> None:
    batch = bytearray(encode_events(b"order-1", 0, [EventData("A", b"{}")], 1))
    batch[61] = 0x7E  # the record's length now overruns the batch
    with pytest.raises(CorruptRecordError):
        _decode(bytes(batch))
