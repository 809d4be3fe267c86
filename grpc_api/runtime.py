"""What the servicers share: the broker, the worker threads and the wake-ups for readers.

The broker is opened after the gRPC server starts (so health can report NOT_SERVING during
recovery); until then :meth:`Runtime.broker` raises :class:`NotReadyError` (UNAVAILABLE).

Wake-ups: a reader waiting for data registers a listener on the partition log for the duration
of its wait. The engine calls listeners from the appending thread whenever the high watermark
moves; the listener only schedules ``Event.set`` on the event loop, so the appender never waits
on asyncio and readers never poll. Shutdown and topic deletion set the same events, so a
long-poll or a subscription notices them at once.

Concurrency: everything here runs on the event loop thread except ``Watch._on_append`` (engine
threads; it only calls ``loop.call_soon_threadsafe``) and ``SerialLane._drain`` (a worker
thread; it hands results back the same way).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from engine.broker import Broker
from engine.log.partition_log import PartitionLog
from grpc_api.config import ServerConfig
from grpc_api.errors import NotReadyError

__all__ = ["Runtime", "SerialLane", "Watch"]

_T = TypeVar("_T")


class Watch:
    """An event set whenever a partition's high watermark moves (or the server stops).

    Use inside ``with runtime.watch(topic, log) as watch:``. The pattern that loses no wake-up is
    clear, check, wait: :meth:`clear` first, then test the condition, then :meth:`wait`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, topic: str, log: PartitionLog) -> None:
        self.topic = topic
        self.log = log
        self._loop = loop
        self._event = asyncio.Event()

    def _on_append(self) -> None:
        """Called on the appending thread; must be quick and must never raise into the engine."""
        if self._event.is_set():
            return  # a wake-up is already pending; the waiter re-reads the high watermark
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(self._event.set)

    def wake(self) -> None:
        """Wake the waiter from the event loop thread (credit arrived, shutdown, deletion)."""
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for a wake-up; False if ``timeout_s`` passed first."""
        if timeout_s is None:
            await self._event.wait()
            return True
        try:
            await asyncio.wait_for(self._event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class SerialLane:
    """Runs submitted calls one after another, in submission order, on a worker thread.

    A pipelined stream needs its appends to one partition to reach the engine in the order
    sent, yet must not return to the event loop between them: each loop round trip would add
    its scheduling latency to every append. One drain job takes calls off the queue until it
    is empty, so consecutive appends run back to back; results go to asyncio futures through
    ``call_soon_threadsafe``. Submit from the event loop thread only.
    """

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._pending: collections.deque[tuple[Callable[[], Any], asyncio.Future[Any]]]
        self._pending = collections.deque()
        self._draining = False
        self._closed = False

    def submit(self, call: Callable[[], _T]) -> asyncio.Future[_T]:
        """Queue ``call``; the future resolves with its result or exception."""
        future: asyncio.Future[_T] = self._loop.create_future()
        with self._lock:
            self._pending.append((call, future))
            start = not self._draining
            self._draining = True
        if start:
            self._executor.submit(self._drain)
        return future

    def close(self) -> None:
        """Drop the calls not started yet (their futures are cancelled)."""
        self._closed = True

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._draining = False
                    return
                call, future = self._pending.popleft()
            if self._closed:
                self._resolve(future, None, asyncio.CancelledError())
                continue
            try:
                result = call()
            except Exception as exc:  # delivered to the awaiting coroutine
                self._resolve(future, None, exc)
            else:
                self._resolve(future, result, None)

    def _resolve(
        self, future: asyncio.Future[Any], result: object, exc: BaseException | None
    ) -> None:
        def settle() -> None:
            if future.done():
                return
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            elif exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            self._loop.call_soon_threadsafe(settle)


class Runtime:
    """The broker handle, the executor for blocking engine calls, and the active watches."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.executor = ThreadPoolExecutor(
            max_workers=config.worker_threads, thread_name_prefix="moldau-worker"
        )
        self._broker: Broker | None = None
        self._watches: set[Watch] = set()
        self.closing = False

    def set_broker(self, broker: Broker) -> None:
        self._broker = broker

    def broker(self) -> Broker:
        """The open broker; UNAVAILABLE while it is opening or once shutdown began."""
        if self.closing:
            raise NotReadyError("the broker is shutting down; retry against the restarted server")
        if self._broker is None:
            raise NotReadyError("the broker is still opening (recovering its logs); retry shortly")
        return self._broker

    async def run(self, function: Callable[..., _T], *args: object) -> _T:
        """Run a blocking engine call on a worker thread and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(function, *args))

    @contextlib.contextmanager
    def watch(self, topic: str, log: PartitionLog) -> Iterator[Watch]:
        """Register a :class:`Watch` on ``log`` for the duration of the block."""
        watch = Watch(asyncio.get_running_loop(), topic, log)
        listener = watch._on_append
        log.add_listener(listener)
        self._watches.add(watch)
        try:
            yield watch
        finally:
            self._watches.discard(watch)
            log.remove_listener(listener)

    def topic_deleted(self, topic: str) -> None:
        """Wake the readers of ``topic`` so they find out it is gone."""
        for watch in list(self._watches):
            if watch.topic == topic:
                watch.wake()

    def begin_shutdown(self) -> None:
        """Refuse new work and wake every waiting reader so in-flight calls end promptly."""
        self.closing = True
        for watch in list(self._watches):
            watch.wake()
