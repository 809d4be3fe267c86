"""What every client shares: the server address, the gRPC channel, and the loop thread.

The async clients are the implementation; the sync ones run the same coroutines on a private
event loop in a daemon thread (:class:`LoopThread`). A per-client loop, rather than one per
process, keeps a client's lifetime self-contained: ``close()`` stops its thread, and nothing
outlives the object that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc

from moldau.errors import (
    ClientClosedError,
    ConnectionFailedError,
    MoldauError,
    RequestTimeoutError,
    error_from_rpc,
)

__all__ = ["DEFAULT_SERVER", "LoopThread", "call", "open_channel", "resolve_server"]

DEFAULT_SERVER = "127.0.0.1:7654"
"""Where ``moldau serve`` listens by default; ``MOLDAU_SERVER`` overrides it."""

_T = TypeVar("_T")

_CHANNEL_OPTIONS = [
    # fetches and pushes carry up to the server's max_fetch_bytes (16 MiB by default)
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # reconnect quickly after a broker restart instead of gRPC's default backoff of up to 120 s
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def resolve_server(server: str | None) -> str:
    """``server``, else ``$MOLDAU_SERVER``, else 127.0.0.1:7654."""
    return server or os.environ.get("MOLDAU_SERVER") or DEFAULT_SERVER


def open_channel(server: str) -> grpc.aio.Channel:
    """An insecure channel on the running loop (TLS arrives with the auth issue)."""
    return grpc.aio.insecure_channel(server, options=_CHANNEL_OPTIONS)


async def call(method: Callable[..., Awaitable[_T]], request: Any, timeout_s: float | None) -> _T:
    """One unary call with its error translated (the only place unary RpcErrors are caught)."""
    try:
        return await method(request, timeout=timeout_s, wait_for_ready=False)
    except grpc.RpcError as exc:
        raise error_from_rpc(exc) from None


class LoopThread:
    """An event loop in a daemon thread, for the sync clients.

    Thread-safety: :meth:`run` and :meth:`call_soon` may be called from any thread; the loop's
    own state is touched only on its thread.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout_s: float | None = None) -> _T:
        """Run ``coroutine`` on the loop and wait for its result in the calling thread."""
        if self._closed:
            coroutine.close()
            raise ClientClosedError("the client is closed")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a sync client was called from its own loop thread")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise RequestTimeoutError(f"no answer within {timeout_s} s") from None

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Schedule ``callback(*args)`` on the loop; a no-op once the loop is closed."""
        if not self._closed:
            with contextlib.suppress(RuntimeError):  # closed between the check and the call
                self.loop.call_soon_threadsafe(callback, *args)

    def close(self) -> None:
        """Cancel what still runs, stop the loop and join the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True

        async def _cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        asyncio.run_coroutine_threadsafe(_cancel_rest(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def connection_error(server: str, exc: MoldauError) -> MoldauError:
    """Name the address in connection failures; other errors pass unchanged."""
    if isinstance(exc, ConnectionFailedError):
        return ConnectionFailedError(f"cannot connect to {server}: {exc.message}", exc.code)
    return exc
