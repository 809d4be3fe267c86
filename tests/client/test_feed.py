"""RequestFeed: the request stream of the client's streaming calls."""

from __future__ import annotations

import asyncio

import pytest

from moldau._feed import RequestFeed


def test_items_then_end_and_heartbeats_while_idle() -> None:
    async def scenario() -> list[str]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        feed = RequestFeed(queue, "start", idle_s=lambda: 0.05, idle=lambda: "beat")
        got = [await anext(feed), await anext(feed)]  # the first, then a heartbeat
        queue.put_nowait("a")
        got.append(await anext(feed))
        queue.put_nowait(None)
        got += [item async for item in feed]
        return got

    assert asyncio.run(scenario()) == ["start", "beat", "a"]


def test_close_ends_a_waiting_reader_with_cancelled_error() -> None:
    """close() while a reader waits: the reader sees the stream cancelled (grpc.aio ends the
    call's request task on it), not an AttributeError from a getter that was dropped."""

    async def scenario() -> None:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        feed = RequestFeed(queue, idle_s=lambda: 10.0, idle=lambda: "beat")
        reader = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0.01)
        feed.close()
        with pytest.raises(asyncio.CancelledError):
            await reader

    asyncio.run(scenario())
