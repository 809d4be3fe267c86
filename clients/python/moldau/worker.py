"""Decorator-style queue workers: :class:`AsyncWorker`, and :class:`Worker` for plain functions.

::

    worker = Worker(server="127.0.0.1:7654")

    @worker.handler("orders", concurrency=8)
    def handle(message: Message) -> None:
        charge(json.loads(message.value))

    worker.run()          # until worker.stop(), Ctrl-C or SIGTERM

Per message: the handler returns -> ack (durable before the next credit is granted); it raises
:class:`RejectMessage` -> dead-letter now; it raises anything else -> nack with retry, the
exception as the error text (dead-lettered by the server after the queue's
``max_deliveries``). Up to ``concurrency`` handlers of one queue run at once (threads for
plain functions, tasks for coroutine functions); ``prefetch`` more deliveries wait leased in
the worker so the next handler starts without a round trip. Leases of handlers that run
long are extended while they run, so a slow handler is not delivered twice.

Each queue has its own Consume stream (:mod:`moldau._queue_stream`). When it fails (the
server restarted), the worker opens a new one after a short pause; what it held comes back
when the leases expire. ``stop()`` stops taking deliveries, releases those not yet started,
waits for running handlers (up to ``drain_timeout_s``), sends their outcomes and closes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from moldau._queue_stream import ConsumeStream, SettleKind
from moldau._queue_types import LeaseError, Message
from moldau._runtime import LoopThread, cancel_and_wait
from moldau.errors import MoldauError
from moldau.queues import AsyncQueues

__all__ = ["AsyncWorker", "HandlerStats", "RejectMessage", "Worker"]

log = logging.getLogger(__name__)

Handler = Callable[[Message], Any]
"""A handler: ``def f(message)`` or ``async def f(message)``; its return value is ignored."""
_H = TypeVar("_H", bound=Handler)
_RECONNECT_S = (0.1, 0.5, 1.0, 2.0)


class RejectMessage(Exception):  # noqa: N818  (an instruction, not an error condition)
    """Raise from a handler to dead-letter the message now, without retries."""


@dataclass(slots=True)
class HandlerStats:
    """What one handler's queue saw since the worker started; updated on the worker's loop.

    ``retried`` counts nacks that scheduled a retry, ``dead_lettered`` those (and rejects)
    that moved the record to the dead-letter topic; ``lost`` counts settlements the server
    no longer accepted (the lease had expired: the record is delivered again).
    """

    received: int = 0
    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    released: int = 0
    extended: int = 0
    lost: int = 0
    reconnects: int = 0
    handler_seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    """Exception class name -> how many handler calls raised it."""


@dataclass(slots=True)
class _Route:
    queue: str
    handler: Handler
    concurrency: int
    prefetch: int
    lease_ms: int
    extend: bool
    is_async: bool
    stats: HandlerStats = field(default_factory=HandlerStats)


class _Held:
    """A delivery this worker holds: its lease deadline on the monotonic clock."""

    __slots__ = ("deadline", "message")

    def __init__(self, message: Message, deadline: float) -> None:
        self.message = message
        self.deadline = deadline


class _QueueRunner:
    """Runs one route: its stream, its handler slots and its lease extender."""

    def __init__(self, route: _Route, queues: AsyncQueues, pool: concurrent.futures.Executor,
                 stopping: asyncio.Event, drain_timeout_s: float) -> None:
        self.route = route
        self._queues = queues
        self._pool = pool
        self._stopping = stopping
        self._drain_timeout_s = drain_timeout_s
        self._held: dict[str, _Held] = {}
        self._settling = 0  # settlements queued and not yet answered
        self._all_settled = asyncio.Event()
        self._lease_s = route.lease_ms / 1000.0

    async def run(self) -> None:
        attempt = 0
        if not self.route.lease_ms:  # the extender needs the lease's length
            config = (await self._queues.describe(self.route.queue)).config
            self._lease_s = config.lease_ms / 1000.0
        while not self._stopping.is_set():
            stream = self._queues.consume(self.route.queue, lease_ms=self.route.lease_ms,
                                          max_batch=self.route.concurrency + self.route.prefetch)
            try:
                await self._session(stream)
                return
            except MoldauError as exc:
                if self._stopping.is_set():
                    return
                self.route.stats.reconnects += 1
                pause = _RECONNECT_S[min(attempt, len(_RECONNECT_S) - 1)]
                attempt += 1
                log.warning("queue %r: consume stream failed (%s); reconnecting in %.1f s",
                            self.route.queue, exc.message, pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
            finally:
                self._held.clear()

    async def _session(self, stream: ConsumeStream) -> None:
        route = self.route
        await stream.open(credit=route.concurrency + route.prefetch)
        # concurrency long-lived slot tasks take deliveries from one local queue: cheaper per
        # message than a task and a semaphore each
        ready: asyncio.Queue[Message | None] = asyncio.Queue()
        slots = [asyncio.create_task(self._slot(stream, ready))
                 for _ in range(route.concurrency)]
        extender = asyncio.create_task(self._extend_leases(stream))
        stop = asyncio.create_task(self._stopping.wait())
        try:
            while True:
                fetch = asyncio.create_task(stream.next_batch())
                await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    await cancel_and_wait(fetch)
                    break
                batch = fetch.result()  # raises when the stream failed
                if not batch:
                    return
                deadline = time.monotonic() + self._lease_s
                route.stats.received += len(batch)
                for message in batch:
                    self._held[message.lease_id] = _Held(message, deadline)
                    ready.put_nowait(message)
            await self._drain(stream, ready, slots)
        finally:
            stop.cancel()
            extender.cancel()
            for slot in slots:
                slot.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
            await stream.close()

    async def _drain(self, stream: ConsumeStream, ready: asyncio.Queue[Message | None],
                     slots: list[asyncio.Task[None]]) -> None:
        """Stopping: release what has not started, let running handlers finish."""
        waiting = []
        while not ready.empty():
            message = ready.get_nowait()
            if message is not None:
                self._held.pop(message.lease_id, None)
                waiting.append(stream.release(message.lease_id))
        for _ in slots:
            ready.put_nowait(None)  # each slot ends after its current message
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        self.route.stats.released += sum(1 for outcome in outcomes if outcome is None)
        _, late = await asyncio.wait(slots, timeout=self._drain_timeout_s)
        if self._settling:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_settled.wait(), self._drain_timeout_s)
        if late:
            log.warning("queue %r: %d handler(s) still running after %.1f s; their records "
                        "come back when the leases expire", self.route.queue, len(late),
                        self._drain_timeout_s)

    async def _slot(self, stream: ConsumeStream, ready: asyncio.Queue[Message | None]) -> None:
        """One handler slot: runs deliveries one after another until told to end."""
        while (message := await ready.get()) is not None:
            await self._handle(stream, message)

    async def _handle(self, stream: ConsumeStream, message: Message) -> None:
        route = self.route
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            if route.is_async:
                await route.handler(message)
            else:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._pool, route.handler, message)
        except asyncio.CancelledError:
            self._held.pop(message.lease_id, None)
            with contextlib.suppress(MoldauError):
                await asyncio.shield(stream.release(message.lease_id))
            raise
        except Exception as exc:  # the handler's failure is the message's outcome
            error = exc
        route.stats.handler_seconds += time.perf_counter() - started
        # the slot goes on with the next delivery while this one settles (a callback when it
        # is answered, not a task per message). The credit goes back now, in the
        # same request as the settlement (as AMQP's prefetch frees a slot when the ack
        # arrives, not when it is durable): the broker pushes the next records while it makes
        # this ack durable. Credit never travels ahead of settlements stuck behind
        # MAX_OUTSTANDING unanswered requests, so what is unsettled stays bounded.
        self._settling += 1
        self._all_settled.clear()
        callback = functools.partial(self._settled, message, error is None)
        if error is None:
            stream.queue_settlement("ack", message.lease_id, "", callback)
        else:
            name = type(error).__name__
            route.stats.errors[name] = route.stats.errors.get(name, 0) + 1
            text = f"{name}: {error}" if str(error) else name
            kind: SettleKind = "reject" if isinstance(error, RejectMessage) else "nack"
            stream.queue_settlement(kind, message.lease_id, text, callback)
        if not self._stopping.is_set():
            stream.grant(1)

    def _settled(self, message: Message, acked: bool, result: Any,
                 error: MoldauError | None) -> None:
        """The outcome of one settlement, counted in the route's stats."""
        self._settling -= 1
        if not self._settling:
            self._all_settled.set()
        self._held.pop(message.lease_id, None)
        stats = self.route.stats
        if error is not None:
            stats.lost += 1  # the stream failed: the lease will expire
            log.debug("queue %r: settling offset %d failed: %s", self.route.queue,
                      message.offset, error)
            return
        if acked:
            if result is None:
                stats.acked += 1
            else:
                stats.lost += 1
                log.warning("queue %r: ack of offset %d failed (%s); it will be delivered "
                            "again", self.route.queue, message.offset, result.reason)
        elif result.outcome == "retry-scheduled":
            stats.retried += 1
        elif result.outcome == "dead-lettered":
            stats.dead_lettered += 1
        elif result.outcome == "lease-invalid":
            stats.lost += 1
        else:  # dead-letter-failed: the server keeps it and delivers it again
            stats.retried += 1

    async def _extend_leases(self, stream: ConsumeStream) -> None:
        """Extend the leases of held deliveries once half their lease has run out."""
        if not self.route.extend:
            return
        period = max(0.05, self._lease_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            due = [h for h in self._held.values() if h.deadline - now < self._lease_s / 2]
            if not due:
                continue
            lease_ms = int(self._lease_s * 1000)
            outcomes = await asyncio.gather(
                *(stream.extend(h.message.lease_id, lease_ms) for h in due),
                return_exceptions=True)
            for held, outcome in zip(due, outcomes, strict=True):
                if isinstance(outcome, int) and not isinstance(outcome, bool):
                    held.deadline = now + self._lease_s
                    self.route.stats.extended += 1
                elif isinstance(outcome, LeaseError):
                    log.debug("queue %r: lease of offset %d not extended: %s",
                              self.route.queue, held.message.offset, outcome.reason)


class _WorkerBase:
    """Handler registration and the run loop shared by both workers."""

    _accepts_async = True
    _accepts_sync = True

    def __init__(
        self,
        server: str | None = None,
        *,
        consumer: str = "",
        drain_timeout_s: float = 30.0,
        token: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self._client_args: dict[str, Any] = {
            "consumer": consumer, "token": token, "tls_ca_file": tls_ca_file,
            "tls_cert_file": tls_cert_file, "tls_key_file": tls_key_file}
        self._server = server
        self._drain_timeout_s = drain_timeout_s
        self._routes: dict[str, _Route] = {}
        self._stopping = asyncio.Event()  # binds to the loop that first waits on it
        self._ran = False

    def handler(
        self,
        queue: str,
        *,
        concurrency: int = 1,
        prefetch: int | None = None,
        lease_ms: int = 0,
        extend_leases: bool = True,
    ) -> Callable[[_H], _H]:
        """Register the decorated function as the handler of ``queue``.

        Args:
            concurrency: Handlers of this queue running at once.
            prefetch: Deliveries leased ahead of free handlers (default ``concurrency``).
            lease_ms: Lease of each delivery; 0 takes the queue's.
            extend_leases: Extend the leases of handlers that run past half of them.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if prefetch is not None and prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        if lease_ms < 0:
            raise ValueError(f"lease_ms must be >= 0 (0: the queue's), got {lease_ms}")
        if queue in self._routes:
            raise ValueError(f"queue {queue!r} has a handler already")

        def register(function: _H) -> _H:
            if not callable(function):
                raise TypeError(f"a handler must be callable, got {function!r}")
            is_async = inspect.iscoroutinefunction(function)
            if is_async and not self._accepts_async:
                raise TypeError("Worker handlers are plain functions; use AsyncWorker for "
                                "async def handlers")
            self._routes[queue] = _Route(
                queue, function, concurrency,
                concurrency if prefetch is None else prefetch, lease_ms, extend_leases,
                is_async)
            return function

        return register

    def stats(self, queue: str) -> HandlerStats:
        """The counters of ``queue``'s handler (a live object: read it, do not change it)."""
        return self._routes[queue].stats

    @property
    def queues(self) -> list[str]:
        return list(self._routes)

    async def _serve(self) -> None:
        if not self._routes:
            raise RuntimeError("no handlers: decorate a function with @worker.handler(queue)")
        if self._ran:
            raise RuntimeError("a worker runs once; make a new one")
        self._ran = True
        threads = sum(r.concurrency for r in self._routes.values() if not r.is_async)
        pool = concurrent.futures.ThreadPoolExecutor(max(1, threads),
                                                     thread_name_prefix="moldau-handler")
        try:
            async with AsyncQueues(self._server, **self._client_args) as queues:
                runners = [_QueueRunner(r, queues, pool, self._stopping, self._drain_timeout_s)
                           for r in self._routes.values()]
                await asyncio.gather(*(runner.run() for runner in runners))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def request_stop(self) -> None:
        """Begin stopping; call it on the worker's loop (a signal handler there is fine)."""
        self._stopping.set()


class AsyncWorker(_WorkerBase):
    """Runs handlers over queues on the running event loop (see the module docstring).

    Handlers may be coroutine functions (run as tasks) or plain functions (run on a thread
    pool, ``concurrency`` threads per queue).

    Args:
        server: ``HOST:PORT``; default ``$MOLDAU_SERVER`` or 127.0.0.1:7654.
        consumer: Names this worker in the attempt history of failed deliveries.
        drain_timeout_s: How long ``stop()`` waits for running handlers.
        token, tls_ca_file, tls_cert_file, tls_key_file: As for :class:`moldau.AsyncAdmin`.
    """

    def __init__(self, server: str | None = None, **options: Any) -> None:
        super().__init__(server, **options)
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Run every handler until :meth:`stop` (or cancellation)."""
        await self._serve()

    def start(self) -> asyncio.Task[None]:
        """Run in a task of the running loop; ``await worker.stop()`` ends it."""
        self._task = asyncio.create_task(self._serve())
        return self._task

    async def stop(self) -> None:
        """Stop taking deliveries, finish or release what is held, close the streams."""
        self.request_stop()
        if self._task is not None:
            await self._task

    async def __aenter__(self) -> AsyncWorker:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class Worker(_WorkerBase):
    """The worker for plain (blocking) handler functions, run from ordinary code.

    Handlers run on a thread pool (``concurrency`` threads per queue); the streams run on a
    private event loop thread. :meth:`run` blocks until :meth:`stop` is called from another
    thread, or Ctrl-C / SIGTERM arrive (SIGTERM only when run on the main thread);
    :meth:`start` returns at once. Same arguments as :class:`AsyncWorker`.
    """

    _accepts_async = False

    def __init__(self, server: str | None = None, **options: Any) -> None:
        super().__init__(server, **options)
        self._thread: LoopThread | None = None
        self._future: concurrent.futures.Future[None] | None = None
        self._stop_lock = threading.Lock()

    def start(self) -> None:
        """Start the handlers in the background and return."""
        if self._thread is not None:
            raise RuntimeError("a worker runs once; make a new one")
        self._thread = LoopThread("moldau-worker")
        self._future = asyncio.run_coroutine_threadsafe(self._serve(), self._thread.loop)

    def run(self) -> None:
        """Start, then block until stopped (by :meth:`stop`, Ctrl-C or SIGTERM)."""
        self.start()
        future = self._future
        assert future is not None
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda *_: self._signal_stop())
        try:
            while not future.done():
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    future.result(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.stop()

    def _signal_stop(self) -> None:
        if self._thread is not None:
            self._thread.call_soon(self.request_stop)

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop (see :meth:`AsyncWorker.stop`) and wait; re-raises what ended the worker."""
        with self._stop_lock:
            thread, future = self._thread, self._future
            if thread is None or future is None:
                return
            thread.call_soon(self.request_stop)
            try:
                future.result(timeout_s)
            finally:
                if future.done():
                    thread.close()

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
