"""Reading a topic's history as events (or raw records) between per-partition bounds.

Both the projection runner and ``moldau replay`` read through :class:`EventReader` (blocking)
or :class:`AsyncEventReader`. They assign the chosen partitions of a topic to a plain
:class:`~moldau.Consumer`, seek each to its start offset, take whole fetched batches
(``poll_batches``) and decode events from the batch bytes with
:func:`~moldau._replay_codec.decode_events`.

Positions are *next offsets* per partition (``{partition: offset}``), like a consumer group's
committed offsets: after a call to ``poll`` returned items, ``positions`` is where a restart
continues so that it neither repeats nor skips one of them. A partition is *done* when its
position reaches its stop offset (exclusive), or when an item is later than ``to_time_ms``
(timestamps within a partition are taken as non-decreasing, which holds for event-store topics
whose events carry the broker's clock).

Thread-safety: a reader belongs to one thread (or one asyncio task), as its consumer does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.partitioner import partition_for_key
from moldau._replay_codec import StoredEvent, decode_events, stream_matcher
from moldau._types import ConsumerRecord, TopicPartition
from moldau.consumer import AsyncConsumer, Consumer, FetchedBatch
from moldau.errors import StreamNotFoundError
from moldau.eventstore import EventStore

__all__ = [
    "AsyncEventReader",
    "EventReader",
    "Item",
    "Position",
    "Selection",
    "StreamEventReader",
    "open_reader",
]

Position = dict[int, int]
MAX_BATCHES_PER_TAKE = 16
TARGET_ITEMS_PER_POLL = 4096
"""A poll takes batches 16 at a time until it holds about this many items: enough to amortise
the per-poll work (a SQLite transaction, a position copy) when appends are single events, few
enough that one poll's decoded events die young (handing out whole fetched chunks, up to
hundreds of thousands of events, made the garbage collector's passes cost a third of a
replay)."""
Item = StoredEvent | ConsumerRecord


@dataclass(frozen=True, slots=True)
class Selection:
    """What to read from ``topic``.

    Attributes:
        topic: The topic (an event-store topic unless ``raw``).
        partitions: Only these partitions; None reads them all.
        stream: Only this stream's events (its partition is derived from the stream id).
        category: Only the streams ``<category>-...``.
        from_version: With ``stream``: skip its events below this version.
        raw: Hand out every record as a :class:`~moldau.ConsumerRecord` instead of decoding
            events (for topics that are not event stores).
    """

    topic: str
    partitions: tuple[int, ...] | None = None
    stream: str | None = None
    category: str | None = None
    from_version: int | None = None
    raw: bool = False

    def __post_init__(self) -> None:
        if self.stream is not None and self.category is not None:
            raise ValueError("choose a stream or a category, not both")
        if self.from_version is not None and self.stream is None:
            raise ValueError("a from-version needs a stream: versions count per stream")
        if self.raw and (self.stream or self.category):
            raise ValueError("raw records cannot be filtered by stream or category")

    def partitions_of(self, partition_count: int) -> list[int]:
        """The partitions to read, for a topic of ``partition_count`` partitions."""
        if self.stream is not None:
            return [partition_for_key(self.stream.encode(), partition_count)]
        if self.partitions is None:
            return list(range(partition_count))
        for p in self.partitions:
            if not 0 <= p < partition_count:
                raise ValueError(
                    f"{self.topic} has partitions 0..{partition_count - 1}, not {p}"
                )
        return sorted(set(self.partitions))

    def describe(self) -> dict[str, Any]:
        """A JSON-able form, stored in resume files to recognise the same replay."""
        return {
            "topic": self.topic, "partitions": list(self.partitions or ()) or None,
            "stream": self.stream, "category": self.category,
            "from_version": self.from_version, "raw": self.raw,
        }


class _ReaderCore:
    """Bounds, cuts and decoding shared by both readers."""

    def __init__(
        self,
        selection: Selection,
        starts: Mapping[int, int],
        stops: Mapping[int, int] | None,
        to_time_ms: int | None,
    ) -> None:
        self.selection = selection
        self.positions: Position = dict(starts)
        self.stops: Position = dict(stops or {})
        self.to_time_ms = to_time_ms
        self.skipped = 0
        self._matcher = stream_matcher(selection.stream, selection.category)
        self._done = {p for p, start in starts.items() if p in self.stops
                      and start >= self.stops[p]}

    @property
    def finished(self) -> bool:
        """Every partition reached its stop (never true without stops or ``to_time_ms``)."""
        return len(self._done) == len(self.positions)

    def _take(self, batches: Sequence[FetchedBatch]) -> list[Item]:
        out: list[Any] = []
        raw, matcher, from_version = self.selection.raw, self._matcher, self.selection.from_version
        for batch in batches:
            partition = batch.partition
            if partition in self._done:
                continue
            mark = len(out)
            if raw:
                out.extend(batch.records())
            else:
                # the consumer keeps the chunk bytes and the batch's place in them; decoding
                # from there skips building generic Record objects (see _replay_codec)
                self.skipped += decode_events(
                    batch._data, batch._position, batch.header,
                    batch.topic, partition, batch.first_offset, out, matcher,
                )
                if from_version is not None:
                    out[mark:] = [e for e in out[mark:] if e.version >= from_version]
            position = batch.next_offset
            stop = self.stops.get(partition)
            if stop is not None and position >= stop:
                position = stop
                out[mark:] = [e for e in out[mark:] if e.offset < stop]
                self._done.add(partition)
            to_time = self.to_time_ms
            if to_time is not None and batch.header.max_timestamp > to_time:
                for index in range(mark, len(out)):
                    if _timestamp(out[index]) > to_time:
                        position = out[index].offset
                        del out[index:]
                        self._done.add(partition)
                        break
            self.positions[partition] = position
        return out


def _timestamp(item: Item) -> int:
    return item.timestamp_ms if isinstance(item, StoredEvent) else item.timestamp


def _assignment(selection: Selection, starts: Mapping[int, int]) -> list[TopicPartition]:
    return [TopicPartition(selection.topic, p) for p in sorted(starts)]


class EventReader(_ReaderCore):
    """Reads ``selection`` from ``starts`` (next offsets) up to ``stops`` (exclusive, optional).

    Args:
        server: ``HOST:PORT`` of the broker.
        selection: Topic, partitions and filters.
        starts: The first offset to read per partition (the partitions to read).
        stops: Per partition, the offset to stop before; None follows the log forever.
        to_time_ms: Stop each partition at its first item later than this.
    """

    def __init__(
        self,
        server: str | None,
        selection: Selection,
        starts: Mapping[int, int],
        stops: Mapping[int, int] | None = None,
        to_time_ms: int | None = None,
    ) -> None:
        super().__init__(selection, starts, stops, to_time_ms)
        self._consumer = Consumer(server, auto_offset_reset="earliest")
        try:
            self._consumer.assign(_assignment(selection, starts))
            for tp in self._consumer.assignment():
                self._consumer.seek(tp, self.positions[tp.partition])
        except BaseException:
            self._consumer.close()
            raise

    def poll(self, timeout_ms: float = 500) -> list[Item]:
        """The next items (possibly none after ``timeout_ms``); ``positions`` moves past them."""
        if self.finished:
            return []
        poll = self._consumer.poll_batches
        items = self._take(poll(timeout_ms=timeout_ms, max_batches=MAX_BATCHES_PER_TAKE))
        while items and len(items) < TARGET_ITEMS_PER_POLL and not self.finished:
            more = self._take(poll(timeout_ms=0, max_batches=MAX_BATCHES_PER_TAKE))
            if not more:
                break
            items.extend(more)
        return items

    def high_watermarks(self) -> Position:
        """The partitions' high watermarks as of the last fetch (only those known)."""
        out: Position = {}
        for tp in self._consumer.assignment():
            mark = self._consumer.high_watermark(tp)
            if mark is not None:
                out[tp.partition] = mark
        return out

    def close(self) -> None:
        self._consumer.close()


class AsyncEventReader(_ReaderCore):
    """The asyncio twin of :class:`EventReader`; create it with :meth:`open`."""

    def __init__(
        self,
        consumer: AsyncConsumer,
        selection: Selection,
        starts: Mapping[int, int],
        stops: Mapping[int, int] | None,
        to_time_ms: int | None,
    ) -> None:
        super().__init__(selection, starts, stops, to_time_ms)
        self._consumer = consumer

    @classmethod
    async def open(
        cls,
        server: str | None,
        selection: Selection,
        starts: Mapping[int, int],
        stops: Mapping[int, int] | None = None,
        to_time_ms: int | None = None,
    ) -> AsyncEventReader:
        consumer = AsyncConsumer(server, auto_offset_reset="earliest")
        reader = cls(consumer, selection, starts, stops, to_time_ms)
        try:
            await consumer.assign(_assignment(selection, starts))
            for tp in consumer.assignment():
                await consumer.seek(tp, reader.positions[tp.partition])
        except BaseException:
            await consumer.close()
            raise
        return reader

    async def poll(self, timeout_ms: float = 500) -> list[Item]:
        if self.finished:
            return []
        poll = self._consumer.poll_batches
        items = self._take(await poll(timeout_ms=timeout_ms, max_batches=MAX_BATCHES_PER_TAKE))
        while items and len(items) < TARGET_ITEMS_PER_POLL and not self.finished:
            more = self._take(await poll(timeout_ms=0, max_batches=MAX_BATCHES_PER_TAKE))
            if not more:
                break
            items.extend(more)
        return items

    def high_watermarks(self) -> Position:
        out: Position = {}
        for tp in self._consumer.assignment():
            mark = self._consumer.high_watermark(tp)
            if mark is not None:
                out[tp.partition] = mark
        return out

    async def close(self) -> None:
        await self._consumer.close()


class StreamEventReader:
    """One stream read through the event-store index (:meth:`moldau.EventStore.read_stream`).

    For ``--stream`` (above all with ``--from-version``) this jumps straight to the wanted
    versions instead of scanning the stream's whole partition. Same interface as
    :class:`EventReader`; positions are the partition's next offset after the last event
    handed out, so a resumed replay skips what it already delivered.
    """

    PAGE = 4096

    def __init__(
        self,
        server: str | None,
        selection: Selection,
        starts: Mapping[int, int],
        stops: Mapping[int, int] | None = None,
        to_time_ms: int | None = None,
    ) -> None:
        if selection.stream is None or len(starts) != 1:
            raise ValueError("a StreamEventReader reads exactly one stream")
        self.selection, self.to_time_ms = selection, to_time_ms
        self.positions: Position = dict(starts)
        self.stops: Position = dict(stops or {})
        self.skipped = 0
        self._partition = next(iter(starts))
        self._next_version = selection.from_version or 0
        self._store = EventStore(server, topic=selection.topic)
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def _finish(self, position: int | None = None) -> None:
        self._finished = True
        stop = self.stops.get(self._partition)
        if position is not None or stop is not None:
            self.positions[self._partition] = position if position is not None else stop or 0

    def poll(self, timeout_ms: float = 500) -> list[Item]:
        if self._finished:
            return []
        stream, partition = self.selection.stream or "", self._partition
        try:
            page = self._store.read_stream(stream, self._next_version, max_count=self.PAGE)
        except StreamNotFoundError:
            self._finish()
            return []
        stop, start = self.stops.get(partition), self.positions[partition]
        items: list[Item] = []
        for event in page.events:
            offset = event.position.offset
            if (stop is not None and offset >= stop) or (
                    self.to_time_ms is not None and event.timestamp_ms > self.to_time_ms):
                self._finish(offset if stop is None or offset < stop else stop)
                return items
            if offset >= start:
                items.append(StoredEvent(
                    self.selection.topic, partition, offset, event.timestamp_ms, event.stream,
                    event.version, event.type, event.type_version, str(event.event_id),
                    event.data, event.metadata))
                self.positions[partition] = offset + 1
        if page.end_of_stream or not page.events:
            self._finish(None if stop is not None else self.positions[partition])
        else:
            self._next_version = page.events[-1].version + 1
        return items

    def high_watermarks(self) -> Position:
        return {}

    def close(self) -> None:
        self._store.close()


def open_reader(
    server: str | None,
    selection: Selection,
    starts: Mapping[int, int],
    stops: Mapping[int, int] | None = None,
    to_time_ms: int | None = None,
) -> EventReader | StreamEventReader:
    """The reader for ``selection``: one stream through the event-store index, anything else
    by scanning partitions."""
    if selection.stream is not None and not selection.raw:
        return StreamEventReader(server, selection, starts, stops, to_time_ms)
    return EventReader(server, selection, starts, stops, to_time_ms)
