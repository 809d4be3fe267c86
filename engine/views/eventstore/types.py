"""Value objects of the event store: what callers pass in and what they get back.

Versions: a stream's events are numbered 0, 1, 2, ... (the *stream version*). Expected versions
use EventStoreDB's numbers so they travel through gRPC as one signed integer:

    >= 0   exact: the stream's last event must have this version
    -1     NO_STREAM: the stream must not exist (never written, or soft-deleted)
    -2     ANY: no check
    -4     STREAM_EXISTS: the stream must exist

Positions: an event's :class:`EventPosition` is its (partition, log offset) in the store topic.
A reader of a whole topic keeps an :class:`AllPosition`, the next log offset per partition,
because a multi-partition topic has no single order; resuming from it never skips nor repeats
an event (see the package docstring for the order across partitions).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.errors import InvalidEventStoreRequestError

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AllPosition",
    "AllSlice",
    "AppendResult",
    "Direction",
    "EventData",
    "EventPosition",
    "EventStoreSettings",
    "RecordedEvent",
    "Snapshot",
    "StreamInfo",
    "StreamSlice",
    "category_prefix",
    "validate_stream_id",
]

NO_STREAM = -1
ANY = -2
STREAM_EXISTS = -4
_EXPECTED_NAMES = {NO_STREAM: "no_stream", ANY: "any", STREAM_EXISTS: "stream_exists"}

MAX_STREAM_ID_BYTES = 1024
MAX_EVENT_TYPE_BYTES = 256


class Direction(enum.Enum):
    """Which way :meth:`EventStore.read_stream` walks the versions."""

    FORWARDS = "forwards"
    BACKWARDS = "backwards"


@dataclass(frozen=True, slots=True)
class EventData:
    """One event to append. ``event_id`` makes a retried append idempotent, so callers who may
    retry should choose it (the default is a fresh random UUID)."""

    type: str
    data: bytes
    metadata: bytes = b""
    type_version: int = 1
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True, slots=True)
class EventPosition:
    """Where an event is stored: its partition of the store topic and its log offset there."""

    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as read back from the log."""

    stream: str
    version: int
    event_id: uuid.UUID
    type: str
    type_version: int
    data: bytes
    metadata: bytes
    timestamp_ms: int
    position: EventPosition


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The versions and log offsets an append took (or, for a recognised retry, had taken).

    The events are one batch, so their offsets are ``first_offset .. last_offset`` in one
    partition. ``duplicate`` is True when the append was a retry and nothing new was written.
    """

    first_version: int
    last_version: int
    partition: int
    first_offset: int
    last_offset: int
    duplicate: bool = False

    @property
    def positions(self) -> tuple[EventPosition, ...]:
        """The position of each appended event, in order."""
        return tuple(
            EventPosition(self.partition, offset)
            for offset in range(self.first_offset, self.last_offset + 1)
        )


@dataclass(frozen=True, slots=True)
class StreamSlice:
    """Events of one stream, and the stream's last version when they were read."""

    stream: str
    events: tuple[RecordedEvent, ...]
    last_version: int
    end_of_stream: bool


@dataclass(frozen=True, slots=True)
class AllPosition:
    """The next log offset to read in each partition of a store topic (a cursor, not an event).

    ``AllPosition.start(n)`` is the beginning of an ``n``-partition topic.
    """

    offsets: tuple[int, ...]

    @classmethod
    def start(cls, partitions: int) -> AllPosition:
        return cls((0,) * partitions)

    def after(self, position: EventPosition) -> AllPosition:
        """This cursor moved past ``position`` (a no-op if it is already past it)."""
        offsets = list(self.offsets)
        offsets[position.partition] = max(offsets[position.partition], position.offset + 1)
        return AllPosition(tuple(offsets))


@dataclass(frozen=True, slots=True)
class AllSlice:
    """Events of a topic (or of a category) and the cursor to continue from."""

    events: tuple[RecordedEvent, ...]
    next_position: AllPosition


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A saved state of a stream as of ``version``: fold events from ``version + 1`` onto it."""

    stream: str
    version: int
    state: bytes


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """One stream as :meth:`EventStore.list_streams` reports it (durable versions only)."""

    stream: str
    last_version: int
    truncate_before: int
    deleted: bool
    partition: int


@dataclass(frozen=True, slots=True)
class EventStoreSettings:
    """Tuning of the event store.

    Attributes:
        idempotency_window: event ids remembered per partition for recognising a retried
            append with a non-exact expected version (a retry with an exact expected version is
            recognised at any age, from the log). About 150 bytes each.
        checkpoint_interval_events: write an index checkpoint after this many new events in a
            partition (0: only on :meth:`EventStore.checkpoint` and close).
        max_events_per_append: the most events one append may carry (one batch).
        read_bytes: bytes read from the log per step of a read or a rebuild.
    """

    idempotency_window: int = 100_000
    checkpoint_interval_events: int = 1_000_000
    max_events_per_append: int = 10_000
    read_bytes: int = 256 * 1024


def expected_name(expected: int) -> str:
    """``expected`` as a word (``any``, ``no_stream``...) or the number itself."""
    return _EXPECTED_NAMES.get(expected, str(expected))


def validate_expected(expected: int) -> None:
    """Raises InvalidEventStoreRequestError unless ``expected`` is a known expected version."""
    if expected < 0 and expected not in _EXPECTED_NAMES:
        raise InvalidEventStoreRequestError(
            f"expected version {expected} is not valid: use an exact version >= 0, "
            f"{NO_STREAM} (no stream), {ANY} (any) or {STREAM_EXISTS} (stream exists)"
        )


def validate_stream_id(stream: str) -> bytes:
    """The stream id as UTF-8 bytes (its record key); raises for empty or oversized ids."""
    key = stream.encode()
    if not key or len(key) > MAX_STREAM_ID_BYTES:
        raise InvalidEventStoreRequestError(
            f"a stream id must be 1 to {MAX_STREAM_ID_BYTES} bytes of UTF-8, got {len(key)}",
            stream,
        )
    return key


def validate_count(stream: str, count: int, max_events: int) -> None:
    """Refuse empty or oversized appends (all a PackedEvents append still needs checked)."""
    if not 1 <= count <= max_events:
        raise InvalidEventStoreRequestError(
            f"an append carries 1 to {max_events} events, got {count}", stream
        )


def validate_events(stream: str, events: Sequence[EventData], max_events: int) -> None:
    """Refuse empty or oversized appends, reserved or bad types and ids repeated in one append."""
    validate_count(stream, len(events), max_events)
    seen: set[uuid.UUID] = set()
    for event in events:
        size = len(event.type.encode())
        if not 1 <= size <= MAX_EVENT_TYPE_BYTES or event.type.startswith("$"):
            raise InvalidEventStoreRequestError(
                f"event type {event.type[:40]!r} is not valid: 1 to {MAX_EVENT_TYPE_BYTES} bytes "
                "of UTF-8, not starting with '$' (reserved for the store's own records)",
                stream,
            )
        if not 0 <= event.type_version <= 2**31 - 1:
            raise InvalidEventStoreRequestError(
                f"type version {event.type_version} must be between 0 and 2**31 - 1", stream
            )
        if event.event_id in seen:
            raise InvalidEventStoreRequestError(
                f"event id {event.event_id} appears twice in one append", stream
            )
        seen.add(event.event_id)


def category_prefix(category: str) -> str:
    """The stream-id prefix of a category: ``order`` or ``order-*`` both mean ``order-``.

    Raises:
        InvalidEventStoreRequestError: an empty category.
    """
    name = category.removesuffix("*").removesuffix("-")
    if not name:
        raise InvalidEventStoreRequestError(
            f"category {category!r} is empty; name it like 'order' or 'order-*'"
        )
    return name + "-"
