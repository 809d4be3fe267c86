"""The C replay loop decodes exactly what the Python loop decodes, and fails where it fails.

``decode_events`` uses ``_creplay.decode`` when it is built; the Python ``_decode`` is the
reference. Both get the event store's own batches, batches of foreign records with headers in
any order, and damaged versions of both, and must give equal events and skip counts, or both
raise.
"""

from __future__ import annotations

import uuid
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.records import Header, NewRecord, RecordError, encode_batch, parse_header
from engine.views.eventstore.codec import encode_events
from engine.views.eventstore.types import EventData
from moldau import _replay_codec
from moldau._replay_codec import StoredEvent


def _native() -> ModuleType:
    assert _replay_codec.NATIVE, "moldau._creplay was not built: pip install -e ."
    from moldau import _creplay

    return _creplay


def _run(native: bool, batch: bytes, first_offset: int, matcher: object) -> object:
    header = parse_header(batch, 0)
    out: list[StoredEvent] = []
    args = (batch, 61, header.size, header.record_count, header.base_offset,
            header.base_timestamp, None, "t", 3, first_offset, out, matcher)
    try:
        skipped = (_native().decode(*args, StoredEvent) if native
                   else _replay_codec._decode(*args))  # type: ignore[arg-type]
    except (IndexError, ValueError, RecordError):  # decode_events' CorruptRecordError cases
        return "error"
    return skipped, out


_EVENTS = st.lists(
    st.builds(
        EventData,
        type=st.text(min_size=1, max_size=20).filter(lambda t: not t.startswith("$")),
        data=st.binary(max_size=40),
        metadata=st.binary(max_size=20),
        type_version=st.integers(0, 10**6),
        event_id=st.uuids(),
    ),
    min_size=1, max_size=8,
)
_KEYS = st.sampled_from([b"es.version", b"es.id", b"es.type", b"es.type_version",
                         b"es.metadata", b"other"])
_FOREIGN = st.lists(
    st.builds(
        NewRecord,
        st.one_of(st.none(), st.binary(max_size=12)),
        st.one_of(st.none(), st.sampled_from([b"order-1", b"order-2", b"", b"\xff"])),
        st.lists(st.builds(Header, _KEYS.map(bytes.decode),
                           st.one_of(st.none(), st.sampled_from(
                               [b"1", b"12", b"x", b"", b"$t", b"t", str(uuid.UUID(int=7))
                                .encode(), b"\xe9"]))), max_size=6).map(tuple),
    ),
    min_size=1, max_size=6,
)


def _damage(batch: bytes, edits: list[tuple[int, int]]) -> bytes:
    damaged = bytearray(batch)
    for position, value in edits:
        damaged[61 + position % max(1, len(damaged) - 61)] = value
    return bytes(damaged)


@settings(max_examples=1500, deadline=None)
@given(events=_EVENTS, version=st.integers(0, 10**12), stream=st.text(min_size=1, max_size=12),
       edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=2),
       first_offset=st.integers(0, 3), prefix=st.sampled_from([None, "order-"]))
def test_same_result_on_event_store_batches(
    events: list[EventData], version: int, stream: str, edits: list[tuple[int, int]],
    first_offset: int, prefix: str | None,
) -> None:
    batch = _damage(encode_events(stream.encode(), version, events, 1_700_000_000_000), edits)
    matcher = None if prefix is None else (lambda s: s.startswith(prefix))
    assert _run(True, batch, first_offset, matcher) == _run(False, batch, first_offset, matcher)


@settings(max_examples=1500, deadline=None)
@given(records=_FOREIGN,
       edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=2))
def test_same_result_on_foreign_and_damaged_records(
    records: list[NewRecord], edits: list[tuple[int, int]]
) -> None:
    batch = _damage(encode_batch(records), edits)
    assert _run(True, batch, 0, None) == _run(False, batch, 0, None)


def test_the_native_loop_is_the_one_used() -> None:
    _native()
    batch = encode_events(b"order-9", 4, [EventData("Placed", b"{}")], 7)
    out: list[StoredEvent] = []
    assert _replay_codec.decode_events(batch, 0, parse_header(batch, 0), "t", 0, 0, out) == 0
    assert [(e.stream, e.version, e.type, e.offset) for e in out] == [("order-9", 4, "Placed", 0)]
