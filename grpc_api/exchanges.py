"""ExchangeService: declaring exchanges and bindings, and describing the router's progress.

The engine's :class:`~engine.views.routing.ExchangeRegistry` stores exchanges and bindings and
the :class:`~engine.views.routing.Router` (started by the server) routes. Every registry change
takes the registry's lock, which the router holds across each routing step (including its
fsync waits), and writes the log, so every engine call runs on a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from engine.views.routing import (
    Binding,
    Exchange,
    ExchangeRegistry,
    ExchangeStatus,
    ExchangeType,
    HeadersMatch,
    Router,
)
from grpc_api.errors import InvalidRequestError, unary_errors
from grpc_api.runtime import Runtime
from moldau.v1 import common_pb2, exchanges_pb2, exchanges_pb2_grpc

__all__ = ["ExchangeServicer"]

_pb = exchanges_pb2
_TYPES: dict[int, ExchangeType] = {
    _pb.EXCHANGE_TYPE_DIRECT: ExchangeType.DIRECT,
    _pb.EXCHANGE_TYPE_FANOUT: ExchangeType.FANOUT,
    _pb.EXCHANGE_TYPE_TOPIC: ExchangeType.TOPIC,
    _pb.EXCHANGE_TYPE_HEADERS: ExchangeType.HEADERS,
}
_TYPES_OUT = {value: _pb.ExchangeType.ValueType(key) for key, value in _TYPES.items()}
_MATCH: dict[int, HeadersMatch] = {
    _pb.HEADERS_MATCH_UNSPECIFIED: HeadersMatch.ALL,
    _pb.HEADERS_MATCH_ALL: HeadersMatch.ALL,
    _pb.HEADERS_MATCH_ANY: HeadersMatch.ANY,
}
_MATCH_OUT = {HeadersMatch.ALL: _pb.HEADERS_MATCH_ALL, HeadersMatch.ANY: _pb.HEADERS_MATCH_ANY}
_BindingArgs = tuple[str, str, str, dict[str, bytes | None], HeadersMatch]


def _exchange_type(value: int) -> ExchangeType:
    kind = _TYPES.get(value)
    if kind is None:
        raise InvalidRequestError(
            "set the exchange type: EXCHANGE_TYPE_DIRECT, _FANOUT, _TOPIC or _HEADERS")
    return kind


def _exchange(exchange: Exchange) -> exchanges_pb2.Exchange:
    return _pb.Exchange(name=exchange.name, type=_TYPES_OUT[exchange.type],
                        alternate=exchange.alternate, provenance=exchange.provenance,
                        partitions=len(exchange.start_offsets))


def _binding(binding: Binding) -> exchanges_pb2.Binding:
    return _pb.Binding(
        exchange=binding.exchange, destination=binding.destination, pattern=binding.pattern,
        arguments=[common_pb2.Header(key=k, value=v) for k, v in binding.arguments],
        match=_MATCH_OUT[binding.match],
    )


def _binding_args(message: exchanges_pb2.Binding) -> _BindingArgs:
    """(exchange, destination, pattern, arguments, match) of a binding message."""
    if not message.exchange or not message.destination:
        raise InvalidRequestError("a binding needs `exchange` and `destination`")
    arguments: dict[str, bytes | None] = {}
    for header in message.arguments:
        if header.key in arguments:
            raise InvalidRequestError(f"header argument {header.key!r} is given twice")
        arguments[header.key] = header.value if header.HasField("value") else None
    match = _MATCH.get(message.match)
    if match is None:
        raise InvalidRequestError(f"match {message.match} is unknown; use HEADERS_MATCH_ALL "
                                  "or HEADERS_MATCH_ANY")
    return message.exchange, message.destination, message.pattern, arguments, match


def _summary(status: ExchangeStatus) -> exchanges_pb2.ExchangeSummary:
    return _pb.ExchangeSummary(
        exchange=_exchange(status.exchange), bindings=len(status.bindings),
        routed=status.routed, unroutable=status.unroutable, lag=status.lag,
        error=status.error or "",
    )


def _declare(registry: ExchangeRegistry, request: exchanges_pb2.DeclareExchangeRequest,
             ) -> exchanges_pb2.DeclareExchangeResponse:
    kind = _exchange_type(request.type)
    if request.partitions < 0:
        raise InvalidRequestError(f"partitions must be >= 0 (0: 1, or the topic's), got "
                                  f"{request.partitions}")
    existed = any(e.name == request.name for e in registry.exchanges())
    configs: Mapping[str, str] | None = dict(request.configs) or None
    exchange = registry.declare(
        request.name, kind, partitions=request.partitions or None, topic_config=configs,
        alternate=request.alternate if request.HasField("alternate") else None,
        provenance=request.provenance,
    )
    return _pb.DeclareExchangeResponse(exchange=_exchange(exchange), created=not existed)


def _bind(registry: ExchangeRegistry, args: _BindingArgs) -> exchanges_pb2.BindResponse:
    exchange, destination, pattern, arguments, match = args
    before = set(registry.bindings(exchange))
    binding = registry.bind(exchange, destination, pattern=pattern, arguments=arguments,
                            match=match)
    return _pb.BindResponse(binding=_binding(binding), created=binding not in before)


def _unbind(registry: ExchangeRegistry, args: _BindingArgs) -> bool:
    exchange, destination, pattern, arguments, match = args
    return registry.unbind(exchange, destination, pattern=pattern, arguments=arguments,
                           match=match)


def _bindings(registry: ExchangeRegistry, exchange: str, destination: str) -> list[Binding]:
    return [b for b in registry.bindings(exchange)
            if not destination or b.destination == destination]


def _partitions(status: ExchangeStatus) -> Iterable[exchanges_pb2.ExchangePartitionStatus]:
    return [_pb.ExchangePartitionStatus(
        partition=p.partition, checkpoint_offset=p.checkpoint_offset,
        high_watermark=p.high_watermark, lag=p.lag, routed=p.routed, unroutable=p.unroutable,
        expired=p.expired,
    ) for p in status.partitions]


class ExchangeServicer(exchanges_pb2_grpc.ExchangeServiceServicer):
    """The ExchangeService RPCs over the runtime's registry and router."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def _registry(self) -> ExchangeRegistry:
        return self._runtime.routing()[0]

    def _router(self) -> Router:
        return self._runtime.routing()[1]

    @unary_errors
    async def DeclareExchange(  # noqa: N802  (the RPC name from the proto)
        self, request: exchanges_pb2.DeclareExchangeRequest, context: Any
    ) -> exchanges_pb2.DeclareExchangeResponse:
        return await self._runtime.run(_declare, self._registry(), request)

    @unary_errors
    async def DeleteExchange(  # noqa: N802  (the RPC name from the proto)
        self, request: exchanges_pb2.DeleteExchangeRequest, context: Any
    ) -> exchanges_pb2.DeleteExchangeResponse:
        await self._runtime.run(self._registry().delete, request.name)
        return _pb.DeleteExchangeResponse()

    @unary_errors
    async def ListExchanges(  # noqa: N802  (the RPC name from the proto)
        self, request: exchanges_pb2.ListExchangesRequest, context: Any
    ) -> exchanges_pb2.ListExchangesResponse:
        statuses = await self._runtime.run(self._router().describe_all)
        return _pb.ListExchangesResponse(exchanges=[_summary(s) for s in statuses])

    @unary_errors
    async def DescribeExchange(  # noqa: N802  (the RPC name from the proto)
        self, request: exchanges_pb2.DescribeExchangeRequest, context: Any
    ) -> exchanges_pb2.DescribeExchangeResponse:
        status = await self._runtime.run(self._router().describe, request.name)
        return _pb.DescribeExchangeResponse(
            summary=_summary(status), bindings=[_binding(b) for b in status.bindings],
            partitions=_partitions(status),
        )

    @unary_errors
    async def Bind(  # noqa: N802  (the RPC name from the proto)
        self, request: exchanges_pb2.BindRequest, context: Any
    ) -> exchanges_pb2.BindResponse:
        args = _binding_args(request.binding)
        return await self._runtime.run(_bind, self._registry(), args)

    @unary_errors
    async def Unbind(  # noqa: N802  (the RPC name from the proto)
        self, request: exchanges_pb2.UnbindRequest, context: Any
    ) -> exchanges_pb2.UnbindResponse:
        args = _binding_args(request.binding)
        removed = await self._runtime.run(_unbind, self._registry(), args)
        return _pb.UnbindResponse(removed=removed)

    @unary_errors
    async def ListBindings(  # noqa: N802  (the RPC name from the proto)
        self, request: exchanges_pb2.ListBindingsRequest, context: Any
    ) -> exchanges_pb2.ListBindingsResponse:
        bindings = await self._runtime.run(_bindings, self._registry(), request.exchange,
                                           request.destination)
        return _pb.ListBindingsResponse(bindings=[_binding(b) for b in bindings])
