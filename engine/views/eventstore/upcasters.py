"""Upcasters: turn events stored in an old shape into the current one when they are read.

An upcaster is registered for one (event type, type version) and returns the event in a newer
shape, usually ``dataclasses.replace(event, data=new_data, type_version=version + 1)``. Reads
that ask for it (``upcast=True``) apply upcasters repeatedly until none is registered for the
event's (type, type version), so a chain v1 -> v2 -> v3 runs in order. The log is never
rewritten: the stored records keep their old shape, and a registry change applies to every
later read, replay and projection.

Concurrency: register upcasters at start-up; reads from any thread may then apply them.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.errors import InvalidEventStoreRequestError
from engine.views.eventstore.types import RecordedEvent

__all__ = ["MAX_UPCAST_STEPS", "Upcaster", "UpcasterRegistry"]

Upcaster = Callable[[RecordedEvent], RecordedEvent]
MAX_UPCAST_STEPS = 64
"""A chain longer than this is taken for a cycle (an upcaster that does not move the version)."""


class UpcasterRegistry:
    """Upcasters keyed by (event type, type version)."""

    def __init__(self) -> None:
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, type_version: int, upcaster: Upcaster) -> None:
        """Use ``upcaster`` for events of ``event_type`` stored with ``type_version``.

        Raises:
            InvalidEventStoreRequestError: one is already registered for that pair.
        """
        key = (event_type, type_version)
        if key in self._upcasters:
            raise InvalidEventStoreRequestError(
                f"an upcaster for {event_type!r} version {type_version} is already registered"
            )
        self._upcasters[key] = upcaster

    def __len__(self) -> int:
        return len(self._upcasters)

    def upcast(self, event: RecordedEvent) -> RecordedEvent:
        """``event`` in its newest shape (itself when no upcaster applies).

        Raises:
            InvalidEventStoreRequestError: the chain does not end (an upcaster returned the
                same type and version, directly or through a cycle).
        """
        for _ in range(MAX_UPCAST_STEPS):
            upcaster = self._upcasters.get((event.type, event.type_version))
            if upcaster is None:
                return event
            event = upcaster(event)
        raise InvalidEventStoreRequestError(
            f"upcasting {event.type!r} did not finish in {MAX_UPCAST_STEPS} steps; an upcaster "
            "must return a newer type version",
            event.stream,
        )
