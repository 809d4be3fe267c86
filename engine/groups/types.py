"""Value objects shared by the assignors, the offset store and the coordinator."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import InvalidGroupRequestError

__all__ = ["MAX_GROUP_ID_LENGTH", "OffsetAndMetadata", "TopicPartition", "validate_group_id"]


@dataclass(frozen=True, slots=True, order=True)
class TopicPartition:
    """One partition of one topic; ordered by (topic, partition) so assignments sort stably."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}-{self.partition}"


@dataclass(frozen=True, slots=True)
class OffsetAndMetadata:
    """A committed position: the next offset to consume, as in Kafka.

    Attributes:
        offset: the first offset not yet processed (committed = last processed + 1).
        metadata: free text the consumer attaches (at most ``MAX_METADATA_BYTES`` UTF-8 bytes).
        commit_timestamp_ms: wall-clock time the broker stored it; 0 in a request (the
            store sets it).
        generation: the group generation the commit was made in (-1 for admin commits).
    """

    offset: int
    metadata: str = ""
    commit_timestamp_ms: int = 0
    generation: int = -1


MAX_GROUP_ID_LENGTH = 255


def validate_group_id(group: str) -> None:
    """Accept a group id or raise saying what to change.

    Group ids are keys in ``__consumer_offsets`` and appear in CLI tables, so they are 1 to
    255 characters with no control characters.

    Raises:
        InvalidGroupRequestError: the id is empty, too long or contains control characters.
    """
    if not isinstance(group, str) or not 1 <= len(group) <= MAX_GROUP_ID_LENGTH:
        raise InvalidGroupRequestError(
            f"a group id must be 1 to {MAX_GROUP_ID_LENGTH} characters, got {group!r:.60}",
            str(group),
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in group):
        raise InvalidGroupRequestError(
            f"group id {group!r} contains control characters; use printable characters", group
        )
