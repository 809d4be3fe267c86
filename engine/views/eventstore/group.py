"""Group commit of pipelined appends: several appends of one partition in one log batch.

:meth:`EventStore.append_group` checks a list of appends one after the other under the
partition's lock, exactly as consecutive ``append_to_stream`` calls would (an append sees the
versions the earlier ones of the group claimed), and collects the accepted ones here. A
:class:`PendingGroup` turns them into one batch (``encode_event_group``) with one
``PartitionLog.append``, then claims every version in the index: one CRC, one write and later
one fsync for the whole group instead of one per append. The batch is all or nothing, so each
append in it is still stored whole or not at all.

The group is flushed early (and a new one started) when an append repeats an event id of the
group (so the retry check sees it in the index) or when the group reaches ``max_bytes``.

Concurrency: used only while the partition's lock is held.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.errors import EngineError
from engine.records.errors import RecordError
from engine.views.eventstore.codec import encode_event_group
from engine.views.eventstore.index import StreamState
from engine.views.eventstore.partitions import StorePartition
from engine.views.eventstore.types import AppendResult, EventData

__all__ = ["GroupOutcome", "PendingGroup"]

GroupOutcome = AppendResult | EngineError | RecordError | None
"""One append's result, its error, or None while it waits in a pending group."""

DEFAULT_GROUP_BYTES = 512 * 1024


class PendingGroup:
    """Accepted appends of one partition not yet in the log (see the module docstring)."""

    def __init__(self, part: StorePartition, max_bytes: int = DEFAULT_GROUP_BYTES) -> None:
        self._part = part
        self._max_bytes = max_bytes
        self._entries: list[tuple[int, bytes, int, Sequence[EventData], list[bytes]]] = []
        self._last_versions: dict[bytes, int] = {}
        self._ids: set[bytes] = set()
        self._bytes = 0
        self.end_offset = 0
        """The log end offset after the last flush (0: nothing written)."""

    def must_flush_before(self, ids: Sequence[bytes], size_bytes: int) -> bool:
        """True when the next append cannot join the group (repeated id, group full)."""
        if not self._entries:
            return False
        return self._bytes + size_bytes > self._max_bytes or not self._ids.isdisjoint(ids)

    def current_version(self, key: bytes, state: StreamState | None) -> int:
        """The stream's version as the expected-version check must see it."""
        claimed = self._last_versions.get(key)
        if claimed is not None:
            return claimed
        return state.current_version if state is not None else -1

    def add(self, number: int, key: bytes, state: StreamState | None,
            events: Sequence[EventData], ids: list[bytes], size_bytes: int) -> None:
        """Accept append ``number`` of the request list; its versions follow the stream's."""
        claimed = self._last_versions.get(key)
        if claimed is not None:
            first = claimed + 1
        else:
            first = state.last_version + 1 if state is not None else 0
        self._entries.append((number, key, first, events, ids))
        self._last_versions[key] = first + len(events) - 1
        self._ids.update(ids)
        self._bytes += size_bytes

    def flush(self, timestamp_ms: int, outcomes: list[GroupOutcome]) -> None:
        """Append the group as one batch and claim its versions; fill ``outcomes``."""
        entries, self._entries = self._entries, []
        self._last_versions.clear()
        self._ids.clear()
        self._bytes = 0
        if not entries:
            return
        part = self._part
        batch = encode_event_group(
            [(key, first, events, ids) for _, key, first, events, ids in entries], timestamp_ms)
        try:
            appended = part.log.append(batch, wait_durable=False)
        except (EngineError, RecordError) as exc:  # nothing of the group was stored
            for number, *_ in entries:
                outcomes[number] = exc
            return
        index = part.index
        offset = appended.base_offset
        for number, key, first, events, ids in entries:
            state = index.streams.get(key)
            if state is None:
                state = index.streams[key] = StreamState()
            start = offset
            state.add_events(first, offset, len(ids))
            index.remember_many(ids, key, first)
            offset += len(ids)
            outcomes[number] = AppendResult(first, first + len(events) - 1, part.number, start,
                                            offset - 1)
        count = offset - appended.base_offset
        index.next_offset = appended.last_offset + 1
        index.events += count
        part.since_checkpoint += count
        self.end_offset = appended.last_offset + 1
