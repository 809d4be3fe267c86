"""Projection runners: catch up from the checkpoint, then follow the log live.

:class:`ProjectionRunner` (blocking, one thread) and :class:`AsyncProjectionRunner` (asyncio)
share :class:`_RunnerCore`: each fetched batch of events is folded into the store with the
reader's new position as the checkpoint (:meth:`Projection.fold`), and the runner's
:class:`ProjectionStatus` (positions, lag, events applied, last error) is written to the
registry topic every ``status_interval_s`` and when the runner stops.

Handlers and the store run on the runner's thread (or event loop: keep SQLite handlers short,
or use the blocking runner in a thread). ``stop()`` may be called from any thread; the runner
ends after the batch in hand, within ``poll_timeout_ms``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from moldau._replay_registry import (
    REGISTRY_TOPIC,
    ProjectionError,
    ProjectionStatus,
    ensure_registry,
    write_status,
)
from moldau._replay_source import AsyncEventReader, EventReader, Position
from moldau.admin import Admin, AsyncAdmin
from moldau.errors import TopicExistsError
from moldau.producer import AsyncProducer, Producer

if TYPE_CHECKING:
    from moldau.projections import Projection

__all__ = ["AsyncProjectionRunner", "ProjectionRunner"]


class _RunnerCore:
    def __init__(
        self,
        projection: Projection,
        server: str | None,
        *,
        registry: bool,
        status_interval_s: float,
        poll_timeout_ms: float,
    ) -> None:
        self.projection = projection
        self.server = server
        self.registry = registry
        self.status_interval_s = status_interval_s
        self.poll_timeout_ms = poll_timeout_ms
        self._status = projection.status()
        self._committed: Position = {}
        self._targets: Position = {}
        self._marks: Position = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Ask the runner to stop after the batch in hand (thread-safe)."""
        self._stopping.set()

    def status(self) -> ProjectionStatus:
        """A snapshot of the runner's status (thread-safe)."""
        with self._lock:
            return replace(self._status, positions=dict(self._status.positions),
                           updated_ms=int(time.time() * 1000))

    def _start(self, saved: Position | None, offsets: Mapping[int, tuple[int, int]]) -> Position:
        """Start positions from the checkpoint; ``offsets``: partition -> (start, end)."""
        saved = saved or {}
        starts = {p: max(saved.get(p, start), start) for p, (start, _) in offsets.items()}
        self._committed = dict(starts)
        self._targets = {p: end for p, (_, end) in offsets.items()}
        self._marks = dict(self._targets)
        with self._lock:
            self._status.state = "running"
            self._status.positions = dict(starts)
            self._status.lag = self._lag()
        return starts

    def _lag(self) -> int:
        return sum(max(0, mark - self._committed.get(p, 0)) for p, mark in self._marks.items())

    def _fold(self, events: Sequence[Any], positions: Position, marks: Position) -> None:
        before, after = self._committed, dict(positions)
        self._marks.update(marks)
        if not events and after == before:
            return
        try:
            applied = self.projection.fold(events, before, after)
        except ProjectionError as exc:
            with self._lock:
                self._status.state, self._status.last_error = "failed", str(exc)
                saved = self.projection.store.load_position()
                self._committed = saved or before
                self._status.positions = dict(self._committed)
            raise
        self._committed = after
        with self._lock:
            self._status.events_applied += applied
            self._status.positions = dict(after)
            self._status.lag = self._lag()

    def _caught_up(self) -> bool:
        return all(self._committed.get(p, 0) >= end for p, end in self._targets.items())

    def _finish_state(self) -> None:
        with self._lock:
            if self._status.state == "running":
                self._status.state = "stopped"


async def _ensure_registry(admin: AsyncAdmin) -> None:
    with contextlib.suppress(TopicExistsError):
        await admin.create_topic(REGISTRY_TOPIC, 1, {"cleanup.policy": "compact"})


class ProjectionRunner(_RunnerCore):
    """Runs a projection on this thread: catch up, then follow live until :meth:`stop`.

    Args:
        projection: What to run; its store holds the model and the checkpoint.
        server: ``HOST:PORT`` of the broker.
        registry: Write status records to the registry topic (``moldau projections``).
        status_interval_s: How often the status record is written while running.
        poll_timeout_ms: How long one poll waits for new events (bounds stop latency).
    """

    def __init__(
        self,
        projection: Projection,
        server: str | None = None,
        *,
        registry: bool = True,
        status_interval_s: float = 5.0,
        poll_timeout_ms: float = 500,
    ) -> None:
        super().__init__(projection, server, registry=registry,
                         status_interval_s=status_interval_s, poll_timeout_ms=poll_timeout_ms)

    def run(self, *, until_caught_up: bool = False) -> ProjectionStatus:
        """Fold events until :meth:`stop` (or, with ``until_caught_up``, until the end of the
        log as it was when the run started). Returns the final status.

        Raises:
            ProjectionError: a handler failed (the status says where; the checkpoint is at the
                failing event).
        """
        projection, store = self.projection, self.projection.store
        store.open(projection)
        with Admin(self.server) as admin:
            start = {o.partition: o.offset for o in admin.list_offsets(projection.topic,
                                                                        "earliest")}
            end = {o.partition: o.offset for o in admin.list_offsets(projection.topic, "latest")}
            if self.registry:
                ensure_registry(admin)
        starts = self._start(store.load_position(), {p: (start[p], end[p]) for p in start})
        producer = Producer(self.server, linger_ms=0) if self.registry else None
        reader = EventReader(self.server, projection.selection, starts)
        next_status = 0.0
        try:
            while not self._stopping.is_set():
                events = reader.poll(self.poll_timeout_ms)
                self._fold(events, reader.positions, reader.high_watermarks())
                if self._caught_up() and until_caught_up:
                    with self._lock:
                        self._status.state = "caught-up"
                    break
                if producer is not None and time.monotonic() >= next_status:
                    write_status(producer, self.status())
                    next_status = time.monotonic() + self.status_interval_s
        finally:
            reader.close()
            self._finish_state()
            if producer is not None:
                write_status(producer, self.status())
                producer.close()
        return self.status()


class AsyncProjectionRunner(_RunnerCore):
    """The asyncio twin of :class:`ProjectionRunner` (same arguments); handlers and the store
    run on the event loop."""

    def __init__(
        self,
        projection: Projection,
        server: str | None = None,
        *,
        registry: bool = True,
        status_interval_s: float = 5.0,
        poll_timeout_ms: float = 500,
    ) -> None:
        super().__init__(projection, server, registry=registry,
                         status_interval_s=status_interval_s, poll_timeout_ms=poll_timeout_ms)

    async def run(self, *, until_caught_up: bool = False) -> ProjectionStatus:
        """See :meth:`ProjectionRunner.run`."""
        projection, store = self.projection, self.projection.store
        store.open(projection)
        async with AsyncAdmin(self.server) as admin:
            start = {o.partition: o.offset
                     for o in await admin.list_offsets(projection.topic, "earliest")}
            end = {o.partition: o.offset
                   for o in await admin.list_offsets(projection.topic, "latest")}
            if self.registry:
                await _ensure_registry(admin)
        starts = self._start(store.load_position(), {p: (start[p], end[p]) for p in start})
        producer = AsyncProducer(self.server, linger_ms=0) if self.registry else None
        if producer is not None:
            await producer.start()
        reader = await AsyncEventReader.open(self.server, projection.selection, starts)
        next_status = 0.0
        try:
            while not self._stopping.is_set():
                events = await reader.poll(self.poll_timeout_ms)
                self._fold(events, reader.positions, reader.high_watermarks())
                if self._caught_up() and until_caught_up:
                    with self._lock:
                        self._status.state = "caught-up"
                    break
                if producer is not None and time.monotonic() >= next_status:
                    await self._write(producer)
                    next_status = time.monotonic() + self.status_interval_s
        finally:
            await reader.close()
            self._finish_state()
            if producer is not None:
                await self._write(producer)
                await producer.close()
        return self.status()

    async def _write(self, producer: AsyncProducer) -> None:
        status = self.status()
        await producer.send(REGISTRY_TOPIC, status.to_json().encode(),
                            key=status.name.encode(), partition=0)
