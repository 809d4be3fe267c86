"""Subscriptions: catch up from the log, then follow it live, through one pull API.

A subscription is a cursor (a stream version, or an :class:`AllPosition`) and a poll function
that reads what lies after it. :meth:`Subscription.next_batch` polls; when nothing is there it
waits until a watched partition's high watermark moves (a ``PartitionLog`` listener) or the
timeout ends, then polls again. Catching up and following live are the same loop, so the switch
cannot open a gap or repeat an event: the cursor alone decides what comes next, and only
durable records (below the high watermark) are ever read.

No lost wake-up: the wake-up flag is cleared *before* each poll, so a high-watermark move that
happens during the poll leaves it set and the wait returns at once.

Concurrency: one thread drives ``next_batch`` (a gRPC worker, say); ``close`` may be called
from any thread and wakes a waiting ``next_batch``, which then returns an empty batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from engine.errors import InvalidEventStoreRequestError
from engine.log.partition_log import PartitionLog
from engine.views.eventstore.types import RecordedEvent

__all__ = ["Subscription"]

CursorT = TypeVar("CursorT")
Poll = Callable[[CursorT, int], tuple[list[RecordedEvent], CursorT]]


class Subscription(Generic[CursorT]):
    """A pull-style subscription; use as a context manager or call :meth:`close`."""

    def __init__(self, logs: Sequence[PartitionLog], cursor: CursorT,
                 poll: Poll[CursorT]) -> None:
        self._logs = list(logs)
        self._cursor = cursor
        self._poll = poll
        self._wakeup = threading.Event()
        self._closed = False
        for partition_log in self._logs:
            partition_log.add_listener(self._wakeup.set)

    @property
    def position(self) -> CursorT:
        """Where the next batch starts: pass it to a new subscription to resume."""
        return self._cursor

    @property
    def closed(self) -> bool:
        return self._closed

    def next_batch(self, timeout_s: float, max_count: int = 1000) -> list[RecordedEvent]:
        """The next events (at most ``max_count``), waiting up to ``timeout_s`` for some.

        Returns an empty list on timeout or once closed.
        """
        if max_count < 1:
            raise InvalidEventStoreRequestError(f"max_count must be >= 1, got {max_count}")
        deadline = time.monotonic() + max(0.0, timeout_s)
        while not self._closed:
            self._wakeup.clear()
            events, self._cursor = self._poll(self._cursor, max_count)
            if events or self._closed:
                return events
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._wakeup.wait(remaining)
        return []

    def close(self) -> None:
        """Stop listening; a waiting :meth:`next_batch` returns an empty batch."""
        self._closed = True
        for partition_log in self._logs:
            partition_log.remove_listener(self._wakeup.set)
        self._wakeup.set()

    def __enter__(self) -> Subscription[CursorT]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
