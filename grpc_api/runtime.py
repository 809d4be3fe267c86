"""What the servicers share: the broker, the worker threads and the wake-ups for readers.

The broker is opened after the gRPC server starts (so health can report NOT_SERVING during
recovery); until then :meth:`Runtime.broker` raises :class:`NotReadyError` (UNAVAILABLE).

Wake-ups: a reader waiting for data registers a listener on the partition log for the duration
of its wait. The engine calls listeners from the appending thread whenever the high watermark
moves; the listener only schedules ``Event.set`` on the event loop, so the appender never waits
on asyncio and readers never poll. Shutdown and topic deletion set the same events, so a
long-poll or a subscription notices them at once.

Concurrency: everything here runs on the event loop thread except ``Watch._on_append`` (engine
threads; it only calls ``loop.call_soon_threadsafe``) and ``AppendLane._drain`` (a worker
thread; it hands results back the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from engine.broker import Broker
from engine.groups import GroupCoordinator
from engine.log.partition_log import AppendResult, PartitionLog
from engine.views.eventstore import EventStore
from engine.views.queues import QueueManager
from engine.views.routing import ExchangeRegistry, Router
from grpc_api.config import ServerConfig
from grpc_api.errors import NotReadyError

__all__ = [
    "AppendCall", "AppendLane", "DurableLog", "InlineCall", "LoopSyncBudget", "Runtime", "Watch",
]

_T = TypeVar("_T")
log = logging.getLogger(__name__)


class Watch:
    """An event set whenever a partition's high watermark moves (or the server stops).

    Use inside ``with runtime.watch(topic, log) as watch:``. The pattern that loses no wake-up is
    clear, check, wait: :meth:`clear` first, then test the condition, then :meth:`wait`.

    A waiter that can serve itself synchronously sets :attr:`direct`: while it waits, an append
    calls it in the appender's own loop turn (:meth:`Runtime.run_direct`) instead of waking its
    task, so a subscriber's push goes out before the rest of the produce path runs and without
    a loop turn of its own (Redis serves a blocked reader in the writer's turn the same way).
    It returns False, or raises, to be woken as usual.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, topic: str, log: PartitionLog,
                 runtime: Runtime) -> None:
        self.topic = topic
        self.log = log
        self._loop = loop
        self._loop_thread = threading.get_ident()  # made on the loop thread (runtime.watch)
        self._event = asyncio.Event()
        self._runtime = runtime
        #: Serves the waiter in the appender's turn; True when nothing is left to wake it for.
        self.direct: Callable[[], bool] | None = None
        self._waiting = False
        self._queued = False

    def _on_append(self) -> None:
        """Called on the appending thread; must be quick and must never raise into the engine.

        An append made on the loop thread itself (inline appends, see :class:`AppendLane`)
        sets the event directly: no self-pipe write and no extra loop iteration. A direct
        waiter is queued instead, to be served once the append has returned (outside the
        engine's locks).
        """
        if self._event.is_set() or self._queued:
            return  # a wake-up is already pending; the waiter re-reads the high watermark
        if threading.get_ident() == self._loop_thread:
            if self.direct is not None and self._waiting:
                self._queued = True
                self._runtime.queue_direct(self)
                return
            self._event.set()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            self._loop.call_soon_threadsafe(self._serve)

    def _serve(self) -> None:
        """Event loop: serve a waiting direct waiter here, else wake the waiter's task."""
        self._queued = False
        if self._event.is_set():
            return
        direct = self.direct
        if direct is not None and self._waiting:
            try:
                if direct():
                    return
            except Exception:  # the task meets the error again and owns its status
                log.debug("a direct push failed; the waiter's task takes over", exc_info=True)
        self._event.set()

    def wake(self) -> None:
        """Wake the waiter from the event loop thread (credit arrived, shutdown, deletion)."""
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for a wake-up; False if ``timeout_s`` passed first."""
        self._waiting = True
        try:
            if timeout_s is None:
                await self._event.wait()
                return True
            try:
                await asyncio.wait_for(self._event.wait(), timeout_s)
            except TimeoutError:
                return False
            return True
        finally:
            self._waiting = False


class DurableLog(Protocol):
    """The part of :class:`PartitionLog` an :class:`AppendLane` waits on."""

    @property
    def high_watermark(self) -> int: ...

    def wait_durable(self, end_offset: int) -> None: ...

    def sync_nowait(self, end_offset: int) -> bool: ...


#: What an :class:`AppendLane` runs: store one batch without waiting for durability
#: (``PartitionLog.append(batch, wait_durable=False)``) and say which log it went to.
AppendCall = Callable[[], tuple[DurableLog, AppendResult]]
#: The same append without blocking; None when it would block (see AppendLane.submit).
InlineCall = Callable[[], tuple[DurableLog, AppendResult] | None]


class LoopSyncBudget:
    """When the event loop may fsync an idle partition itself instead of handing it to a worker.

    Handing the fsync of one small append to a worker costs two thread wake-ups (to the worker
    and back), measured at about 0.1 ms on a 2-core VM: more than half the fdatasync itself and
    a fifth of a record's end-to-end latency. But while the loop fsyncs, every other call it
    serves waits. So the loop fsyncs only for a bounded share of its time, and only while its
    fsyncs are typically fast:

    - a bucket of loop time: each loop fsync debits its duration, the bucket refills at
      ``share`` seconds per second and holds at most ``burst_s``; a loop fsync may start while
      the bucket is not in debt. Over any interval T the loop spends at most ``share * T``
      plus ``burst_s`` plus one fsync in fsyncs. (A gap after each fsync, the first design,
      sent the batch after every slower-than-usual fsync to a worker: 7 % of an idle
      partition's batches at 1,000 batches/s, in the p99 of their end-to-end latency.)
    - while the moving average of loop fsyncs is above ``max_s`` (a slow or busy disk, where
      the hop is noise next to the fsync), none for ``slow_backoff_s``, then one to re-measure.
      An average, not the last fsync: ext4 has a rare several-ms fsync even on a fast disk.

    Fsyncs the budget refuses go to workers as before. Event loop thread only.
    """

    def __init__(self, *, share: float = 0.25, burst_s: float = 0.002, max_s: float = 0.001,
                 slow_backoff_s: float = 1.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self._share = share
        self._burst_s = burst_s
        self._max_s = max_s
        self._slow_backoff_s = slow_backoff_s
        self.clock = clock
        self._credit_s = burst_s
        self._refilled_at = -math.inf  # the first refill fills the bucket
        self._slow_until = 0.0
        self._typical_s: float | None = None

    def _refill(self, now: float) -> None:
        if now > self._refilled_at:
            elapsed = now - self._refilled_at
            self._credit_s = min(self._burst_s, self._credit_s + elapsed * self._share)
            self._refilled_at = now

    def allows(self, now: float) -> bool:
        if now < self._slow_until:
            return False
        self._refill(now)
        return self._credit_s >= 0.0

    def spent(self, started: float, ended: float) -> None:
        """Record one loop fsync (``clock`` readings before and after it)."""
        took = ended - started
        self._refill(ended)
        self._credit_s -= took
        typical = self._typical_s
        typical = took if typical is None else typical + _FSYNC_AVERAGE_WEIGHT * (took - typical)
        self._typical_s = typical
        if typical > self._max_s:
            self._slow_until = ended + self._slow_backoff_s


#: Weight of the newest loop fsync in LoopSyncBudget's moving average: one 5 ms outlier on a
#: 0.2 ms disk lifts it to 0.7 ms, under the 1 ms bar; a disk that is slow every time passes
#: the bar within a few fsyncs.
_FSYNC_AVERAGE_WEIGHT = 0.1


class AppendLane:
    """Runs one partition's appends in submission order, with one durability wait per group.

    A pipelined stream must reach the engine in the order sent and must not pay one fsync per
    batch. A drain job on a worker thread takes every call queued so far (a group), runs them
    back to back (each stores its batch without waiting for fsync), then waits once for the
    highest end offset (``wait_durable``: group commit) and settles the group's futures in
    order with a single ``call_soon_threadsafe``. Requests that arrive while the fsync runs
    form the next group, so the group grows with the load and an idle lane adds no delay.

    A future resolves only once its batch is durable by the topic's setting: a failed durability
    wait fails every append of the group on that log (none of them is acknowledged). A call that
    raises fails only its own future. Submit from the event loop thread only.
    """

    def __init__(self, executor: Executor, loop_sync: LoopSyncBudget | None = None,
                 after_store: Callable[[], None] | None = None) -> None:
        self._executor = executor
        self._loop_sync = loop_sync
        #: Called on the loop once an inline call's batch is visible to readers, before its
        #: future settles (:meth:`Runtime.run_direct`: subscribers' pushes before the ack).
        self._after_store = after_store
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._pending: list[tuple[AppendCall, asyncio.Future[AppendResult]]] = []
        self._draining = False
        self._closed = False
        self._last: asyncio.Future[AppendResult] | None = None

    def submit(
        self, call: AppendCall, *, inline: InlineCall | None = None
    ) -> asyncio.Future[AppendResult]:
        """Queue ``call``; the future resolves with its result once durable, or its error.

        ``inline`` is the same append in a form that never blocks (None when it would: a
        partition held by another writer, a segment to roll). When the lane is idle (every
        earlier call settled, so acknowledgements stay in order) it runs here on the event
        loop instead of ``call`` on a worker: a store of a few KiB costs microseconds, less
        than the two thread wake-ups of a worker hop, which were a large share of one
        record's end-to-end latency. The durability wait, when there is one (fsync topics),
        runs here too when the lane's :class:`LoopSyncBudget` allows it, else on a worker;
        calls submitted meanwhile queue behind it as usual. When ``inline`` declines, ``call``
        runs on a worker as if it had been queued.
        """
        future: asyncio.Future[AppendResult] = self._loop.create_future()
        # futures settle in submission order: when the last one is done, all are (a drained
        # group's are settled by a callback that may still be queued after its drain ended)
        settled = self._last is None or self._last.done()
        self._last = future
        start = False
        with self._lock:
            if inline is not None and settled and not self._draining:
                self._draining = True  # the lane is ours until this call is settled
            else:
                inline = None
                self._pending.append((call, future))
                start = not self._draining
                self._draining = True
        if inline is not None:
            self._run_inline(call, inline, future)
        elif start:
            self._executor.submit(self._drain)
        return future

    def _run_inline(self, call: AppendCall, inline: InlineCall,
                    future: asyncio.Future[AppendResult]) -> None:
        if self._closed:
            future.cancel()
            self._release()
            return
        try:
            stored = inline()
        except Exception as exc:  # delivered to the awaiting coroutine
            future.set_exception(exc)
            self._release()
            return
        if stored is None:  # it would block: the worker path, still first in the lane
            with self._lock:
                self._pending.insert(0, (call, future))
            self._executor.submit(self._drain)
            return
        log, result = stored
        end_offset = result.last_offset + 1
        try:
            durable = log.high_watermark >= end_offset or self._sync_on_loop(log, end_offset)
        except Exception as exc:  # the fsync failed: not acknowledged
            future.set_exception(exc)
            self._release()
            return
        if durable:
            if self._after_store is not None:
                self._after_store()
            future.set_result(result)
            self._release()
            return
        self._executor.submit(self._finish_inline, log, end_offset, result, future)

    def _sync_on_loop(self, log: DurableLog, end_offset: int) -> bool:
        """fsync here when the budget allows and no other thread is syncing ``log``."""
        budget = self._loop_sync
        if budget is None:
            return False
        started = budget.clock()
        if not budget.allows(started):
            return False
        synced = True  # a failed fsync took its time too
        try:
            synced = log.sync_nowait(end_offset)
            return synced
        finally:
            if synced:
                budget.spent(started, budget.clock())

    def _finish_inline(self, log: DurableLog, end_offset: int, result: AppendResult,
                       future: asyncio.Future[AppendResult]) -> None:
        """Worker thread: the inline call's durability wait, then what queued meanwhile."""
        outcome: AppendResult | BaseException = result
        try:
            log.wait_durable(end_offset)
        except Exception as exc:  # not acknowledged
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            self._loop.call_soon_threadsafe(_settle, [(future, outcome)])
        self._drain()

    def _release(self) -> None:
        """Event loop thread: an inline call is settled; start a drain if calls queued."""
        with self._lock:
            start = bool(self._pending)
            if not start:
                self._draining = False
        if start:
            self._executor.submit(self._drain)

    def close(self) -> None:
        """Drop the calls not started yet (their futures are cancelled)."""
        self._closed = True

    def _drain(self) -> None:
        while True:
            with self._lock:
                group = self._pending
                if not group:
                    self._draining = False
                    return
                self._pending = []
            settled = self._run_group(group)
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                self._loop.call_soon_threadsafe(_settle, settled)

    def _run_group(
        self, group: list[tuple[AppendCall, asyncio.Future[AppendResult]]]
    ) -> list[tuple[asyncio.Future[AppendResult], AppendResult | BaseException]]:
        appended: list[tuple[asyncio.Future[AppendResult], DurableLog | None, Any]] = []
        ends: dict[DurableLog, int] = {}
        for call, future in group:
            if self._closed:
                appended.append((future, None, asyncio.CancelledError()))
                continue
            try:
                log, result = call()
            except Exception as exc:  # delivered to the awaiting coroutine
                appended.append((future, None, exc))
                continue
            ends[log] = max(ends.get(log, 0), result.last_offset + 1)
            appended.append((future, log, result))
        failed: dict[DurableLog, BaseException] = {}
        for log, end_offset in ends.items():
            try:
                log.wait_durable(end_offset)
            except Exception as exc:  # nothing of this group on that log is acknowledged
                failed[log] = exc
        return [
            (future, failed[log] if log is not None and log in failed else outcome)
            for future, log, outcome in appended
        ]


def _settle(
    settled: list[tuple[asyncio.Future[AppendResult], AppendResult | BaseException]],
) -> None:
    """Event loop thread: resolve a group's futures in submission order."""
    for future, outcome in settled:
        if future.done():
            continue
        if isinstance(outcome, asyncio.CancelledError):
            future.cancel()
        elif isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class Runtime:
    """The broker handle, the executor for blocking engine calls, and the active watches."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.executor = ThreadPoolExecutor(
            max_workers=config.worker_threads, thread_name_prefix="moldau-worker"
        )
        #: Shared by every AppendLane: the loop's fsync time is one budget, not one per lane.
        self.loop_sync = LoopSyncBudget()
        self._broker: Broker | None = None
        self._coordinator: GroupCoordinator | None = None
        self._event_store: EventStore | None = None
        self._queues: QueueManager | None = None
        self._routing: tuple[ExchangeRegistry, Router] | None = None
        self._watches: set[Watch] = set()
        self._direct: list[Watch] = []
        #: Called (on the event loop) when shutdown begins; long-lived calls that wait on
        #: something other than a partition register here to end promptly.
        self.shutdown_callbacks: set[Callable[[], None]] = set()
        self.closing = False

    def set_broker(self, broker: Broker, coordinator: GroupCoordinator | None = None) -> None:
        self._broker = broker
        self._coordinator = coordinator

    def set_event_store(self, event_store: EventStore) -> None:
        self._event_store = event_store

    def set_views(
        self, queues: QueueManager, registry: ExchangeRegistry, router: Router
    ) -> None:
        """The queue manager and the routing view, opened after the broker."""
        self._queues = queues
        self._routing = (registry, router)

    def queues(self) -> QueueManager:
        """The queue manager; UNAVAILABLE while the broker is opening or closing."""
        self.broker()
        if self._queues is None:
            raise NotReadyError("the queues are still opening; retry shortly")
        return self._queues

    def routing(self) -> tuple[ExchangeRegistry, Router]:
        """The exchange registry and the router; UNAVAILABLE while opening or closing."""
        self.broker()
        if self._routing is None:
            raise NotReadyError("the exchanges are still opening; retry shortly")
        return self._routing

    def event_store(self) -> EventStore:
        """The event store; UNAVAILABLE while the broker is opening or closing."""
        self.broker()
        if self._event_store is None:
            raise NotReadyError("the event store is still opening; retry shortly")
        return self._event_store

    def coordinator(self) -> GroupCoordinator:
        """The group coordinator; UNAVAILABLE while the broker is opening or closing."""
        self.broker()
        if self._coordinator is None:
            raise NotReadyError("the group coordinator is still opening; retry shortly")
        return self._coordinator

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
        watch = Watch(asyncio.get_running_loop(), topic, log, self)
        listener = watch._on_append
        log.add_listener(listener)
        self._watches.add(watch)
        try:
            yield watch
        finally:
            self._watches.discard(watch)
            log.remove_listener(listener)

    def queue_direct(self, watch: Watch) -> None:
        """Event loop: serve ``watch`` at :meth:`run_direct`, at the latest in the next turn."""
        self._direct.append(watch)
        if len(self._direct) == 1:
            asyncio.get_running_loop().call_soon(self.run_direct)

    def run_direct(self) -> None:
        """Event loop: serve the direct waiters an append queued. The append lane calls this
        right after its inline store, before the producer's acknowledgement; the call_soon of
        :meth:`queue_direct` covers every other appender on the loop thread."""
        pending = self._direct
        if not pending:
            return
        self._direct = []
        for watch in pending:
            watch._serve()

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
        for callback in list(self.shutdown_callbacks):
            callback()
