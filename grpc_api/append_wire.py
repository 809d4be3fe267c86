"""AppendStream's requests, read from their wire bytes.

A 100-event append used to cost the broker about 2.5 us per event on the event loop alone:
protobuf parsed the message, then each event's five fields were read back into Python, its id
parsed into a UUID and an ``EventData`` built, before the append lane encoded it all again.
AppendStream is therefore registered without a protobuf deserializer: :func:`decode_appends`
gets the message bytes and the C parser (``_cappend``) reads every append into an engine
:class:`~engine.views.eventstore.packed.PackedEvents` (spans of the bytes, plus canonical ids)
without building anything per event; the group commit writes the records from those bytes.

The C parser takes only the plain, valid case and answers None for anything else (see
``_cappend.c``); then, or when the extension is not built, protobuf parses the message and
:func:`event_data` converts each event, which is also where every error message comes from.
Both give the same appends (a property test compares them on generated and mangled messages).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from google.protobuf.message import DecodeError

from engine.views.eventstore import ANY, NO_STREAM, STREAM_EXISTS, EventData
from engine.views.eventstore.packed import PackedEvents
from grpc_api.errors import InvalidRequestError
from moldau.v1 import eventstore_pb2

try:
    from grpc_api import _cappend

    NATIVE = True
except ImportError:  # not built (no compiler at install): protobuf and the loop below
    NATIVE = False

__all__ = ["NATIVE", "Append", "ParsedAppends", "decode_appends", "event_data",
           "expected_version", "parse_event_id"]

_pb = eventstore_pb2
_SPECIAL = {
    _pb.EXPECTED_VERSION_ANY: ANY,
    _pb.EXPECTED_VERSION_NO_STREAM: NO_STREAM,
    _pb.EXPECTED_VERSION_STREAM_EXISTS: STREAM_EXISTS,
}

Append = tuple[int, str, str, int, Sequence[EventData] | InvalidRequestError]
"""``(correlation_id, topic, stream, expected_version, events)``; ``events`` is the error
when the append cannot be converted (it is answered with that error; the call goes on)."""


def expected_version(request: Any) -> int:
    """The engine's expected version of an AppendToStreamRequest (or DeleteStreamRequest)."""
    kind = request.WhichOneof("expected")
    if kind == "exact":
        if request.exact < 0:
            raise InvalidRequestError(
                f"an exact expected version is >= 0, got {request.exact}; use `special` for "
                "ANY, NO_STREAM or STREAM_EXISTS"
            )
        return int(request.exact)
    if kind == "special" and request.special in _SPECIAL:
        return _SPECIAL[request.special]
    raise InvalidRequestError(
        "set the expected version: `exact` (>= 0) or `special` (ANY, NO_STREAM, STREAM_EXISTS)"
    )


_UUID_INT = uuid.UUID.__dict__["int"].__set__
_UUID_SAFE = uuid.UUID.__dict__["is_safe"].__set__
_UNKNOWN_SAFETY = uuid.SafeUUID.unknown  # an enum member lookup costs 0.15 us


class _WireId(uuid.UUID):
    """A UUID that keeps the canonical text it arrived as.

    The engine keys its idempotency window by ``str(event_id)``; for an id that came over the
    wire in that form already, parsing it and formatting it back twice per event was a third
    of the broker's per-event work on large appends.
    """

    __slots__ = ("_text",)
    _text: str

    def __str__(self) -> str:
        return self._text


_WIRE_TEXT = _WireId.__dict__["_text"].__set__


def parse_event_id(text: str) -> uuid.UUID:
    """``uuid.UUID(text)``; the canonical lower-case form every client sends keeps its text."""
    digits = text.replace("-", "")
    if len(digits) == 32 and len(text) == 36 and text[8] == text[13] == text[18] == text[23] == "-":
        try:
            value = int(digits, 16)
        except ValueError:
            value = -1
        if value >= 0 and f"{value:032x}" == digits:  # nothing int() forgives (+, _, case)
            event_id = object.__new__(_WireId)
            _UUID_INT(event_id, value)
            _UUID_SAFE(event_id, _UNKNOWN_SAFETY)
            _WIRE_TEXT(event_id, text)
            return event_id
    return uuid.UUID(text)  # the other spellings it accepts, or ValueError


def event_data(message: eventstore_pb2.EventToAppend) -> EventData:
    """One wire event as the engine's EventData (a fresh random id when it has none)."""
    if message.event_id:
        try:
            event_id = parse_event_id(message.event_id)
        except ValueError:
            raise InvalidRequestError(
                f"event_id {message.event_id[:60]!r} is not a UUID; use the 36-character form "
                "like 0f8fad5b-d9cb-469f-a165-70867728950e, or leave it empty"
            ) from None
    else:
        event_id = uuid.uuid4()
    return EventData(message.type, message.data, message.metadata, message.type_version or 1,
                     event_id)  # positional: a third cheaper, once per event


class ParsedAppends:
    """One AppendStreamRequest's appends, in order (what AppendStream's handler receives)."""

    __slots__ = ("appends", "error", "size")

    def __init__(self, appends: list[Append], size: int,
                 error: InvalidRequestError | None = None) -> None:
        self.appends = appends
        self.size = size
        self.error = error
        """Set when the message itself is not an AppendStreamRequest: the call ends with it."""

    def ByteSize(self) -> int:  # noqa: N802  (what quotas ask of a protobuf message)
        return self.size

    def streams(self) -> Iterator[tuple[str, str]]:
        """``(topic, stream)`` of every append, for the per-stream permission check."""
        return ((topic, stream) for _, topic, stream, _, _ in self.appends)


def _converted(item: eventstore_pb2.PipelinedAppend) -> Append:
    request = item.append
    try:
        expected = expected_version(request)
        events: Sequence[EventData] | InvalidRequestError = [
            event_data(e) for e in request.events]
    except InvalidRequestError as exc:
        return item.correlation_id, request.topic, request.stream, 0, exc
    return item.correlation_id, request.topic, request.stream, expected, events


def decode_appends_python(raw: bytes) -> ParsedAppends:
    """The reference: protobuf parses, :func:`event_data` converts each event."""
    try:
        message = _pb.AppendStreamRequest.FromString(raw)
    except DecodeError as exc:
        return ParsedAppends([], len(raw), InvalidRequestError(
            f"the message is not an AppendStreamRequest ({exc}); send what the "
            "moldau.v1 proto describes"))
    return ParsedAppends([_converted(item) for item in message.appends], len(raw))


def decode_appends(raw: bytes) -> ParsedAppends:
    """AppendStream's request deserializer (see the module docstring)."""
    if NATIVE:
        appends = _cappend.parse(raw, PackedEvents, ANY, NO_STREAM, STREAM_EXISTS)
        if appends is not None:
            return ParsedAppends(appends, len(raw))
    return decode_appends_python(raw)
