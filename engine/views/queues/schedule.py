"""Scheduled delivery: the ``deliver-at`` and ``deliver-after`` record headers.

- ``deliver-at``: epoch milliseconds as ASCII decimal (``1718000000000``), or an ISO 8601 date
  and time (``2024-06-10T06:13:20Z``, ``2024-06-10T08:13:20+02:00``; without a zone it is UTC).
- ``deliver-after``: milliseconds as ASCII decimal, counted from the record's timestamp.

If both are present the later time wins. A value that cannot be parsed (not ASCII, not a
number, not a date, negative) does not hold the record back: it is delivered at once and
counted as malformed, because dropping or parking a record over a typo would lose it silently.
The schedule is read from the record itself, so it needs no state of its own: a restart
rediscovers it by scanning.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from engine.records.record import Header

__all__ = ["DELIVER_AFTER_HEADER", "DELIVER_AT_HEADER", "Schedule", "parse_schedule"]

DELIVER_AT_HEADER = "deliver-at"
DELIVER_AFTER_HEADER = "deliver-after"
_MAX_HEADER_BYTES = 64


@dataclass(frozen=True, slots=True)
class Schedule:
    """``due_ms``: deliver from then on (-1: at once). ``malformed``: a header was unreadable."""

    due_ms: int
    malformed: bool


_NONE = Schedule(-1, False)


def _parse_at(raw: bytes) -> int | None:
    if len(raw) > _MAX_HEADER_BYTES:
        return None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    millis = int(moment.timestamp() * 1000)
    return millis if millis >= 0 else None


def _parse_after(raw: bytes, timestamp_ms: int) -> int | None:
    if len(raw) > _MAX_HEADER_BYTES:
        return None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return timestamp_ms + int(text) if text.isdigit() else None


def parse_schedule(headers: tuple[Header, ...], timestamp_ms: int) -> Schedule:
    """The delivery time a record asks for (see the module docstring)."""
    if not headers:
        return _NONE
    due = -1
    malformed = False
    for header in headers:
        if header.key == DELIVER_AT_HEADER:
            parsed = None if header.value is None else _parse_at(header.value)
        elif header.key == DELIVER_AFTER_HEADER:
            parsed = None if header.value is None else _parse_after(header.value, timestamp_ms)
        else:
            continue
        if parsed is None:
            malformed = True
        else:
            due = max(due, parsed)
    return Schedule(due, malformed) if due >= 0 or malformed else _NONE
