"""The event store: event-sourced streams with expected versions, kept in ordinary topics.

Concepts (docs/event-store.md has the long form):

- A *store topic* holds the events of many streams. Every event of a stream goes to the
  partition ``murmur2(stream id) % partitions``, as a keyed record would, and is one record:
  key = stream id, value = data, headers = version, id, type, type version, metadata (the exact
  format is in ``codec``, for readers in other languages).
- ``append_to_stream(topic, stream, expected_version, events)`` checks the expected version and
  appends the events as one batch, atomically (see ``store``); a retry with the same event ids
  returns the original result.
- The stream index (stream -> version -> log offset) is derived from the log, checkpointed in
  ``__eventstore_index`` and rebuilt on open from the checkpoint plus the log after it
  (``index``, ``checkpoint``).
- Reads by stream (forwards, backwards), of the whole topic and of a category; soft delete and
  truncate-before; snapshots in ``<topic>.snapshots``; subscriptions that catch up and go
  live; upcasters applied on read.

Positions: an event is at ``EventPosition(partition, offset)``. A topic reader's cursor is an
``AllPosition``, the next offset of every partition: a one-partition topic therefore has one
total order, and a multi-partition topic orders events within each partition (merged by append
time across them), with exact resumption either way.

Thread-safety: an :class:`EventStore` may be shared by any number of threads.
"""

from engine.views.eventstore.checkpoint import INDEX_TOPIC
from engine.views.eventstore.snapshots import SNAPSHOT_TOPIC_SUFFIX
from engine.views.eventstore.store import STORE_TOPIC_CONFIG, EventStore
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
    EventPosition,
    EventStoreSettings,
    RecordedEvent,
    Snapshot,
    StreamInfo,
    StreamSlice,
)
from engine.views.eventstore.upcasters import Upcaster, UpcasterRegistry

__all__ = [
    "ANY",
    "INDEX_TOPIC",
    "NO_STREAM",
    "SNAPSHOT_TOPIC_SUFFIX",
    "STORE_TOPIC_CONFIG",
    "STREAM_EXISTS",
    "AllPosition",
    "AllSlice",
    "AppendResult",
    "Direction",
    "EventData",
    "EventPosition",
    "EventStore",
    "EventStoreSettings",
    "RecordedEvent",
    "Snapshot",
    "StreamInfo",
    "StreamSlice",
    "Subscription",
    "Upcaster",
    "UpcasterRegistry",
]
