"""The TCP port: the broker's RPCs over plain length-prefixed frames (proto/moldau/v1/tcp.proto).

Why a second port: through grpcio a record crosses a poller thread, the event loop, and
HTTP/2 framing in Python-visible layers on each side; the end-to-end latency of one small
record was ~0.75 ms p50 of which most is those hand-offs (docs/performance.md). Here a frame
is read by the event loop's own ``data_received`` and answered with one ``transport.write``.

Nothing about a call's meaning is re-implemented: the port runs the very method handlers the
gRPC server registered (:class:`HandlerRegistry` records them), through the same server
interceptors (request ids, connection limit, authentication, ACLs, quotas), with
:class:`_Context` standing in for grpc's ServicerContext. Statuses, error metadata and
permissions are therefore the gRPC port's by construction.

Memory bounds: a connection has at most ``max_in_flight_per_connection`` calls open (one
more is refused with RESOURCE_EXHAUSTED); a frame longer than ``max_request_bytes`` (plus
its header) closes the connection; requests read but not yet taken by their call count against
``max_request_bytes`` per connection, past which the port stops reading the socket (TCP then
pushes back on the client), the same role HTTP/2 flow control plays on the gRPC port.
Responses wait for the socket to drain past :data:`_WRITE_HIGH` bytes.

Concurrency: event loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from grpc_api.errors import InvalidRequestError
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
from moldau.v1 import tcp_pb2

__all__ = ["MAGIC", "HandlerRegistry", "TcpPort"]

log = logging.getLogger(__name__)

_WRITE_HIGH = 1 << 20
_END = object()
_S = grpc.StatusCode


class HandlerRegistry:
    """Stands in for the grpc server while services register, keeping each method handler.

    Generated ``add_*_to_server`` functions and the hand-written ones call both methods below;
    everything is passed on to the real server unchanged.
    """

    def __init__(self, server: Any) -> None:
        self._server = server
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[Any] = []

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[Any]) -> None:
        self._generic.extend(generic_handlers)
        self._server.add_generic_rpc_handlers(generic_handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler
        self._server.add_registered_method_handlers(service, handlers)

    def lookup(self, details: _CallDetails) -> grpc.RpcMethodHandler | None:
        handler = self.handlers.get(details.method)
        if handler is not None:
            return handler
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None


@dataclass(frozen=True, slots=True)
class _CallDetails:
    """What grpc hands server interceptors (``grpc.HandlerCallDetails``)."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class _Aborted(grpc.aio.AbortError):  # type: ignore[misc]  # untyped base
    """Raised by :meth:`_Context.abort`; handlers let grpc's AbortError through untouched."""


class _Context:
    """The part of ``grpc.aio.ServicerContext`` Moldau's handlers and interceptors use."""

    def __init__(self, call: _Call, metadata: tuple[tuple[str, str], ...], peer: str,
                 auth: dict[str, list[bytes]]) -> None:
        self._call = call
        self._metadata = metadata
        self._peer = peer
        self._auth = auth
        self.status: tuple[int, str, tuple[tuple[str, str], ...]] | None = None
        #: Whether a handler may bypass its response stream with :meth:`write_now`; a layer
        #: that must see every response (a fetch quota's pacing) turns it off.
        self.direct_writes = True

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.status = (code.value[0], details, tuple(trailing_metadata))
        raise _Aborted()

    async def write(self, message: Any) -> None:
        await self._call.send_response(message)

    def write_now(self, message: Any) -> bool:
        """Write a response frame now, from any callback on the event loop; False (nothing
        written) when the call is over or the connection is closed or must drain first.

        For a handler whose response stream is idle (waiting for data): its ordering is
        the handler's to keep. Not part of grpc's ServicerContext.
        """
        return self._call.write_now(message)


class _Call:
    """One call on a connection: its request queue and the task running its handler."""

    def __init__(self, connection: _Connection, call_id: int) -> None:
        self.connection = connection
        self.call_id = call_id
        self.requests: asyncio.Queue[bytes | object] = asyncio.Queue()
        self.serializer: Callable[[Any], bytes] | None = None
        self.task: asyncio.Task[None] | None = None
        self.finished = False

    async def send_response(self, message: Any) -> None:
        assert self.serializer is not None
        await self.connection.send(self.call_id, MESSAGE, self.serializer(message))

    def write_now(self, message: Any) -> bool:
        if self.finished or self.serializer is None:
            return False
        return self.connection.write_now(self.call_id, MESSAGE, self.serializer(message))

    async def next_request(self) -> bytes | None:
        item = await self.requests.get()
        if item is _END:
            return None
        assert isinstance(item, bytes)
        self.connection.taken(len(item))
        return item


class _Connection(asyncio.Protocol):
    def __init__(self, port: TcpPort) -> None:
        self._port = port
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._greeted = False
        self._calls: dict[int, _Call] = {}
        self._queued = 0
        self._reading_paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._peer = "unknown"
        self._auth: dict[str, list[bytes]] = {}
        self.closed = False

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=_WRITE_HIGH)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY: a frame leaves at once
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            family = "ipv6" if ":" in str(peer[0]) else "ipv4"
            self._peer = f"{family}:{peer[0]}:{peer[1]}"
        self._auth = _auth_context(transport.get_extra_info("peercert"))
        self._port.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._writable.set()
        self._port.connections.discard(self)
        for call in list(self._calls.values()):
            if call.task is not None:
                call.task.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._greeted:
            if len(buffer) < len(MAGIC):
                if not MAGIC.startswith(bytes(buffer)):
                    self._drop("not a Moldau TCP client (bad greeting)")
                return
            if buffer[: len(MAGIC)] != MAGIC:
                self._drop("not a Moldau TCP client (bad greeting or framing version)")
                return
            del buffer[: len(MAGIC)]
            self._greeted = True
        try:
            frames = take_frames(buffer, self._port.max_frame)
        except FrameSizeError as exc:
            self._drop(str(exc))
            return
        for call_id, kind, payload in frames:
            self._frame(call_id, kind, payload)
            if self.closed:
                return

    # ------------------------------------------------------------------ frames

    def _frame(self, call_id: int, kind: int, payload: bytes) -> None:
        call = self._calls.get(call_id)
        if kind == MESSAGE:
            if call is not None and not call.finished:
                self._queued += len(payload)
                call.requests.put_nowait(payload)
                if self._queued > self._port.max_frame and not self._reading_paused:
                    self._reading_paused = True
                    assert self._transport is not None
                    self._transport.pause_reading()
        elif kind == OPEN:
            if call is not None:
                self._drop(f"call id {call_id} opened twice")
                return
            try:
                opened = tcp_pb2.TcpOpen.FromString(payload)
            except Exception:  # protobuf's DecodeError: any malformed bytes
                self._drop("an OPEN frame is not a TcpOpen message")
                return
            call = _Call(self, call_id)
            if len(self._calls) >= self._port.max_calls:
                self._send_status(call, _S.RESOURCE_EXHAUSTED.value[0], (
                    f"this connection already has {self._port.max_calls} calls open, the "
                    "broker's max_in_flight_per_connection; finish some first"))
                return
            self._calls[call_id] = call
            call.task = asyncio.get_running_loop().create_task(self._run(call, opened))
        elif kind == HALF_CLOSE:
            if call is not None:
                call.requests.put_nowait(_END)
        elif kind == CANCEL:
            if call is not None and call.task is not None:
                call.task.cancel()
        else:
            self._drop(f"unknown frame kind {kind}")

    def taken(self, size: int) -> None:
        self._queued -= size
        if self._reading_paused and self._queued <= self._port.max_frame // 2:
            self._reading_paused = False
            if self._transport is not None and not self.closed:
                self._transport.resume_reading()

    @property
    def calls(self) -> int:
        return len(self._calls)

    def close(self) -> None:
        """Cancel every call (each sends its status), then close once that is written."""
        for call in list(self._calls.values()):
            if call.task is not None:
                call.task.cancel()
        if self._transport is not None:
            asyncio.get_running_loop().call_soon(self._transport.close)

    def _drop(self, reason: str) -> None:
        log.warning("TCP port: closing the connection from %s: %s", self._peer, reason)
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    async def send(self, call_id: int, kind: int, payload: bytes) -> None:
        if not self._writable.is_set():
            await self._writable.wait()
        if self.closed or self._transport is None:
            raise ConnectionResetError("the client closed the connection")
        self._transport.write(frame(call_id, kind, payload))

    def write_now(self, call_id: int, kind: int, payload: bytes) -> bool:
        """:meth:`send` without waiting: False when the socket must drain first or is closed."""
        if self.closed or self._transport is None or not self._writable.is_set():
            return False
        self._transport.write(frame(call_id, kind, payload))
        return True

    def _send_status(self, call: _Call, code: int, message: str,
                     metadata: Sequence[tuple[str, str]] = ()) -> None:
        if self.closed or self._transport is None:
            return
        status = tcp_pb2.TcpStatus(code=code, message=message)
        for key, value in metadata:
            if isinstance(value, str):
                status.metadata.add(key=key, value=value)
        payload = status.SerializeToString()
        self._transport.write(frame(call.call_id, STATUS, payload))

    # ------------------------------------------------------------------ calls

    async def _run(self, call: _Call, opened: tcp_pb2.TcpOpen) -> None:
        metadata = tuple((m.key.lower(), m.value) for m in opened.metadata)
        context = _Context(call, metadata, self._peer, self._auth)
        try:
            status = await self._serve(call, opened.method, metadata, context)
        except _Aborted:
            status = context.status or (_S.UNKNOWN.value[0], "aborted", ())
        except asyncio.CancelledError:
            if self._port.closing:
                status = (_S.UNAVAILABLE.value[0],
                          "the server is shutting down; call again after restart", ())
            else:
                status = (_S.CANCELLED.value[0], "the call was cancelled", ())
        except ConnectionError:
            status = (_S.UNAVAILABLE.value[0], "the connection was lost", ())
        except Exception as exc:  # a bug in a handler: the client still gets a status
            log.exception("TCP port: %s failed", opened.method)
            status = (_S.INTERNAL.value[0], f"internal error: {exc!r}", ())
        finally:
            call.finished = True
            self._calls.pop(call.call_id, None)
            while not call.requests.empty():  # release what the handler never took
                item = call.requests.get_nowait()
                if isinstance(item, bytes):
                    self.taken(len(item))
        self._send_status(call, *status)

    async def _serve(self, call: _Call, method: str, metadata: tuple[tuple[str, str], ...],
                     context: _Context) -> tuple[int, str, tuple[tuple[str, str], ...]]:
        handler = await self._port.resolve(_CallDetails(method, metadata))
        if handler is None:
            return (_S.UNIMPLEMENTED.value[0], f"unknown method {method!r}", ())
        deserialize = handler.request_deserializer or (lambda data: data)
        call.serializer = handler.response_serializer or (lambda message: message)
        if handler.request_streaming:
            request: Any = _requests(call, deserialize)
        else:
            data = await call.next_request()
            if data is None:
                return (_S.INVALID_ARGUMENT.value[0], "the call ended without its request", ())
            try:
                request = deserialize(data)
            except Exception as exc:  # any parse failure is the client's
                return (_S.INVALID_ARGUMENT.value[0], f"cannot parse the request: {exc}", ())
        if handler.request_streaming and handler.response_streaming:
            result = handler.stream_stream(request, context)
        elif handler.request_streaming:
            result = handler.stream_unary(request, context)
        elif handler.response_streaming:
            result = handler.unary_stream(request, context)
        else:
            result = handler.unary_unary(request, context)
        if hasattr(result, "__aiter__"):
            async for response in result:
                await call.send_response(response)
        else:
            response = await result
            if response is not None and not handler.response_streaming:
                await call.send_response(response)
        return (_S.OK.value[0], "", ())


async def _requests(call: _Call, deserialize: Callable[[bytes], Any]) -> AsyncIterator[Any]:
    """A request stream as grpc.aio hands it to a handler."""
    while True:
        data = await call.next_request()
        if data is None:
            return
        try:
            yield deserialize(data)
        except Exception as exc:
            if isinstance(exc, GeneratorExit):
                raise
            raise InvalidRequestError(f"cannot parse a request message: {exc}") from exc


def _auth_context(peercert: Any) -> dict[str, list[bytes]]:
    """grpc's auth context of a verified client certificate: its common name."""
    if not peercert:
        return {}
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return {"x509_common_name": [str(value).encode()]}
    return {}


class TcpPort:
    """The listener; :meth:`resolve` runs a method lookup through the interceptors."""

    def __init__(self, registry: HandlerRegistry, interceptors: Sequence[Any],
                 max_request_bytes: int, ssl_context: ssl.SSLContext | None = None,
                 max_calls: int = 1_000) -> None:
        self._registry = registry
        self._interceptors = list(interceptors)
        self._ssl = ssl_context
        self.max_frame = max_request_bytes + 5
        #: Calls one connection may have open (``max_in_flight_per_connection``, as gRPC's
        #: max_concurrent_streams): each is a task and a queue on the broker.
        self.max_calls = max_calls
        self.connections: set[_Connection] = set()
        self.closing = False
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, ssl=self._ssl, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self, grace_s: float) -> None:
        """Stop accepting; give calls ``grace_s`` to end, then end the rest with UNAVAILABLE."""
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while any(c.calls for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.closing = True
        for connection in list(self.connections):
            connection.close()
        await asyncio.sleep(0)  # let the cancelled calls send their status

    async def resolve(self, details: _CallDetails) -> grpc.RpcMethodHandler | None:
        interceptors = self._interceptors

        async def step(index: int, current: Any) -> Any:
            if index == len(interceptors):
                return self._registry.lookup(current)

            def continuation(next_details: Any) -> Awaitable[Any]:
                return step(index + 1, next_details)

            return await interceptors[index].intercept_service(continuation, current)

        return await step(0, details)
