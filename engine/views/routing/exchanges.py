"""Exchanges and bindings, stored in the compacted internal topic ``__exchanges``.

An exchange is a topic plus a type; declaring one creates the topic when it is missing. A
binding routes the exchange's records to a destination topic by a pattern (direct, topic) or
header arguments (headers). Records (see ``store`` for the encoding)::

    key ["exchange", <name>]
        value {"v": 1, "type", "alternate", "provenance", "incarnation", "start_offsets"}
    key ["binding", <exchange>, <destination>, <pattern>, <match>, [[<header>, <b64|null>]...]]
        value {"v": 1, "incarnation"}        the exchange declaration the binding belongs to

A binding's identity is its whole key, as in RabbitMQ (source, destination, key, arguments):
binding twice is harmless and unbinding needs the same arguments. Deleting an exchange writes
its tombstone first and its bindings' tombstones in the same batch (up to 999 bindings; beyond
that, later batches), and a binding counts only while its exchange's incarnation matches, so a
crash in between, or a redeclaration, never revives old bindings.

Invariants: the in-memory state equals a replay of the topic; a change is applied in memory
only after its record is durable. Bindings never form a loop (an exchange whose records would
come back to it through destinations that are exchanges, or alternates): routing would repeat
forever.

Concurrency: every method takes ``lock``, an RLock the router also holds for each routing step,
so bindings never change while a step is in flight (the router's exactly-once argument needs
this; see ``router``). A binding change therefore waits for at most one routing step.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.broker import Broker
from engine.clock import Clock, SystemClock
from engine.errors import (
    ExchangeExistsError,
    ExchangeInDoubtError,
    InvalidRoutingRequestError,
    InvalidTopicError,
    UnknownExchangeError,
    UnknownTopicError,
)
from engine.log.partition_log import PartitionLog
from engine.topic_names import validate_topic_name
from engine.views.routing.matcher import Matcher, new_matcher
from engine.views.routing.store import (
    KeyedRecord,
    decode_json,
    encode_json,
    ensure_topic,
    replay,
    write_records,
)
from engine.views.routing.types import (
    MAX_PATTERN_BYTES,
    Binding,
    Exchange,
    ExchangeType,
    HeadersMatch,
)

__all__ = ["EXCHANGES_TOPIC", "MAX_BINDINGS_PER_EXCHANGE", "MAX_HEADER_ARGUMENTS",
           "ExchangeRegistry"]

log = logging.getLogger(__name__)

EXCHANGES_TOPIC = "__exchanges"
MAX_BINDINGS_PER_EXCHANGE = 100_000
MAX_HEADER_ARGUMENTS = 64
_VERSION = 1

HeaderArguments = Mapping[str, bytes | str | None]


@dataclass(slots=True)
class _Declared:
    """One exchange with its bindings and their matcher."""

    exchange: Exchange
    matcher: Matcher
    bindings: dict[Binding, None] = field(default_factory=dict)  # insertion-ordered set


def _exchange_key(name: str) -> bytes:
    return encode_json(["exchange", name])


def _binding_key(binding: Binding) -> bytes:
    arguments = [
        [key, None if value is None else base64.b64encode(value).decode()]
        for key, value in binding.arguments
    ]
    return encode_json(
        ["binding", binding.exchange, binding.destination, binding.pattern,
         binding.match.value, arguments]
    )


def _decode_binding(key: list[object]) -> Binding:
    _, exchange, destination, pattern, match, arguments = key
    if not isinstance(arguments, list):
        raise ValueError("binding arguments are not a list")
    pairs = tuple(
        (str(k), None if v is None else base64.b64decode(str(v), validate=True))
        for k, v in arguments
    )
    return Binding(str(exchange), str(destination), str(pattern), pairs, HeadersMatch(str(match)))


def _exchange_value(exchange: Exchange) -> bytes:
    return encode_json({
        "v": _VERSION,
        "type": exchange.type.value,
        "alternate": exchange.alternate,
        "provenance": exchange.provenance,
        "incarnation": exchange.incarnation,
        "start_offsets": list(exchange.start_offsets),
    })


def _decode_exchange(name: str, value: dict[str, object]) -> Exchange:
    if value.get("v") != _VERSION:
        raise ValueError(f"unknown exchange record version {value.get('v')!r}")
    alternate = value["alternate"]
    offsets = value["start_offsets"]
    if not isinstance(offsets, list):
        raise ValueError("start_offsets is not a list")
    return Exchange(
        name,
        ExchangeType(str(value["type"])),
        None if alternate is None else str(alternate),
        bool(value["provenance"]),
        str(value["incarnation"]),
        tuple(int(o) for o in offsets),
    )


class ExchangeRegistry:
    """Declared exchanges and their bindings; create with :meth:`open`."""

    def __init__(self, broker: Broker, clock: Clock, partition_log: PartitionLog) -> None:
        self._broker = broker
        self._clock = clock
        self._log = partition_log
        self._lock = threading.RLock()
        self._declared: dict[str, _Declared] = {}
        self._in_doubt: dict[str, str] = {}
        self.skipped_records = 0

    @classmethod
    def open(cls, broker: Broker, *, clock: Clock | None = None) -> ExchangeRegistry:
        """Create ``__exchanges`` if missing and rebuild every exchange from it."""
        registry = cls(broker, clock or SystemClock(), ensure_topic(broker, EXCHANGES_TOPIC))
        registry._replay()
        return registry

    def _replay(self) -> None:
        exchanges: dict[str, Exchange | None] = {}
        bindings: dict[Binding, str | None] = {}  # binding -> incarnation, None: unbound
        for offset, key, value in replay(self._log):
            try:
                parts = decode_json(key)
                body = None if value is None else decode_json(value)
                if parts[0] == "exchange":
                    exchanges[str(parts[1])] = (
                        None if body is None else _decode_exchange(str(parts[1]), body)
                    )
                elif parts[0] == "binding":
                    bindings[_decode_binding(parts)] = (
                        None if body is None else str(body["incarnation"])
                    )
                else:
                    raise ValueError(f"unknown record kind {parts[0]!r}")
            except (ValueError, KeyError, TypeError, IndexError, binascii.Error) as exc:
                self.skipped_records += 1
                log.warning("skipped unreadable %s record at %d: %s", EXCHANGES_TOPIC, offset, exc)
        for name, exchange in exchanges.items():
            if exchange is not None:
                self._declared[name] = _Declared(exchange, new_matcher(exchange.type))
        for binding, incarnation in bindings.items():
            declared = self._declared.get(binding.exchange)
            if declared is not None and declared.exchange.incarnation == incarnation:
                declared.bindings[binding] = None
                declared.matcher.add(binding)

    # ------------------------------------------------------------------ queries

    @property
    def lock(self) -> threading.RLock:
        """Held by every change and by the router for each routing step."""
        return self._lock

    def exchanges(self) -> list[Exchange]:
        """Every declared exchange, sorted by name."""
        with self._lock:
            return [self._declared[name].exchange for name in sorted(self._declared)]

    def get(self, name: str) -> Exchange:
        """The exchange ``name``. Raises UnknownExchangeError."""
        with self._lock:
            return self._get(name).exchange

    def bindings(self, name: str) -> list[Binding]:
        """The bindings of exchange ``name`` in the order they were made."""
        with self._lock:
            return list(self._get(name).bindings)

    def matcher(self, name: str) -> Matcher | None:
        """The live matcher of ``name`` (None if not declared); use it only under :attr:`lock`."""
        declared = self._declared.get(name)
        return None if declared is None else declared.matcher

    def _get(self, name: str) -> _Declared:
        declared = self._declared.get(name)
        if declared is None:
            raise UnknownExchangeError(name)
        return declared

    def set_in_doubt(self, name: str, cause: str | None) -> None:
        """The router's report that ``name`` has routed but unrecorded records (None: clear)."""
        with self._lock:
            if cause is None:
                self._in_doubt.pop(name, None)
            else:
                self._in_doubt[name] = cause

    # ------------------------------------------------------------------ exchanges

    def declare(
        self,
        name: str,
        exchange_type: ExchangeType | str,
        *,
        partitions: int | None = None,
        topic_config: Mapping[str, str] | None = None,
        alternate: str | None = None,
        provenance: bool = False,
    ) -> Exchange:
        """Declare exchange ``name``, creating its topic if missing; idempotent when unchanged.

        Args:
            name: the exchange's topic (created with ``partitions``, default 1, and
                ``topic_config`` when it does not exist).
            exchange_type: direct, fanout, topic or headers.
            partitions: the topic's partition count; must equal it if the topic exists.
            topic_config: config overrides for a topic created here.
            alternate: topic for records that match no binding.
            provenance: add provenance headers to routed records.

        Raises:
            InvalidRoutingRequestError: bad type or partition count, an internal name, a loop.
            UnknownTopicError: ``alternate`` does not exist.
            ExchangeExistsError: declared before with another type, alternate or provenance.
        """
        kind = _exchange_type(name, exchange_type)
        _check_topic_name(name, "exchange")
        with self._lock:
            if alternate is not None:
                self._check_destination(name, alternate, "alternate")
            existing = self._declared.get(name)
            logs = self._exchange_topic(name, partitions, topic_config)
            if existing is not None:
                return _same_declaration(existing.exchange, kind, alternate, provenance)
            exchange = Exchange(
                name, kind, alternate, provenance, uuid.uuid4().hex,
                tuple(partition_log.log_end_offset for partition_log in logs),
            )
            self._write([(_exchange_key(name), _exchange_value(exchange))])
            self._declared[name] = _Declared(exchange, new_matcher(kind))
            return exchange

    def _exchange_topic(
        self, name: str, partitions: int | None, config: Mapping[str, str] | None
    ) -> list[PartitionLog]:
        if not self._broker.has_topic(name):
            self._broker.create_topic(name, 1 if partitions is None else partitions, config)
        logs = self._broker.partitions(name)
        if partitions is not None and partitions != len(logs):
            raise InvalidRoutingRequestError(
                f"topic {name!r} exists with {len(logs)} partitions, not {partitions}; omit "
                "the partition count to use the topic as it is",
                name,
            )
        return logs

    def delete(self, name: str) -> None:
        """Delete exchange ``name`` and its bindings. Its topic and its records stay.

        Raises:
            UnknownExchangeError: not declared.
        """
        with self._lock:
            declared = self._get(name)
            records: list[KeyedRecord] = [(_exchange_key(name), None)]
            records.extend((_binding_key(b), None) for b in declared.bindings)
            self._write(records)
            del self._declared[name]
            self._in_doubt.pop(name, None)

    # ------------------------------------------------------------------ bindings

    def bind(
        self,
        exchange: str,
        destination: str,
        *,
        pattern: str = "",
        arguments: HeaderArguments | None = None,
        match: HeadersMatch | str = HeadersMatch.ALL,
    ) -> Binding:
        """Route the records of ``exchange`` that match to ``destination``; idempotent.

        Args:
            exchange: a declared exchange.
            destination: an existing topic, not internal, not the exchange itself.
            pattern: direct: the routing key; topic: the word pattern (``*``, ``#``); fanout
                and headers: must be empty.
            arguments: headers exchanges only: header key -> value (str is encoded as
                UTF-8; None matches any value of a present header).
            match: headers exchanges only: ``all`` or ``any``.

        Raises:
            UnknownExchangeError, UnknownTopicError, InvalidRoutingRequestError (bad pattern
            or arguments for the type, too many bindings, a loop), ExchangeInDoubtError.
        """
        with self._lock:
            declared = self._get(exchange)
            binding = _binding(declared.exchange, destination, pattern, arguments, match)
            if binding in declared.bindings:
                return binding
            self._check_changeable(exchange)
            self._check_destination(exchange, destination, "destination")
            if len(declared.bindings) >= MAX_BINDINGS_PER_EXCHANGE:
                raise InvalidRoutingRequestError(
                    f"exchange {exchange!r} has the maximum of {MAX_BINDINGS_PER_EXCHANGE} "
                    "bindings; use wildcards, or another exchange",
                    exchange,
                )
            incarnation = declared.exchange.incarnation
            self._write([(_binding_key(binding), encode_json({"v": _VERSION,
                                                             "incarnation": incarnation}))])
            declared.bindings[binding] = None
            declared.matcher.add(binding)
            return binding

    def unbind(
        self,
        exchange: str,
        destination: str,
        *,
        pattern: str = "",
        arguments: HeaderArguments | None = None,
        match: HeadersMatch | str = HeadersMatch.ALL,
    ) -> bool:
        """Remove the binding with exactly these fields; False if there was none.

        Raises:
            UnknownExchangeError, InvalidRoutingRequestError, ExchangeInDoubtError.
        """
        with self._lock:
            declared = self._get(exchange)
            binding = _binding(declared.exchange, destination, pattern, arguments, match)
            if binding not in declared.bindings:
                return False
            self._check_changeable(exchange)
            self._write([(_binding_key(binding), None)])
            del declared.bindings[binding]
            declared.matcher.remove(binding)
            return True

    def _check_changeable(self, exchange: str) -> None:
        cause = self._in_doubt.get(exchange)
        if cause is not None:
            raise ExchangeInDoubtError(exchange, cause)

    def _check_destination(self, exchange: str, destination: str, role: str) -> None:
        """A destination must be an existing, non-internal topic that closes no loop."""
        _check_topic_name(destination, role)
        if not self._broker.has_topic(destination):
            raise UnknownTopicError(destination)
        if destination == exchange or self._reaches(destination, exchange):
            raise InvalidRoutingRequestError(
                f"routing {exchange!r} to {destination!r} would make records come back to "
                f"{exchange!r} (a loop through exchanges); choose another {role}",
                exchange,
            )

    def _reaches(self, start: str, target: str) -> bool:
        """True if records appended to ``start`` can be routed on to ``target``."""
        todo, seen = [start], {start}
        while todo:
            declared = self._declared.get(todo.pop())
            if declared is None:
                continue
            nexts = {b.destination for b in declared.bindings}
            if declared.exchange.alternate is not None:
                nexts.add(declared.exchange.alternate)
            if target in nexts:
                return True
            todo.extend(nexts - seen)
            seen |= nexts
        return False

    def _write(self, records: list[KeyedRecord]) -> None:
        write_records(self._log, records, self._clock.now_ms())


# ---------------------------------------------------------------------------- validation


def _exchange_type(name: str, value: ExchangeType | str) -> ExchangeType:
    try:
        return ExchangeType(value)
    except ValueError:
        allowed = ", ".join(t.value for t in ExchangeType)
        raise InvalidRoutingRequestError(
            f"exchange type {value!r} is unknown; use one of {allowed}", name
        ) from None


def _check_topic_name(name: str, role: str) -> None:
    try:
        validate_topic_name(name)
    except InvalidTopicError as exc:
        raise InvalidRoutingRequestError(f"bad {role} name: {exc}", name) from None


def _same_declaration(
    existing: Exchange, kind: ExchangeType, alternate: str | None, provenance: bool
) -> Exchange:
    """RabbitMQ's rule: a redeclaration must be equivalent to the declaration."""
    for what, old, new in (
        ("type", existing.type.value, kind.value),
        ("alternate", existing.alternate, alternate),
        ("provenance", existing.provenance, provenance),
    ):
        if old != new:
            raise ExchangeExistsError(existing.name, f"{what} {old!r} (not {new!r})")
    return existing


def _binding(
    exchange: Exchange,
    destination: str,
    pattern: str,
    arguments: HeaderArguments | None,
    match: HeadersMatch | str,
) -> Binding:
    """The canonical binding for the request, checked against the exchange's type."""
    name = exchange.name
    try:
        mode = HeadersMatch(match)
    except ValueError:
        raise InvalidRoutingRequestError(
            f"match {match!r} is unknown; use 'all' or 'any'", name
        ) from None
    if exchange.type is ExchangeType.HEADERS:
        if pattern:
            raise InvalidRoutingRequestError(
                f"headers exchange {name!r} routes by header arguments, not by a pattern "
                f"({pattern!r}); pass arguments instead",
                name,
            )
        return Binding(name, destination, "", _header_arguments(name, arguments or {}), mode)
    if arguments:
        raise InvalidRoutingRequestError(
            f"{exchange.type.value} exchange {name!r} takes no header arguments; they belong "
            "to headers exchanges",
            name,
        )
    if exchange.type is ExchangeType.FANOUT:
        if pattern:
            raise InvalidRoutingRequestError(
                f"fanout exchange {name!r} routes every record to every binding; bind it "
                f"without a pattern (got {pattern!r})",
                name,
            )
        return Binding(name, destination)
    size = len(pattern.encode())
    if size > MAX_PATTERN_BYTES:
        raise InvalidRoutingRequestError(
            f"the binding key is {size} bytes of UTF-8; the maximum is {MAX_PATTERN_BYTES}",
            name,
        )
    return Binding(name, destination, pattern)


def _header_arguments(
    name: str, arguments: HeaderArguments
) -> tuple[tuple[str, bytes | None], ...]:
    if len(arguments) > MAX_HEADER_ARGUMENTS:
        raise InvalidRoutingRequestError(
            f"{len(arguments)} header arguments; the maximum is {MAX_HEADER_ARGUMENTS}", name
        )
    pairs: list[tuple[str, bytes | None]] = []
    for key, value in arguments.items():
        if not isinstance(key, str) or not key:
            raise InvalidRoutingRequestError(
                f"header argument names must be non-empty strings, got {key!r}", name
            )
        if isinstance(value, str):
            pairs.append((key, value.encode()))
        elif value is None or isinstance(value, bytes):
            pairs.append((key, value))
        else:
            raise InvalidRoutingRequestError(
                f"header argument {key!r} must be bytes, str or None, got "
                f"{type(value).__name__}",
                name,
            )
    return tuple(sorted(pairs, key=lambda pair: pair[0]))
