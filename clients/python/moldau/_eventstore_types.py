"""Value objects of the event-store client: what callers pass in and what they get back.

Expected versions are plain integers with EventStoreDB's numbering, so one signed number says
everything and travels unchanged from :class:`AppendResult.last_version` into the next append:

    >= 0             exact: the stream's last event must have this version
    NO_STREAM  (-1)  the stream must not exist (never written, or soft-deleted)
    ANY        (-2)  no check
    STREAM_EXISTS (-4) the stream must exist

Positions: an event is stored at :class:`EventPosition` (partition, log offset) of its store
topic. A reader of a whole topic or a category keeps an :class:`AllPosition`, the next offset
of every partition; resuming from it never skips nor repeats an event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AllPosition",
    "AllSlice",
    "AppendResult",
    "EventData",
    "EventPosition",
    "RecordedEvent",
    "Snapshot",
    "StreamInfo",
    "StreamSlice",
    "Upcaster",
    "UpcasterRegistry",
    "expected_name",
]

NO_STREAM = -1
ANY = -2
STREAM_EXISTS = -4
_EXPECTED_NAMES = {NO_STREAM: "no_stream", ANY: "any", STREAM_EXISTS: "stream_exists"}


def expected_name(expected: int) -> str:
    """``expected`` as a word (``any``, ``no_stream``, ``stream_exists``) or the number."""
    return _EXPECTED_NAMES.get(expected, str(expected))


@dataclass(frozen=True, slots=True)
class EventData:
    """One event to append.

    ``event_id`` is chosen when the object is made (a random UUID unless given), so sending the
    same ``EventData`` again (a retry after a timeout, say) is recognised by the server and
    writes nothing twice. A string id is turned into a :class:`uuid.UUID`.
    """

    type: str
    data: bytes
    metadata: bytes = b""
    type_version: int = 1
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def __post_init__(self) -> None:
        event_id: object = self.event_id
        if isinstance(event_id, str):  # accepted for convenience, stored as a UUID
            object.__setattr__(self, "event_id", uuid.UUID(event_id))

    @classmethod
    def json(cls, type: str, data: Any, *, metadata: Any = None, type_version: int = 1,
             event_id: uuid.UUID | str | None = None) -> EventData:
        """An event whose data (and metadata, when given) is ``data`` as compact JSON."""
        return cls(
            type=type,
            data=json.dumps(data, separators=(",", ":")).encode(),
            metadata=b"" if metadata is None else json.dumps(metadata).encode(),
            type_version=type_version,
            event_id=uuid.uuid4() if event_id is None else uuid.UUID(str(event_id)),
        )


@dataclass(frozen=True, slots=True)
class EventPosition:
    """Where an event is stored: its partition of the store topic and its log offset."""

    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as read back (after the client's upcasters, when any apply)."""

    stream: str
    version: int
    event_id: uuid.UUID
    type: str
    type_version: int
    data: bytes
    metadata: bytes
    timestamp_ms: int
    position: EventPosition

    def json(self) -> Any:
        """``data`` decoded as JSON."""
        return json.loads(self.data)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The versions and log offsets an append took (or, for a recognised retry, had taken).

    ``last_version`` is the expected version of the stream's next append. ``duplicate`` is
    True when the append was a retry and nothing new was written.
    """

    first_version: int
    last_version: int
    partition: int
    first_offset: int
    last_offset: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class StreamSlice:
    """Events of one stream (iterable), and the stream's last durable version when read."""

    stream: str
    events: tuple[RecordedEvent, ...]
    last_version: int
    end_of_stream: bool

    def __iter__(self) -> Iterator[RecordedEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


@dataclass(frozen=True, slots=True)
class AllPosition:
    """The next log offset to read in each partition of a store topic (a cursor).

    ``AllPosition.start(n)`` is the beginning of an ``n``-partition topic; ``None`` wherever a
    position is optional means the same.
    """

    offsets: tuple[int, ...]

    @classmethod
    def start(cls, partitions: int) -> AllPosition:
        return cls((0,) * partitions)

    def after(self, position: EventPosition) -> AllPosition:
        """This cursor moved past ``position`` (unchanged if it is already past it): the
        resume point of a reader that has handled the event stored there."""
        offsets = list(self.offsets)
        offsets[position.partition] = max(offsets[position.partition], position.offset + 1)
        return AllPosition(tuple(offsets))


@dataclass(frozen=True, slots=True)
class AllSlice:
    """Events of a topic or category (iterable) and the cursor to continue from."""

    events: tuple[RecordedEvent, ...]
    next_position: AllPosition

    def __iter__(self) -> Iterator[RecordedEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A saved state of a stream as of ``version``: fold events from ``version + 1`` onto it."""

    stream: str
    version: int
    state: bytes


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """One stream as :meth:`EventStore.list_streams` reports it."""

    stream: str
    last_version: int
    truncate_before: int
    deleted: bool
    partition: int


Upcaster = Callable[[RecordedEvent], RecordedEvent]
"""Turns an event of one (type, type version) into a newer shape, typically
``dataclasses.replace(event, data=..., type_version=event.type_version + 1)``."""

MAX_UPCAST_STEPS = 64


class UpcasterRegistry:
    """The client's upcasters, keyed by (event type, type version), applied on every read.

    Reads apply upcasters repeatedly until none is registered for the event's (type, type
    version), so a chain v1 -> v2 -> v3 runs in order. Stored events are never rewritten.

    Thread-safety: register at start-up; reads from any thread may then apply them.
    """

    def __init__(self) -> None:
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, type_version: int, upcaster: Upcaster) -> None:
        """Use ``upcaster`` for ``event_type`` events stored with ``type_version``.

        Raises:
            ValueError: one is registered for that pair already.
        """
        key = (event_type, type_version)
        if key in self._upcasters:
            raise ValueError(
                f"an upcaster for {event_type!r} version {type_version} is already registered"
            )
        self._upcasters[key] = upcaster

    def upcaster(self, event_type: str, type_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator form of :meth:`register`."""

        def decorate(function: Upcaster) -> Upcaster:
            self.register(event_type, type_version, function)
            return function

        return decorate

    def __len__(self) -> int:
        return len(self._upcasters)

    def upcast(self, event: RecordedEvent) -> RecordedEvent:
        """``event`` in its newest shape (itself when no upcaster applies).

        Raises:
            ValueError: the chain does not end (an upcaster kept the type and version).
        """
        upcasters = self._upcasters
        if not upcasters:
            return event
        for _ in range(MAX_UPCAST_STEPS):
            upcaster = upcasters.get((event.type, event.type_version))
            if upcaster is None:
                return event
            event = upcaster(event)
        raise ValueError(
            f"upcasting {event.type!r} did not finish in {MAX_UPCAST_STEPS} steps; an upcaster "
            "must return a newer type version"
        )
