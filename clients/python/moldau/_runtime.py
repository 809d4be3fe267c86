"""What every client shares: the server address, the gRPC channel, and the loop thread.

The async clients are the implementation; the sync ones run the same coroutines on a private
event loop in a daemon thread (:class:`LoopThread`). A per-client loop, rather than one per
process, keeps a client's lifetime self-contained: ``close()`` stops its thread, and nothing
outlives the object that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

import grpc

from moldau.errors import (
    ClientClosedError,
    ConnectionFailedError,
    MoldauError,
    RequestTimeoutError,
    error_from_rpc,
)

__all__ = [
    "DEFAULT_SERVER",
    "AsyncClosing",
    "BlockingTwin",
    "Credentials",
    "LoopThread",
    "call",
    "cancel_and_wait",
    "open_channel",
    "resolve_server",
    "using_credentials",
]

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


@dataclass(frozen=True, slots=True)
class Credentials:
    """How a client proves who it is, and whether it speaks TLS.

    Attributes:
        token: Bearer token sent as ``authorization: Bearer <token>`` on every call.
        tls_ca_file: PEM CA bundle that signed the server's certificate; setting it (or a
            client certificate) makes the channel TLS.
        tls_cert_file: PEM client certificate for mTLS (with ``tls_key_file``).
        tls_key_file: PEM private key of ``tls_cert_file``.
    """

    token: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @classmethod
    def resolve(cls, **explicit: str | None) -> Credentials:
        """``explicit`` values, else ``$MOLDAU_TOKEN``, ``$MOLDAU_TLS_CA_FILE``,
        ``$MOLDAU_TLS_CERT_FILE`` and ``$MOLDAU_TLS_KEY_FILE``."""
        return cls(**{
            name: explicit.get(name) or os.environ.get(f"MOLDAU_{name.upper()}") or None
            for name in ("token", "tls_ca_file", "tls_cert_file", "tls_key_file")
        })

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca_file or self.tls_cert_file)


#: Credentials given to a client constructor, for channels its helpers open (see
#: :func:`using_credentials`); None falls back to the environment.
_CREDENTIALS: contextvars.ContextVar[Credentials | None] = contextvars.ContextVar(
    "moldau_credentials", default=None
)


@contextlib.contextmanager
def using_credentials(credentials: Credentials | None) -> Iterator[None]:
    """Channels opened inside the block (and in tasks started from it) use ``credentials``."""
    reset = _CREDENTIALS.set(credentials)
    try:
        yield
    finally:
        _CREDENTIALS.reset(reset)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror}") from None


def open_channel(server: str, credentials: Credentials | None = None) -> grpc.aio.Channel:
    """A channel on the running loop: TLS when a CA or client certificate is configured, with
    the bearer token on every call when one is (see :class:`Credentials`)."""
    creds = credentials or _CREDENTIALS.get() or Credentials.resolve()
    if creds.tls:
        if bool(creds.tls_cert_file) != bool(creds.tls_key_file):
            raise ValueError("a client certificate needs both tls_cert_file and tls_key_file")
        channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(creds.tls_ca_file, "CA file") if creds.tls_ca_file else None,
            private_key=_read(creds.tls_key_file, "key file") if creds.tls_key_file else None,
            certificate_chain=(_read(creds.tls_cert_file, "certificate file")
                               if creds.tls_cert_file else None),
        )
        if creds.token:
            channel_credentials = grpc.composite_channel_credentials(
                channel_credentials, grpc.access_token_call_credentials(creds.token)
            )
        return grpc.aio.secure_channel(server, channel_credentials, options=_CHANNEL_OPTIONS)
    if creds.token:  # call credentials need TLS; on plaintext the header goes by interceptor
        return grpc.aio.insecure_channel(
            server, options=_CHANNEL_OPTIONS, interceptors=_token_interceptors(creds.token)
        )
    return grpc.aio.insecure_channel(server, options=_CHANNEL_OPTIONS)


def _token_interceptors(token: str) -> list[Any]:
    header = ("authorization", f"Bearer {token}")

    def details(call_details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(call_details.metadata or ()))
        metadata.add(*header)
        return call_details._replace(metadata=metadata)

    class Unary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation: Any, call_details: Any,
                                        request: Any) -> Any:
            return await continuation(details(call_details), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_stream(self, continuation: Any, call_details: Any,
                                         request: Any) -> Any:
            return await continuation(details(call_details), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_stream_unary(self, continuation: Any, call_details: Any,
                                         request_iterator: Any) -> Any:
            return await continuation(details(call_details), request_iterator)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
        async def intercept_stream_stream(self, continuation: Any, call_details: Any,
                                          request_iterator: Any) -> Any:
            return await continuation(details(call_details), request_iterator)

    return [Unary(), UnaryStream(), StreamUnary(), StreamStream()]


async def cancel_and_wait(task: asyncio.Future[Any], retry_s: float = 0.05) -> None:
    """Cancel ``task`` and return once it has ended, however it ended.

    One ``cancel()`` can be lost: asyncio hands a task's cancellation to the task it awaits,
    and grpc.aio's call-preparation task catches it and returns normally, so a task awaiting
    a call's first message resumes as if never cancelled and may then wait forever. (That
    hung a consumer's rebalance during broker restarts.) So the cancel is repeated until it
    takes; the first one normally does, and this returns at once.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    if not task.cancelled():
        task.exception()  # retrieved: asyncio would log it as never retrieved


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
            # repeated cancels: a task that lost one (see cancel_and_wait) kept close()
            # waiting its full 10 s and then raising TimeoutError
            await asyncio.gather(*(cancel_and_wait(task) for task in tasks))
            await self.loop.shutdown_asyncgens()

        asyncio.run_coroutine_threadsafe(_cancel_rest(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class _Closable(Protocol):
    async def close(self) -> None: ...


_A = TypeVar("_A", bound=_Closable)


class AsyncClosing:
    """``async with`` for the asyncio clients: leaving the block awaits ``close()``."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class BlockingTwin(Generic[_A]):
    """The blocking twin of an asyncio client ``_async``, whose coroutines run on ``_thread``.

    Subclasses set both in ``__init__``; this gives them the same close and ``with`` behaviour.
    """

    _async: _A
    _thread: LoopThread

    def close(self) -> None:
        """Close the client and stop its loop thread (idempotent)."""
        try:
            self._thread.run(self._async.close())
        except ClientClosedError:
            return
        self._thread.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def connection_error(server: str, exc: MoldauError) -> MoldauError:
    """Name the address in connection failures; other errors pass unchanged."""
    if isinstance(exc, ConnectionFailedError):
        return ConnectionFailedError(f"cannot connect to {server}: {exc.message}", exc.code)
    return exc
