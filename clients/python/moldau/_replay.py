"""The replay loop: read a range of a topic's history and drive a target with it.

:func:`replay` resolves the range to start and stop offsets per partition (``Admin``
offset lookups, once), reads with :class:`~moldau._replay_source.EventReader`, hands each
polled batch to the target, and every ``checkpoint_interval_s`` makes the target durable and
writes the resume file. The stop offsets are the high watermarks when the replay first
started (kept in the resume file), so a replay is a fixed range even while producers append.

Resume file (JSON, written to a temp file, fsynced, renamed)::

    {"format": 1, "selection": {...}, "range": {...}, "target": "handler pkg.mod:fn",
     "starts": {"0": 0}, "stops": {"0": 1200}, "positions": {"0": 640},
     "events": 640, "errors": 0, "skipped": 3, "target_state": {"bytes": 81234}}

A replay with the same selection, range and target picks it up; the file is deleted when the
replay completes. Handler errors without ``skip_errors`` stop the replay with the position at
the failing item (a fixed handler retries it on resume); with it, the item goes to the DLQ
topic ``<topic>.replay-dlq`` with the error in headers and the replay goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from moldau._replay_codec import StoredEvent
from moldau._replay_source import Item, Position, Selection, open_reader
from moldau._replay_targets import (
    ReplayTarget,
    ReplayTargetError,
    item_headers,
    item_json,
    item_key_value,
)
from moldau._types import Header
from moldau.admin import Admin
from moldau.errors import TopicExistsError
from moldau.producer import Producer

__all__ = ["ReplayRange", "ReplaySummary", "describe_item", "dlq_topic", "replay"]

_FORMAT = 1


@dataclass(frozen=True, slots=True)
class ReplayRange:
    """Which part of each partition to replay; offsets inclusive, times in ms (inclusive)."""

    from_offset: int | None = None
    to_offset: int | None = None
    from_time_ms: int | None = None
    to_time_ms: int | None = None

    def __post_init__(self) -> None:
        if self.from_offset is not None and self.from_time_ms is not None:
            raise ValueError("choose a start offset or a start time, not both")
        if self.to_offset is not None and self.to_time_ms is not None:
            raise ValueError("choose an end offset or an end time, not both")
        for name in ("from_offset", "to_offset"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {value}")
        if (self.from_offset is not None and self.to_offset is not None
                and self.to_offset < self.from_offset):
            raise ValueError("to-offset is before from-offset")
        if (self.from_time_ms is not None and self.to_time_ms is not None
                and self.to_time_ms < self.from_time_ms):
            raise ValueError("to-time is before from-time")


@dataclass(slots=True)
class ReplaySummary:
    """What a replay did. ``completed`` is False when it stopped early (error, interrupt,
    ``max_events``); rerunning it resumes."""

    target: str
    events: int = 0
    errors: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    completed: bool = False
    resumed: bool = False
    total_offsets: int = 0
    positions: Position = field(default_factory=dict)
    failure: str | None = None
    sample: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0


def dlq_topic(topic: str) -> str:
    return f"{topic}.replay-dlq"


class _Dlq:
    """Sends failed items to ``<topic>.replay-dlq`` (created on first use)."""

    def __init__(self, server: str | None, topic: str, target: str) -> None:
        self.server, self.topic, self.target = server, dlq_topic(topic), target
        self._producer: Producer | None = None

    def __call__(self, item: Item, exc: BaseException) -> None:
        if self._producer is None:
            with Admin(self.server) as admin, contextlib.suppress(TopicExistsError):
                admin.create_topic(self.topic, 1)
            self._producer = Producer(self.server)
        key, value = item_key_value(item)
        headers = [*item_headers(item),
                   Header("replay.error", f"{type(exc).__name__}: {exc}"[:4000].encode()),
                   Header("replay.error_type", type(exc).__name__.encode()),
                   Header("replay.topic", item.topic.encode()),
                   Header("replay.partition", b"%d" % item.partition),
                   Header("replay.offset", b"%d" % item.offset),
                   Header("replay.target", self.target.encode())]
        self._producer.send(self.topic, value, key=key, headers=headers)

    def flush(self) -> None:
        if self._producer is not None:
            self._producer.flush()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()


def _bounds(server: str | None, selection: Selection,
            span: ReplayRange) -> tuple[Position, Position]:
    """Start and stop (exclusive) offsets per partition, resolved now."""
    with Admin(server) as admin:
        count = admin.describe_topic(selection.topic).partition_count
        partitions = selection.partitions_of(count)
        earliest = {o.partition: o.offset
                    for o in admin.list_offsets(selection.topic, "earliest", partitions)}
        latest = {o.partition: o.offset
                  for o in admin.list_offsets(selection.topic, "latest", partitions)}
        if span.from_time_ms is not None:
            by_time = {o.partition: o.offset for o in
                       admin.list_offsets(selection.topic, span.from_time_ms, partitions)}
        else:
            by_time = {}
    starts, stops = {}, {}
    for p in partitions:
        start = earliest[p]
        if span.from_offset is not None:
            start = max(start, span.from_offset)
        if span.from_time_ms is not None:
            start = max(start, by_time[p])
        stop = latest[p]
        if span.to_offset is not None:
            stop = min(stop, span.to_offset + 1)
        starts[p], stops[p] = start, max(start, stop)
    return starts, stops


def _load_resume(path: Path | None, identity: dict[str, Any]) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the resume file {path}: {exc}; delete it to start "
                         "over") from None
    if {k: state.get(k) for k in identity} != identity:
        raise ValueError(f"the resume file {path} belongs to another replay (different source, "
                         "range or target); delete it, or pass another --resume-file")
    return state


def _save_resume(path: Path, state: dict[str, Any]) -> None:
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(state, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _numbers(mapping: dict[str, Any]) -> Position:
    return {int(p): int(o) for p, o in mapping.items()}


def replay(
    server: str | None,
    selection: Selection,
    target: ReplayTarget,
    span: ReplayRange | None = None,
    *,
    resume_file: Path | None = None,
    dry_run: bool = False,
    sample_size: int = 5,
    skip_errors: bool = False,
    max_events: int | None = None,
    checkpoint_interval_s: float = 1.0,
    progress: Callable[[int, int, int, float], None] | None = None,
    out: TextIO | None = None,
) -> ReplaySummary:
    """Replay ``selection`` over ``span`` into ``target``; see the module docstring.

    Args:
        progress: Called about 10 times a second with (offsets done, offsets total, events,
            elapsed seconds).
        out: Where a dry run prints its sample (JSON lines).
    """
    span = span or ReplayRange()
    identity = {"format": _FORMAT, "selection": selection.describe(),
                "range": {"from_offset": span.from_offset, "to_offset": span.to_offset,
                          "from_time_ms": span.from_time_ms, "to_time_ms": span.to_time_ms},
                "target": target.description}
    state = None if dry_run else _load_resume(resume_file, identity)
    summary = ReplaySummary(target.description, resumed=state is not None)
    if state is not None:
        starts, stops = _numbers(state["starts"]), _numbers(state["stops"])
        positions = _numbers(state["positions"])
        summary.events, summary.errors = int(state["events"]), int(state["errors"])
        summary.skipped = int(state.get("skipped", 0))
    else:
        starts, stops = _bounds(server, selection, span)
        positions = dict(starts)
    summary.total_offsets = sum(stops[p] - starts[p] for p in stops)
    if not dry_run:
        own = target.open(state.get("target_state") if state else None, starts)
        if own is not None:
            positions.update({p: o for p, o in own.items() if p in positions})
    dlq = _Dlq(server, selection.topic, target.description) if skip_errors and not dry_run \
        else None
    reader = open_reader(server, selection, positions, stops, span.to_time_ms)
    started = time.monotonic() - float(state.get("elapsed_s", 0.0) if state else 0.0)
    first_time = span.from_time_ms

    def checkpoint(completed: bool) -> None:
        summary.positions = dict(reader.positions)
        summary.elapsed_s = time.monotonic() - started
        if dry_run or resume_file is None:
            return
        target_state = target.flush()
        if dlq is not None:
            dlq.flush()
        if completed:
            with contextlib.suppress(FileNotFoundError):
                resume_file.unlink()
            return
        _save_resume(resume_file, {
            **identity, "starts": starts, "stops": stops, "positions": reader.positions,
            "events": summary.events, "errors": summary.errors, "skipped": reader.skipped,
            "target_state": target_state, "elapsed_s": summary.elapsed_s,
        })

    next_checkpoint = next_progress = time.monotonic()
    reader.skipped = summary.skipped
    cut_short = False  # --max-events cut a poll: the reader's end is not the replay's
    try:
        while not reader.finished:
            before = dict(reader.positions)
            items = reader.poll(200)
            if first_time is not None and items:
                items = [i for i in items if _ts(i) >= first_time]
            if max_events is not None and summary.events + len(items) >= max_events:
                kept = items[: max_events - summary.events]
                for cut in reversed(items[len(kept):]):
                    reader.positions[cut.partition] = cut.offset  # read again on resume
                    cut_short = True
                items = kept
            if dry_run:
                summary.events += len(items)
                for item in items[: max(0, sample_size - len(summary.sample))]:
                    summary.sample.append(item_json(item))
                    if out is not None:
                        out.write(summary.sample[-1] + "\n")
            elif items or reader.positions != before:
                try:
                    delivered = target.write(items, before, dict(reader.positions), dlq)
                except ReplayTargetError as failure:
                    reader.positions.clear()
                    reader.positions.update({**before, **failure.position})
                    summary.events += _count_before(items, failure.item)
                    summary.errors += 1
                    summary.failure = f"{describe_item(failure.item)}: {failure}"
                    summary.elapsed_s = time.monotonic() - started
                    failure.summary = summary
                    raise
                summary.errors += len(items) - delivered
                summary.events += delivered
            now = time.monotonic()
            if progress is not None and now >= next_progress:
                done = sum(reader.positions[p] - starts[p] for p in stops)
                progress(done, summary.total_offsets, summary.events, now - started)
                next_progress = now + 0.1
            if max_events is not None and summary.events >= max_events:
                break
            if now >= next_checkpoint:
                summary.skipped = reader.skipped
                checkpoint(False)
                next_checkpoint = now + checkpoint_interval_s
        summary.skipped = reader.skipped
        summary.completed = reader.finished and not cut_short
        if summary.completed and not dry_run:
            target.finish()
        checkpoint(summary.completed)
    except BaseException:
        summary.skipped = reader.skipped
        with contextlib.suppress(Exception):
            checkpoint(False)
        raise
    finally:
        reader.close()
        if dlq is not None:
            dlq.close()
        if progress is not None:
            done = sum(reader.positions[p] - starts[p] for p in stops)
            progress(done, summary.total_offsets, summary.events, time.monotonic() - started)
    return summary


def _ts(item: Item) -> int:
    return item.timestamp_ms if isinstance(item, StoredEvent) else item.timestamp


def _count_before(items: list[Item], failed: Any) -> int:
    for index, item in enumerate(items):
        if item is failed:
            return index
    return 0


def describe_item(item: Any) -> str:
    """``OrderPlaced of order-1 v3 at orders[0]@42`` (or the position of a raw record)."""
    where = f"{item.topic}[{item.partition}]@{item.offset}"
    stream = getattr(item, "stream", None)
    return f"{item.type} of {stream} v{item.version} at {where}" if stream else where
