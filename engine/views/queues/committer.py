"""Group commit: many threads' state changes written as one durable append.

A thread calling :meth:`GroupCommitter.submit` queues its changes. If no write is running it
becomes the leader: it takes every queued change (its own and those that arrived while the
previous write ran), encodes them into one batch, appends it, waits for durability and applies
the changes to memory, then wakes the followers whose changes rode along. So N concurrent acks
cost one append and one fsync instead of N; under no contention a submit is a plain append.

Ordering: only one leader writes at a time, and encoding reads the in-memory state while it
holds the leadership, so the log's order of state records equals the order they were applied.

Failure: if the append or its fsync fails, every change of that write is handed to ``fail``
(which puts the records back in the queue) and every submitter gets the exception; nothing was
acknowledged.

Concurrency: ``_cond`` guards the queue of tickets and the leader flag only; encode, append,
apply and fail run without it (they take the owning queues' locks themselves).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from engine.log.log_protocol import Log
from engine.records.batch import encode_batch
from engine.records.record import NewRecord

__all__ = ["MAX_RECORDS_PER_BATCH", "GroupCommitter"]

MAX_RECORDS_PER_BATCH = 2000
T = TypeVar("T")


@dataclass(slots=True)
class _Ticket(Generic[T]):
    changes: Sequence[T]
    done: bool = False
    error: BaseException | None = None


class GroupCommitter(Generic[T]):
    """Serialises and batches writes of state changes ``T`` to one log (see module docs).

    ``encode`` turns changes into records (reading current state), ``apply`` installs them in
    memory once durable, ``fail`` undoes them after a failed write; ``now_ms`` stamps batches.
    """

    def __init__(
        self,
        log: Log,
        encode: Callable[[list[T]], list[NewRecord]],
        apply: Callable[[list[T]], None],
        fail: Callable[[list[T]], None],
        now_ms: Callable[[], int],
    ) -> None:
        self.log = log
        self._encode = encode
        self._apply = apply
        self._fail = fail
        self._now_ms = now_ms
        self._cond = threading.Condition()
        self._queue: list[_Ticket[T]] = []
        self._leader = False
        self.writes = 0

    def submit(self, changes: Sequence[T]) -> None:
        """Write ``changes`` durably (with whatever else is queued) and apply them.

        Raises:
            StorageError: the append or its fsync failed; ``fail`` has undone the changes.
        """
        if not changes:
            return
        ticket: _Ticket[T] = _Ticket(changes)
        with self._cond:
            self._queue.append(ticket)
            while not ticket.done:
                if self._leader:
                    self._cond.wait()
                    continue
                self._leader = True
                group, self._queue = self._queue, []
                self._cond.release()
                try:
                    self._write(group)
                finally:
                    self._cond.acquire()
                    self._leader = False
                    for member in group:
                        member.done = True
                    self._cond.notify_all()
        if ticket.error is not None:
            raise ticket.error

    def _write(self, group: list[_Ticket[T]]) -> None:
        changes = [change for ticket in group for change in ticket.changes]
        try:
            records = self._encode(changes)
            last_end = -1
            for begin in range(0, len(records), MAX_RECORDS_PER_BATCH):
                chunk = records[begin : begin + MAX_RECORDS_PER_BATCH]
                batch = encode_batch(chunk, timestamp=self._now_ms())
                last_end = self.log.append(batch, wait_durable=False).last_offset + 1
            if last_end >= 0:
                self.log.wait_durable(last_end)
                self.writes += 1
        except BaseException as exc:
            self._fail(changes)
            for ticket in group:
                ticket.error = exc
            return
        self._apply(changes)
