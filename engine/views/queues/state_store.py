"""Durable queue state: replaying ``__queues``/``__queue_state`` and encoding state changes.

Layouts are in :mod:`engine.views.queues.codec`. This module holds the three hooks of the
group committer for ``__queue_state`` (encode, apply, fail) and the replay that rebuilds
everything on open.

Write order per change, all in one batch (so one fsync, and atomic for a single batch):
R puts and R tombstones, then C bitmaps (the durable bitmap OR the newly done bits), then the
S record when the start moved, with tombstones for the chunks wholly below it. Memory changes
only after the batch is durable (``apply``), so a reader of memory never sees a done state
the log might lose.

Replay: the latest record per key wins (log order); tombstones delete; records of queue ids
not in ``__queues`` belong to deleted queues (or a declare that crashed) and are returned as
orphans so the manager can tombstone them.
"""

from __future__ import annotations

import logging
import struct
from collections import defaultdict
from dataclasses import dataclass, field

from engine.log.log_protocol import Log
from engine.records.record import NewRecord
from engine.views.queues.codec import (
    CHUNK_BITS,
    RetryState,
    StateKey,
    decode_bitmap,
    decode_config,
    decode_queue_key,
    decode_retry,
    decode_start,
    decode_state_key,
    encode_bitmap,
    encode_retry,
    encode_start,
    encode_state_key,
)
from engine.views.queues.model import QueueConfig
from engine.views.queues.reader import iter_records
from engine.views.queues.runtime import QueueRuntime

__all__ = [
    "QueueSnapshot",
    "StateChange",
    "StateReplay",
    "apply_changes",
    "encode_changes",
    "fail_changes",
    "replay_definitions",
    "replay_state",
]

log = logging.getLogger(__name__)
_SHIFT = CHUNK_BITS.bit_length() - 1
_MASK = CHUNK_BITS - 1


@dataclass(slots=True)
class StateChange:
    """Offsets of one queue partition becoming done, or getting a new retry state.

    ``written_start``/``tombstoned`` are filled by encode for apply (leader-only fields).
    """

    runtime: QueueRuntime
    partition: int
    done: tuple[int, ...] = ()
    retries: tuple[tuple[int, RetryState], ...] = ()
    written_start: int = -1
    written_chunks: tuple[int, ...] = ()
    tombstoned: tuple[int, ...] = ()


def _grouped(changes: list[StateChange]) -> dict[tuple[int, int], list[StateChange]]:
    groups: dict[tuple[int, int], list[StateChange]] = defaultdict(list)
    for change in changes:
        groups[(id(change.runtime), change.partition)].append(change)
    return groups


def encode_changes(changes: list[StateChange]) -> list[NewRecord]:
    """The records for ``changes``, reading current durable state (see module docstring)."""
    records: list[NewRecord] = []
    for group in _grouped(changes).values():
        first = group[0]
        runtime, partition = first.runtime, first.partition
        qid = runtime.queue_id
        with runtime.lock:
            ps = runtime.parts[partition]
            new_bits: dict[int, int] = {}
            for change in group:
                for offset in change.done:
                    if not ps.retry_only:  # a retry queue's done is its R tombstone alone
                        chunk = offset >> _SHIFT
                        new_bits[chunk] = new_bits.get(chunk, 0) | (1 << (offset & _MASK))
                    if offset in ps.retry:
                        records.append(NewRecord(None, encode_state_key(
                            StateKey("R", qid, partition, offset))))
                for offset, state in change.retries:
                    records.append(NewRecord(encode_retry(state), encode_state_key(
                        StateKey("R", qid, partition, offset))))
            for chunk, bits in sorted(new_bits.items()):
                value = encode_bitmap(ps.done.get(chunk, 0) | bits)
                records.append(NewRecord(value, encode_state_key(
                    StateKey("C", qid, partition, chunk))))
            first.written_chunks = tuple(sorted(new_bits))
            start = ps.advance_start()
            if start > ps.durable_start:
                doomed = tuple(c for c in sorted(ps.persisted_chunks)
                               if (c + 1) * CHUNK_BITS <= start and c not in new_bits)
                for chunk in doomed:
                    records.append(NewRecord(None, encode_state_key(
                        StateKey("C", qid, partition, chunk))))
                records.append(NewRecord(encode_start(start), encode_state_key(
                    StateKey("S", qid, partition))))
                first.written_start = start
                first.tombstoned = doomed
    return records


def apply_changes(changes: list[StateChange]) -> None:
    """Install durable ``changes`` in memory and count them."""
    for group in _grouped(changes).values():
        first = group[0]
        runtime = first.runtime
        with runtime.lock:
            ps = runtime.parts[first.partition]
            ps.persisted_chunks.update(first.written_chunks)
            for change in group:
                for offset in change.done:
                    following = ps.finish_done(offset)
                    if following is not None:
                        ps.make_ready(following)
                for offset, state in change.retries:
                    ps.finish_retry(offset, state)
                    runtime.push_delay(first.partition, offset, state.due_ms)
            if first.written_start >= 0:
                ps.durable_start = max(ps.durable_start, first.written_start)
                ps.persisted_chunks.difference_update(first.tombstoned)
                ps.forget_chunks_below(ps.durable_start)
        runtime.notify()


def fail_changes(changes: list[StateChange]) -> None:
    """The write failed: every record of ``changes`` goes back to ready."""
    for change in changes:
        with change.runtime.lock:
            ps = change.runtime.parts[change.partition]
            for offset in change.done:
                ps.requeue(offset)
            for offset, _ in change.retries:
                ps.requeue(offset)
        change.runtime.notify()


# ---------------------------------------------------------------- replay


def replay_definitions(queues_log: Log) -> dict[str, tuple[QueueConfig, str]]:
    """Queue name -> (config, id) from ``__queues``; unreadable records are skipped."""
    found: dict[str, tuple[QueueConfig, str]] = {}
    for record in iter_records(queues_log):
        if record.key is None:
            continue
        try:
            name = decode_queue_key(record.key)
            if record.value is None:
                found.pop(name, None)
            else:
                found[name] = decode_config(record.value)
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            log.warning("skipped unreadable __queues record at %d: %s", record.offset, exc)
    return found


@dataclass(slots=True)
class QueueSnapshot:
    """The replayed durable state of one queue, per partition."""

    starts: dict[int, int] = field(default_factory=dict)
    chunks: dict[int, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    retries: dict[int, dict[int, RetryState]] = field(default_factory=lambda: defaultdict(dict))


@dataclass(slots=True)
class StateReplay:
    """Everything in ``__queue_state``: per queue id, redrive bitmaps, and orphan keys."""

    queues: dict[str, QueueSnapshot] = field(default_factory=dict)
    redriven: dict[tuple[str, int], dict[int, int]] = field(default_factory=dict)
    orphans: dict[int, set[bytes]] = field(default_factory=dict)  # state partition -> keys
    skipped: int = 0


def replay_state(state_logs: list[Log], known_ids: set[str]) -> StateReplay:
    """Rebuild the latest state per key from every ``__queue_state`` partition."""
    replay = StateReplay()
    for index, state_log in enumerate(state_logs):
        for record in iter_records(state_log):
            if record.key is None:
                continue
            try:
                key = decode_state_key(record.key)
                _apply_replayed(replay, key, record.value, known_ids, index, record.key)
            except (ValueError, KeyError, TypeError, struct.error) as exc:
                replay.skipped += 1
                log.warning("skipped unreadable __queue_state record at %d: %s",
                            record.offset, exc)
    return replay


def _apply_replayed(
    replay: StateReplay,
    key: StateKey,
    value: bytes | None,
    known_ids: set[str],
    state_partition: int,
    raw_key: bytes,
) -> None:
    if key.kind == "D":
        bitmaps = replay.redriven.setdefault((key.owner, key.partition), {})
        if value is None:
            bitmaps.pop(key.index, None)
        else:
            bitmaps[key.index] = decode_bitmap(value)
        return
    if key.owner not in known_ids:
        orphans = replay.orphans.setdefault(state_partition, set())
        if value is None:
            orphans.discard(raw_key)
        else:
            orphans.add(raw_key)
        return
    snapshot = replay.queues.setdefault(key.owner, QueueSnapshot())
    if key.kind == "S":
        if value is not None:
            snapshot.starts[key.partition] = decode_start(value)
    elif key.kind == "C":
        if value is None:
            snapshot.chunks[key.partition].pop(key.index, None)
        else:
            snapshot.chunks[key.partition][key.index] = decode_bitmap(value)
    elif value is None:
        snapshot.retries[key.partition].pop(key.index, None)
    else:
        snapshot.retries[key.partition][key.index] = decode_retry(value)
