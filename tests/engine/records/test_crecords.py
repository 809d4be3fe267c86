"""The C record check accepts exactly what the Python record loop accepts.

``check_records`` trusts ``_crecords.check`` when it says yes, so a batch the C check passes
and the loop refuses would be stored and then fail every consumer's decode. These
properties feed both valid batches and damaged ones (edits, cuts, insertions, random bytes,
wrong counts) to both and require the same verdict.
"""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.records import record
from engine.records.batch import encode_batch
from engine.records.errors import RecordError
from engine.records.record import Header, NewRecord, Record, decode_record_values

_BYTES = st.one_of(st.none(), st.binary(max_size=40))
_HEADERS = st.lists(
    st.builds(Header, st.text(max_size=6), st.one_of(st.none(), st.binary(max_size=8))),
    max_size=3,
).map(tuple)
_RECORDS = st.lists(
    st.builds(NewRecord, _BYTES, _BYTES, _HEADERS,
              st.integers(min_value=0, max_value=2**45)),
    min_size=1,
    max_size=12,
)


def _native() -> ModuleType:
    assert record.NATIVE, "engine.records._crecords was not built: pip install -e ."
    from engine.records import _crecords

    return _crecords


def _python_accepts(data: bytes, count: int, last_delta: int) -> bool:
    try:
        decode_record_values(data, count=count, last_delta=last_delta, position=0)
    except RecordError:
        return False
    return True


def _same_verdict(data: bytes, count: int, last_delta: int) -> None:
    native = _native().check(data, count, last_delta)
    assert native == _python_accepts(data, count, last_delta), (data.hex(), count, last_delta)


@settings(max_examples=2000, deadline=None)
@given(records=_RECORDS,
       edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=3),
       cut=st.integers(0, 3), insert=st.binary(max_size=2), count_skew=st.integers(-1, 1),
       delta_skew=st.integers(-1, 1))
def test_same_verdict_on_valid_and_damaged_batches(
    records: list[NewRecord], edits: list[tuple[int, int]], cut: int, insert: bytes,
    count_skew: int, delta_skew: int,
) -> None:
    data = bytearray(encode_batch(records)[61:])
    for position, value in edits:
        data[position % len(data)] = value
    if insert:
        data[len(data) // 2 : len(data) // 2] = insert
    data = data[: max(0, len(data) - cut)]
    count = len(records) + count_skew
    _same_verdict(bytes(data), count, len(records) - 1 + delta_skew)


@settings(max_examples=2000, deadline=None)
@given(data=st.binary(max_size=64), count=st.integers(-1, 4), last_delta=st.integers(-1, 4))
def test_same_verdict_on_any_bytes(data: bytes, count: int, last_delta: int) -> None:
    _same_verdict(data, count, last_delta)


@pytest.mark.parametrize(
    ("record_hex", "accepted"),
    [
        ("", True),  # zero records
        ("0c 00 00 00 01 01 00", True),  # null key and value, no headers
        ("0c 00 00 00 01 01 00 00", False),  # a byte after the last record
        ("0e 00 00 00 81 00 01 00", False),  # key length -1 written in two bytes
        ("0e 00 00 00 01 81 00 00", True),  # value length -1 in two bytes: the loop allows it
        ("14 00 00 00 01 ff ff ff ff 1f 00", False),  # a value length over 32 bits
        ("12 00 00 00 01 01 02 02 ff 01", False),  # a header key that is not UTF-8
        ("12 00 00 00 01 01 02 02 61 01", True),  # header "a" with a null value
        ("0c 00 00 02 01 01 00", False),  # offsetDelta 1 in a one-record batch
    ],
)
def test_hand_made_edges(record_hex: str, accepted: bool) -> None:
    data = bytes.fromhex(record_hex)
    count = 1 if data else 0
    assert _python_accepts(data, count, 0) == accepted
    assert _native().check(data, count, 0) == accepted


def test_check_records_raises_the_python_message() -> None:
    with pytest.raises(RecordError, match="key length -1 is below -1"):
        record.check_records(bytes.fromhex("0e 00 00 00 81 00 01 00"), count=1, last_delta=0,
                             position=0)


# ------------------------------------------------------------------ the C decoder


def _python_decode(data: bytes, count: int, last_delta: int, base_offset: int, base_ts: int,
                   append_time: int | None) -> list[Record] | None:
    native, record.NATIVE = record.NATIVE, False
    try:
        return record.decode_records(data, count=count, base_offset=base_offset,
                                     base_ts=base_ts, last_delta=last_delta,
                                     append_time=append_time, position=0)
    except RecordError:
        return None
    finally:
        record.NATIVE = native


def _same_records(data: bytes, count: int, last_delta: int, base_offset: int = 0,
                  base_ts: int = 0, append_time: int | None = None,
                  wanted: set[int] | None = None) -> None:
    expected = _python_decode(data, count, last_delta, base_offset, base_ts, append_time)
    if expected is not None and wanted is not None:
        expected = [r for r in expected if r.offset in wanted]
    got = _native().decode(data, count, base_offset, base_ts, last_delta, append_time,
                           Record, Header, wanted)
    context = (data.hex(), count, last_delta)
    if expected is None:
        assert got is None, context  # refused, so the Python loop raises its message
        return
    if got is None:  # the C loop may refuse what Python accepts (then Python decodes it)
        return
    assert got == expected, context
    for item in got:
        assert type(item) is Record, context
        assert all(type(header) is Header for header in item.headers), context


@settings(max_examples=2000, deadline=None)
@given(records=_RECORDS,
       edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=3),
       cut=st.integers(0, 3), insert=st.binary(max_size=2), count_skew=st.integers(-1, 1),
       delta_skew=st.integers(-1, 1), base_offset=st.integers(0, 2**63 - 1),
       base_ts=st.integers(-(2**63), 2**63 - 1),
       append_time=st.one_of(st.none(), st.integers(0, 2**62)),
       wanted=st.one_of(st.none(), st.sets(st.integers(0, 12))))
def test_decode_equals_the_python_loop(
    records: list[NewRecord], edits: list[tuple[int, int]], cut: int, insert: bytes,
    count_skew: int, delta_skew: int, base_offset: int, base_ts: int, append_time: int | None,
    wanted: set[int] | None,
) -> None:
    data = bytearray(encode_batch(records)[61:])
    _same_records(bytes(data), len(records), len(records) - 1, base_offset, base_ts,
                  append_time)
    if wanted is not None:  # only those offsets are built, every record is still checked
        _same_records(bytes(data), len(records), len(records) - 1, 0, base_ts, append_time,
                      wanted)
    for position, value in edits:
        data[position % len(data)] = value
    if insert:
        data[len(data) // 2 : len(data) // 2] = insert
    data = data[: max(0, len(data) - cut)]
    _same_records(bytes(data), len(records) + count_skew, len(records) - 1 + delta_skew,
                  base_offset, base_ts, append_time)
    _same_records(bytes(data), len(records) + count_skew, len(records) - 1 + delta_skew,
                  0, base_ts, append_time, wanted or {0})


@settings(max_examples=2000, deadline=None)
@given(data=st.binary(max_size=64), count=st.integers(-1, 4), last_delta=st.integers(-1, 4))
def test_decode_equals_the_python_loop_on_any_bytes(data: bytes, count: int,
                                                     last_delta: int) -> None:
    _same_records(data, count, last_delta)


def test_valid_batches_are_decoded_in_c() -> None:
    """Not a refusal that the Python loop quietly covers: the C loop returns the records,
    frozen headers included."""
    batch = encode_batch([NewRecord(b"v", b"k", (Header("h", b"1"), Header("n", None))),
                          NewRecord(None)])
    got = _native().decode(batch[61:], 2, 10, 1_000, 5, None, Record, Header)
    assert got is not None
    assert [(r.offset, r.key, r.value) for r in got] == [(10, b"k", b"v"), (11, None, None)]
    assert got[0].headers == (Header("h", b"1"), Header("n", None))
    with pytest.raises(AttributeError):
        got[0].headers[0].key = "x"  # type: ignore[misc]


@pytest.mark.parametrize("native", [True, False])
def test_decode_batch_builds_only_the_wanted_records(native: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.records.batch import decode_batch

    monkeypatch.setattr(record, "NATIVE", native and record.NATIVE)
    uniform = encode_batch([NewRecord(b"x")] * 40, base_offset=100)
    mixed = encode_batch([NewRecord(b"%d" % n, headers=(Header("n", None),)) for n in range(40)],
                         base_offset=100)
    for batch in (uniform, mixed):
        _, records = decode_batch(batch, 0, wanted={103, 120, 500})
        assert [r.offset for r in records] == [103, 120]
        assert records == [r for r in decode_batch(batch, 0)[1] if r.offset in (103, 120)]
