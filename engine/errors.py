"""Errors raised by the engine.

Tree::

    EngineError                          root of storage, topic and producer errors
    +-- StorageError                     an OSError at the partition-log boundary (path, errno)
    |   +-- DiskFullError                ENOSPC / EDQUOT; retriable once space is freed
    |   +-- LogReadOnlyError             an fsync failed earlier; the partition refuses writes
    +-- OffsetOutOfRangeError            offset outside [log_start_offset, log_end_offset]
    +-- CorruptLogError                  stored bytes failed their CRC on read
    +-- ProducerError
    |   +-- OutOfOrderSequenceError      a sequence gap for an idempotent producer
    |   +-- ProducerFencedError          an epoch older than the one already seen
    +-- TopicError
    |   +-- UnknownTopicError
    |   +-- TopicExistsError
    |   +-- InvalidTopicError            bad name, reserved name, bad partition count
    |   +-- UnknownPartitionError
    +-- InvalidConfigError               unknown key or bad value
    +-- GroupError                       consumer-group requests (engine.groups)
    |   +-- UnknownGroupError            no members and no committed offsets
    |   +-- UnknownMemberError           expired, left or replaced by a static rejoin: rejoin
    |   +-- StaleGenerationError         a generation fenced by a live reset, or not yet issued
    |   +-- NotPartitionOwnerError       a commit for partitions the member does not own
    |   +-- GroupNotEmptyError           live members forbid the operation (delete, reset)
    |   +-- InconsistentAssignorError    a member asks for another assignor than the group's
    |   +-- InvalidGroupRequestError     bad group id, pattern, assignor, timeout or offset
    +-- EventStoreError                  event-store requests (engine.views.eventstore)
    |   +-- WrongExpectedVersionError    the stream is not at the expected version
    |   +-- StreamNotFoundError          no such stream, or it was soft-deleted
    |   +-- DuplicateEventIdError        an event id already stored at another position
    |   +-- InvalidEventStoreRequestError  bad stream id, event type, version or count
    +-- RoutingError                     exchanges and bindings (engine.views.routing)
    |   +-- UnknownExchangeError         no exchange of that name is declared
    |   +-- ExchangeExistsError          redeclared with another type, alternate or provenance
    |   +-- ExchangeInDoubtError         routed records await their checkpoint; retriable
    |   +-- InvalidRoutingRequestError   bad type, pattern, header arguments, topic or loop
    +-- QueueError                       queues, retries, dead letters (engine.views.queues)
        +-- UnknownQueueError            no queue of that name is declared
        +-- QueueExistsError             declared again with a different definition
        +-- InvalidQueueRequestError     bad name, policy, count, lease id or redrive selection

    RecordError (engine.records.errors)  bytes that are not a valid RecordBatch v2

``retriable`` tells a caller whether the same request may succeed later unchanged.
"""

from __future__ import annotations

from engine.records.errors import (
    BatchTooLargeError,
    CorruptBatchError,
    InvalidBatchError,
    RecordError,
    UnsupportedCodecError,
    UnsupportedMagicError,
)

__all__ = [
    "BatchTooLargeError",
    "CorruptBatchError",
    "CorruptLogError",
    "DiskFullError",
    "EngineError",
    "GroupError",
    "GroupNotEmptyError",
    "InconsistentAssignorError",
    "InvalidBatchError",
    "InvalidConfigError",
    "InvalidGroupRequestError",
    "InvalidTopicError",
    "LogReadOnlyError",
    "NotPartitionOwnerError",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "ProducerError",
    "ProducerFencedError",
    "RecordError",
    "StaleGenerationError",
    "StorageError",
    "TopicError",
    "TopicExistsError",
    "TopicLimitError",
    "UnknownGroupError",
    "UnknownMemberError",
    "UnknownPartitionError",
    "UnknownTopicError",
    "UnsupportedCodecError",
    "UnsupportedMagicError",
]


class EngineError(Exception):
    """Root of the engine's own errors."""

    retriable = False


class StorageError(EngineError):
    """The file system refused an operation; the partition reports it instead of guessing."""

    def __init__(self, message: str, path: str = "", errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class DiskFullError(StorageError):
    """No space left; nothing partial was made visible."""

    retriable = True


class LogReadOnlyError(StorageError):
    """An fsync failed: what reached the disk is unknown, so the partition refuses writes."""


class OffsetOutOfRangeError(EngineError):
    """The requested offset is not stored (expired by retention, or not yet written)."""

    def __init__(self, offset: int, log_start_offset: int, log_end_offset: int) -> None:
        super().__init__(
            f"offset {offset} is out of range: the log holds [{log_start_offset}, {log_end_offset})"
        )
        self.offset = offset
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset


class CorruptLogError(EngineError):
    """A stored batch failed its CRC on read; it is never served as valid data."""

    def __init__(self, path: str, position: int, detail: str) -> None:
        super().__init__(f"corrupt data in {path} at byte {position}: {detail}")
        self.path = path
        self.position = position


class ProducerError(EngineError):
    """Idempotent-producer bookkeeping refused a batch."""


class OutOfOrderSequenceError(ProducerError):
    """A batch skipped sequence numbers; the producer must resend the missing ones first."""

    def __init__(self, producer_id: int, expected_sequence: int, sequence: int) -> None:
        super().__init__(
            f"producer {producer_id} sent sequence {sequence}, expected {expected_sequence}"
        )
        self.producer_id = producer_id
        self.expected_sequence = expected_sequence
        self.sequence = sequence


class ProducerFencedError(ProducerError):
    """An older epoch than the partition has seen: a newer instance of this producer exists."""

    def __init__(self, producer_id: int, epoch: int, current_epoch: int) -> None:
        super().__init__(
            f"producer {producer_id} epoch {epoch} is fenced by epoch {current_epoch}"
        )
        self.producer_id = producer_id
        self.epoch = epoch
        self.current_epoch = current_epoch


class TopicError(EngineError):
    """Topic-level request errors."""


class UnknownTopicError(TopicError):
    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} does not exist")
        self.topic = topic


class TopicExistsError(TopicError):
    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} already exists")
        self.topic = topic


class InvalidTopicError(TopicError):
    """Bad topic name or partition count; the message says what is allowed."""


class TopicLimitError(TopicError):
    """Creating the topic would pass a broker limit (topics or partitions); nothing changed."""


class UnknownPartitionError(TopicError):
    def __init__(self, topic: str, partition: int, partitions: int) -> None:
        super().__init__(
            f"topic {topic!r} has partitions 0..{partitions - 1}; "
            f"partition {partition} does not exist"
        )
        self.topic = topic
        self.partition = partition


class InvalidConfigError(EngineError):
    """Unknown config key or a value outside its range."""


# consumer groups


class GroupError(EngineError):
    """A consumer-group request was refused; ``group`` names the group."""

    def __init__(self, message: str, group: str) -> None:
        super().__init__(message)
        self.group = group


class UnknownGroupError(GroupError):
    def __init__(self, group: str) -> None:
        super().__init__(f"group {group!r} does not exist (no members, no committed offsets)",
                         group)


class UnknownMemberError(GroupError):
    """The member expired, left, or was replaced by a static rejoin; it must join again."""

    def __init__(self, group: str, member_id: str) -> None:
        super().__init__(
            f"member {member_id!r} is not in group {group!r} (its session expired, it left, or "
            "a newer instance replaced it); join the group again",
            group,
        )
        self.member_id = member_id


class StaleGenerationError(GroupError):
    """A request carried a generation the group has fenced (or never issued)."""

    def __init__(self, group: str, generation: int, current_generation: int, reason: str) -> None:
        super().__init__(
            f"generation {generation} of group {group!r} is stale ({reason}); the group is at "
            f"generation {current_generation}: heartbeat or rejoin to get the current one",
            group,
        )
        self.generation = generation
        self.current_generation = current_generation


class NotPartitionOwnerError(GroupError):
    """A member committed offsets for partitions the group has not given it."""

    def __init__(self, group: str, member_id: str, partitions: list[str]) -> None:
        shown = ", ".join(partitions[:10]) + (" ..." if len(partitions) > 10 else "")
        super().__init__(
            f"member {member_id!r} of group {group!r} does not own {shown}; commit only "
            "partitions in your current assignment",
            group,
        )
        self.member_id = member_id
        self.partitions = partitions


class GroupNotEmptyError(GroupError):
    """The operation needs a group without live members."""

    def __init__(self, group: str, members: int, advice: str) -> None:
        super().__init__(f"group {group!r} has {members} live member(s); {advice}", group)
        self.members = members


class InconsistentAssignorError(GroupError):
    """Every member of a group must ask for the same assignor."""

    def __init__(self, group: str, requested: str, current: str) -> None:
        super().__init__(
            f"group {group!r} uses the {current!r} assignor; a member asked for {requested!r}. "
            "Use the same assignor in every member, or a new group",
            group,
        )
        self.requested = requested
        self.current = current


class InvalidGroupRequestError(GroupError):
    """A malformed request: the message says which argument and what is allowed."""


# event store


class EventStoreError(EngineError):
    """An event-store request was refused; ``stream`` names the stream ("" if none)."""

    def __init__(self, message: str, stream: str = "") -> None:
        super().__init__(message)
        self.stream = stream


class WrongExpectedVersionError(EventStoreError):
    """The stream's current version is not the one the append expected; nothing was written.

    ``expected`` and ``current`` use the event store's numbers: an exact version >= 0, or -1
    (no stream), -2 (any), -4 (stream exists); ``current`` is -1 for a missing or deleted stream.
    """

    def __init__(self, stream: str, expected: int, current: int) -> None:
        super().__init__(
            f"stream {stream!r} is at version {current}, the append expected {expected}; "
            "reload the stream and retry with its current version",
            stream,
        )
        self.expected = expected
        self.current = current


class StreamNotFoundError(EventStoreError):
    """The stream has no events, or it was soft-deleted (``deleted``)."""

    def __init__(self, stream: str, *, deleted: bool = False) -> None:
        what = "was deleted" if deleted else "does not exist"
        super().__init__(f"stream {stream!r} {what}", stream)
        self.deleted = deleted


class DuplicateEventIdError(EventStoreError):
    """An event id is already stored, but not as the same append at the same versions."""

    def __init__(self, stream: str, event_id: str, stored_stream: str, stored_version: int) -> None:
        super().__init__(
            f"event id {event_id} is already stored as version {stored_version} of stream "
            f"{stored_stream!r}; a retry must resend the same events in the same order, and new "
            "events need new ids",
            stream,
        )
        self.event_id = event_id
        self.stored_stream = stored_stream
        self.stored_version = stored_version


class InvalidEventStoreRequestError(EventStoreError):
    """A malformed request: the message says which argument and what is allowed."""


__all__ += [  # appended by the event store, to keep that edit a small append
    "DuplicateEventIdError",
    "EventStoreError",
    "InvalidEventStoreRequestError",
    "StreamNotFoundError",
    "WrongExpectedVersionError",
]


# routing (exchanges)


class RoutingError(EngineError):
    """An exchange or binding request was refused; ``exchange`` names the exchange."""

    def __init__(self, message: str, exchange: str) -> None:
        super().__init__(message)
        self.exchange = exchange


class UnknownExchangeError(RoutingError):
    def __init__(self, exchange: str) -> None:
        super().__init__(f"exchange {exchange!r} is not declared", exchange)


class ExchangeExistsError(RoutingError):
    """A redeclaration differs from the declared exchange; ``difference`` says how."""

    def __init__(self, exchange: str, difference: str) -> None:
        super().__init__(
            f"exchange {exchange!r} is already declared with {difference}; redeclare it "
            "unchanged, or delete it first",
            exchange,
        )
        self.difference = difference


class ExchangeInDoubtError(RoutingError):
    """Records were routed but their checkpoint could not be written yet.

    Bindings cannot change until a routing step of the exchange completes: the router's
    no-duplicate argument needs a replay to see the bindings the interrupted step saw.
    """

    retriable = True

    def __init__(self, exchange: str, cause: str) -> None:
        super().__init__(
            f"exchange {exchange!r} has routed records whose checkpoint is not yet written "
            f"({cause}); bindings can change once routing resumes",
            exchange,
        )
        self.cause = cause


class InvalidRoutingRequestError(RoutingError):
    """A malformed request: the message says which argument and what is allowed."""


__all__ += [  # appended by routing, to keep that edit a small append
    "ExchangeExistsError",
    "ExchangeInDoubtError",
    "InvalidRoutingRequestError",
    "RoutingError",
    "UnknownExchangeError",
]


# ---------------------------------------------------------------- security (engine.security)
# Tree, below EngineError:
#     SecurityError                      ACL requests
#     +-- InvalidAclError                a malformed binding or filter: names the field


class SecurityError(EngineError):
    """A request about access control (engine.security) was refused."""


class InvalidAclError(SecurityError):
    """A malformed ACL binding or filter; the message names the field and what is allowed."""


__all__ += [  # appended by security, to keep that edit a small append
    "InvalidAclError",
    "SecurityError",
]


# ---------------------------------------------------------------- queues (engine.views.queues)


class QueueError(EngineError):
    """A work-queue request was refused; ``queue`` names the queue ("" if none)."""

    def __init__(self, message: str, queue: str = "") -> None:
        super().__init__(message)
        self.queue = queue


class UnknownQueueError(QueueError):
    """No queue of that name is declared (it was never declared, or it was deleted)."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"queue {queue!r} does not exist; declare it first", queue)


class QueueExistsError(QueueError):
    """A declare named an existing queue with a different definition; nothing changed."""

    def __init__(self, queue: str, topic: str) -> None:
        super().__init__(
            f"queue {queue!r} already exists over topic {topic!r} with another definition; "
            "delete it first or declare the same definition",
            queue,
        )
        self.topic = topic


class InvalidQueueRequestError(QueueError):
    """A malformed request: the message says which argument and what is allowed."""


__all__ += [  # appended by queues, to keep that edit a small append
    "InvalidQueueRequestError",
    "QueueError",
    "QueueExistsError",
    "UnknownQueueError",
]
