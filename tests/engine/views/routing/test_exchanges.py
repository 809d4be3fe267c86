"""The exchange registry: declare, bind, unbind, delete, validation, and replay on reopen."""

from __future__ import annotations

import pytest

from engine.errors import (
    ExchangeExistsError,
    ExchangeInDoubtError,
    InvalidRoutingRequestError,
    UnknownExchangeError,
    UnknownTopicError,
)
from engine.views.routing import (
    EXCHANGES_TOPIC,
    Binding,
    ExchangeType,
    HeadersMatch,
)
from tests.engine.views.routing.conftest import Stack, produce


def test_declare_creates_the_topic_and_is_idempotent(stack: Stack) -> None:
    exchange = stack.registry.declare("events", "topic", partitions=3)
    assert exchange.type is ExchangeType.TOPIC
    assert stack.broker.describe_topic("events").partitions == 3
    assert exchange.start_offsets == (0, 0, 0)
    assert stack.registry.declare("events", ExchangeType.TOPIC) == exchange
    assert stack.broker.describe_topic(EXCHANGES_TOPIC).config.compact
    with pytest.raises(ExchangeExistsError, match="type 'topic'"):
        stack.registry.declare("events", "fanout")
    with pytest.raises(InvalidRoutingRequestError, match="3 partitions"):
        stack.registry.declare("events", "topic", partitions=2)
    stack.broker.create_topic("raw", 2)
    with pytest.raises(InvalidRoutingRequestError, match="2 partitions"):
        stack.registry.declare("raw", "topic", partitions=1)


def test_declare_over_an_existing_topic_starts_at_its_end(stack: Stack) -> None:
    stack.broker.create_topic("old", 1)
    produce(stack.broker, "old", [b"a", b"b"])
    assert stack.registry.declare("old", "fanout").start_offsets == (2,)


def test_declare_rejects_bad_requests(stack: Stack) -> None:
    with pytest.raises(InvalidRoutingRequestError, match="unknown"):
        stack.registry.declare("x", "bogus")
    with pytest.raises(InvalidRoutingRequestError, match="reserved"):
        stack.registry.declare("__x", "topic")
    with pytest.raises(UnknownTopicError):
        stack.registry.declare("x", "topic", alternate="missing")
    stack.broker.create_topic("y", 1)
    with pytest.raises(InvalidRoutingRequestError, match="loop"):
        stack.registry.declare("y", "topic", alternate="y")


def test_bind_validation_per_type(stack: Stack) -> None:
    stack.broker.create_topic("dest", 1)
    registry = stack.registry
    registry.declare("t", "topic")
    registry.declare("f", "fanout")
    registry.declare("h", "headers")
    with pytest.raises(InvalidRoutingRequestError, match="no header arguments"):
        registry.bind("t", "dest", pattern="a", arguments={"k": "v"})
    with pytest.raises(InvalidRoutingRequestError, match="without a pattern"):
        registry.bind("f", "dest", pattern="a")
    with pytest.raises(InvalidRoutingRequestError, match="not by a pattern"):
        registry.bind("h", "dest", pattern="a")
    with pytest.raises(InvalidRoutingRequestError, match="'all' or 'any'"):
        registry.bind("h", "dest", arguments={"k": "v"}, match="some")
    with pytest.raises(InvalidRoutingRequestError, match="255"):
        registry.bind("t", "dest", pattern="a" * 256)
    with pytest.raises(UnknownTopicError):
        registry.bind("t", "nowhere", pattern="a")
    with pytest.raises(UnknownExchangeError):
        registry.bind("nope", "dest")
    with pytest.raises(InvalidRoutingRequestError, match="loop"):
        registry.bind("t", "t", pattern="a")
    with pytest.raises(InvalidRoutingRequestError, match="reserved"):
        registry.bind("t", EXCHANGES_TOPIC, pattern="a")


def test_loops_through_exchanges_are_refused(stack: Stack) -> None:
    registry = stack.registry
    registry.declare("a", "fanout")
    registry.declare("b", "fanout")
    registry.declare("c", "topic")
    registry.bind("a", "b")
    registry.bind("b", "c")
    with pytest.raises(InvalidRoutingRequestError, match="loop"):
        registry.bind("c", "a", pattern="#")


def test_bind_unbind_are_idempotent_and_canonical(stack: Stack) -> None:
    stack.broker.create_topic("dest", 1)
    registry = stack.registry
    registry.declare("h", "headers")
    binding = registry.bind("h", "dest", arguments={"b": "2", "a": None}, match="any")
    assert binding == Binding("h", "dest", "", (("a", None), ("b", b"2")), HeadersMatch.ANY)
    assert registry.bind("h", "dest", arguments={"a": None, "b": b"2"}, match="any") == binding
    assert registry.bindings("h") == [binding]
    assert not registry.unbind("h", "dest", arguments={"a": None}, match="any")
    assert registry.unbind("h", "dest", arguments={"a": None, "b": "2"}, match="any")
    assert registry.bindings("h") == []


def test_definitions_survive_reopen(stack: Stack) -> None:
    for name in ("d1", "d2", "alt"):
        stack.broker.create_topic(name, 1)
    registry = stack.registry
    topic = registry.declare("t", "topic", alternate="alt", provenance=True)
    registry.bind("t", "d1", pattern="a.#")
    registry.bind("t", "d2", pattern="*.b")
    registry.bind("t", "d2", pattern="gone")
    registry.unbind("t", "d2", pattern="gone")
    registry.declare("h", "headers")
    registry.bind("h", "d1", arguments={"k": b"\xff\x00", "p": None})
    registry.declare("deleted", "fanout")
    registry.bind("deleted", "d1")
    registry.delete("deleted")
    before = {e.name: (e, registry.bindings(e.name)) for e in registry.exchanges()}
    stack.reopen()
    after = {e.name: (e, stack.registry.bindings(e.name)) for e in stack.registry.exchanges()}
    assert after == before
    assert set(after) == {"t", "h"}
    assert after["t"][0] == topic
    matcher = stack.registry.matcher("t")
    assert matcher is not None
    assert matcher.match(b"a.b", ()) == {"d1", "d2"}


def test_redeclared_exchange_does_not_revive_old_bindings(stack: Stack) -> None:
    stack.broker.create_topic("d1", 1)
    stack.registry.declare("x", "fanout")
    stack.registry.bind("x", "d1")
    stack.registry.delete("x")
    fresh = stack.registry.declare("x", "fanout")
    stack.reopen()
    assert stack.registry.get("x") == fresh
    assert stack.registry.bindings("x") == []
    assert stack.broker.has_topic("x")  # the topic and its records stay


def test_in_doubt_exchange_refuses_binding_changes(stack: Stack) -> None:
    stack.broker.create_topic("d1", 1)
    stack.registry.declare("x", "fanout")
    stack.registry.set_in_doubt("x", "disk full")
    with pytest.raises(ExchangeInDoubtError) as info:
        stack.registry.bind("x", "d1")
    assert info.value.retriable
    stack.registry.set_in_doubt("x", None)
    stack.registry.bind("x", "d1")
