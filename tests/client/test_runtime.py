"""LoopThread, the event loop thread of the blocking clients."""

from __future__ import annotations

import asyncio
import time

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
