"""The sparse time index of a segment: from a timestamp to the offset to start reading at.

Byte layout: a flat array of 12-byte little-endian entries, packed without padding (as
Kafka's), see :mod:`engine.log.index`::

    offset  size  field
    0       8     timestamp        int64   largest timestamp appended so far, in ms
    8       4     relative_offset  uint32  offset of the record holding it - segment base offset

Twelve bytes means the int64 of every odd entry is not 8-byte aligned; numpy reads such
fields through its unaligned path, and a lookup measures the same (about 3 us at a million
entries) as on the aligned offset index. Padding to 16 bytes would cost a third more index
space on every segment for no measurable gain.

Invariants:
    - timestamps strictly increase: an entry is added only when the segment's largest
      timestamp grew, so the index is the running maximum, sampled;
    - relative offsets never decrease;
    - the last slot is reserved (:attr:`TimeIndex.is_full` reports full one entry early, as
      Kafka does) so the entry appended when the segment is sealed always fits.

Why "largest so far": timestamps inside a log need not be ordered (CreateTime comes from the
producer), so the index records, for each sampled position, the maximum up to it. Every batch
before the entry's offset has timestamps <= the entry's timestamp, which makes
:meth:`TimeIndex.lookup` a safe place to start a scan for "first batch with timestamp >= t".

Concurrency: single writer under the partition's lock; lock-free concurrent readers (see
:mod:`engine.log.index`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from engine.log.index import AbstractIndex, InvalidIndexAppendError

__all__ = ["NO_TIMESTAMP", "TimeIndex"]

NO_TIMESTAMP = -1
"""Kafka's "no timestamp": what lookups return when no entry qualifies."""

_UINT32_MAX = 2**32 - 1
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class TimeIndex(AbstractIndex):
    """Maps a timestamp to the offset of the last sampled maximum at or before it."""

    ENTRY_DTYPE: ClassVar[np.dtype[np.void]] = np.dtype(
        [("timestamp", "<i8"), ("relative_offset", "<u4")]
    )
    KEY_FIELD: ClassVar[str] = "timestamp"

    @property
    def is_full(self) -> bool:
        """True one entry early: the last slot is kept for the seal-time entry."""
        return self.entries >= self.max_entries - 1

    def maybe_append(self, timestamp: int, offset: int) -> bool:
        """Index ``(timestamp, offset)`` if ``timestamp`` is above the largest indexed one.

        Returns:
            Whether an entry was added. Equal or smaller timestamps are skipped silently: the
            segment calls this after every indexed batch and again when sealing, with its
            running maximum, which often has not moved. Negative timestamps ("none") are
            never indexed, as the empty index already answers :data:`NO_TIMESTAMP`.

        Raises:
            InvalidIndexAppendError: ``offset`` is outside the segment, below the last entry's
                offset, or there is no room (the reserved slot is usable here).
        """
        last = self._last_entry()
        if timestamp <= (NO_TIMESTAMP if last is None else last[0]):
            return False
        relative = offset - self.base_offset
        if not 0 <= relative <= _UINT32_MAX:
            raise InvalidIndexAppendError(
                self.path,
                f"offset {offset} is outside the segment's range "
                f"[{self.base_offset}, {self.base_offset + _UINT32_MAX}]",
            )
        if timestamp > _INT64_MAX:
            raise InvalidIndexAppendError(self.path, f"timestamp {timestamp} exceeds int64")
        if last is not None and relative < last[1]:
            raise InvalidIndexAppendError(
                self.path,
                f"offset {offset} is below the last entry's offset {self.base_offset + last[1]}",
            )
        self._append_entry((timestamp, relative))
        return True

    def lookup(self, timestamp: int) -> tuple[int, int]:
        """``(timestamp, offset)`` of the last entry whose timestamp is <= ``timestamp``.

        ``(NO_TIMESTAMP, base_offset)`` when there is none: start at the segment's first batch.
        """
        key = min(max(timestamp, _INT64_MIN), _INT64_MAX)
        slot, _, array = self._floor_slot(key)
        if slot < 0:
            return NO_TIMESTAMP, self.base_offset
        found, relative = array.item(slot)
        return int(found), self.base_offset + int(relative)

    def entry(self, slot: int) -> tuple[int, int]:
        """``(timestamp, offset)`` of entry ``slot`` (0-based)."""
        timestamp, relative = self._entry_at(slot)
        return timestamp, self.base_offset + relative

    @property
    def max_timestamp_entry(self) -> tuple[int, int]:
        """``(timestamp, offset)`` of the last entry; ``(NO_TIMESTAMP, base_offset)`` if empty."""
        last = self._last_entry()
        if last is None:
            return NO_TIMESTAMP, self.base_offset
        return last[0], self.base_offset + last[1]

    def truncate_to_offset(self, offset: int) -> None:
        """Drop the entries whose offset is >= ``offset`` (the log was cut there)."""
        relative = offset - self.base_offset
        if relative <= 0:
            self.truncate_to_entries(0)
            return
        if relative > _UINT32_MAX:
            return
        self.truncate_to_entries(self._first_slot_at_or_after("relative_offset", relative))

    def _check_entries(self, valid: npt.NDArray[Any]) -> None:
        self._require_increasing(valid, "timestamp", strict=True)
        self._require_increasing(valid, "relative_offset", strict=False)
