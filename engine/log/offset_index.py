"""The sparse offset index of a segment: where in the ``.log`` file a batch starts.

Byte layout: a flat array of 8-byte little-endian entries (see :mod:`engine.log.index`)::

    offset  size  field
    0       4     relative_offset  uint32  batch base offset - segment base offset
    4       4     position         uint32  byte position of that batch in the .log file

One entry per ``index.interval.bytes`` of appended log, so a 1 GiB segment at the default
4096 needs about 262,000 entries (2 MiB). uint32 fields are why a segment spans fewer than
2**32 offsets and bytes; the config caps ``segment.bytes`` well below that.

Invariants:
    - relative offsets and positions both strictly increase from entry to entry;
    - an entry points at the first byte of the batch whose base offset it names (checked by
      the segment on use; a mismatch makes the segment rebuild the index).

Concurrency: single writer under the partition's lock; lock-free concurrent readers (see
:mod:`engine.log.index`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from engine.log.index import AbstractIndex, InvalidIndexAppendError

__all__ = ["OffsetIndex"]

_UINT32_MAX = 2**32 - 1


class OffsetIndex(AbstractIndex):
    """Maps an offset to the position of a batch at or before it (a floor search).

    A lookup answers "where do I start scanning"; the segment then walks batch headers from
    that position, at most ``index.interval.bytes`` plus one batch.
    """

    ENTRY_DTYPE: ClassVar[np.dtype[np.void]] = np.dtype(
        [("relative_offset", "<u4"), ("position", "<u4")]
    )
    KEY_FIELD: ClassVar[str] = "relative_offset"

    def append(self, offset: int, position: int) -> None:
        """Index the batch with base offset ``offset`` starting at byte ``position``.

        Raises:
            InvalidIndexAppendError: ``offset`` or ``position`` does not increase past the last
                entry, does not fit a uint32 field, or the index is full or read-only.
        """
        relative = offset - self.base_offset
        if not 0 <= relative <= _UINT32_MAX:
            raise InvalidIndexAppendError(
                self.path,
                f"offset {offset} is outside the segment's range "
                f"[{self.base_offset}, {self.base_offset + _UINT32_MAX}]",
            )
        if not 0 <= position <= _UINT32_MAX:
            raise InvalidIndexAppendError(
                self.path, f"position {position} does not fit a uint32 field"
            )
        last = self._last_entry()
        if last is not None and (relative <= last[0] or position <= last[1]):
            raise InvalidIndexAppendError(
                self.path,
                f"entry (offset {offset}, position {position}) does not increase past the "
                f"last entry (offset {self.base_offset + last[0]}, position {last[1]})",
            )
        self._append_entry((relative, position))

    def lookup(self, offset: int) -> tuple[int, int]:
        """``(offset, position)`` of the last entry at or before ``offset``.

        ``(base_offset, 0)`` when there is none: scanning from the segment's start is always
        correct, only slower.
        """
        relative = offset - self.base_offset
        if relative < 0:
            return self.base_offset, 0
        slot, _, array = self._floor_slot(min(relative, _UINT32_MAX))
        if slot < 0:
            return self.base_offset, 0
        found, position = array.item(slot)
        return self.base_offset + int(found), int(position)

    def entry(self, slot: int) -> tuple[int, int]:
        """``(offset, position)`` of entry ``slot`` (0-based)."""
        relative, position = self._entry_at(slot)
        return self.base_offset + relative, position

    @property
    def last_offset(self) -> int:
        """The offset of the last entry, or the base offset when empty (as Kafka does)."""
        last = self._last_entry()
        return self.base_offset if last is None else self.base_offset + last[0]

    def truncate_to_offset(self, offset: int) -> None:
        """Drop the entries whose offset is >= ``offset`` (the log was cut there)."""
        relative = offset - self.base_offset
        if relative <= 0:
            self.truncate_to_entries(0)
            return
        if relative > _UINT32_MAX:
            return
        self.truncate_to_entries(self._first_slot_at_or_after(self.KEY_FIELD, relative))

    def fetch_upper_bound_position(self, offset: int) -> int | None:
        """Position of the first entry whose offset is > ``offset``; None when there is none.

        A read that must stop after ``offset`` need not look past this byte.
        """
        relative = offset - self.base_offset
        if relative < 0:
            relative = -1  # every entry is above it
        elif relative >= _UINT32_MAX:
            return None
        slot, entries, array = self._floor_slot(relative)
        if slot + 1 >= entries:
            return None
        return int(array.item(slot + 1)[1])

    def _check_entries(self, valid: npt.NDArray[Any]) -> None:
        self._require_increasing(valid, "relative_offset", strict=True)
        self._require_increasing(valid, "position", strict=True)
