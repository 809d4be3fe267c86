"""Dead-letter topics: copying failed records there, listing them, and redriving them back.

A dead letter is a COPY of the source record (the source may expire by retention before
anyone looks): same key, value and headers, then these headers, values in UTF-8 decimal or
text:

==============================  ==============================================================
``moldau.dlq.source-topic``     the topic the queue consumes
``moldau.dlq.source-partition`` partition of the original record
``moldau.dlq.source-offset``    offset of the original record
``moldau.dlq.source-timestamp-ms``  the original record's timestamp
``moldau.dlq.queue``            the queue that gave up on it
``moldau.dlq.reason``           ``max-deliveries`` or ``rejected``
``moldau.dlq.attempts``         deliveries made
``moldau.dlq.last-error``       error text of the last failure (at most 2000 characters)
``moldau.dlq.first-failure-ms`` time of the first failed delivery (epoch ms)
``moldau.dlq.last-failure-ms``  time of the last failed delivery (epoch ms)
==============================  ==============================================================

The dead-letter topic is created with one partition when missing, with ``durability=fsync``
(a broker-wide ``async`` default must not let a power loss take a copy whose source record
is already marked done); the append waits for it to be durable before the source record is
marked done. A crash between those two writes leaves the record pending, so it is
dead-lettered again after the restart: dead-lettering is at-least-once, and the copies name
the same source partition and offset.

Redrive re-appends a dead letter's key, value and original headers (the ``moldau.dlq.*`` ones
removed) to its source topic, to the original partition when it still exists. Each redriven
dead letter is remembered in ``__queue_state`` (D records: one bitmap per 1024 dead-letter
offsets, written after the re-append is durable), so running the same redrive twice moves
nothing the second time. A crash between the re-append and the D record can leave one
duplicate in the source topic (at-least-once, like every step of the queue).

Concurrency: ``_lock`` serialises redrives (so two cannot move the same dead letter) and
guards the redrive bitmaps.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import InvalidQueueRequestError, TopicExistsError, UnknownTopicError
from engine.log.log_protocol import Log, TopicCatalog
from engine.partitioner import partition_for_key
from engine.records.batch import encode_batch
from engine.records.record import Header, NewRecord, Record
from engine.views.queues.codec import (
    CHUNK_BITS,
    DLQ_HEADERS,
    HDR_ATTEMPTS,
    HDR_FIRST_FAILURE,
    HDR_LAST_ERROR,
    HDR_LAST_FAILURE,
    HDR_QUEUE,
    HDR_REASON,
    HDR_SOURCE_OFFSET,
    HDR_SOURCE_PARTITION,
    HDR_SOURCE_TIMESTAMP,
    HDR_SOURCE_TOPIC,
    MAX_ERROR_CHARS,
    StateKey,
    encode_bitmap,
    encode_state_key,
    header_text,
)
from engine.views.queues.model import DeadLetter, RedriveResult
from engine.views.queues.reader import iter_records

__all__ = ["DeadLetterFailure", "DeadLetterStore", "build_dead_letter", "parse_dead_letter"]

REASON_MAX_DELIVERIES = "max-deliveries"
REASON_REJECTED = "rejected"
_SHIFT = CHUNK_BITS.bit_length() - 1
_MASK = CHUNK_BITS - 1
_REDRIVE_BATCH = 500


@dataclass(frozen=True, slots=True)
class DeadLetterFailure:
    """Why a record was dead-lettered: the numbers that go into its headers."""

    queue: str
    reason: str
    attempts: int
    last_error: str
    first_failure_ms: int
    last_failure_ms: int


def build_dead_letter(
    record: Record, topic: str, partition: int, failure: DeadLetterFailure, now_ms: int
) -> NewRecord:
    """The dead-letter copy of ``record`` (see the module docstring for the headers)."""
    extra = (
        (HDR_SOURCE_TOPIC, topic),
        (HDR_SOURCE_PARTITION, str(partition)),
        (HDR_SOURCE_OFFSET, str(record.offset)),
        (HDR_SOURCE_TIMESTAMP, str(record.timestamp)),
        (HDR_QUEUE, failure.queue),
        (HDR_REASON, failure.reason),
        (HDR_ATTEMPTS, str(failure.attempts)),
        (HDR_LAST_ERROR, failure.last_error[:MAX_ERROR_CHARS]),
        (HDR_FIRST_FAILURE, str(failure.first_failure_ms)),
        (HDR_LAST_FAILURE, str(failure.last_failure_ms)),
    )
    original = tuple(h for h in record.headers if h.key not in DLQ_HEADERS)
    headers = original + tuple(Header(k, v.encode()) for k, v in extra)
    return NewRecord(record.value, record.key, headers, now_ms)


def _int_header(headers: tuple[Header, ...], name: str) -> int:
    text = header_text(headers, name)
    try:
        return int(text) if text is not None else -1
    except ValueError:
        return -1


def parse_dead_letter(
    dlq_topic: str, dlq_partition: int, record: Record, *, redriven: bool
) -> DeadLetter:
    """Decode a dead letter's headers; missing or bad numbers read as -1, texts as ""."""
    headers = record.headers
    return DeadLetter(
        dlq_topic=dlq_topic,
        dlq_partition=dlq_partition,
        dlq_offset=record.offset,
        source_topic=header_text(headers, HDR_SOURCE_TOPIC) or "",
        source_partition=_int_header(headers, HDR_SOURCE_PARTITION),
        source_offset=_int_header(headers, HDR_SOURCE_OFFSET),
        queue=header_text(headers, HDR_QUEUE) or "",
        reason=header_text(headers, HDR_REASON) or "",
        attempts=_int_header(headers, HDR_ATTEMPTS),
        last_error=header_text(headers, HDR_LAST_ERROR) or "",
        first_failure_ms=_int_header(headers, HDR_FIRST_FAILURE),
        last_failure_ms=_int_header(headers, HDR_LAST_FAILURE),
        key=record.key,
        value=record.value,
        headers=tuple(h for h in headers if h.key not in DLQ_HEADERS),
        redriven=redriven,
    )


_DLQ_CONFIG = {"durability": "fsync"}  # see the module docstring


class DeadLetterStore:
    """Appends dead letters, lists them and redrives them (see the module docstring)."""

    def __init__(
        self,
        catalog: TopicCatalog,
        state_log_for: Callable[[str], Log],
        redriven: dict[tuple[str, int], dict[int, int]],
        now_ms: Callable[[], int],
    ) -> None:
        self._catalog = catalog
        self._state_log_for = state_log_for
        self._redriven = redriven
        self._now_ms = now_ms
        self._lock = threading.Lock()

    def append(self, dlq_topic: str, records: list[NewRecord]) -> int:
        """Append ``records`` to partition 0 of ``dlq_topic`` (created if missing), durably.

        Returns the base offset. Raises EngineError (StorageError, RecordError, ...) when the
        dead letters could not be stored; the caller then keeps the records in the queue.
        """
        if not self._catalog.has_topic(dlq_topic):
            with contextlib.suppress(TopicExistsError):
                self._catalog.create_topic(dlq_topic, 1, _DLQ_CONFIG)
        log = self._catalog.partition(dlq_topic, 0)
        return log.append(encode_batch(records, timestamp=self._now_ms())).base_offset

    def _is_redriven(self, topic: str, partition: int, offset: int) -> bool:
        bits = self._redriven.get((topic, partition), {}).get(offset >> _SHIFT, 0)
        return bool((bits >> (offset & _MASK)) & 1)

    def letters(
        self,
        dlq_topic: str,
        *,
        offsets: range | None = None,
        predicate: Callable[[DeadLetter], bool] | None = None,
        include_redriven: bool = True,
        limit: int = 10_000,
    ) -> list[DeadLetter]:
        """Dead letters of ``dlq_topic`` (every partition), in offset order per partition.

        Raises:
            UnknownTopicError: no such topic.
        """
        partitions = self._catalog.describe_topic(dlq_topic).partitions
        found: list[DeadLetter] = []
        for partition in range(partitions):
            log = self._catalog.partition(dlq_topic, partition)
            first = offsets.start if offsets is not None else None
            for record in iter_records(log, first):
                if offsets is not None and record.offset >= offsets.stop:
                    break
                if offsets is not None and record.offset not in offsets:
                    continue
                redriven = self._is_redriven(dlq_topic, partition, record.offset)
                if redriven and not include_redriven:
                    continue
                letter = parse_dead_letter(dlq_topic, partition, record, redriven=redriven)
                if predicate is None or predicate(letter):
                    found.append(letter)
                    if len(found) >= limit:
                        return found
        return found

    def redrive(
        self,
        dlq_topic: str,
        *,
        offsets: range | None = None,
        predicate: Callable[[DeadLetter], bool] | None = None,
        dry_run: bool = False,
        limit: int = 10_000,
    ) -> RedriveResult:
        """Move selected dead letters back to their source topics (see module docstring).

        Raises:
            UnknownTopicError: the dead-letter topic does not exist.
            InvalidQueueRequestError: a selected dead letter names no existing source topic.
            StorageError: an append failed; letters moved before it stay recorded as moved.
        """
        with self._lock:
            selected = self.letters(dlq_topic, offsets=offsets, predicate=predicate, limit=limit)
            already = sum(1 for letter in selected if letter.redriven)
            todo = [letter for letter in selected if not letter.redriven]
            for letter in todo:
                if not self._catalog.has_topic(letter.source_topic):
                    raise InvalidQueueRequestError(
                        f"dead letter {dlq_topic}/{letter.dlq_partition}@{letter.dlq_offset} "
                        f"names source topic {letter.source_topic!r}, which does not exist"
                    )
            if not dry_run:
                self._move_all(todo)
            return RedriveResult(tuple(todo), already, dry_run)

    def _target_partition(self, letter: DeadLetter) -> int:
        partitions = self._catalog.describe_topic(letter.source_topic).partitions
        if 0 <= letter.source_partition < partitions:
            return letter.source_partition
        if letter.key is not None:
            return partition_for_key(letter.key, partitions)
        return 0

    def _move_all(self, letters: list[DeadLetter]) -> None:
        """Re-append per source partition in batches, then record them as redriven."""
        by_target: dict[tuple[str, int], list[DeadLetter]] = defaultdict(list)
        for letter in letters:
            by_target[(letter.source_topic, self._target_partition(letter))].append(letter)
        for (topic, partition), group in by_target.items():
            for begin in range(0, len(group), _REDRIVE_BATCH):
                chunk = group[begin : begin + _REDRIVE_BATCH]
                now_ms = self._now_ms()
                records = [NewRecord(d.value, d.key, d.headers, now_ms) for d in chunk]
                self._catalog.partition(topic, partition).append(encode_batch(records))
                self._remember(chunk)

    def _remember(self, letters: list[DeadLetter]) -> None:
        updates: dict[tuple[str, int, int], int] = {}
        for letter in letters:
            place = (letter.dlq_topic, letter.dlq_partition, letter.dlq_offset >> _SHIFT)
            current = updates.get(place)
            if current is None:
                current = self._redriven.get(place[:2], {}).get(place[2], 0)
            updates[place] = current | (1 << (letter.dlq_offset & _MASK))
        by_log: dict[str, list[NewRecord]] = defaultdict(list)
        for (topic, partition, chunk), bits in updates.items():
            key = encode_state_key(StateKey("D", topic, partition, chunk))
            by_log[topic].append(NewRecord(encode_bitmap(bits), key))
        for topic, records in by_log.items():
            self._state_log_for(topic).append(encode_batch(records, timestamp=self._now_ms()))
        for (topic, partition, chunk), bits in updates.items():
            self._redriven.setdefault((topic, partition), {})[chunk] = bits


def ensure_topic(catalog: TopicCatalog, name: str) -> None:
    """Raise UnknownTopicError unless ``name`` exists."""
    if not catalog.has_topic(name):
        raise UnknownTopicError(name)
