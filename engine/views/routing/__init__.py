"""Routing: RabbitMQ's exchanges on the log (ARCHITECTURE section 5, docs/routing.md).

Modules, bottom up: ``types`` (value objects), ``matcher`` (direct, fanout, topic and headers
matching), ``store`` (keyed JSON records in compacted internal topics), ``exchanges`` (the
registry of exchanges and bindings, ``__exchanges``), ``checkpoints`` (the router's progress,
``__exchange_checkpoints``), ``planner`` (a routing step's per-record work) and ``router``
(steps, checkpoints, the exactly-once argument, the background thread).

Typical use::

    registry = ExchangeRegistry.open(broker)
    router = Router.open(broker, registry)
    registry.declare("events", "topic")
    registry.bind("events", "eu-orders", pattern="eu.order.#")
    router.start()            # or router.run_once() from a loop or a test
"""

from engine.views.routing.checkpoints import CHECKPOINTS_TOPIC
from engine.views.routing.exchanges import (
    EXCHANGES_TOPIC,
    MAX_BINDINGS_PER_EXCHANGE,
    MAX_HEADER_ARGUMENTS,
    ExchangeRegistry,
)
from engine.views.routing.matcher import (
    ROUTING_KEY_HEADER,
    DirectMatcher,
    FanoutMatcher,
    HeadersMatcher,
    Matcher,
    TopicMatcher,
    new_matcher,
    routing_key,
    split_words,
)
from engine.views.routing.router import DEFAULT_MAX_RECORDS, PROVENANCE_HEADERS, Router
from engine.views.routing.types import (
    MAX_PATTERN_BYTES,
    Binding,
    Exchange,
    ExchangeStatus,
    ExchangeType,
    HeadersMatch,
    PartitionStatus,
    RunResult,
)

__all__ = [
    "CHECKPOINTS_TOPIC",
    "DEFAULT_MAX_RECORDS",
    "EXCHANGES_TOPIC",
    "MAX_BINDINGS_PER_EXCHANGE",
    "MAX_HEADER_ARGUMENTS",
    "MAX_PATTERN_BYTES",
    "PROVENANCE_HEADERS",
    "ROUTING_KEY_HEADER",
    "Binding",
    "DirectMatcher",
    "Exchange",
    "ExchangeRegistry",
    "ExchangeStatus",
    "ExchangeType",
    "FanoutMatcher",
    "HeadersMatch",
    "HeadersMatcher",
    "Matcher",
    "PartitionStatus",
    "Router",
    "RunResult",
    "TopicMatcher",
    "new_matcher",
    "routing_key",
    "split_words",
]
