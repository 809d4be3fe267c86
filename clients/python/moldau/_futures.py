"""Futures returned by ``send`` and ``send_many``: cheap per record, usable sync or async.

A batch has one :class:`~moldau._accumulator.Completion`; a record's future is a small view of
it (the batch's base offset plus the record's index), so a send costs no ``Condition`` or
``asyncio.Future`` of its own. ``result()`` blocks the calling thread; ``await`` suspends the
calling task (the completion hops to its loop with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, Generic, TypeVar

from moldau._accumulator import Completion, PendingBatch
from moldau._types import BatchMetadata, RecordMetadata
from moldau.errors import RequestTimeoutError

__all__ = ["BulkFuture", "RecordFuture", "SendFuture", "wait_completions"]

_T = TypeVar("_T")


def wait_completions(completions: Sequence[Completion], timeout_s: float | None) -> bool:
    """Block until all are done; False if ``timeout_s`` passed first."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for completion in completions:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not completion.wait(remaining):
            return False
    return True


async def await_completions(completions: Sequence[Completion]) -> None:
    """Suspend until all are done, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    for completion in completions:
        if completion.done():
            continue
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(waiter: asyncio.Future[None] = waiter) -> None:
            loop.call_soon_threadsafe(_resolve, waiter)

        completion.add_callback(wake)
        await waiter


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class SendFuture(Generic[_T]):
    """What ``send``/``send_many`` return: ``result()`` in threads, ``await`` in coroutines."""

    __slots__ = ()

    def _completions(self) -> Sequence[Completion]:
        raise NotImplementedError

    def _value(self) -> _T:
        raise NotImplementedError

    def done(self) -> bool:
        return all(c.done() for c in self._completions())

    def result(self, timeout: float | None = None) -> _T:
        """Wait (``timeout`` seconds at most) and return the metadata, or raise the error."""
        if not wait_completions(self._completions(), timeout):
            raise RequestTimeoutError(f"not acknowledged within {timeout} s")
        for completion in self._completions():
            if completion.error is not None:
                raise completion.error
        return self._value()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not wait_completions(self._completions(), timeout):
            raise RequestTimeoutError(f"not acknowledged within {timeout} s")
        for completion in self._completions():
            if completion.error is not None:
                return completion.error
        return None

    def add_done_callback(self, callback: Callable[[SendFuture[_T]], object]) -> None:
        """Call ``callback(self)`` once done, on the producer's I/O thread (keep it short)."""
        completions = self._completions()
        remaining = [len(completions)]

        def one_done() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                callback(self)

        for completion in completions:
            completion.add_callback(one_done)

    def __await__(self) -> Generator[Any, None, _T]:
        yield from await_completions(self._completions()).__await__()
        return self.result(0)


class RecordFuture(SendFuture[RecordMetadata]):
    """The future of one record: its batch's completion plus its index in the batch."""

    __slots__ = ("_completion", "_index", "_partition", "_timestamp", "_topic")

    def __init__(
        self, completion: Completion, topic: str, partition: int, index: int, timestamp: int
    ) -> None:
        self._completion = completion
        self._topic = topic
        self._partition = partition
        self._index = index
        self._timestamp = timestamp

    def _completions(self) -> Sequence[Completion]:
        return (self._completion,)

    def done(self) -> bool:
        return self._completion.done()

    def _value(self) -> RecordMetadata:
        completion = self._completion
        append_time = completion.log_append_time
        return RecordMetadata(
            self._topic,
            self._partition,
            completion.base_offset + self._index,
            append_time if append_time >= 0 else self._timestamp,
        )


class BulkFuture(SendFuture[list[BatchMetadata]]):
    """The future of a ``send_many``: one :class:`BatchMetadata` per batch, in send order."""

    __slots__ = ("_batches", "_completions_")

    def __init__(self, batches: Sequence[PendingBatch]) -> None:
        self._batches = [(b.topic, b.partition, b.count, b.timestamp) for b in batches]
        self._completions_ = [b.completion for b in batches]

    def _completions(self) -> Sequence[Completion]:
        return self._completions_

    def _value(self) -> list[BatchMetadata]:
        out = []
        for (topic, partition, count, timestamp), completion in zip(
            self._batches, self._completions_, strict=True
        ):
            append_time = completion.log_append_time
            out.append(
                BatchMetadata(
                    topic,
                    partition,
                    completion.base_offset,
                    count,
                    append_time if append_time >= 0 else timestamp,
                )
            )
        return out
