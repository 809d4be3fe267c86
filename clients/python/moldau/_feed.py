"""Request streams for client-streaming gRPC calls, fed from an asyncio queue.

A class, not an async generator, on purpose: grpc.aio reads the request iterator in a task of
its own, and when a call is cancelled that task can be dropped while the iterator waits on
its queue. An async generator dropped in that state is finalised by asyncio with
``aclose()``, which fails with "asynchronous generator is already running" and is logged as
an ERROR ("Task exception was never retrieved") in the user's process. A plain iterator
object has nothing to finalise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["RequestFeed"]

_M = TypeVar("_M")


class RequestFeed(Generic[_M]):
    """Yields ``first`` (when given), then what is put in ``queue`` until a ``None``.

    With ``idle_s`` and ``idle``, a wait longer than ``idle_s()`` seconds yields ``idle()``
    instead (a heartbeat); the pending get is kept across such rounds, since cancelling a
    get could lose a request put at that moment.
    """

    def __init__(
        self,
        queue: asyncio.Queue[_M | None],
        first: _M | None = None,
        *,
        idle_s: Callable[[], float] | None = None,
        idle: Callable[[], _M] | None = None,
    ) -> None:
        self._queue = queue
        self._first = first
        self._idle_s = idle_s
        self._idle = idle
        self._getter: asyncio.Future[_M | None] | None = None

    def __aiter__(self) -> RequestFeed[_M]:
        return self

    async def __anext__(self) -> _M:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._idle_s is None or self._idle is None:
            item = await self._queue.get()
        else:
            getter = self._getter
            if getter is None:
                getter = self._getter = asyncio.ensure_future(self._queue.get())
            done, _ = await asyncio.wait({getter}, timeout=self._idle_s())
            if not done:
                return self._idle()
            self._getter = None
            item = getter.result()  # CancelledError after close(): the stream has ended
        if item is None:
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """Drop the pending get, so a later put reaches no dead reader (idempotent)."""
        if self._getter is not None:
            self._getter.cancel()
            self._getter = None
