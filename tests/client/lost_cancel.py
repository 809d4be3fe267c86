"""A task that loses one cancel() the way a task awaiting a grpc.aio call can."""

from __future__ import annotations

import asyncio
import contextlib


async def swallows_one_cancel() -> None:
    """Await a preparation task that catches the cancellation and returns (grpc.aio's
    ``_prepare_rpc`` does), then wait for a first message that never comes.

    asyncio hands the awaiting task's ``cancel()`` to the preparation task, so the awaiting
    task resumes as if it had never been cancelled.
    """

    async def preparation() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)

    await asyncio.get_running_loop().create_task(preparation())
    await asyncio.Event().wait()
