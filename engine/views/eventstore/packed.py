"""Events of an append still inside the serialized request that carried them.

Large appends spent most of the broker's time turning every event into an
:class:`~engine.views.eventstore.types.EventData` (five field reads, a UUID, an object) and
then writing it out again as a record. A front end that can read its wire format natively (the
gRPC server's AppendStream parser) hands the engine a :class:`PackedEvents` instead: the
request bytes, where each event's fields sit in them, and the canonical event ids. The group
commit writes the records straight from those bytes (``_cevents.encode``) and keeps the ids
for the idempotency window; nothing is built per event.

Whoever makes a PackedEvents has already checked what ``validate_events`` checks of each event
(type, type version, ids distinct within the append); the engine still checks the count. It is
a full ``Sequence[EventData]`` too, built lazily, for any path that wants the events one by one.

``spans`` holds, per event, seven native int64: type offset, type length, data offset, data
length, metadata offset, metadata length, type version (offsets into ``raw``).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator, Sequence
from typing import overload

from engine.views.eventstore.types import EventData

__all__ = ["SPAN", "PackedEvents"]

SPAN = struct.Struct("=7q")


class PackedEvents(Sequence[EventData]):
    """An append's events as spans of ``raw`` (see the module docstring)."""

    __slots__ = ("ids", "raw", "size", "spans")

    def __init__(self, raw: bytes, spans: bytes, ids: list[bytes], size: int) -> None:
        if len(spans) != SPAN.size * len(ids):
            raise ValueError(f"{len(ids)} events need {SPAN.size * len(ids)} span bytes, "
                             f"got {len(spans)}")
        self.raw = raw
        self.spans = spans
        self.ids = ids
        """Canonical lower-case UUID text of each event, as bytes."""
        self.size = size
        """Bytes the events add to a batch, roughly (what the group's size limit counts)."""

    def __len__(self) -> int:
        return len(self.ids)

    def _event(self, number: int) -> EventData:
        t_at, t_len, d_at, d_len, m_at, m_len, type_version = SPAN.unpack_from(
            self.spans, number * SPAN.size)
        raw = self.raw
        return EventData(raw[t_at:t_at + t_len].decode(), raw[d_at:d_at + d_len],
                         raw[m_at:m_at + m_len], type_version,
                         uuid.UUID(self.ids[number].decode()))

    @overload
    def __getitem__(self, index: int) -> EventData: ...

    @overload
    def __getitem__(self, index: slice) -> list[EventData]: ...

    def __getitem__(self, index: int | slice) -> EventData | list[EventData]:
        if isinstance(index, slice):
            return [self._event(n) for n in range(len(self))[index]]
        return self._event(range(len(self))[index])

    def __iter__(self) -> Iterator[EventData]:
        return (self._event(n) for n in range(len(self)))
