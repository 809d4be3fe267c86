"""The event store: streams with expected versions on top of ordinary topics.

See the package docstring for the concepts and ``codec`` for the records. This module holds
the write path (append, delete, truncate), the reads and the per-topic bookkeeping.

Atomicity of check-and-append: every write to a partition runs its check and its
``PartitionLog.append`` under that partition's ``lock`` and claims the new versions in the
index before releasing it, so no two appends can both see version ``n`` as current. The fsync
wait happens after the lock is released (``wait_durable=False`` inside, ``wait_durable``
outside), so appends to other streams of the partition, and the next append to the same
stream, proceed meanwhile and share one fsync (group commit). An append is acknowledged only
once its batch is durable; a later append that built on it is durable only after it (same
partition, higher offset), so an acknowledged version never rests on a lost one. When a
durability wait fails, the partition log has turned read-only; the claims at or above its high
watermark are rolled back (see ``index``) and the error is raised: nothing was acknowledged.

Concurrency: every public method may be called from any thread. Topic opening takes
``_topics_lock``; per-partition writes take the partition's lock; reads take it only to copy
the offsets they need, then read the log without it.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence

from engine.broker import Broker, TopicInfo
from engine.clock import Clock, SystemClock
from engine.errors import (
    DuplicateEventIdError,
    EngineError,
    InvalidEventStoreRequestError,
    LogReadOnlyError,
    StreamNotFoundError,
    WrongExpectedVersionError,
)
from engine.partitioner import partition_for_key
from engine.views.eventstore.checkpoint import CheckpointStore
from engine.views.eventstore.codec import encode_control, encode_events
from engine.views.eventstore.group import GroupOutcome, PendingGroup
from engine.views.eventstore.index import StreamState
from engine.views.eventstore.merge import read_merged
from engine.views.eventstore.packed import PackedEvents
from engine.views.eventstore.partitions import StorePartition, open_partition
from engine.views.eventstore.reader import read_at_offsets
from engine.views.eventstore.snapshots import SnapshotStore
from engine.views.eventstore.subscriptions import Subscription
from engine.views.eventstore.types import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AllPosition,
    AllSlice,
    AppendResult,
    Direction,
    EventData,
    EventStoreSettings,
    RecordedEvent,
    Snapshot,
    StreamInfo,
    StreamSlice,
    category_prefix,
    validate_count,
    validate_events,
    validate_expected,
    validate_stream_id,
)
from engine.views.eventstore.upcasters import UpcasterRegistry

__all__ = ["STORE_TOPIC_CONFIG", "EventStore"]

log = logging.getLogger(__name__)

STORE_TOPIC_CONFIG: Mapping[str, str] = {
    "cleanup.policy": "delete",  # never compact: the key is the stream id
    "retention.ms": "-1",  # events are the source of truth: kept until deleted
    "retention.bytes": "-1",
    "durability": "fsync",
}
MAX_READ_COUNT = 100_000


class EventStore:
    """Streams of events in store topics; create with :meth:`open`, release with :meth:`close`.

    The store does not own the broker: :meth:`close` writes checkpoints and detaches, the
    broker stays open.
    """

    def __init__(self, broker: Broker, clock: Clock, settings: EventStoreSettings,
                 upcasters: UpcasterRegistry, checkpoints: CheckpointStore | None) -> None:
        self._broker = broker
        self._clock = clock
        self.settings = settings
        self.upcasters = upcasters
        self._checkpoints = checkpoints
        self._topics_lock = threading.Lock()
        self._topics: dict[str, list[StorePartition]] = {}
        self._snapshots: dict[str, SnapshotStore] = {}
        self._closed = False

    @classmethod
    def open(
        cls,
        broker: Broker,
        *,
        clock: Clock | None = None,
        settings: EventStoreSettings | None = None,
        upcasters: UpcasterRegistry | None = None,
        use_checkpoints: bool = True,
    ) -> EventStore:
        """Attach to ``broker``; store topics are opened (indexed) on first use.

        ``use_checkpoints=False`` rebuilds every index from the whole log and writes none.
        """
        checkpoints = CheckpointStore.open(broker) if use_checkpoints else None
        return cls(broker, clock or SystemClock(), settings or EventStoreSettings(),
                   upcasters or UpcasterRegistry(), checkpoints)

    def close(self) -> None:
        """Checkpoint every open partition's index; later calls fail."""
        if self._closed:
            return
        self.checkpoint()
        self._closed = True

    # ------------------------------------------------------------------ topics

    def create_store_topic(self, name: str, partitions: int = 1,
                           config: Mapping[str, str] | None = None) -> TopicInfo:
        """Create a topic for streams (and its ``<name>.snapshots`` topic).

        One partition gives ``read_all`` a single total order; more partitions spread streams
        (each stream stays in one partition) and order only within each partition.

        Raises:
            TopicExistsError, InvalidTopicError: from the broker.
        """
        info = self._broker.create_topic(name, partitions, {**STORE_TOPIC_CONFIG, **(config or {})})
        self.open_topic(name)
        return info

    def open_topic(self, topic: str) -> list[StorePartition]:
        """Build (once) the index of every partition of ``topic``.

        Raises:
            UnknownTopicError: no such topic.
        """
        partitions = self._topics.get(topic)
        if partitions is not None:
            return partitions
        with self._topics_lock:
            partitions = self._topics.get(topic)
            if partitions is None:
                logs = self._broker.partitions(topic)
                partitions = [
                    open_partition(topic, n, partition_log, self._checkpoints, self.settings)
                    for n, partition_log in enumerate(logs)
                ]
                self._topics[topic] = partitions
            return partitions

    def _partition(self, topic: str, key: bytes) -> StorePartition:
        partitions = self.open_topic(topic)
        return partitions[partition_for_key(key, len(partitions))]

    def partition_for(self, topic: str, stream: str) -> int:
        """The partition of ``topic`` that holds ``stream``."""
        key = validate_stream_id(stream)
        return partition_for_key(key, len(self.open_topic(topic)))

    # ------------------------------------------------------------------ writes

    def append_to_stream(self, topic: str, stream: str, expected_version: int,
                         events: Sequence[EventData]) -> AppendResult:
        """Append ``events`` to ``stream`` if it is at ``expected_version``; wait until durable.

        A retry of an earlier append (same event ids, same stream, same versions) returns the
        original result with ``duplicate=True`` and writes nothing.

        Raises:
            WrongExpectedVersionError: the stream is elsewhere; nothing was written.
            DuplicateEventIdError: an event id is stored already, at other versions.
            InvalidEventStoreRequestError: bad stream id, expected version or events.
            StorageError: the append or its fsync failed; nothing is acknowledged.
        """
        key = validate_stream_id(stream)
        validate_expected(expected_version)
        validate_events(stream, events, self.settings.max_events_per_append)
        part = self._partition(topic, key)
        with part.lock:
            self._check_writable(part)
            state = part.index.state(key)
            result = self._find_retry(part, stream, key, state, expected_version, events)
            if result is None:
                current = state.current_version if state is not None else -1
                if not _expected_matches(expected_version, current):
                    raise WrongExpectedVersionError(stream, expected_version, current)
                result = self._append_locked(part, key, state, events)
        self._await_durable(part, result.last_offset + 1)
        if not result.duplicate:
            self._maybe_checkpoint(part)
        return result

    def append_group(self, topic: str, partition: int,
                     appends: Sequence[tuple[str, int, Sequence[EventData]]],
                     ) -> tuple[list[GroupOutcome], int]:
        """Check and append ``(stream, expected_version, events)`` of one partition, in order,
        as one log batch (see ``group``), *without* waiting for durability.

        Each append is judged as a separate ``append_to_stream`` call made in list order would
        be; its outcome is its AppendResult or its error (the others go on). Returns the
        outcomes and the end offset to pass to :meth:`wait_durable` (0: nothing written);
        nothing may be acknowledged before that wait returns.

        Raises:
            LogReadOnlyError, InvalidEventStoreRequestError: the partition takes no writes,
                or there is no such partition.
        """
        partitions = self.open_topic(topic)
        if not 0 <= partition < len(partitions):
            raise InvalidEventStoreRequestError(
                f"{topic} has partitions 0 to {len(partitions) - 1}, not {partition}")
        part = partitions[partition]
        outcomes: list[GroupOutcome] = [None] * len(appends)
        with part.lock:
            self._check_writable(part)
            group = PendingGroup(part)
            for number, (stream, expected, events) in enumerate(appends):
                try:
                    self._join_group(part, len(partitions), group, outcomes, number, stream,
                                     expected, events)
                except EngineError as exc:
                    outcomes[number] = exc
            group.flush(part.stamp(self._clock.now_ms()), outcomes)
        return outcomes, group.end_offset

    def _join_group(self, part: StorePartition, partitions: int, group: PendingGroup,
                    outcomes: list[GroupOutcome], number: int, stream: str, expected: int,
                    events: Sequence[EventData]) -> None:
        key = validate_stream_id(stream)
        if partition_for_key(key, partitions) != part.number:
            raise InvalidEventStoreRequestError(
                f"stream {stream!r} belongs to partition {partition_for_key(key, partitions)}, "
                f"not {part.number}", stream)
        validate_expected(expected)
        if type(events) is PackedEvents:  # checked event by event where it was parsed
            validate_count(stream, len(events), self.settings.max_events_per_append)
            ids, size = events.ids, events.size
        else:
            validate_events(stream, events, self.settings.max_events_per_append)
            ids = [str(event.event_id).encode() for event in events]
            size = sum(len(e.data) + len(e.metadata) + len(e.type) + 80 for e in events)
        if group.must_flush_before(ids, size):
            group.flush(part.stamp(self._clock.now_ms()), outcomes)
        state = part.index.state(key)
        retry = self._find_retry(part, stream, key, state, expected, events, ids)
        if retry is not None:
            outcomes[number] = retry
            return
        current = group.current_version(key, state)
        if not _expected_matches(expected, current):
            raise WrongExpectedVersionError(stream, expected, current)
        group.add(number, key, state, events, ids, size)

    def wait_durable(self, topic: str, partition: int, end_offset: int) -> None:
        """Wait until ``partition`` is durable up to ``end_offset`` (see :meth:`append_group`).

        Raises:
            StorageError: the fsync failed; the partition turned read-only and the claims of
                every unacknowledged append were dropped.
        """
        part = self.open_topic(topic)[partition]
        self._await_durable(part, end_offset)
        self._maybe_checkpoint(part)

    def _append_locked(self, part: StorePartition, key: bytes, state: StreamState | None,
                       events: Sequence[EventData]) -> AppendResult:
        first = state.last_version + 1 if state is not None else 0
        batch = encode_events(key, first, events, part.stamp(self._clock.now_ms()))
        appended = part.log.append(batch, wait_durable=False)
        index = part.index
        if state is None:
            state = index.streams[key] = StreamState()
        for number, event in enumerate(events):
            state.add_event(first + number, appended.base_offset + number)
            index.remember(str(event.event_id).encode(), key, first + number)
        index.next_offset = appended.last_offset + 1
        index.events += len(events)
        part.since_checkpoint += len(events)
        return AppendResult(first, first + len(events) - 1, part.number, appended.base_offset,
                            appended.last_offset)

    def _find_retry(self, part: StorePartition, stream: str, key: bytes,
                    state: StreamState | None, expected: int, events: Sequence[EventData],
                    ids: list[bytes] | None = None) -> AppendResult | None:
        """The original result if ``events`` were appended already (see append_to_stream)."""
        if ids is None:
            ids = [str(event.event_id).encode() for event in events]
        window = part.index.ids
        hit = window.get(ids[0])
        if hit is not None:
            stored_key, version = hit
            if stored_key == key and state is not None and all(
                window.get(event_id) == (key, version + n) for n, event_id in enumerate(ids)
            ):
                return _retry_result(part, state, version, len(ids))
            raise DuplicateEventIdError(stream, ids[0].decode(), stored_key.decode(), version)
        if not window.keys().isdisjoint(ids):  # the loop only when one is there: rare
            for event_id in ids[1:]:
                stored = window.get(event_id)
                if stored is not None:
                    raise DuplicateEventIdError(stream, event_id.decode(), stored[0].decode(),
                                                stored[1])
        first = expected + 1
        if state is None or expected < NO_STREAM or state.last_version < first + len(ids) - 1:
            return None
        offsets = list(state.offsets[first : first + len(ids)])
        if min(offsets) < 0 or max(offsets) >= part.log.high_watermark:
            return None
        stored_events = read_at_offsets(part.log, offsets, part.number, self.settings.read_bytes)
        if [str(event.event_id).encode() for event in stored_events] == ids:
            return _retry_result(part, state, first, len(ids))
        return None

    def delete_stream(self, topic: str, stream: str, expected_version: int = ANY) -> None:
        """Soft-delete ``stream``: reads then raise StreamNotFoundError(deleted=True).

        The events stay in the log (``read_all`` still returns them). Appending again (with
        ``ANY`` or ``NO_STREAM``) recreates the stream; its versions continue after the old ones,
        which stay hidden.

        Raises:
            StreamNotFoundError: the stream does not exist or is deleted already.
            WrongExpectedVersionError: the stream is not at ``expected_version``.
        """
        self._write_control(topic, stream, expected_version, None)

    def truncate_stream(self, topic: str, stream: str, before_version: int) -> None:
        """Hide the events of ``stream`` below ``before_version`` from stream reads.

        Raises:
            StreamNotFoundError: the stream does not exist or is deleted.
            InvalidEventStoreRequestError: ``before_version`` is negative or past the next one.
        """
        self._write_control(topic, stream, ANY, before_version)

    def _write_control(self, topic: str, stream: str, expected: int,
                       truncate_before: int | None) -> None:
        key = validate_stream_id(stream)
        validate_expected(expected)
        part = self._partition(topic, key)
        with part.lock:
            self._check_writable(part)
            state = part.index.state(key)
            if state is None or state.current_version < 0:
                raise StreamNotFoundError(stream, deleted=state is not None and state.deleted)
            if not _expected_matches(expected, state.current_version):
                raise WrongExpectedVersionError(stream, expected, state.current_version)
            deleted = truncate_before is None
            before = state.last_version + 1 if truncate_before is None else truncate_before
            if not 0 <= before <= state.last_version + 1:
                raise InvalidEventStoreRequestError(
                    f"truncate before {before}: use 0 to {state.last_version + 1} (the next "
                    "version)", stream,
                )
            batch = encode_control(key, deleted, before, part.stamp(self._clock.now_ms()))
            appended = part.log.append(batch, wait_durable=False)
            state.add_control(appended.base_offset, deleted, before)
            part.index.next_offset = appended.last_offset + 1
        self._await_durable(part, appended.last_offset + 1)

    def _check_writable(self, part: StorePartition) -> None:
        if self._closed:
            raise InvalidEventStoreRequestError("the event store is closed")
        reason = part.log.read_only_reason
        if reason is not None:
            raise LogReadOnlyError(
                f"partition {part.number} of {part.topic} is read-only: {reason}",
                str(part.log.directory),
            )

    def _await_durable(self, part: StorePartition, end_offset: int) -> None:
        """Wait for the fsync; on failure drop the unacknowledged claims, then re-raise."""
        try:
            part.log.wait_durable(end_offset)
        except EngineError:
            with part.lock:
                part.index.rollback(part.log.high_watermark)
            raise

    # ------------------------------------------------------------------ checkpoints

    def _maybe_checkpoint(self, part: StorePartition) -> None:
        interval = self.settings.checkpoint_interval_events
        if interval <= 0 or part.since_checkpoint < interval or self._checkpoints is None:
            return
        if part.checkpointing.acquire(blocking=False):
            try:
                self._checkpoint_partition(part)
            finally:
                part.checkpointing.release()

    def _checkpoint_partition(self, part: StorePartition) -> None:
        if self._checkpoints is None:
            return
        with part.lock:  # below the high watermark every record is in the index now
            upto = min(part.log.high_watermark, part.index.next_offset)
            part.since_checkpoint = 0
        try:
            self._checkpoints.write(part.topic, part.number, part.index, upto, part.log,
                                    self._clock.now_ms())
        except EngineError:
            log.exception("index checkpoint of %s-%d failed", part.topic, part.number)

    def checkpoint(self, topic: str | None = None) -> None:
        """Write an index checkpoint of every open partition (of ``topic``) now."""
        for name, partitions in list(self._topics.items()):
            if topic is None or name == topic:
                for part in partitions:
                    with part.checkpointing:
                        self._checkpoint_partition(part)

    # ------------------------------------------------------------------ reads

    def stream_version(self, topic: str, stream: str) -> int:
        """The stream's last version, -1 if it does not exist or is deleted (includes appends
        still waiting for their fsync)."""
        key = validate_stream_id(stream)
        part = self._partition(topic, key)
        with part.lock:
            state = part.index.state(key)
            return state.current_version if state is not None else -1

    def read_stream(
        self,
        topic: str,
        stream: str,
        from_version: int | None = None,
        direction: Direction = Direction.FORWARDS,
        max_count: int = 4096,
        *,
        upcast: bool = False,
    ) -> StreamSlice:
        """Up to ``max_count`` events of ``stream`` from ``from_version`` (default: the first
        readable one forwards, the last one backwards), durable ones only.

        Raises:
            StreamNotFoundError: the stream has no durable events, or it is deleted.
            InvalidEventStoreRequestError: ``max_count`` or ``from_version`` out of range.
        """
        _check_count(max_count)
        if from_version is not None and from_version < 0:
            raise InvalidEventStoreRequestError(f"from_version {from_version} must be >= 0",
                                                stream)
        key = validate_stream_id(stream)
        part = self._partition(topic, key)
        with part.lock:
            state = part.index.state(key)
            if state is None or state.deleted:
                raise StreamNotFoundError(stream, deleted=state is not None)
            visible = bisect_left(state.offsets, part.log.high_watermark) - 1
            if visible < 0:
                raise StreamNotFoundError(stream)
            first = state.truncate_before
            if direction is Direction.FORWARDS:
                start = max(first, from_version or 0)
                versions = range(start, min(visible + 1, start + max_count))
                end_of_stream = start + max_count > visible
            else:
                start = visible if from_version is None else min(from_version, visible)
                versions = range(start, max(first - 1, start - max_count), -1)
                end_of_stream = start - max_count < first
            offsets = sorted(o for o in (state.offsets[v] for v in versions) if o >= 0)
        events = read_at_offsets(part.log, offsets, part.number, self.settings.read_bytes)
        if direction is Direction.BACKWARDS:
            events.reverse()
        return StreamSlice(stream, tuple(self._maybe_upcast(events, upcast)), visible,
                           end_of_stream)

    def read_all(self, topic: str, from_position: AllPosition | None = None,
                 max_count: int = 4096, *, upcast: bool = False) -> AllSlice:
        """Up to ``max_count`` events of every stream of ``topic`` after ``from_position``.

        Order: log order within each partition; across partitions, by append time (ties by
        partition). Events of deleted and truncated streams are included: this is the log.
        """
        return self._read_filtered(topic, from_position, max_count, None, upcast)

    def read_category(self, topic: str, category: str, from_position: AllPosition | None = None,
                      max_count: int = 4096, *, upcast: bool = False) -> AllSlice:
        """:meth:`read_all` restricted to streams named ``<category>-...``."""
        prefix = category_prefix(category).encode()
        return self._read_filtered(topic, from_position, max_count,
                                   lambda key: key.startswith(prefix), upcast)

    def _read_filtered(self, topic: str, from_position: AllPosition | None, max_count: int,
                       key_filter: Callable[[bytes], bool] | None, upcast: bool) -> AllSlice:
        _check_count(max_count)
        partitions = self.open_topic(topic)
        position = from_position or AllPosition.start(len(partitions))
        if len(position.offsets) != len(partitions):
            raise InvalidEventStoreRequestError(
                f"the position has {len(position.offsets)} partitions; {topic} has "
                f"{len(partitions)}"
            )
        events, after = read_merged([p.log for p in partitions], position, max_count,
                                    self.settings.read_bytes, key_filter)
        return AllSlice(tuple(self._maybe_upcast(events, upcast)), after)

    def list_streams(self, topic: str, category: str | None = None, *,
                     include_deleted: bool = False, after: str = "",
                     max_count: int = 1000) -> tuple[list[StreamInfo], bool]:
        """Streams of ``topic`` (of ``category``) named after ``after``, by name, at most
        ``max_count``; and whether more follow. Only streams with a durable event count.
        """
        _check_count(max_count)
        prefix = category_prefix(category).encode() if category else b""
        floor = after.encode()
        found: list[StreamInfo] = []
        for part in self.open_topic(topic):
            with part.lock:
                high_watermark = part.log.high_watermark
                items = [(key, state) for key, state in part.index.streams.items()
                         if key > floor and key.startswith(prefix)]
                for key, state in items:
                    visible = bisect_left(state.offsets, high_watermark) - 1
                    if visible < 0 or (state.deleted and not include_deleted):
                        continue
                    found.append(StreamInfo(key.decode(), visible, state.truncate_before,
                                            state.deleted, part.number))
        found.sort(key=lambda info: info.stream.encode())
        return found[:max_count], len(found) > max_count

    def head_position(self, topic: str) -> AllPosition:
        """The position after every durable record of ``topic`` (to subscribe to new events)."""
        return AllPosition(tuple(p.log.high_watermark for p in self.open_topic(topic)))

    def _maybe_upcast(self, events: list[RecordedEvent], upcast: bool) -> list[RecordedEvent]:
        if not upcast or not len(self.upcasters):
            return events
        return [self.upcasters.upcast(event) for event in events]

    # ------------------------------------------------------------------ snapshots

    def _snapshot_store(self, topic: str) -> SnapshotStore:
        with self._topics_lock:
            store = self._snapshots.get(topic)
            if store is None:
                store = self._snapshots[topic] = SnapshotStore.open(self._broker, topic)
            return store

    def save_snapshot(self, topic: str, stream: str, version: int, state: bytes) -> None:
        """Store ``state`` as the state of ``stream`` after ``version`` (durable on return).

        Raises:
            StreamNotFoundError: the stream does not exist or is deleted.
            InvalidEventStoreRequestError: ``version`` is not a durable version of the stream.
        """
        key = validate_stream_id(stream)
        part = self._partition(topic, key)
        with part.lock:
            stream_state = part.index.state(key)
            if stream_state is None or stream_state.deleted:
                raise StreamNotFoundError(stream, deleted=stream_state is not None)
            visible = bisect_left(stream_state.offsets, part.log.high_watermark) - 1
        if not stream_state.incarnation_start <= version <= visible:
            raise InvalidEventStoreRequestError(
                f"snapshot version {version} of {stream!r} must be between "
                f"{stream_state.incarnation_start} and {visible} (its last durable version)",
                stream,
            )
        self._snapshot_store(topic).save(key, version, state, self._clock.now_ms())

    def load_snapshot(self, topic: str, stream: str) -> Snapshot | None:
        """The latest snapshot of ``stream`` that its readable events can continue, or None.

        None when there is none, the stream is deleted, the snapshot predates a delete (an old
        incarnation), or events between it and the truncation point are hidden.
        """
        key = validate_stream_id(stream)
        part = self._partition(topic, key)
        with part.lock:
            state = part.index.state(key)
            if state is None or state.deleted:
                return None
            floor = max(state.incarnation_start, state.truncate_before - 1)
        found = self._snapshot_store(topic).load(key)
        if found is None or found[0] < floor:
            return None
        return Snapshot(stream, found[0], found[1])

    # ------------------------------------------------------------------ subscriptions

    def subscribe_to_stream(self, topic: str, stream: str, from_version: int = 0, *,
                            upcast: bool = False) -> Subscription[int]:
        """Events of ``stream`` from ``from_version`` on: the stored ones, then new ones."""
        key = validate_stream_id(stream)
        part = self._partition(topic, key)

        def poll(cursor: int, max_count: int) -> tuple[list[RecordedEvent], int]:
            try:
                events = self.read_stream(topic, stream, cursor, max_count=max_count,
                                          upcast=upcast).events
            except StreamNotFoundError:
                return [], cursor
            return list(events), (events[-1].version + 1 if events else cursor)

        return Subscription([part.log], from_version, poll)

    def subscribe_to_all(self, topic: str, from_position: AllPosition | None = None, *,
                         category: str | None = None,
                         upcast: bool = False) -> Subscription[AllPosition]:
        """Events of every stream (or of ``category``) of ``topic`` after ``from_position``."""
        partitions = self.open_topic(topic)
        start = from_position or AllPosition.start(len(partitions))
        key_filter: Callable[[bytes], bool] | None = None
        if category is not None:
            prefix = category_prefix(category).encode()

            def key_filter(key: bytes) -> bool:
                return key.startswith(prefix)

        def poll(cursor: AllPosition, max_count: int) -> tuple[list[RecordedEvent], AllPosition]:
            result = self._read_filtered(topic, cursor, max_count, key_filter, upcast)
            return list(result.events), result.next_position

        return Subscription([p.log for p in partitions], start, poll)


def _expected_matches(expected: int, current: int) -> bool:
    if expected == ANY:
        return True
    if expected == NO_STREAM:
        return current == -1
    if expected == STREAM_EXISTS:
        return current >= 0
    return expected == current


def _retry_result(part: StorePartition, state: StreamState, first: int,
                  count: int) -> AppendResult:
    last = first + count - 1
    return AppendResult(first, last, part.number, state.offsets[first], state.offsets[last],
                        duplicate=True)


def _check_count(max_count: int) -> None:
    if not 1 <= max_count <= MAX_READ_COUNT:
        raise InvalidEventStoreRequestError(
            f"max_count must be between 1 and {MAX_READ_COUNT}, got {max_count}"
        )
