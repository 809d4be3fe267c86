"""Exchanges and bindings: :class:`AsyncExchanges`, and :class:`Exchanges` on a loop thread.

An exchange is a topic with a type (``direct``, ``fanout``, ``topic``, ``headers``); bindings
connect it to destination topics, and the broker's router appends every record published to
the exchange topic to each matching destination, exactly once across restarts. Publish with
an ordinary :class:`moldau.Producer` to the exchange's topic; the routing key is the
``routing-key`` header, else the record key. Rules and guarantees: docs/routing.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from moldau._runtime import (
    AsyncClosing,
    BlockingTwin,
    Credentials,
    LoopThread,
    call,
    connection_error,
    open_channel,
    resolve_server,
)
from moldau._types import Header
from moldau.errors import ClientClosedError, ExchangeInDoubtError, MoldauError
from moldau.v1 import common_pb2, exchanges_pb2, exchanges_pb2_grpc

__all__ = [
    "IN_DOUBT_RETRY_S",
    "AsyncExchanges",
    "Binding",
    "BindingArguments",
    "Exchange",
    "ExchangeDeclared",
    "ExchangeDescription",
    "ExchangePartitionStatus",
    "ExchangeSummary",
    "ExchangeType",
    "Exchanges",
    "HeadersMatch",
]

_pb = exchanges_pb2
#: How long bind/unbind retry while the exchange is in doubt (a routing step pending).
IN_DOUBT_RETRY_S = 5.0
ExchangeType = Literal["direct", "fanout", "topic", "headers"]
HeadersMatch = Literal["all", "any"]
BindingArguments = Mapping[str, str | bytes | None]
"""Header name -> value (str is UTF-8) for headers bindings; None matches any value."""

_TYPES: dict[str, int] = {"direct": _pb.EXCHANGE_TYPE_DIRECT, "fanout": _pb.EXCHANGE_TYPE_FANOUT,
                          "topic": _pb.EXCHANGE_TYPE_TOPIC, "headers": _pb.EXCHANGE_TYPE_HEADERS}
_TYPES_IN: dict[int, ExchangeType] = {number: name  # type: ignore[misc]
                                      for name, number in _TYPES.items()}
_MATCH: dict[str, int] = {"all": _pb.HEADERS_MATCH_ALL, "any": _pb.HEADERS_MATCH_ANY}
_MATCH_IN: dict[int, HeadersMatch] = {_pb.HEADERS_MATCH_UNSPECIFIED: "all",
                                      _pb.HEADERS_MATCH_ALL: "all", _pb.HEADERS_MATCH_ANY: "any"}


@dataclass(frozen=True, slots=True)
class Exchange:
    """An exchange; ``alternate`` receives records no binding matches (None: counted only)."""

    name: str
    type: ExchangeType
    alternate: str | None
    provenance: bool
    """Routed records carry x-exchange, x-exchange-partition and x-exchange-offset headers."""
    partitions: int


@dataclass(frozen=True, slots=True)
class ExchangeDeclared:
    exchange: Exchange
    created: bool


@dataclass(frozen=True, slots=True)
class Binding:
    """``pattern``: the routing key (direct) or word pattern (topic); ``arguments`` and
    ``match`` only for headers exchanges."""

    exchange: str
    destination: str
    pattern: str = ""
    arguments: tuple[Header, ...] = ()
    match: HeadersMatch = "all"


@dataclass(frozen=True, slots=True)
class ExchangeSummary:
    """An exchange with its routing counts; ``error`` says why routing is paused ("" when
    it routes)."""

    exchange: Exchange
    bindings: int
    routed: int
    unroutable: int
    lag: int
    error: str


@dataclass(frozen=True, slots=True)
class ExchangePartitionStatus:
    partition: int
    checkpoint_offset: int
    high_watermark: int
    lag: int
    routed: int
    unroutable: int
    expired: int


@dataclass(frozen=True, slots=True)
class ExchangeDescription:
    summary: ExchangeSummary
    bindings: tuple[Binding, ...]
    partitions: tuple[ExchangePartitionStatus, ...]


def _exchange(m: exchanges_pb2.Exchange) -> Exchange:
    return Exchange(m.name, _TYPES_IN.get(m.type, "direct"),
                    m.alternate if m.HasField("alternate") else None, m.provenance, m.partitions)


def _binding(m: exchanges_pb2.Binding) -> Binding:
    arguments = tuple(Header(a.key, a.value if a.HasField("value") else None)
                      for a in m.arguments)
    return Binding(m.exchange, m.destination, m.pattern, arguments,
                   _MATCH_IN.get(m.match, "all"))


def _summary(m: exchanges_pb2.ExchangeSummary) -> ExchangeSummary:
    return ExchangeSummary(_exchange(m.exchange), m.bindings, m.routed, m.unroutable, m.lag,
                           m.error)


def _binding_message(exchange: str, destination: str, pattern: str,
                     arguments: BindingArguments | None, match: str) -> exchanges_pb2.Binding:
    if match not in _MATCH:
        raise ValueError(f"match must be 'all' or 'any', got {match!r}")
    message = _pb.Binding(exchange=exchange, destination=destination, pattern=pattern,
                          match=_MATCH[match])  # type: ignore[arg-type]
    for key, value in (arguments or {}).items():
        header = common_pb2.Header(key=key)
        if value is not None:
            header.value = value.encode() if isinstance(value, str) else value
        message.arguments.append(header)
    return message


class AsyncExchanges(AsyncClosing):
    """Declares, lists, describes and deletes exchanges; binds and unbinds destinations.

    Args:
        server: ``HOST:PORT``; default ``$MOLDAU_SERVER`` or 127.0.0.1:7654.
        timeout_ms: Deadline of each call.
        token, tls_ca_file, tls_cert_file, tls_key_file: As for :class:`moldau.AsyncAdmin`.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        timeout_ms: int = 30_000,
        token: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ) -> None:
        self.server = resolve_server(server)
        self._timeout_s = timeout_ms / 1000.0
        self._credentials = Credentials.resolve(
            token=token, tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
        )
        self._channel: grpc.aio.Channel | None = None
        self._stub: exchanges_pb2_grpc.ExchangeServiceStub | None = None
        self._closed = False

    async def _call(self, name: str, request: object) -> Any:
        if self._closed:
            raise ClientClosedError("the exchanges client is closed")
        if self._stub is None:
            self._channel = open_channel(self.server, self._credentials)
            self._stub = exchanges_pb2_grpc.ExchangeServiceStub(self._channel)
        try:
            return await call(getattr(self._stub, name), request, self._timeout_s)
        except MoldauError as exc:
            raise connection_error(self.server, exc) from None

    async def _in_doubt_retried(self, name: str, request: object) -> Any:
        """Binding changes wait while the router finishes an interrupted step: retry them
        for up to :data:`IN_DOUBT_RETRY_S` before raising ExchangeInDoubtError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + IN_DOUBT_RETRY_S
        while True:
            try:
                return await self._call(name, request)
            except ExchangeInDoubtError:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.05)

    async def declare(
        self,
        name: str,
        type: ExchangeType,
        *,
        alternate: str | None = None,
        partitions: int = 0,
        provenance: bool = False,
        configs: Mapping[str, str] | None = None,
    ) -> ExchangeDeclared:
        """Declare exchange ``name``, creating its topic (``partitions``, default 1, and
        ``configs``) when missing. Declaring it again unchanged is a no-op (``created``
        False); with another type, alternate or provenance it raises
        :class:`~moldau.errors.ExchangeExistsError`. Records already in the topic are not
        routed: routing starts at its end."""
        if type not in _TYPES:
            raise ValueError(f"type must be one of {', '.join(_TYPES)}, got {type!r}")
        request = _pb.DeclareExchangeRequest(
            name=name, type=_TYPES[type],  # type: ignore[arg-type]
            partitions=partitions, provenance=provenance, configs=dict(configs or {}))
        if alternate is not None:
            request.alternate = alternate
        reply = await self._call("DeclareExchange", request)
        return ExchangeDeclared(_exchange(reply.exchange), reply.created)

    async def delete(self, name: str) -> None:
        """Delete the exchange and its bindings; its topic and records stay."""
        await self._call("DeleteExchange", _pb.DeleteExchangeRequest(name=name))

    async def list_exchanges(self) -> list[ExchangeSummary]:
        reply = await self._call("ListExchanges", _pb.ListExchangesRequest())
        return [_summary(e) for e in reply.exchanges]

    async def describe(self, name: str) -> ExchangeDescription:
        """The exchange, its bindings and the router's progress per partition."""
        reply = await self._call("DescribeExchange", _pb.DescribeExchangeRequest(name=name))
        return ExchangeDescription(
            _summary(reply.summary), tuple(_binding(b) for b in reply.bindings),
            tuple(ExchangePartitionStatus(p.partition, p.checkpoint_offset, p.high_watermark,
                                          p.lag, p.routed, p.unroutable, p.expired)
                  for p in reply.partitions))

    async def bind(
        self,
        exchange: str,
        destination: str,
        *,
        pattern: str = "",
        arguments: BindingArguments | None = None,
        match: HeadersMatch = "all",
    ) -> bool:
        """Route ``exchange``'s matching records to topic ``destination`` from now on.
        True if the binding is new, False if it existed."""
        request = _pb.BindRequest(
            binding=_binding_message(exchange, destination, pattern, arguments, match))
        reply = await self._in_doubt_retried("Bind", request)
        return bool(reply.created)

    async def unbind(
        self,
        exchange: str,
        destination: str,
        *,
        pattern: str = "",
        arguments: BindingArguments | None = None,
        match: HeadersMatch = "all",
    ) -> bool:
        """Remove the binding with exactly these fields; False if there was none."""
        request = _pb.UnbindRequest(
            binding=_binding_message(exchange, destination, pattern, arguments, match))
        reply = await self._in_doubt_retried("Unbind", request)
        return bool(reply.removed)

    async def list_bindings(self, exchange: str, destination: str = "") -> list[Binding]:
        """The exchange's bindings (to ``destination`` only, if given), oldest first."""
        reply = await self._call("ListBindings", _pb.ListBindingsRequest(
            exchange=exchange, destination=destination))
        return [_binding(b) for b in reply.bindings]

    async def close(self) -> None:
        self._closed = True
        self._stub = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None



class Exchanges(BlockingTwin[AsyncExchanges]):
    """The blocking twin of :class:`AsyncExchanges`; same arguments, same results."""

    def __init__(self, server: str | None = None, **options: Any) -> None:
        self._async = AsyncExchanges(server, **options)
        self.server = self._async.server
        self._thread = LoopThread("moldau-exchanges")

    def declare(
        self,
        name: str,
        type: ExchangeType,
        *,
        alternate: str | None = None,
        partitions: int = 0,
        provenance: bool = False,
        configs: Mapping[str, str] | None = None,
    ) -> ExchangeDeclared:
        return self._thread.run(self._async.declare(
            name, type, alternate=alternate, partitions=partitions, provenance=provenance,
            configs=configs))

    def delete(self, name: str) -> None:
        self._thread.run(self._async.delete(name))

    def list_exchanges(self) -> list[ExchangeSummary]:
        return self._thread.run(self._async.list_exchanges())

    def describe(self, name: str) -> ExchangeDescription:
        return self._thread.run(self._async.describe(name))

    def bind(
        self,
        exchange: str,
        destination: str,
        *,
        pattern: str = "",
        arguments: BindingArguments | None = None,
        match: HeadersMatch = "all",
    ) -> bool:
        return self._thread.run(self._async.bind(
            exchange, destination, pattern=pattern, arguments=arguments, match=match))

    def unbind(
        self,
        exchange: str,
        destination: str,
        *,
        pattern: str = "",
        arguments: BindingArguments | None = None,
        match: HeadersMatch = "all",
    ) -> bool:
        return self._thread.run(self._async.unbind(
            exchange, destination, pattern=pattern, arguments=arguments, match=match))

    def list_bindings(self, exchange: str, destination: str = "") -> list[Binding]:
        return self._thread.run(self._async.list_bindings(exchange, destination))

