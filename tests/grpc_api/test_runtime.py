"""Runtime: the broker handle's readiness and the watches that wake waiting readers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from engine.clock import ManualClock
from engine.log.partition_log import AppendResult, PartitionLog
from grpc_api.config import ServerConfig
from grpc_api.errors import NotReadyError
from grpc_api.runtime import AppendLane, LoopSyncBudget, Runtime


class FakeLog:
    """The listener part of PartitionLog."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[], None]] = []
        self.high_watermark = 0

    def add_listener(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        self.listeners.remove(listener)

    def append_from_thread(self) -> threading.Thread:
        def append() -> None:
            self.high_watermark += 1
            for listener in list(self.listeners):
                listener()

        thread = threading.Thread(target=append)
        thread.start()
        return thread


@pytest.fixture
def runtime() -> Any:
    runtime = Runtime(ServerConfig(worker_threads=2))
    yield runtime
    runtime.executor.shutdown()


def _log(fake: FakeLog) -> PartitionLog:
    return cast(PartitionLog, fake)


def test_broker_is_unavailable_until_set_and_after_shutdown(runtime: Runtime) -> None:
    with pytest.raises(NotReadyError, match="still opening"):
        runtime.broker()
    runtime.set_broker(cast(Any, object()))
    runtime.broker()
    runtime.begin_shutdown()
    with pytest.raises(NotReadyError, match="shutting down"):
        runtime.broker()


def test_append_on_another_thread_wakes_the_watch(runtime: Runtime) -> None:
    fake = FakeLog()

    async def scenario() -> bool:
        with runtime.watch("t", _log(fake)) as watch:
            assert len(fake.listeners) == 1
            watch.clear()
            thread = fake.append_from_thread()
            woke = await watch.wait(5.0)
            thread.join()
        assert fake.listeners == []  # unregistered when the block ends
        return woke

    assert asyncio.run(scenario())
    assert fake.high_watermark == 1


def test_wait_times_out_without_appends(runtime: Runtime) -> None:
    async def scenario() -> bool:
        with runtime.watch("t", _log(FakeLog())) as watch:
            return await watch.wait(0.05)

    assert not asyncio.run(scenario())


def test_shutdown_and_deletion_wake_watches(runtime: Runtime) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        with runtime.watch("a", _log(FakeLog())) as a, runtime.watch("b", _log(FakeLog())) as b:
            runtime.topic_deleted("a")
            woke_a = await a.wait(1.0)
            woke_b = await b.wait(0.05)
            runtime.begin_shutdown()
            return woke_a, woke_b, await b.wait(1.0)

    assert asyncio.run(scenario()) == (True, False, True)


def test_listener_after_loop_closed_does_not_raise(runtime: Runtime) -> None:
    fake = FakeLog()

    async def register() -> None:
        watch = runtime.watch("t", _log(fake))
        watch.__enter__()  # left registered on purpose, as a racing appender would see it

    asyncio.run(register())
    fake.append_from_thread().join()  # the loop is closed: the listener must swallow it


def test_run_executes_on_a_worker_thread(runtime: Runtime) -> None:
    async def scenario() -> str:
        return await runtime.run(lambda: threading.current_thread().name)

    assert asyncio.run(scenario()).startswith("moldau-worker")


class FakeDurableLog:
    """Counts durability waits; fails them while ``fail`` is set.

    ``high_watermark`` stays 0 (every append needs a wait, as on an fsync topic) unless
    ``durable_on_append`` (an async topic: stored is visible).
    """

    def __init__(self, *, durable_on_append: bool = False) -> None:
        self.waits: list[int] = []
        self.wait_threads: list[str] = []
        self.fail = False
        self.durable_on_append = durable_on_append
        self.high_watermark = 0
        self.gate: threading.Event | None = None  # when set, waits block until it is
        self.busy = False

    def sync_nowait(self, end_offset: int) -> bool:
        """Declines while ``busy`` (another thread syncing), else waits here."""
        if self.busy:
            return False
        self.wait_durable(end_offset)
        return True

    def wait_durable(self, end_offset: int) -> None:
        if self.gate is not None:
            self.gate.wait(5)
        self.waits.append(end_offset)
        self.wait_threads.append(threading.current_thread().name)
        if self.fail:
            raise OSError("fsync failed")
        self.high_watermark = max(self.high_watermark, end_offset)


def _appender(
    log: FakeDurableLog,
    order: list[int],
    gate: threading.Event | None = None,
    entered: threading.Event | None = None,
) -> Callable[[int], tuple[FakeDurableLog, AppendResult]]:
    def append(n: int) -> tuple[FakeDurableLog, AppendResult]:
        if entered is not None:
            entered.set()
        if gate is not None:
            gate.wait(5)
        if n == 3:
            raise ValueError("three")
        order.append(n)
        threads.append(threading.current_thread().name)
        if log.durable_on_append:
            log.high_watermark = n * 10 + 10
        return log, AppendResult(n * 10, n * 10 + 9, -1)

    threads: list[str] = []
    append.threads = threads  # type: ignore[attr-defined]

    return append


def test_append_lane_runs_in_order_and_delivers_errors(runtime: Runtime) -> None:
    order: list[int] = []
    log = FakeDurableLog()
    append = _appender(log, order)

    async def scenario() -> list[object]:
        lane = AppendLane(runtime.executor)
        futures = [lane.submit(functools.partial(append, n)) for n in range(6)]
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(scenario())
    assert order == [0, 1, 2, 4, 5]
    assert [cast(AppendResult, r).base_offset for r in results[:3]] == [0, 10, 20]
    assert isinstance(results[3], ValueError)
    assert [cast(AppendResult, r).base_offset for r in results[4:]] == [40, 50]
    assert log.waits[-1] == 60  # everything waited for, the last wait covering the end


def test_append_lane_groups_calls_queued_during_a_wait(runtime: Runtime) -> None:
    """Calls queued while the first group runs share one durability wait."""
    gate, entered = threading.Event(), threading.Event()
    order: list[int] = []
    log = FakeDurableLog()
    first = _appender(log, order, gate, entered)
    rest = _appender(log, order)

    async def scenario() -> list[object]:
        lane = AppendLane(runtime.executor)
        futures = [lane.submit(functools.partial(first, 0))]
        assert await asyncio.to_thread(entered.wait, 5)  # the drain job took [0] and waits
        futures += [lane.submit(functools.partial(rest, n)) for n in (1, 2, 4)]
        gate.set()
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(scenario())
    assert order == [0, 1, 2, 4]
    assert log.waits == [10, 50]
    assert not any(isinstance(r, BaseException) for r in results)


def test_failed_durability_wait_fails_the_whole_group(runtime: Runtime) -> None:
    log = FakeDurableLog()
    log.fail = True
    append = _appender(log, [])

    async def scenario() -> list[object]:
        lane = AppendLane(runtime.executor)
        futures = [lane.submit(functools.partial(append, n)) for n in (0, 1, 3)]
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(scenario())
    assert [type(r) for r in results] == [OSError, OSError, ValueError]


def test_closed_lane_cancels_calls_not_started(runtime: Runtime) -> None:
    gate, entered = threading.Event(), threading.Event()
    ran: list[int] = []
    log = FakeDurableLog()

    def blocked() -> tuple[FakeDurableLog, AppendResult]:
        entered.set()
        gate.wait(5)
        ran.append(0)
        return log, AppendResult(0, 0, -1)

    def second_call() -> tuple[FakeDurableLog, AppendResult]:
        ran.append(1)
        return log, AppendResult(1, 1, -1)

    async def scenario() -> tuple[bool, bool]:
        lane = AppendLane(runtime.executor)
        first = lane.submit(blocked)
        assert await asyncio.to_thread(entered.wait, 5)  # the drain job is inside ``blocked``
        second = lane.submit(second_call)
        lane.close()
        gate.set()
        await first
        with contextlib.suppress(asyncio.CancelledError):
            await second
        return first.done(), second.cancelled()

    assert asyncio.run(scenario()) == (True, True)
    assert ran == [0]


def submit(lane: AppendLane, append: Callable[[int], Any], n: int) -> asyncio.Future[Any]:
    """Submit ``append(n)`` with itself as the inline form (it never declines)."""
    call = functools.partial(append, n)
    return lane.submit(call, inline=call)


def test_an_inline_call_on_an_idle_lane_runs_on_the_loop_and_settles_at_once(
    runtime: Runtime,
) -> None:
    """An async topic's small batch: stored and acknowledged without a worker hop."""
    order: list[int] = []
    log = FakeDurableLog(durable_on_append=True)
    append = _appender(log, order)

    async def scenario() -> tuple[bool, list[object]]:
        lane = AppendLane(runtime.executor)
        first = submit(lane, append, 0)
        settled_at_once = first.done()
        rest = [submit(lane, append, n) for n in (1, 3, 4)]
        return settled_at_once, await asyncio.gather(first, *rest, return_exceptions=True)

    settled_at_once, results = asyncio.run(scenario())
    assert settled_at_once
    assert order == [0, 1, 4]
    assert append.threads == ["MainThread"] * 3  # type: ignore[attr-defined]
    assert isinstance(results[2], ValueError)  # a failed inline call frees the lane
    assert [cast(AppendResult, r).base_offset for r in (results[0], results[1], results[3])] \
        == [0, 10, 40]
    assert log.waits == []  # nothing to wait for


def test_an_inline_call_waits_for_durability_on_a_worker_and_later_calls_queue_behind(
    runtime: Runtime,
) -> None:
    """An fsync topic: stored inline, fsynced on a worker; calls meanwhile form one group."""
    order: list[int] = []
    log = FakeDurableLog()
    log.gate = threading.Event()  # the first wait holds until all three are submitted
    append = _appender(log, order)

    async def scenario() -> list[object]:
        lane = AppendLane(runtime.executor)
        futures = [submit(lane, append, n) for n in (0, 1, 2)]
        assert log.gate is not None
        log.gate.set()
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(scenario())
    assert order == [0, 1, 2]
    assert append.threads[0] == "MainThread"  # type: ignore[attr-defined]
    assert all(t.startswith("moldau-worker") for t in append.threads[1:])  # type: ignore[attr-defined]
    assert log.waits == [10, 30]  # the inline call's own wait, then one for the queued group
    assert all(t.startswith("moldau-worker") for t in log.wait_threads)
    assert [cast(AppendResult, r).base_offset for r in results] == [0, 10, 20]


def test_a_failed_wait_of_an_inline_call_fails_it_and_the_lane_goes_on(runtime: Runtime) -> None:
    log = FakeDurableLog()
    log.fail = True
    order: list[int] = []
    append = _appender(log, order)

    async def scenario() -> list[object]:
        lane = AppendLane(runtime.executor)
        first = submit(lane, append, 0)
        second = submit(lane, append, 1)
        results = await asyncio.gather(first, second, return_exceptions=True)
        log.fail = False
        third = submit(lane, append, 2)
        return [*results, await third]

    results = asyncio.run(scenario())
    assert [type(r) for r in results[:2]] == [OSError, OSError]
    assert cast(AppendResult, results[2]).base_offset == 20
    assert order == [0, 1, 2]


def test_an_inline_watch_wake_needs_no_loop_round_trip(runtime: Runtime) -> None:
    """An append on the loop thread sets the watch's event directly."""
    fake = FakeLog()

    async def scenario() -> bool:
        with runtime.watch("t", _log(fake)) as watch:
            watch.clear()
            for listener in fake.listeners:
                listener()  # as an inline append on this thread calls it
            return watch._event.is_set()  # set now: no call_soon_threadsafe round trip

    assert asyncio.run(scenario())


def test_an_inline_call_never_overtakes_a_group_whose_settling_is_still_queued(
    runtime: Runtime,
) -> None:
    """The worker ends its drain before the loop runs the callback settling that group: a
    small batch arriving in between must still be acknowledged after it."""
    log = FakeDurableLog(durable_on_append=True)
    append = _appender(log, [])
    settled: list[int] = []

    async def scenario() -> None:
        lane = AppendLane(runtime.executor)
        big = lane.submit(functools.partial(append, 0))  # not inline: a worker drains it
        deadline = time.monotonic() + 5
        while lane._draining and time.monotonic() < deadline:
            time.sleep(0.001)  # hold the loop: the group's settling callback stays queued
        assert not big.done()
        small = submit(lane, append, 1)
        big.add_done_callback(lambda _f: settled.append(0))
        small.add_done_callback(lambda _f: settled.append(1))
        await asyncio.gather(big, small)

    asyncio.run(scenario())
    assert settled == [0, 1]


def test_a_declined_inline_call_runs_on_a_worker_first_in_its_lane(runtime: Runtime) -> None:
    """The partition was busy or due to roll: the blocking form runs on a worker, before
    the calls queued behind it."""
    order: list[int] = []
    log = FakeDurableLog(durable_on_append=True)
    append = _appender(log, order)

    async def scenario() -> list[object]:
        lane = AppendLane(runtime.executor)
        first = lane.submit(functools.partial(append, 0), inline=lambda: None)
        second = lane.submit(functools.partial(append, 1),
                             inline=functools.partial(append, 1))
        return await asyncio.gather(first, second)

    results = asyncio.run(scenario())
    assert order == [0, 1]
    assert all(t.startswith("moldau-worker") for t in append.threads)  # type: ignore[attr-defined]
    assert [cast(AppendResult, r).base_offset for r in results] == [0, 10]


def test_loop_sync_budget_bounds_the_loops_share_of_fsync_time() -> None:
    """A partition that would fsync on the loop back to back gets a quarter of the loop's
    time (plus the burst), not more, and not much less."""
    budget = LoopSyncBudget(share=0.25, burst_s=0.002)  # times passed in
    now, spent = 0.0, 0.0
    while now < 1.0:
        if budget.allows(now):
            budget.spent(now, now + 0.0002)
            spent += 0.0002
            now += 0.0002
        else:
            now += 0.00005  # the batch went to a worker; the loop serves others meanwhile
    assert 0.24 <= spent <= 0.25 * now + 0.002 + 0.0002
    with pytest.raises(ValueError, match="share"):
        LoopSyncBudget(share=0.0)


def test_loop_sync_budget_lets_the_fsync_after_a_slower_one_run_on_the_loop() -> None:
    """An idle partition at 1,000 batches/s: an fsync now and then two or three times the
    usual keeps every batch on the loop (a fixed gap of 3x the last fsync refused the next
    batch each time: +0.1 ms in the p99 of the end-to-end latency). A 3 ms outlier costs a
    few batches their loop fsync, then the loop fsyncs again."""
    budget = LoopSyncBudget(share=0.25, burst_s=0.002)
    refused = []
    for n in range(1000):
        now = n * 0.001
        took = 0.003 if n == 500 else (0.00035 if n % 10 == 0 else 0.00013)
        if budget.allows(now):
            budget.spent(now, now + took)
        else:
            refused.append(n)
    assert refused[:1] == [501]
    assert refused == list(range(501, 501 + len(refused)))
    assert len(refused) <= 8  # 3 ms of debt, repaid at a quarter: about 4 ms


def test_loop_sync_budget_backs_off_from_a_slow_disk_and_measures_again() -> None:
    budget = LoopSyncBudget(share=0.5, max_s=0.001, slow_backoff_s=1.0)  # times passed in
    now = 0.0
    for _ in range(30):  # a disk whose every fsync takes 5 ms
        while not budget.allows(now):
            now += 0.001
        budget.spent(now, now + 0.005)
        now += 0.005
    # the loop fsynced until the average passed 1 ms, then once per backoff second
    assert now > 20.0
    assert not budget.allows(now + 0.5)
    assert budget.allows(now + 1.0)


def test_an_inline_call_fsyncs_on_the_loop_when_the_budget_allows(runtime: Runtime) -> None:
    """An idle fsync topic's small batch: stored, fsynced and acknowledged without a hop."""
    log = FakeDurableLog()
    append = _appender(log, [])

    async def scenario() -> tuple[bool, object]:
        lane = AppendLane(runtime.executor, LoopSyncBudget())
        first = submit(lane, append, 0)
        return first.done(), await first

    settled_at_once, result = asyncio.run(scenario())
    assert settled_at_once
    assert cast(AppendResult, result).base_offset == 0
    assert log.waits == [10]
    assert log.wait_threads == ["MainThread"]


def test_an_inline_fsync_goes_to_a_worker_when_the_budget_is_spent_or_the_log_busy(
    runtime: Runtime,
) -> None:
    clock = ManualClock(monotonic=100.0)
    budget = LoopSyncBudget(clock=clock.monotonic)
    budget.spent(99.99, 100.0)  # a 10 ms loop fsync just ended: the budget says no for 1 s
    log = FakeDurableLog()
    append = _appender(log, [])

    async def scenario() -> list[object]:
        lane = AppendLane(runtime.executor, budget)
        spent = await submit(lane, append, 0)
        clock.advance(2000)  # 102 s: the budget allows, but another thread syncs the log
        log.busy = True
        busy = await submit(lane, append, 1)
        log.busy = False
        return [spent, busy, await submit(lane, append, 2)]

    results = asyncio.run(scenario())
    assert [cast(AppendResult, r).base_offset for r in results] == [0, 10, 20]
    assert log.waits == [10, 20, 30]
    assert [t.startswith("moldau-worker") for t in log.wait_threads] == [True, True, False]


def test_a_failed_loop_fsync_fails_the_inline_call_and_the_lane_goes_on(
    runtime: Runtime,
) -> None:
    log = FakeDurableLog()
    log.fail = True
    append = _appender(log, [])

    async def scenario() -> list[object]:
        lane = AppendLane(runtime.executor, LoopSyncBudget())
        first = await asyncio.gather(submit(lane, append, 0), return_exceptions=True)
        log.fail = False
        return [*first, await submit(lane, append, 1)]

    results = asyncio.run(scenario())
    assert isinstance(results[0], OSError)
    assert cast(AppendResult, results[1]).base_offset == 10
    assert log.wait_threads == ["MainThread", "MainThread"]


# ---------------------------------------------------------------------------- direct waiters


class Pusher:
    """A direct waiter's ``direct``: records each call; answers ``answer`` (or raises)."""

    def __init__(self, answer: bool | Exception = True) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def _waiting(watch: Any) -> asyncio.Task[bool]:
    """A task waiting on ``watch``, started and parked in ``wait``."""
    watch.clear()
    task = asyncio.ensure_future(watch.wait(5.0))
    await asyncio.sleep(0)
    assert watch._waiting
    return task


def test_a_direct_waiter_is_served_in_the_appenders_turn_and_stays_asleep(
    runtime: Runtime,
) -> None:
    """An append on the loop thread queues the waiter; run_direct (the append lane calls it
    right after its store) serves it there: no loop turn, its task not woken."""
    fake = FakeLog()
    pusher = Pusher(True)

    async def scenario() -> tuple[int, int, bool, bool]:
        with runtime.watch("t", _log(fake)) as watch:
            watch.direct = pusher
            task = await _waiting(watch)
            for listener in fake.listeners:
                listener()  # an inline append on this thread
            queued_calls = pusher.calls  # not yet: the engine may still hold its locks
            runtime.run_direct()
            served_calls = pusher.calls
            await asyncio.sleep(0.01)
            still_waiting = not task.done()
            task.cancel()
            return queued_calls, served_calls, still_waiting, watch._event.is_set()

    assert asyncio.run(scenario()) == (0, 1, True, False)


@pytest.mark.parametrize("answer", [False, RuntimeError("read failed")])
def test_a_direct_waiter_that_declines_or_fails_is_woken(
    runtime: Runtime, answer: bool | Exception
) -> None:
    fake = FakeLog()
    pusher = Pusher(answer)

    async def scenario() -> bool:
        with runtime.watch("t", _log(fake)) as watch:
            watch.direct = pusher
            task = await _waiting(watch)
            for listener in fake.listeners:
                listener()
            runtime.run_direct()
            return await asyncio.wait_for(task, 1.0)

    assert asyncio.run(scenario())
    assert pusher.calls == 1


def test_a_queued_direct_waiter_is_served_next_turn_without_run_direct(
    runtime: Runtime,
) -> None:
    """An appender on the loop that never calls run_direct (not the append lane): the waiter
    is still served, in the next loop turn, and only once for several appends."""
    fake = FakeLog()
    pusher = Pusher(True)

    async def scenario() -> tuple[int, bool]:
        with runtime.watch("t", _log(fake)) as watch:
            watch.direct = pusher
            task = await _waiting(watch)
            for _ in range(3):
                for listener in fake.listeners:
                    listener()
            await asyncio.sleep(0.01)
            task.cancel()
            return pusher.calls, watch._event.is_set()

    assert asyncio.run(scenario()) == (1, False)


def test_an_append_on_another_thread_serves_a_direct_waiter_on_the_loop(
    runtime: Runtime,
) -> None:
    fake = FakeLog()
    threads: list[str] = []

    def pusher() -> bool:
        threads.append(threading.current_thread().name)
        return True

    async def scenario() -> bool:
        with runtime.watch("t", _log(fake)) as watch:
            watch.direct = pusher
            task = await _waiting(watch)
            fake.append_from_thread().join()
            for _ in range(100):
                if threads:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            return watch._event.is_set()

    assert asyncio.run(scenario()) is False
    assert threads == ["MainThread"]


def test_a_direct_waiter_not_waiting_is_woken_instead(runtime: Runtime) -> None:
    """Between two waits (its task busy sending) a waiter is never served directly: that
    would interleave with its own responses."""
    fake = FakeLog()
    pusher = Pusher(True)

    async def scenario() -> bool:
        with runtime.watch("t", _log(fake)) as watch:
            watch.direct = pusher
            watch.clear()
            for listener in fake.listeners:
                listener()
            runtime.run_direct()
            return watch._event.is_set()

    assert asyncio.run(scenario())
    assert pusher.calls == 0


def test_an_inline_call_serves_direct_waiters_before_its_future_settles(
    runtime: Runtime,
) -> None:
    """Subscribers' pushes go out before the producer's acknowledgement; a batch whose fsync
    went to a worker is served from there instead (its listeners fire on that thread)."""
    seen: list[bool] = []

    async def scenario(log: FakeDurableLog, budget: LoopSyncBudget | None) -> None:
        lane = AppendLane(runtime.executor, budget)
        lane._after_store = lambda: seen.append(cast(Any, lane)._last.done())
        await submit(lane, _appender(log, []), 0)

    asyncio.run(scenario(FakeDurableLog(durable_on_append=True), None))  # async topic
    asyncio.run(scenario(FakeDurableLog(), LoopSyncBudget()))  # fsync on the loop
    assert seen == [False, False]
    asyncio.run(scenario(FakeDurableLog(), None))  # fsync on a worker
    assert seen == [False, False]
