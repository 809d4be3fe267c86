"""Moving records between batches: the result equals encode_batch of the same records."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.records.batch import decode_batch, encode_batch
from engine.records.compression import Codec
from engine.records.errors import RecordError
from engine.records.record import Header, NewRecord
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
