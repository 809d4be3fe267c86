"""Value objects of routing: exchange types, exchanges, bindings and the router's status.

An exchange is a topic plus a type. A binding connects an exchange to a destination topic with
a pattern (direct, topic) or header arguments (headers); fanout bindings carry neither. The
objects here are immutable and hashable: the registry (``exchanges``) stores them in the log and
the router (``router``) reads them; neither hands out anything a caller could mutate.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "MAX_PATTERN_BYTES",
    "Binding",
    "Exchange",
    "ExchangeStatus",
    "ExchangeType",
    "HeadersMatch",
    "PartitionStatus",
    "RunResult",
]

MAX_PATTERN_BYTES = 255  # AMQP's shortstr: RabbitMQ's limit for routing and binding keys


class ExchangeType(StrEnum):
    """How an exchange chooses destinations (RabbitMQ's four built-in types)."""

    DIRECT = "direct"  # the routing key equals the binding key
    FANOUT = "fanout"  # every binding
    TOPIC = "topic"  # dot-separated words; ``*`` one word, ``#`` zero or more
    HEADERS = "headers"  # header arguments, all or any of them


class HeadersMatch(StrEnum):
    """``x-match`` of a headers binding."""

    ALL = "all"  # every argument must match (an empty argument list matches every record)
    ANY = "any"  # at least one argument must match (an empty list matches nothing)


@dataclass(frozen=True, slots=True)
class Binding:
    """One route from ``exchange`` to ``destination``; equal fields mean the same binding.

    Attributes:
        exchange: the exchange (topic) name.
        destination: the topic records are appended to.
        pattern: the binding key: the exact routing key (direct) or a word pattern (topic);
            empty for fanout and headers bindings.
        arguments: headers bindings only: ``(header key, value)`` pairs sorted by key; a value
            of None asks only that the header be present.
        match: headers bindings only: whether all or any of ``arguments`` must match.
    """

    exchange: str
    destination: str
    pattern: str = ""
    arguments: tuple[tuple[str, bytes | None], ...] = ()
    match: HeadersMatch = HeadersMatch.ALL


@dataclass(frozen=True, slots=True)
class Exchange:
    """A declared exchange.

    Attributes:
        name: the exchange's topic.
        type: how it routes.
        alternate: topic that receives records matching no binding (RabbitMQ's alternate
            exchange, here a topic); None counts them as unroutable and routes them nowhere.
        provenance: add ``x-exchange``, ``x-exchange-partition`` and ``x-exchange-offset``
            headers to every routed record.
        incarnation: random id of this declaration; a deleted and redeclared exchange gets a
            new one, so its router never mistakes the old declaration's progress for its own.
        start_offsets: per partition, the offset routing starts from (the log end offset at
            declaration: records published before the exchange existed are not routed).
    """

    name: str
    type: ExchangeType
    alternate: str | None
    provenance: bool
    incarnation: str
    start_offsets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """The router's progress on one exchange partition.

    Attributes:
        partition: the exchange topic's partition.
        checkpoint_offset: every record below it is routed and checkpointed.
        high_watermark: the partition's high watermark when described.
        routed: records that matched at least one binding (cumulative, checkpointed).
        unroutable: records that matched none (cumulative, checkpointed; they went to the
            alternate topic when one is configured).
        expired: offsets that retention deleted before the router reached them.
    """

    partition: int
    checkpoint_offset: int
    high_watermark: int
    routed: int
    unroutable: int
    expired: int

    @property
    def lag(self) -> int:
        """Records (offsets) not yet routed."""
        return max(0, self.high_watermark - self.checkpoint_offset)


@dataclass(frozen=True, slots=True)
class ExchangeStatus:
    """An exchange, its bindings and the router's progress; ``error`` is set while paused."""

    exchange: Exchange
    bindings: tuple[Binding, ...]
    partitions: tuple[PartitionStatus, ...]
    error: str | None

    @property
    def paused(self) -> bool:
        """True while routing waits for ``error``'s cause to go away (a missing topic, say)."""
        return self.error is not None

    @property
    def routed(self) -> int:
        return sum(p.routed for p in self.partitions)

    @property
    def unroutable(self) -> int:
        return sum(p.unroutable for p in self.partitions)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one :meth:`Router.run_once` call did.

    Attributes:
        records: exchange records consumed (routed, unroutable or filtered as already done).
        appended: records appended to destinations (a record sent to two topics counts twice).
        unroutable: consumed records that matched no binding.
        paused: exchanges that could not route this time (see their ``error``).
    """

    records: int = 0
    appended: int = 0
    unroutable: int = 0
    paused: tuple[str, ...] = ()
