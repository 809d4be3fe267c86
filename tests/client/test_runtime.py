"""LoopThread, the event loop thread of the blocking clients."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

from moldau import _runtime
from moldau._runtime import LoopThread
from tests.client.lost_cancel import swallows_one_cancel


def test_close_ends_a_task_that_lost_its_cancel() -> None:
    """A client closed while one of its tasks waits on a gRPC call's preparation: close()
    waited its whole 10 s for that task and then raised TimeoutError."""
    thread = LoopThread("test-runtime")
    asyncio.run_coroutine_threadsafe(_start(), thread.loop).result(5)
    started = time.monotonic()
    thread.close()
    assert time.monotonic() - started < 5


async def _start() -> None:
    asyncio.get_running_loop().create_task(swallows_one_cancel())
    await asyncio.sleep(0.01)  # the task now waits in its preparation


# ---------------------------------------------------------------- lending the loop to a waiter


def _lent(thread: LoopThread) -> None:
    """Wait once the old way, which asks the loop thread to park, then until it has."""
    thread.wait(lambda: False, 0.01, time.sleep)
    deadline = time.monotonic() + 5
    while thread._mode != _runtime._PARKED:
        assert time.monotonic() < deadline, "the loop thread never parked"
        time.sleep(0.001)


def _ran_on(thread: LoopThread) -> int:
    """The ident of the thread that runs a callback queued on the loop now."""
    ran: list[int] = []

    def callback() -> None:
        ran.append(threading.get_ident())
        thread.wake()  # the contract of wait(): what makes done() true wakes the waiter

    thread.loop.call_soon_threadsafe(callback)
    thread.wait(lambda: bool(ran), 5, lambda t: _until(lambda: bool(ran), t))
    assert ran, "the callback never ran"
    return ran[0]


def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_a_waiter_runs_the_lent_loop_itself() -> None:
    thread = LoopThread("test-lend", lend=True)
    try:
        loop_ident = thread._thread.ident
        _lent(thread)
        assert _ran_on(thread) == threading.get_ident()
        # still lent after the wait: the next one runs it here again, with no hand-off
        assert _ran_on(thread) == threading.get_ident()
        assert loop_ident != threading.get_ident()
    finally:
        thread.close()


def test_a_waiter_busy_between_waits_gives_the_loop_back_to_its_thread() -> None:
    """With ``busy_gap_s``: after a wait that followed longer work, the loop runs on its own
    thread (reading while the caller works) and stays there while the caller keeps working
    between waits; a caller that comes back to wait at once gets it lent again."""
    thread = LoopThread("test-busy", lend=True, busy_gap_s=0.005)
    try:
        _lent(thread)
        time.sleep(0.02)  # work (shorter than the 50 ms after which the thread takes it back)
        assert _ran_on(thread) == threading.get_ident()  # still lent for this wait ...
        _until(lambda: thread._mode == _runtime._RUNNING, 5)  # ... then back on its thread
        for _ in range(3):
            time.sleep(0.02)  # work again: the loop keeps running meanwhile, never parked
            assert thread._mode == _runtime._RUNNING
            assert _ran_on(thread) == thread._thread.ident
        time.sleep(0.1)
        assert thread._mode == _runtime._RUNNING  # no park was asked for
        for _ in range(40):  # back at once after each wait: lent again
            if _ran_on(thread) == threading.get_ident():
                break
        else:
            raise AssertionError("the loop was never lent again")
    finally:
        thread.close()


def test_without_lend_the_loop_stays_on_its_thread() -> None:
    thread = LoopThread("test-no-lend")
    try:
        thread.wait(lambda: False, 0.01, time.sleep)
        time.sleep(0.05)
        assert thread._mode == _runtime._RUNNING
        assert _ran_on(thread) == thread._thread.ident
    finally:
        thread.close()


def test_reader_callbacks_run_in_the_waiting_thread() -> None:
    """The point of lending: bytes arriving on a socket are handled by the thread waiting."""
    thread = LoopThread("test-lend", lend=True)
    left, right = socket.socketpair()
    got: list[tuple[bytes, int]] = []
    try:
        left.setblocking(False)
        def readable() -> None:
            got.append((left.recv(100), threading.get_ident()))
            thread.wake()

        thread.call_soon(thread.loop.add_reader, left.fileno(), readable)
        _lent(thread)
        threading.Timer(0.05, right.send, (b"ping",)).start()
        started = time.monotonic()
        thread.wait(lambda: bool(got), 5, lambda t: _until(lambda: bool(got), t))
        assert time.monotonic() - started < 4, "wake() did not end the wait"
        assert got == [(b"ping", threading.get_ident())]
    finally:
        thread.call_soon(thread.loop.remove_reader, left.fileno())
        thread.close()
        left.close()
        right.close()


def test_work_queued_outside_a_wait_is_run_by_the_loop_thread() -> None:
    """call_soon, spawn and run() from a thread that is not waiting: the parked loop thread
    takes the loop back instead of leaving the work for the next wait."""
    thread = LoopThread("test-lend", lend=True)
    try:
        _lent(thread)
        done = threading.Event()
        thread.call_soon(done.set)
        assert done.wait(5)

        async def ident() -> int:
            await asyncio.sleep(0.01)
            return threading.get_ident()

        _lent(thread)
        assert thread.spawn(ident()).result(5) == thread._thread.ident
        # run() from the thread the loop is lent to runs it right there
        _lent(thread)
        assert thread.run(ident(), 5) == threading.get_ident()
    finally:
        thread.close()


def test_timers_fire_while_the_borrower_is_busy_elsewhere() -> None:
    """A heartbeat timer must not wait for the next poll: after _LEND_IDLE_S unrun, the loop
    thread takes the loop back."""
    thread = LoopThread("test-lend", lend=True)
    try:
        _lent(thread)
        fired = threading.Event()
        thread.loop.call_soon_threadsafe(thread.loop.call_later, 0.01, fired.set)
        started = time.monotonic()
        assert fired.wait(5)
        assert time.monotonic() - started >= 0.01
        assert thread._mode == _runtime._RUNNING
    finally:
        thread.close()


def test_another_thread_gets_its_answer_while_the_loop_is_lent() -> None:
    """run() from a second thread while the first waits on the lent loop; then wake() ends the
    first wait early, and close() takes the loop back."""
    thread = LoopThread("test-lend", lend=True)
    stop = threading.Event()
    waited: list[float] = []

    def waiter() -> None:
        started = time.monotonic()
        thread.wait(stop.is_set, 30, stop.wait)
        waited.append(time.monotonic() - started)

    async def answer() -> str:
        await asyncio.sleep(0.01)
        return "ok"

    try:
        _lent(thread)
        worker = threading.Thread(target=waiter)
        worker.start()
        _until(lambda: thread._mode == _runtime._BORROWED, 5)
        assert thread._mode == _runtime._BORROWED
        assert thread.run(answer(), 5) == "ok"
        stop.set()
        thread.wake()
        worker.join(5)
        assert waited
        assert waited[0] < 5
    finally:
        thread.close()
    assert not thread._thread.is_alive()


def test_close_ends_a_borrowed_wait() -> None:
    thread = LoopThread("test-lend", lend=True)
    _lent(thread)
    waited: list[float] = []

    def waiter() -> None:
        started = time.monotonic()
        thread.wait(lambda: thread._closed, 30, time.sleep)
        waited.append(time.monotonic() - started)

    worker = threading.Thread(target=waiter)
    worker.start()
    _until(lambda: thread._mode == _runtime._BORROWED, 5)
    closer = threading.Thread(target=thread.close)
    closer.start()
    _until(lambda: thread._closed, 5)
    thread.wake()
    closer.join(15)
    worker.join(15)
    assert waited
    assert waited[0] < 15
    assert not thread._thread.is_alive()
    assert thread.loop.is_closed()


def test_a_sync_call_from_inside_the_borrowed_loop_is_refused() -> None:
    thread = LoopThread("test-lend", lend=True)
    errors: list[BaseException] = []

    async def inner() -> None:
        return None

    def nested() -> None:
        try:
            thread.run(inner(), 1)
        except RuntimeError as exc:
            errors.append(exc)
        thread.wake()

    try:
        _lent(thread)
        thread.loop.call_soon_threadsafe(nested)
        started = time.monotonic()
        thread.wait(lambda: bool(errors), 5, lambda t: _until(lambda: bool(errors), t))
        assert time.monotonic() - started < 4, "wake() did not end the wait"
        assert errors
        assert "inside its own event loop" in str(errors[0])
    finally:
        thread.close()


def test_a_thread_running_its_own_loop_waits_the_old_way() -> None:
    """A blocking client called from async code (or a Jupyter cell) cannot run a second loop
    in that thread: it must wait the old way, not fail."""
    thread = LoopThread("test-lend", lend=True)

    async def answer() -> str:
        await asyncio.sleep(0.01)
        return "ok"

    async def from_async_code() -> tuple[str, int]:
        ran: list[int] = []

        def callback() -> None:
            ran.append(threading.get_ident())
            thread.wake()

        thread.loop.call_soon_threadsafe(callback)
        thread.wait(lambda: bool(ran), 5, lambda t: _until(lambda: bool(ran), t))
        return thread.run(answer(), 5), ran[0]

    try:
        _lent(thread)
        result, ran_on = asyncio.run(from_async_code())
        assert result == "ok"
        assert ran_on == thread._thread.ident
        assert thread._mode == _runtime._RUNNING  # and it asked for no lending it cannot use
        assert not thread._want_park
    finally:
        thread.close()


def test_a_wait_lets_the_requested_park_land_first() -> None:
    """A poll called again at once must not become an old-style waiter while the park its
    last wait requested is still queued: that waiter made the park decline, and under load
    every poll went the old way (the loop was never lent)."""
    thread = LoopThread("test-lend", lend=True)

    def first_block(timeout_s: float) -> None:
        time.sleep(timeout_s)
        # keep the loop thread busy, so the _park queued as this wait ends lands late
        thread.loop.call_soon_threadsafe(time.sleep, 0.05)

    blocked: list[float] = []
    try:
        thread.wait(lambda: False, 0.01, first_block)
        assert thread._mode == _runtime._RUNNING  # the park is still queued
        thread.wait(lambda: False, 0.01, blocked.append)
        assert blocked == [], "the second wait went the old way"
        assert thread._mode == _runtime._PARKED
    finally:
        thread.close()
