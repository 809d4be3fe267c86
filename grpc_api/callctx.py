"""Per-call context: the request id, and the limit on client connections with calls running.

:class:`CallContextInterceptor` runs first for every call. It sets
:data:`grpc_api.logs.REQUEST_ID` from the client's ``x-request-id`` metadata (printable ASCII,
at most 64 characters) or makes one up, so log lines and error statuses name the call.

Connections: gRPC Python does not expose connections, only each call's peer address
(``ipv4:127.0.0.1:53412``), which is one client connection. The interceptor counts calls in
progress per peer; a call from a peer with none in progress while ``max_connections`` peers
have some is refused with RESOURCE_EXHAUSTED. An idle connection therefore holds no slot:
the limit bounds the connections that cost the server work, which is what protects it. Calls
per connection are bounded by HTTP/2 (``grpc.max_concurrent_streams``, set by the server from
``max_in_flight_per_connection``): the client queues the excess instead of failing.

Bodies that do not parse: gRPC runs the request deserializer before any servicer, and its own
answer to a parse failure is UNKNOWN (unary) or INTERNAL (streams), which tells the caller
nothing. The interceptor therefore wraps each deserializer so a failure becomes a marker that
the handler wrapper turns into INVALID_ARGUMENT naming the method and the expected message.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from grpc_api.errors import ERROR_METADATA_KEY
from grpc_api.logs import REQUEST_ID, REQUEST_ID_KEY

__all__ = ["CallContextInterceptor", "request_id_from"]

log = logging.getLogger("moldau.calls")

_MAX_ID_CHARS = 64
_S = grpc.StatusCode


def request_id_from(metadata: Any) -> str:
    """The client's id when it is usable, else a new random one (16 hex digits)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            if 0 < len(value) <= _MAX_ID_CHARS and value.isascii() and value.isprintable():
                return value
            break
    return os.urandom(8).hex()


class CallContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # untyped base
    """Sets the request id of each call; enforces ``max_connections`` (0 = no limit)."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._active: dict[str, int] = {}  # peer -> calls in progress (event loop thread only)
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    @property
    def connections(self) -> int:
        """Peers with at least one call in progress."""
        return len(self._active)

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        REQUEST_ID.set(request_id_from(handler_call_details.invocation_metadata))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("call %s", handler_call_details.method)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    async def _enter(self, context: Any) -> str:
        peer = str(context.peer())
        count = self._active.get(peer)
        if count is None:
            if len(self._active) >= self.max_connections:
                await context.abort(
                    _S.RESOURCE_EXHAUSTED,
                    f"the broker serves at most {self.max_connections} client connections with "
                    "calls in progress; retry later, share connections between clients, or "
                    "raise max_connections",
                    trailing_metadata=((ERROR_METADATA_KEY, "ConnectionLimitError"),),
                )
            count = 0
        self._active[peer] = count + 1
        return peer

    def _leave(self, peer: str) -> None:
        count = self._active.get(peer, 1) - 1
        if count <= 0:
            self._active.pop(peer, None)
        else:
            self._active[peer] = count

    def _wrap(self, handler: Any, method: str) -> Any:
        parse = _guarded(handler.request_deserializer, method)
        serializers = {
            "request_deserializer": parse,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, False), **serializers
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, False), **serializers
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, True), **serializers
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, True), **serializers
        )

    def _unary(
        self, behavior: Callable[..., Awaitable[Any]], streamed: bool
    ) -> Callable[..., Any]:
        limited = self.max_connections > 0

        async def counted(request: Any, context: Any) -> Any:
            if streamed:
                request = _checked(request, context)
            elif isinstance(request, _Undecodable):
                await _reject(context, request)
            if not limited:
                return await behavior(request, context)
            peer = await self._enter(context)
            try:
                return await behavior(request, context)
            finally:
                self._leave(peer)

        return counted

    def _streaming(self, behavior: Callable[..., Any], streamed: bool) -> Callable[..., Any]:
        # gRPC tells streaming handlers by their function kind: an async generator yields the
        # responses; a coroutine function writes them with context.write (keep its kind)
        if not inspect.isasyncgenfunction(behavior):
            return self._unary(behavior, streamed)
        limited = self.max_connections > 0

        async def counted(request: Any, context: Any) -> AsyncIterator[Any]:
            if streamed:
                request = _checked(request, context)
            elif isinstance(request, _Undecodable):
                await _reject(context, request)
            peer = await self._enter(context) if limited else ""
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                if limited:
                    self._leave(peer)

        return counted


class _Undecodable:
    """Stands in for a request body that did not parse, so the handler can reject it."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _guarded(parse: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    if parse is None:
        return None
    expected = getattr(getattr(parse, "__self__", None), "__name__", "the method's request")

    def guarded(body: bytes) -> Any:
        try:
            return parse(body)
        except Exception as exc:  # protobuf raises DecodeError, others may raise anything
            return _Undecodable(
                f"the request body of {method} is not a valid {expected} message ({exc}); "
                "send the protobuf message the method declares in proto/"
            )

    return guarded


async def _reject(context: Any, bad: _Undecodable) -> None:
    await context.abort(
        _S.INVALID_ARGUMENT,
        bad.reason,
        trailing_metadata=(
            (ERROR_METADATA_KEY, "InvalidRequestError"),
            (REQUEST_ID_KEY, REQUEST_ID.get()),
        ),
    )


async def _checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    """A request stream that rejects its first body that did not parse."""
    async for message in requests:
        if isinstance(message, _Undecodable):
            await _reject(context, message)
        yield message
