"""Moving records between batches: the result equals encode_batch of the same records."""

from __future__ import annotations

import contextlib
import dataclasses
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.records.batch import BatchHeader, decode_batch, encode_batch
from engine.records.compression import Codec
from engine.records.errors import RecordError
from engine.records.record import Header, NewRecord
from engine.views.routing import reframe
from engine.views.routing.reframe import encode_headers, encode_routed, read_records

_BYTES = st.one_of(st.none(), st.binary(max_size=300))
_HEADERS = st.lists(
    st.builds(Header, st.text(max_size=8), st.one_of(st.none(), st.binary(max_size=20))),
    max_size=3,
).map(tuple)
_RECORDS = st.lists(
    st.builds(NewRecord, _BYTES, _BYTES, _HEADERS,
              st.integers(min_value=1_700_000_000_000, max_value=1_700_000_100_000)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(records=_RECORDS, codec=st.sampled_from([Codec.NONE, Codec.GZIP, Codec.LZ4]),
       base_offset=st.integers(min_value=0, max_value=10**12))
def test_round_trip_equals_encode_batch(
    records: list[NewRecord], codec: Codec, base_offset: int
) -> None:
    source = encode_batch(records, codec=codec, base_offset=base_offset)
    _header, routed = read_records(source)
    assert [r.offset for r in routed] == [base_offset + i for i in range(len(records))]
    assert [(r.key, r.headers, r.timestamp) for r in routed] == [
        (n.key, n.headers, n.timestamp) for n in records
    ]
    assert all(r.header_bytes == encode_headers(r.headers) for r in routed)
    subset = routed[::2]
    rebuilt = encode_routed(subset, producer_id=7, producer_epoch=0, base_sequence=3)
    expected = encode_batch(records[::2], producer_id=7, producer_epoch=0, base_sequence=3)
    assert rebuilt == expected
    _, decoded = decode_batch(rebuilt)
    assert [(d.key, d.value, d.headers, d.timestamp) for d in decoded] == [
        (n.key, n.value, n.headers, n.timestamp) for n in records[::2]
    ]


def test_damage_is_an_error_not_a_crash() -> None:
    batch = bytearray(encode_batch([NewRecord(b"value", b"key")]))
    batch[-3] ^= 0xFF
    with pytest.raises(RecordError):
        read_records(bytes(batch))


@settings(max_examples=300, deadline=None)
@given(records=_RECORDS, position=st.integers(min_value=0), value=st.integers(0, 255))
def test_damaged_records_with_a_valid_crc_raise_record_errors(
    records: list[NewRecord], position: int, value: int
) -> None:
    import struct

    from engine.records.crc import crc32c

    batch = bytearray(encode_batch(records))
    batch[61 + position % (len(batch) - 61)] = value
    struct.pack_into(">I", batch, 17, crc32c(bytes(batch[21:])))
    with contextlib.suppress(RecordError):
        read_records(bytes(batch))


# ---------------------------------------------------------------- the C loops vs the Python


def _native() -> ModuleType:
    """The built extension; the suite requires it (make test installs with a compiler)."""
    assert reframe.NATIVE, "engine.views.routing._creframe was not built: pip install -e ."
    from engine.views.routing import _creframe

    return _creframe


def _both(data: bytes, header: BatchHeader, append_time: int | None) -> tuple[object, object]:
    """What the Python and the C record loops make of ``data``: records or the error type."""
    outcomes: list[object] = []
    for loop in (reframe._records, reframe._c_records):
        try:
            outcomes.append(loop(data, header, append_time, 0))
        except RecordError as exc:
            outcomes.append(type(exc))
    return outcomes[0], outcomes[1]


@settings(max_examples=400, deadline=None)
@given(records=_RECORDS, append_time=st.one_of(st.none(), st.integers(0, 2**62)),
       edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=3),
       cut=st.integers(min_value=0, max_value=8))
def test_c_record_loop_equals_the_python_loop(
    records: list[NewRecord], append_time: int | None, edits: list[tuple[int, int]], cut: int
) -> None:
    _native()
    batch = encode_batch(records)
    header, _ = read_records(batch)
    data = bytearray(batch[61:])
    for position, value in edits:  # damage: both loops must agree on it too
        data[position % len(data)] = value
    data = data[: len(data) - cut] if cut < len(data) else data
    python, native = _both(bytes(data), header, append_time)
    assert native == python


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), count=st.integers(0, 6), last_delta=st.integers(0, 6))
def test_c_record_loop_equals_the_python_loop_on_any_bytes(
    data: bytes, count: int, last_delta: int
) -> None:
    _native()
    header = read_records(encode_batch([NewRecord(b"v")]))[0]
    header = dataclasses.replace(header, record_count=count, last_offset_delta=last_delta)
    python, native = _both(data, header, None)
    assert native == python


@settings(max_examples=300, deadline=None)
@given(records=_RECORDS, timestamps=st.lists(st.integers(-(2**40), 2**40), min_size=40,
                                              max_size=40))
def test_c_encoder_equals_the_python_encoder(records: list[NewRecord],
                                             timestamps: list[int]) -> None:
    native = _native()
    _, routed = read_records(encode_batch(records))
    moved = [r._replace(timestamp=t) for r, t in zip(routed, timestamps, strict=False)]
    assert native.encode(moved) == reframe._records_section(moved)


def test_c_loops_refuse_what_they_cannot_read() -> None:
    native = _native()
    with pytest.raises(ValueError, match="at least one record"):
        native.encode([])
    with pytest.raises(TypeError, match="RoutedRecord"):
        native.encode([(1, 2, 3)])
    header = read_records(encode_batch([NewRecord(b"v")]))[0]
    with pytest.raises(RecordError, match="length 6 does not fit"):
        reframe._c_records(b"\x0c", header, None, 0)
    with pytest.raises(RecordError, match="truncated"):
        reframe._c_records(b"\x80", header, None, 0)
