"""The stream index of one partition of a store topic: stream -> version -> log offset.

Derived data only: every field is a function of the partition's records (see ``codec``), so
the index is rebuilt from the log on open, from a checkpoint plus the log after it when one is
valid (see ``checkpoint``). Per stream it keeps:

- ``offsets``: an ``array('q')``, the log offset of version ``i`` at index ``i`` (8 bytes an
  event; -1 marks a version the log lacks, which only a quarantined range can cause);
- ``controls``: the ``$deleted`` / ``$truncated`` records as (offset, is_delete,
  truncate_before after it), oldest first, or None (most streams).

Both only grow at the end, in log order, so the state as of any log offset ``C`` is their prefix
below ``C``: a checkpoint serialises that prefix without stopping writers.

The index may run ahead of the partition's high watermark: an append claims its versions as
soon as its batch is in the log, before its fsync, so that a concurrent append to the same
stream sees them (that is what makes the expected-version check atomic). Readers therefore
serve only offsets below the high watermark. If a durability wait fails, the partition log
turns read-only and :meth:`PartitionIndex.rollback` drops every claim at or above the high
watermark: no later claim can exist, and none of those appends was acknowledged.

The id window maps the event ids of the last ``window`` events of the partition to (stream,
version), for recognising retried appends. It forgets whole appends (or runs of 1,024 ids
remembered one by one), so it may hold up to one append more than ``window``.

Concurrency: mutations happen under the owning partition's lock (``store``). The arrays are
appended and read under the GIL only, so a checkpoint may read a stream's prefix without it.
"""

from __future__ import annotations

import itertools
import logging
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import repeat

from engine.views.eventstore.codec import KIND_DELETED, KIND_TRUNCATED, ScanEntry

__all__ = ["PartitionIndex", "StreamState"]

log = logging.getLogger(__name__)


class StreamState:
    """What the index knows of one stream (see the module docstring)."""

    __slots__ = ("controls", "offsets")

    def __init__(self) -> None:
        self.offsets: array[int] = array("q")
        self.controls: list[tuple[int, bool, int]] | None = None

    @property
    def last_version(self) -> int:
        """The highest version ever written (-1 for none), deleted or not."""
        return len(self.offsets) - 1

    @property
    def truncate_before(self) -> int:
        """Versions below this are not returned by reads."""
        return self.controls[-1][2] if self.controls else 0

    @property
    def deleted(self) -> bool:
        """True when the stream's last record is a ``$deleted`` record."""
        if not self.controls:
            return False
        offset, is_delete, _ = self.controls[-1]
        return is_delete and (not self.offsets or self.offsets[-1] < offset)

    @property
    def incarnation_start(self) -> int:
        """The first version after the latest soft delete (0 if never deleted)."""
        for _, is_delete, truncate_before in reversed(self.controls or ()):
            if is_delete:
                return truncate_before
        return 0

    @property
    def current_version(self) -> int:
        """The version an expected-version check compares with: -1 if missing or deleted."""
        if self.deleted or not self.offsets:
            return -1
        return len(self.offsets) - 1

    def add_event(self, version: int, offset: int) -> bool:
        """Record ``version`` at ``offset``; False (and nothing changes) for a repeated version."""
        offsets = self.offsets
        missing = version - len(offsets)
        if missing < 0:
            return False
        if missing:
            offsets.extend([-1] * missing)
        offsets.append(offset)
        return True

    def add_events(self, first: int, offset: int, count: int) -> None:
        """Record versions ``first..first+count-1`` at consecutive offsets from ``offset``
        (an append's events: one call, not one per event)."""
        offsets = self.offsets
        missing = first - len(offsets)
        if missing < 0:
            raise ValueError(f"version {first} is claimed already (last {len(offsets) - 1})")
        if missing:
            offsets.extend([-1] * missing)
        offsets.extend(range(offset, offset + count))

    def add_control(self, offset: int, is_delete: bool, truncate_before: int) -> None:
        keep = max(self.truncate_before, truncate_before)
        if self.controls is None:
            self.controls = []
        self.controls.append((offset, is_delete, keep))

    def drop_from(self, offset: int) -> None:
        """Forget everything stored at or after ``offset`` (a rollback)."""
        offsets = self.offsets
        while offsets and offsets[-1] >= offset:
            offsets.pop()
        while self.controls and self.controls[-1][0] >= offset:
            self.controls.pop()
        if self.controls == []:
            self.controls = None


_SINGLES_CHUNK = 1024
"""Ids remembered one by one share a chunk of the window up to this many."""


class PartitionIndex:
    """Streams of one partition, the id window and how far the log has been applied."""

    def __init__(self, window: int) -> None:
        self.streams: dict[bytes, StreamState] = {}
        self.ids: dict[bytes, tuple[bytes, int]] = {}
        self.window = window
        self._chunks: deque[Sequence[bytes]] = deque()
        """The ids of ``ids`` as they were remembered, one entry per append, oldest first."""
        self._chunk_events = 0
        self._singles: list[bytes] | None = None
        """The last chunk while ``remember`` fills it."""
        self.next_offset = 0
        self.events = 0
        self.skipped = 0

    def state(self, key: bytes) -> StreamState | None:
        return self.streams.get(key)

    def apply(self, entries: Iterable[ScanEntry], *, remember_ids: bool = True) -> None:
        """Apply scanned records in log order; those below ``next_offset`` are already in."""
        streams = self.streams
        floor = self.next_offset
        for entry in entries:
            if entry.offset < floor:
                continue
            state = streams.get(entry.key)
            if state is None:
                state = streams[entry.key] = StreamState()
            if entry.version >= 0:
                if state.add_event(entry.version, entry.offset):
                    self.events += 1
                    if remember_ids:
                        self.remember(entry.event_id, entry.key, entry.version)
                else:
                    self.skipped += 1
                    log.warning(
                        "record at offset %d repeats version %d of stream %r; skipped",
                        entry.offset, entry.version, entry.key,
                    )
            elif entry.version in (KIND_DELETED, KIND_TRUNCATED):
                state.add_control(entry.offset, entry.version == KIND_DELETED,
                                  entry.truncate_before)

    def remember(self, event_id: bytes, key: bytes, version: int) -> None:
        """Put one event id in the window (see :meth:`remember_many`); a rebuild calls this
        once per record, so it appends to a run of single ids instead of a chunk each."""
        if self.window <= 0:
            return
        self.ids[event_id] = (key, version)
        singles = self._singles
        if singles is None or len(singles) >= _SINGLES_CHUNK:
            singles = self._singles = []
            self._chunks.append(singles)
        singles.append(event_id)
        self._chunk_events += 1
        if self._chunk_events - len(self._chunks[0]) >= self.window:
            self._forget_old()

    def remember_many(self, event_ids: Sequence[bytes], key: bytes, first: int) -> None:
        """Put an append's event ids (versions from ``first``) in the window.

        The window forgets whole appends, oldest first, while the rest still hold ``window``
        events: an OrderedDict evicting one id per new one cost twice as much per event.
        """
        if self.window <= 0:
            return
        ids = self.ids
        ids.update(zip(event_ids, zip(repeat(key), itertools.count(first)), strict=False))
        self._chunks.append(event_ids)
        self._singles = None
        self._chunk_events += len(event_ids)
        self._forget_old()

    def _forget_old(self) -> None:
        chunks, ids = self._chunks, self.ids
        while self._chunk_events - len(chunks[0]) >= self.window:
            old = chunks.popleft()
            self._chunk_events -= len(old)
            deque(map(ids.pop, old, repeat(None)), maxlen=0)  # absent after a rollback: fine

    def remember_all(self, entries: Iterable[ScanEntry]) -> None:
        """Fill the window from records before a checkpoint (the index already has them)."""
        for entry in entries:
            if entry.version >= 0:
                self.remember(entry.event_id, entry.key, entry.version)

    def rollback(self, from_offset: int) -> None:
        """Drop every claim at or above ``from_offset`` (see the module docstring)."""
        for key, state in list(self.streams.items()):
            state.drop_from(from_offset)
            if not state.offsets and state.controls is None:
                del self.streams[key]
        for event_id, (key, version) in list(self.ids.items()):
            kept = self.streams.get(key)
            if kept is None or version > kept.last_version:
                del self.ids[event_id]
        self._chunks = deque([tuple(self.ids)])
        self._singles = None
        self._chunk_events = len(self.ids)
        self.next_offset = min(self.next_offset, from_offset)
