"""Record layouts of the queue view's two compacted internal topics and of dead letters.

``__queues`` (1 partition): one record per queue, the latest wins, a tombstone deletes::

    key    version int16 = 1, name (int16 length + UTF-8)
    value  UTF-8 JSON of the QueueConfig plus "id" (16 hex digits, new at every declare)

``__queue_state`` (N partitions; a queue's records all go to ``murmur2(id) % N``, so their
order is the log's order). Keys start with version int16 = 1 and a kind byte::

    S  id[8] partition int32                  -> start int64: every offset below is done
    C  id[8] partition int32 chunk int64      -> bitmap: bit i set = offset chunk*1024+i is done
    R  id[8] partition int32 offset int64     -> JSON retry state of one record (the delay index)
    D  topic(int16+UTF-8) partition int32 chunk int64 -> bitmap of redriven dead letters

Why this shape: an ack rewrites one 128-byte chunk bitmap for up to 1024 offsets instead of
writing a record per offset, and once the start offset passes a chunk the chunk's key gets a
tombstone in the same batch as the new start, so compaction keeps the live state to the
chunks between the start and the furthest ack, plus one R record per record awaiting a retry.
An R record is a pointer (partition, offset) into the source topic with the attempt history
beside it; the payload is never copied. It is tombstoned in the batch that marks its offset
done. Keys carry the queue's id, not its name, so the state of a deleted queue can never leak
into a new queue of the same name.

R value JSON: ``{"v":1,"due_ms":int,"count":int,"first_failure_ms":int,
"attempts":[[number,outcome,error,consumer,time_ms],...]}``; ``count`` is the number of
deliveries so far.

Dead letters carry the headers listed in ``DLQ_HEADERS`` (ASCII/UTF-8 values, numbers in
decimal) after the record's own headers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from engine.records.record import Header
from engine.views.queues.model import (
    MAX_ATTEMPTS_KEPT,
    Attempt,
    BackoffPolicy,
    Ordering,
    QueueConfig,
    QueueMode,
    StartPosition,
)

__all__ = [
    "CHUNK_BITS",
    "DLQ_HEADERS",
    "HDR_ATTEMPTS",
    "HDR_FIRST_FAILURE",
    "HDR_LAST_ERROR",
    "HDR_LAST_FAILURE",
    "HDR_QUEUE",
    "HDR_REASON",
    "HDR_SOURCE_OFFSET",
    "HDR_SOURCE_PARTITION",
    "HDR_SOURCE_TIMESTAMP",
    "HDR_SOURCE_TOPIC",
    "RetryState",
    "StateKey",
    "decode_bitmap",
    "decode_config",
    "decode_queue_key",
    "decode_retry",
    "decode_state_key",
    "encode_bitmap",
    "encode_config",
    "encode_queue_key",
    "encode_retry",
    "encode_state_key",
]

CHUNK_BITS = 1024
_CHUNK_BYTES = CHUNK_BITS // 8
_VERSION = 1
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_INT64 = struct.Struct(">q")
_ID_PART = struct.Struct(">hc8si")  # version, kind, id, partition
_ID_INDEXED = struct.Struct(">hc8siq")  # ... plus chunk or offset
MAX_ERROR_CHARS = 2000

HDR_SOURCE_TOPIC = "moldau.dlq.source-topic"
HDR_SOURCE_PARTITION = "moldau.dlq.source-partition"
HDR_SOURCE_OFFSET = "moldau.dlq.source-offset"
HDR_SOURCE_TIMESTAMP = "moldau.dlq.source-timestamp-ms"
HDR_QUEUE = "moldau.dlq.queue"
HDR_REASON = "moldau.dlq.reason"
HDR_ATTEMPTS = "moldau.dlq.attempts"
HDR_LAST_ERROR = "moldau.dlq.last-error"
HDR_FIRST_FAILURE = "moldau.dlq.first-failure-ms"
HDR_LAST_FAILURE = "moldau.dlq.last-failure-ms"
DLQ_HEADERS = frozenset({
    HDR_SOURCE_TOPIC, HDR_SOURCE_PARTITION, HDR_SOURCE_OFFSET, HDR_SOURCE_TIMESTAMP, HDR_QUEUE,
    HDR_REASON, HDR_ATTEMPTS, HDR_LAST_ERROR, HDR_FIRST_FAILURE, HDR_LAST_FAILURE,
})


# ---------------------------------------------------------------- __queues


def encode_queue_key(name: str) -> bytes:
    data = name.encode()
    return _INT16.pack(_VERSION) + _INT16.pack(len(data)) + data


def decode_queue_key(data: bytes) -> str:
    """Inverse of :func:`encode_queue_key`; raises ValueError for anything else."""
    version, length = struct.unpack_from(">hh", data, 0)
    if version != _VERSION or 4 + length != len(data):
        raise ValueError("not a version-1 queue key")
    return data[4:].decode()


def encode_config(config: QueueConfig, queue_id: str) -> bytes:
    body = asdict(config)
    body["id"] = queue_id
    body["v"] = _VERSION
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def decode_config(data: bytes) -> tuple[QueueConfig, str]:
    """Inverse of :func:`encode_config`: the config and the queue id."""
    body = json.loads(data)
    if not isinstance(body, dict) or body.get("v") != _VERSION:
        raise ValueError("not a version-1 queue definition")
    backoff = BackoffPolicy(**body["backoff"])
    config = QueueConfig(
        name=str(body["name"]), topic=str(body["topic"]), ordering=Ordering(body["ordering"]),
        lease_ms=int(body["lease_ms"]), max_deliveries=int(body["max_deliveries"]),
        backoff=backoff, dlq_topic=str(body["dlq_topic"]), start=StartPosition(body["start"]),
        mode=QueueMode(body.get("mode", QueueMode.WORK)),  # absent before retry queues existed
    )
    queue_id = str(body["id"])
    if len(bytes.fromhex(queue_id)) != 8:
        raise ValueError("queue id is not 8 bytes")
    return config, queue_id


# ---------------------------------------------------------------- __queue_state


@dataclass(frozen=True, slots=True)
class StateKey:
    """A decoded ``__queue_state`` key: ``owner`` is the queue id (hex) or, for D, a topic."""

    kind: str
    owner: str
    partition: int
    index: int = -1  # chunk (C, D), offset (R); -1 for S


def encode_state_key(key: StateKey) -> bytes:
    kind = key.kind.encode()
    if key.kind == "D":
        topic = key.owner.encode()
        return b"".join((_INT16.pack(_VERSION), kind, _INT16.pack(len(topic)), topic,
                         _INT32.pack(key.partition), _INT64.pack(key.index)))
    owner = bytes.fromhex(key.owner)
    if key.kind == "S":
        return _ID_PART.pack(_VERSION, kind, owner, key.partition)
    return _ID_INDEXED.pack(_VERSION, kind, owner, key.partition, key.index)


def decode_state_key(data: bytes) -> StateKey:
    """Inverse of :func:`encode_state_key`; raises ValueError (or struct.error) otherwise."""
    version, kind_byte = struct.unpack_from(">hc", data, 0)
    if version != _VERSION:
        raise ValueError(f"unknown queue state key version {version}")
    kind = kind_byte.decode()
    if kind == "D":
        (length,) = _INT16.unpack_from(data, 3)
        if 5 + length + 12 != len(data):
            raise ValueError("redrive key has the wrong length")
        topic = data[5 : 5 + length].decode()
        partition, chunk = struct.unpack_from(">iq", data, 5 + length)
        return StateKey("D", topic, partition, chunk)
    if kind == "S" and len(data) == _ID_PART.size:
        _, _, owner, partition = _ID_PART.unpack(data)
        return StateKey("S", owner.hex(), partition)
    if kind in ("C", "R") and len(data) == _ID_INDEXED.size:
        _, _, owner, partition, index = _ID_INDEXED.unpack(data)
        return StateKey(kind, owner.hex(), partition, index)
    raise ValueError(f"unknown queue state key kind {kind!r} or length {len(data)}")


def encode_start(start: int) -> bytes:
    return _INT64.pack(start)


def decode_start(data: bytes) -> int:
    (start,) = _INT64.unpack(data)
    if start < 0:
        raise ValueError("negative start offset")
    return int(start)


def encode_bitmap(bits: int) -> bytes:
    return bits.to_bytes(_CHUNK_BYTES, "little")


def decode_bitmap(data: bytes) -> int:
    if len(data) != _CHUNK_BYTES:
        raise ValueError(f"chunk bitmap of {len(data)} bytes, expected {_CHUNK_BYTES}")
    return int.from_bytes(data, "little")


@dataclass(frozen=True, slots=True)
class RetryState:
    """The delay-index entry of one record: when it is due and its failed deliveries."""

    due_ms: int
    count: int
    first_failure_ms: int
    attempts: tuple[Attempt, ...]

    def with_attempt(self, attempt: Attempt, due_ms: int) -> RetryState:
        """The state after one more failure; keeps the newest MAX_ATTEMPTS_KEPT attempts."""
        attempts = (*self.attempts, attempt)[-MAX_ATTEMPTS_KEPT:]
        first = self.first_failure_ms if self.attempts else attempt.time_ms
        return RetryState(due_ms, self.count, first, attempts)


def encode_retry(state: RetryState) -> bytes:
    body = {
        "v": _VERSION,
        "due_ms": state.due_ms,
        "count": state.count,
        "first_failure_ms": state.first_failure_ms,
        "attempts": [
            [a.number, a.outcome, a.error[:MAX_ERROR_CHARS], a.consumer, a.time_ms]
            for a in state.attempts
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_retry(data: bytes) -> RetryState:
    body = json.loads(data)
    if not isinstance(body, dict) or body.get("v") != _VERSION:
        raise ValueError("not a version-1 retry state")
    attempts = tuple(
        Attempt(int(n), str(outcome), str(error), str(consumer), int(time_ms))
        for n, outcome, error, consumer, time_ms in body["attempts"]
    )
    return RetryState(int(body["due_ms"]), int(body["count"]), int(body["first_failure_ms"]),
                      attempts)


# ---------------------------------------------------------------- dead-letter headers


def header_text(headers: Iterable[Header], name: str) -> str | None:
    """The last header called ``name`` as text (undecodable bytes replaced), or None."""
    found: str | None = None
    for header in headers:
        if header.key == name and header.value is not None:
            found = header.value.decode("utf-8", "replace")
    return found
