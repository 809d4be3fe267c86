"""What every client shares: the server address, the gRPC channel, and the loop thread.

The async clients are the implementation; the sync ones run the same coroutines on a private
event loop in a daemon thread (:class:`LoopThread`). A per-client loop, rather than one per
process, keeps a client's lifetime self-contained: ``close()`` stops its thread, and nothing
outlives the object that started it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import os
import threading
import time
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

# who runs a LoopThread's loop: its own thread, no one (parked), or a caller (borrowed)
_RUNNING, _PARKED, _BORROWED = range(3)
#: How long a lent loop may go unrun (its borrower busy between waits) before the loop thread
#: takes it back: the longest a timer or heartbeat is late while the application is busy.
_LEND_IDLE_S = 0.05
#: The longest a waiter waits for a requested park to land before it waits the old way.
_PARK_WAIT_S = 0.1
#: The consumer's ``busy_gap_s``: a caller that worked longer than this between two waits
#: gets the loop's thread back to run the loop after the second one, and asks for no park:
#: while the caller works, a parked loop reads nothing and grants no credit, and a consumer
#: reading 1 KiB records as fast as it could lost a fifth of its throughput to that. One that
#: comes back to wait sooner (a consumer at the tail: tens of microseconds between polls)
#: keeps the loop lent.
BUSY_GAP_S = 0.0002

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

    With ``lend=True`` the loop can also be *lent* to a caller that would otherwise block
    waiting on it (:meth:`wait`): the caller runs the loop itself until what it waits for
    has happened, so a pushed record reaches it without a thread hand-off (a wake-up of
    40-80 µs at p50 on a small VM, and up to 0.2 ms at p99). The loop thread parks while
    the loop is lent, and takes it back when work is queued for it from outside a wait
    (:meth:`call_soon`, :meth:`spawn`, :meth:`run` while another thread holds it), when
    anyone waits the old way, on :meth:`close`, or once the loop has been left unrun for
    ``_LEND_IDLE_S`` (the application busy between polls: timers and heartbeats still run).
    Lending pays off for a caller that comes back to wait soon. With ``busy_gap_s``, a wait
    that followed longer work than that sends the loop back to its thread (and asks for no
    park), so the loop reads and grants credit while the caller works.

    At any time exactly one thread runs the loop, or none while it is parked and not lent
    out; ``_state`` guards that. Thread-safety: :meth:`run`, :meth:`call_soon`,
    :meth:`spawn` and :meth:`wait` may be called from any thread.
    """

    def __init__(self, name: str, *, lend: bool = False,
                 busy_gap_s: float | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._lend = lend
        self._busy_gap_s = busy_gap_s
        self._state = threading.Condition(threading.Lock())
        self._mode = _RUNNING
        self._borrower: int | None = None  # thread ident while _BORROWED
        self._want_park = False  # park once nobody waits the old way
        self._park_pending = False  # a _park is queued on the loop: a waiter lets it land
        self._waiters = 0  # threads waiting the old way (on the loop thread's work)
        self._demand = False  # work was queued while the loop was not run by its thread
        self._stopping = False
        self._returned = 0.0  # monotonic time the last borrower gave the loop back
        self._wait_ended: float | None = None  # monotonic time the last wait() ended
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        state = self._state
        while True:
            self.loop.run_forever()
            with state:
                self._park_pending = False
                state.notify_all()  # whoever waits for the pending _park: it has landed
                if self._stopping:
                    return
                if not self._want_park or self._waiters:
                    continue  # stopped by a _park that a new waiter overtook
                self._want_park = False
                self._mode = _PARKED
                self._returned = time.monotonic()
                while True:
                    if self._mode == _PARKED:
                        idle = time.monotonic() - self._returned
                        if self._demand or self._waiters or idle >= _LEND_IDLE_S:
                            break
                        state.wait(_LEND_IDLE_S - idle)
                    else:  # lent: its borrower notifies when it returns with work queued
                        state.wait(_LEND_IDLE_S)
                self._mode = _RUNNING
                self._demand = False
                state.notify_all()

    def _park(self) -> None:
        """Stop the loop so that its thread parks (on the loop, when it runs it)."""
        with self._state:
            if (self._mode == _RUNNING and self._want_park and not self._waiters
                    and not self._stopping):
                self.loop.stop()  # _main parks, clears _park_pending and notifies
            else:
                self._park_pending = False
                self._state.notify_all()

    def _borrow(self, *, park: bool = True) -> bool:
        """Take the parked loop for the calling thread (under ``_state``); when it is not
        parked, ``park`` asks for it to be lent next time.

        Never for a thread that runs an event loop of its own (a blocking client called from
        async code, or in a Jupyter notebook): asyncio runs one loop per thread.
        """
        if asyncio._get_running_loop() is not None:
            return False
        if self._park_pending and self._mode == _RUNNING and not self._closed:
            # the last wait asked the loop thread to park; waiting the old way now would make
            # that _park decline, and under load the next poll always came first (the loop
            # was never lent). It lands within a wake-up of the loop thread.
            self._state.wait_for(lambda: not self._park_pending, _PARK_WAIT_S)
        if self._mode != _PARKED or self._demand or self._closed:
            if self._lend and self._mode == _RUNNING and not self._closed and park:
                self._want_park = True  # lend it next time: _park runs once no one waits
            return False
        self._mode = _BORROWED
        self._borrower = threading.get_ident()
        return True

    def _give_back(self, *, hand_over: bool = False) -> None:
        """Park the loop again; ``hand_over``: its thread takes it back at once (a wait that
        followed busy work, see ``busy_gap_s``)."""
        with self._state:
            self._mode = _PARKED
            self._borrower = None
            self._returned = time.monotonic()
            self._demand = self._demand or hand_over
            if self._demand or self._waiters:
                self._state.notify_all()

    def _unwait(self) -> None:
        with self._state:
            self._waiters -= 1
            park = (self._waiters == 0 and self._want_park and self._mode == _RUNNING
                    and not self._park_pending)
            if park:
                self._park_pending = True
        if park:  # no _queued(): _park is moot once the loop is parked (and often it is by then)
            with contextlib.suppress(RuntimeError):  # closed
                self.loop.call_soon_threadsafe(self._park)

    def _run_here(self, done: Callable[[], bool], timeout_s: float | None) -> None:
        """Run the borrowed loop in this thread until ``done()`` or the timeout."""
        loop = self.loop
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not done():
            timer = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                timer = loop.call_later(remaining, loop.stop)
            try:
                loop.run_forever()
            finally:
                if timer is not None:
                    timer.cancel()

    def inside_loop(self) -> bool:
        """Whether the calling thread is inside the loop it borrowed (a signal handler)."""
        return self._borrower == threading.get_ident() and self.loop.is_running()

    def wake(self, *, from_handler: bool = False) -> None:
        """End a borrower's :meth:`wait` early so it checks ``done()`` again (any thread).

        ``from_handler``: called from a signal handler, which can run while the borrowed loop
        blocks in its selector; only a self-pipe write ends that block (a stop flag would be
        seen when the selector next returns, perhaps at the poll's timeout).
        """
        borrower = self._borrower
        if borrower is None:
            return
        if borrower == threading.get_ident() and not from_handler:
            if self.loop.is_running():
                self.loop.stop()
        else:  # no _queued(): left over after the borrower returns, it stops nothing
            with contextlib.suppress(RuntimeError):  # closed
                self.loop.call_soon_threadsafe(self._stop_borrowed)

    def _stop_borrowed(self) -> None:
        if self._mode == _BORROWED:
            self.loop.stop()

    def wait(
        self, done: Callable[[], bool], timeout_s: float, block: Callable[[float], object]
    ) -> None:
        """Wait until ``done()`` or ``timeout_s`` passes, running the loop here if it is lent.

        Otherwise ``block(timeout_s)`` waits the old way, on a condition the loop's callbacks
        signal. Whatever makes ``done()`` true, a callback on the loop or another thread, must
        then call :meth:`wake`: a borrowed loop runs until it is stopped.
        """
        ended, gap = self._wait_ended, self._busy_gap_s
        busy = ended is not None and gap is not None and time.monotonic() - ended > gap
        with self._state:
            borrowed = self._borrow(park=not busy)
            if not borrowed:
                self._waiters += 1
        if not borrowed:
            try:
                block(timeout_s)
            finally:
                self._unwait()
                self._wait_ended = time.monotonic()
            return
        try:
            self._run_here(done, timeout_s)
        finally:
            self._give_back(hand_over=busy)
            self._wait_ended = time.monotonic()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout_s: float | None = None) -> _T:
        """Run ``coroutine`` on the loop and wait for its result in the calling thread."""
        if self._closed:
            coroutine.close()
            raise ClientClosedError("the client is closed")
        me = threading.get_ident()
        if me == self._thread.ident:
            coroutine.close()
            raise RuntimeError("a sync client was called from its own loop thread")
        if self.inside_loop():
            coroutine.close()
            raise RuntimeError(
                "a sync client was called from inside its own event loop (a signal handler "
                "that interrupted poll(), or a loop callback); call it after poll() returns"
            )
        with self._state:
            borrowed = self._borrow()
            if not borrowed:
                self._waiters += 1
                if self._mode == _BORROWED:
                    self._demand = True
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            if borrowed:
                future.add_done_callback(lambda _: self.wake())
                try:
                    self._run_here(future.done, timeout_s)
                finally:
                    self._give_back()
                if not future.done():
                    raise TimeoutError
                return future.result()
            try:
                return future.result(timeout_s)
            finally:
                self._unwait()
        except TimeoutError:
            future.cancel()
            self._queued()
            raise RequestTimeoutError(f"no answer within {timeout_s} s") from None

    def _queued(self) -> None:
        """Work was queued from outside the loop: make sure a thread will run it."""
        if self._mode != _RUNNING:
            with self._state:
                if self._mode != _RUNNING:
                    self._demand = True
                    self._state.notify_all()

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Schedule ``callback(*args)`` on the loop; a no-op once the loop is closed."""
        if not self._closed:
            with contextlib.suppress(RuntimeError):  # closed between the check and the call
                self.loop.call_soon_threadsafe(callback, *args)
            self._queued()

    def spawn(self, coroutine: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Start ``coroutine`` on the loop without waiting for it."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        self._queued()
        return future

    def close(self) -> None:
        """Cancel what still runs, stop the loop and join the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._state:  # take the loop back from a borrower (they return within a poll)
            self._want_park = False
            self._demand = True
            self._state.notify_all()
            self._state.wait_for(lambda: self._mode == _RUNNING, 10)

        async def _cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            # repeated cancels: a task that lost one (see cancel_and_wait) kept close()
            # waiting its full 10 s and then raising TimeoutError
            await asyncio.gather(*(cancel_and_wait(task) for task in tasks))
            await self.loop.shutdown_asyncgens()

        asyncio.run_coroutine_threadsafe(_cancel_rest(), self.loop).result(10)
        with self._state:
            self._stopping = True
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
