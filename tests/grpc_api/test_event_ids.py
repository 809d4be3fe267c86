"""The servicer's event-id parser: the same answers as ``uuid.UUID``, faster for the wire form."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from grpc_api.append_wire import parse_event_id as _parse_event_id

_HEX = "0123456789abcdefABCDEF"
_near_canonical = st.lists(st.sampled_from([*_HEX, "-", "_", "+", " ", "g", "{", "}"]),
                           min_size=30, max_size=40).map("".join)


def _same_as_stdlib(text: str) -> None:
    try:
        expected = uuid.UUID(text)
    except ValueError:
        try:
            _parse_event_id(text)
        except ValueError:
            return
        raise AssertionError(f"{text!r} was accepted; uuid.UUID refuses it") from None
    parsed = _parse_event_id(text)
    assert parsed == expected
    assert hash(parsed) == hash(expected)
    assert str(parsed) == str(expected)  # the engine keys its idempotency window by this
    assert parsed.int == expected.int
    assert parsed.version == expected.version


@given(st.uuids())
def test_canonical_ids_parse_to_the_same_uuid(value: uuid.UUID) -> None:
    _same_as_stdlib(str(value))
    _same_as_stdlib(str(value).upper())
    _same_as_stdlib(value.hex)
    _same_as_stdlib("{" + str(value) + "}")


@given(_near_canonical)
def test_any_other_text_gets_the_stdlib_answer(text: str) -> None:
    _same_as_stdlib(text)


@given(st.uuids(), st.integers(0, 35), st.sampled_from(["-", "_", "+", "x", "A", "0"]))
def test_one_changed_character_gets_the_stdlib_answer(value: uuid.UUID, at: int,
                                                      char: str) -> None:
    text = str(value)
    _same_as_stdlib(text[:at] + char + text[at + 1 :])
