"""The client end of the broker's TCP port (proto/moldau/v1/tcp.proto, docs/tcp-port.md).

:class:`TcpChannel` looks like the part of ``grpc.aio.Channel`` the producer and consumer use
for their streams (``stream_stream(...)(request_iterator)`` giving a call with ``write``,
``done_writing``, ``cancel`` and async iteration), and a failed call raises
:class:`TcpRpcError`, a ``grpc.RpcError`` with ``code``, ``details`` and
``trailing_metadata``: the retry and error-translation code above it is the gRPC code,
unchanged. Calls share one TCP connection, opened on first use and again after it breaks.

Event loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import ssl
import threading
from collections import deque
from collections.abc import AsyncIterable, Callable
from typing import Any

import grpc

from moldau._framing import (
    CANCEL,
    HALF_CLOSE,
    MAGIC,
    MESSAGE,
    OPEN,
    STATUS,
    FrameSizeError,
    frame,
    take_frames,
)
from moldau._runtime import _CREDENTIALS, Credentials
from moldau.v1 import tcp_pb2

__all__ = ["MAGIC", "TcpCall", "TcpChannel", "TcpRpcError", "parse_address"]

_MAX_FRAME = (1 << 30) + 5  # responses: the broker bounds them by its max_fetch_bytes
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a pair; ValueError says what is wrong."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"tcp address must be HOST:PORT (e.g. 127.0.0.1:7655), got {address!r}")
    return host.strip("[]"), int(port_text)


class TcpRpcError(grpc.RpcError):  # type: ignore[misc]  # untyped base
    """A call's non-OK status, shaped like grpc's so ``error_from_rpc`` reads it."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self._metadata = metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


class _Link(asyncio.Protocol):
    """One connection: reads frames and hands each to its call.

    Writes: through the transport on a TLS connection (event loop thread only). On a plain
    one, :meth:`write` may be called from any thread: it sends on its own duplicate of the
    socket under a lock, and what the socket does not take at once waits in a backlog the
    loop flushes (the transport itself never writes, so the two never interleave). That
    lets a blocking producer send a batch from the application's thread, without waking
    the loop thread first: one thread wake-up less per record end to end.
    """

    def __init__(self, channel: TcpChannel) -> None:
        self._channel = channel
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.calls: dict[int, TcpCall] = {}
        self.lost: BaseException | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._loop = asyncio.get_running_loop()
        self._write_lock = threading.Lock()
        self._fd = -1  # a duplicate of the socket's descriptor: writes from any thread
        self._backlog = bytearray()
        self._flushing = False

    @property
    def writes_anywhere(self) -> bool:
        """Whether :meth:`write` may be called from any thread (a plain connection)."""
        return self._fd >= 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if transport.get_extra_info("sslcontext") is None:
                self._fd = os.dup(sock.fileno())
        self.write(MAGIC)

    def write(self, data: bytes) -> None:
        """Send ``data`` after everything written before it (see the class docstring)."""
        if self._fd < 0:
            assert self.transport is not None
            self.transport.write(data)
            return
        with self._write_lock:
            if self.lost is not None or self._fd < 0:
                raise TcpRpcError(grpc.StatusCode.UNAVAILABLE,
                                  f"connection to {self._channel.address} lost: {self.lost}")
            if self._backlog:
                self._backlog += data
                return
            try:
                sent = os.write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return  # the connection broke: its reader reports it (connection_lost)
            if sent < len(data):
                self._backlog += data[sent:]
                self._writable.clear()
                if not self._flushing:
                    self._flushing = True
                    self._loop.call_soon_threadsafe(self._watch_writable)

    def _watch_writable(self) -> None:
        with self._write_lock:
            if self._fd >= 0 and self._backlog:
                # the transport owns the descriptor for reading; the loop's private
                # _add_writer is what transports themselves use (the public one refuses)
                self._loop._add_writer(self._fd, self._flush)  # type: ignore[attr-defined]
            else:
                self._flushing = False

    def _flush(self) -> None:
        with self._write_lock:
            done = self._fd < 0
            if not done:
                try:
                    sent = os.write(self._fd, self._backlog)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    sent, done = 0, True
                del self._backlog[:sent]
                done = done or not self._backlog
            if done:
                self._flushing = False
                if self._fd >= 0:
                    self._loop._remove_writer(self._fd)  # type: ignore[attr-defined]
                self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        with self._write_lock:
            self.lost = exc or ConnectionResetError("the broker closed the connection")
            if self._fd >= 0:
                if self._flushing:
                    self._loop._remove_writer(self._fd)  # type: ignore[attr-defined]
                os.close(self._fd)
                self._fd = -1
            self._backlog.clear()
        self._writable.set()
        self._channel.link_lost(self)
        for call in list(self.calls.values()):
            call.finish(TcpRpcError(grpc.StatusCode.UNAVAILABLE,
                                    f"connection to {self._channel.address} lost: {self.lost}"))
        self.calls.clear()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            frames = take_frames(self._buffer, _MAX_FRAME)
        except FrameSizeError as exc:
            self._fail(f"the broker sent a frame of {exc.length} bytes")
            return
        for call_id, kind, payload in frames:
            call = self.calls.get(call_id)
            if call is None:
                continue  # a call we cancelled and forgot
            if kind == MESSAGE:
                call.deliver(payload)
            elif kind == STATUS:
                self.calls.pop(call_id, None)
                try:
                    error = _status_error(payload)
                except Exception:  # protobuf's DecodeError: not a broker we understand
                    error = TcpRpcError(grpc.StatusCode.INTERNAL,
                                        "the broker ended the call with an unreadable status")
                    self._fail("the broker sent an unreadable status frame")
                call.finish(error)
                if self.lost is not None:
                    return

    def _fail(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.lost = ConnectionError(reason)

    async def send(self, call_id: int, kind: int, payload: bytes = b"") -> None:
        """Event loop thread: write a frame, first waiting while the socket is backed up."""
        if not self._writable.is_set():
            await self._writable.wait()
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            raise TcpRpcError(grpc.StatusCode.UNAVAILABLE,
                              f"connection to {self._channel.address} lost: {self.lost}")
        self.write(frame(call_id, kind, payload))

    @property
    def writable(self) -> bool:
        """Whether the socket took everything written so far (no backlog)."""
        return self._writable.is_set()

    async def wait_writable(self) -> None:
        """Event loop thread: wait until the backlog is flushed (or the connection is lost)."""
        if not self._writable.is_set():
            await self._writable.wait()


def _status_error(payload: bytes) -> TcpRpcError | None:
    status = tcp_pb2.TcpStatus.FromString(payload)
    if status.code == 0:
        return None
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return TcpRpcError(code, status.message, tuple((m.key, m.value) for m in status.metadata))


class TcpCall:
    """A streaming call, like ``grpc.aio.StreamStreamCall`` in the parts Moldau uses."""

    def __init__(self, channel: TcpChannel, method: str,
                 serialize: Callable[[Any], bytes], deserialize: Callable[[bytes], Any],
                 requests: AsyncIterable[Any] | None) -> None:
        self._channel = channel
        self._method = method
        self._serialize = serialize
        self._deserialize = deserialize
        self._responses: deque[bytes] = deque()
        self._listener: Callable[[Any], None] | None = None
        self._arrived = asyncio.Event()
        self._error: TcpRpcError | None = None
        self._done = False
        self._link: _Link | None = None
        self._call_id = 0
        self._open_sent = False
        self._opened = asyncio.ensure_future(self._open())
        self._opened.add_done_callback(self._on_opened)
        self._feeder: asyncio.Task[None] | None = None
        if requests is not None:
            self._feeder = asyncio.ensure_future(self._feed(requests))

    async def _open(self) -> None:
        link = await self._channel.link()
        self._link = link
        self._call_id = self._channel.next_call_id()
        link.calls[self._call_id] = self
        opened = tcp_pb2.TcpOpen(method=self._method)
        for key, value in self._channel.metadata:
            opened.metadata.add(key=key, value=value)
        await link.send(self._call_id, OPEN, opened.SerializeToString())
        self._open_sent = True
        if self._done:  # cancelled while the OPEN waited for the socket
            self._send_cancel(link)

    def _on_opened(self, opened: asyncio.Future[None]) -> None:
        if opened.cancelled():
            self.finish(TcpRpcError(grpc.StatusCode.CANCELLED, "cancelled by the client"))
            return
        exc = opened.exception()
        if isinstance(exc, TcpRpcError):
            self.finish(exc)
        elif exc is not None:
            self.finish(TcpRpcError(grpc.StatusCode.UNAVAILABLE,
                                    f"cannot open a call on {self._channel.address}: {exc}"))

    async def _ready(self) -> _Link:
        if not self._opened.done():
            await asyncio.wait({self._opened})
        if self._link is None or self._opened.cancelled() or self._opened.exception():
            raise self._error or TcpRpcError(grpc.StatusCode.UNAVAILABLE, "not connected")
        return self._link

    async def _feed(self, requests: AsyncIterable[Any]) -> None:
        try:
            async for request in requests:
                await self.write(request)
            await self.done_writing()
        except (TcpRpcError, asyncio.CancelledError):
            pass

    async def write(self, request: Any) -> None:
        link = await self._ready()
        if self._done:
            raise self._error or TcpRpcError(grpc.StatusCode.CANCELLED, "the call has ended")
        await link.send(self._call_id, MESSAGE, self._serialize(request))

    def writable_now(self) -> bool:
        """Any thread: open, on a plain connection, with nothing backed up."""
        link = self._link
        return (link is not None and not self._done and self._opened.done()
                and link.writes_anywhere and link.writable)

    async def wait_writable(self) -> bool:
        """Event loop thread: wait until the call is open and its socket is not backed up;
        False when the call has ended instead."""
        if not self._opened.done():
            await asyncio.wait({self._opened})
        link = self._link
        if link is None or self._done:
            return False
        await link.wait_writable()
        return not self._done and link.lost is None

    def write_now(self, request: Any) -> None:
        """Write ``request`` without waiting: from any thread on a plain connection (see
        :meth:`writable_now`), else from the event loop thread after :meth:`wait_writable`.
        Raises TcpRpcError when the call or its connection has ended."""
        link = self._link
        if link is None or self._done:
            raise self._error or TcpRpcError(grpc.StatusCode.CANCELLED, "the call has ended")
        payload = self._serialize(request)
        link.write(frame(self._call_id, MESSAGE, payload))

    async def done_writing(self) -> None:
        link = await self._ready()
        if not self._done:
            await link.send(self._call_id, HALF_CLOSE)

    def cancel(self) -> bool:
        if self._done:
            return False
        self.finish(TcpRpcError(grpc.StatusCode.CANCELLED, "cancelled by the client"))
        link = self._link
        if link is None:
            self._opened.cancel()  # still connecting: nothing reached the broker
        elif self._open_sent:
            self._send_cancel(link)
        # else the OPEN is being written (the socket was backed up): _open sends the CANCEL
        # right after it, so the broker never keeps a call the client forgot
        if self._feeder is not None:
            self._feeder.cancel()
        return True

    def _send_cancel(self, link: _Link) -> None:
        if link.calls.pop(self._call_id, None) is None:
            return
        transport = link.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(TcpRpcError):
                link.write(frame(self._call_id, CANCEL))

    def deliver(self, payload: bytes) -> None:
        listener = self._listener
        if listener is not None:
            try:
                listener(self._deserialize(payload))
            except Exception as exc:  # a response that does not parse, or a listener bug
                self.cancel()
                self._error = TcpRpcError(grpc.StatusCode.INTERNAL,
                                          f"cannot handle a response: {exc!r}")
            return
        self._responses.append(payload)
        self._arrived.set()

    async def listen(self, listener: Callable[[Any], None]) -> None:
        """Hand each response to ``listener`` as its frame is read (event loop thread), and
        return when the call ends OK; raises its error as iteration would."""
        self._listener = listener
        while self._responses:
            listener(self._deserialize(self._responses.popleft()))
        while not self._done:
            self._arrived.clear()
            await self._arrived.wait()
        if self._error is not None:
            raise self._error

    def finish(self, error: TcpRpcError | None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        self._arrived.set()

    def __aiter__(self) -> TcpCall:
        return self

    async def __anext__(self) -> Any:
        while not self._responses:
            if self._done:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._arrived.clear()
            await self._arrived.wait()
        return self._deserialize(self._responses.popleft())


class TcpChannel:
    """Streams over one (re)connecting TCP connection to a broker's TCP port."""

    def __init__(self, address: str, credentials: Credentials | None = None) -> None:
        self.address = address
        self._host, self._port = parse_address(address)
        creds = credentials or _CREDENTIALS.get() or Credentials.resolve()
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {creds.token}"),) if creds.token else ()
        )
        self._ssl: ssl.SSLContext | None = None
        if creds.tls:
            context = ssl.create_default_context(cafile=creds.tls_ca_file or None)
            if creds.tls_cert_file and creds.tls_key_file:
                context.load_cert_chain(creds.tls_cert_file, creds.tls_key_file)
            self._ssl = context
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        self._ids = itertools.count(1)
        self._closed = False

    def next_call_id(self) -> int:
        return next(self._ids) & 0xFFFFFFFF

    def stream_stream(self, method: str, request_serializer: Callable[[Any], bytes],
                      response_deserializer: Callable[[bytes], Any]
                      ) -> Callable[..., TcpCall]:
        def start(request_iterator: AsyncIterable[Any] | None = None) -> TcpCall:
            return TcpCall(self, method, request_serializer, response_deserializer,
                           request_iterator)
        return start

    async def link(self) -> _Link:
        """The live connection, connecting when there is none."""
        if self._closed:
            raise TcpRpcError(grpc.StatusCode.CANCELLED, "the channel is closed")
        link = self._link
        if link is not None and link.lost is None:
            return link
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        try:
            _, link = await loop.create_connection(
                lambda: _Link(self), self._host, self._port, ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
            )
        except OSError as exc:
            raise TcpRpcError(grpc.StatusCode.UNAVAILABLE,
                              f"cannot connect to the TCP port {self.address}: {exc}") from exc
        if self._closed:  # closed while connecting: nobody would close this one
            if link.transport is not None:
                link.transport.abort()
                await asyncio.sleep(0)  # connection_lost closes the write descriptor
            raise TcpRpcError(grpc.StatusCode.CANCELLED, "the channel is closed")
        self._link = link
        return link

    def link_lost(self, link: _Link) -> None:
        if self._link is link:
            self._link = None

    async def close(self) -> None:
        """Cancel every call and drop the connection (abort: nothing is left to flush, and a
        TLS close would need the loop to run on after the client has stopped it)."""
        self._closed = True
        connecting = self._connecting
        if connecting is not None and not connecting.done():
            connecting.cancel()
        link, self._link = self._link, None
        if link is not None:
            for call in list(link.calls.values()):
                call.cancel()
            if link.transport is not None:
                link.transport.abort()
                await asyncio.sleep(0)  # connection_lost closes the write descriptor
