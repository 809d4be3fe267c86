"""The router: routing per exchange type, unroutable records, pauses, and exactly-once routing
across restarts and crashes between destination appends and the checkpoint."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest

from engine.errors import DiskFullError, ExchangeInDoubtError, StorageError
from engine.partitioner import partition_for_key
from engine.records.record import Header
from engine.views.routing import CHECKPOINTS_TOPIC, PROVENANCE_HEADERS, Router
from engine.views.routing.checkpoints import CheckpointStore
from tests.engine.views.routing.conftest import T0, Stack, produce, read_all, values


class Crash(BaseException):
    """The process dies here: nothing after it runs, no error handling sees it."""


def _crash_once(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str, *, after: int = 0, before: bool = True
) -> list[int]:
    """Make ``owner.name`` crash on its ``after``-th call (0-based), before or after running."""
    original = getattr(owner, name)
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        index = calls[0]
        calls[0] += 1
        if index == after and before:
            raise Crash
        result = original(*args, **kwargs)
        if index == after:
            raise Crash
        return result

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def _setup_topic_exchange(stack: Stack, partitions: int = 2) -> None:
    stack.registry.declare("events", "topic", partitions=partitions)
    stack.broker.create_topic("eu", 1)
    stack.broker.create_topic("orders", 3)
    stack.broker.create_topic("audit", 2)
    stack.registry.bind("events", "eu", pattern="eu.#")
    stack.registry.bind("events", "orders", pattern="*.order.*")
    stack.registry.bind("events", "audit", pattern="#")


def _region_key(i: int) -> bytes:
    return (b"eu" if i % 3 == 0 else b"us") + (b".order." if i % 2 else b".user.") + b"%d" % i


def _expected(count: int, start: int = 0) -> dict[str, Counter[bytes]]:
    """Values each destination of ``_setup_topic_exchange`` must hold once each."""
    expected: dict[str, Counter[bytes]] = {"eu": Counter(), "orders": Counter(), "audit": Counter()}
    for i in range(start, start + count):
        key = _region_key(i)
        value = b"v%d" % i
        expected["audit"][value] += 1
        if key.startswith(b"eu."):
            expected["eu"][value] += 1
        if b".order." in key:
            expected["orders"][value] += 1
    return expected


def _produce_regions(stack: Stack, count: int, batch: int = 50, start: int = 0) -> None:
    for first in range(start, start + count, batch):
        keys = [_region_key(i) for i in range(first, min(first + batch, start + count))]
        partitions = stack.broker.describe_topic("events").partitions
        produce(stack.broker, "events", keys, partition=(first // batch) % partitions, start=first)


def _assert_exactly_once(stack: Stack, count: int) -> None:
    for destination, expected in _expected(count).items():
        assert Counter(values(stack.broker, destination)) == expected, destination


# ---------------------------------------------------------------------------- routing


def test_topic_exchange_routes_records_unchanged(stack: Stack) -> None:
    _setup_topic_exchange(stack)
    headers = (Header("trace", b"t1"), Header("empty", None))
    produce(stack.broker, "events", [b"eu.order.7", b"us.user.1", b"x"], headers=headers)
    result = stack.router.run_once()
    assert (result.records, result.unroutable) == (3, 0)
    assert result.appended == 1 + 1 + 3  # eu, orders, audit
    eu = read_all(stack.broker, "eu")
    assert [(r.key, r.value, r.headers, r.timestamp) for r in eu] == [
        (b"eu.order.7", b"v0", headers, T0)
    ]
    orders = stack.broker.partition("orders", partition_for_key(b"eu.order.7", 3))
    assert orders.high_watermark == 1  # keyed records go to Kafka's partition for the key
    assert values(stack.broker, "audit") == [b"v0", b"v1", b"v2"]
    status = stack.router.describe("events")
    assert (status.routed, status.unroutable, status.lag, status.paused) == (3, 0, 0, False)
    assert stack.router.run_once().records == 0


def test_fanout_direct_and_headers_exchanges(stack: Stack) -> None:
    for name in ("a", "b", "c"):
        stack.broker.create_topic(name, 1)
    registry = stack.registry
    registry.declare("fan", "fanout")
    registry.bind("fan", "a")
    registry.bind("fan", "b")
    registry.declare("direct", "direct")
    registry.bind("direct", "a", pattern="pay")
    registry.bind("direct", "c", pattern="ship")
    registry.declare("hdr", "headers")
    registry.bind("hdr", "b", arguments={"channel": "sms", "urgent": None}, match="all")
    registry.bind("hdr", "c", arguments={"channel": "sms", "lang": "de"}, match="any")
    produce(stack.broker, "fan", [b"k1"], start=0)
    produce(stack.broker, "direct", [b"pay", b"ship", b"paying"], start=10)
    produce(stack.broker, "hdr", [None], headers=(Header("channel", b"sms"),), start=20)
    produce(stack.broker, "hdr", [None],
            headers=(Header("channel", b"sms"), Header("urgent", None)), start=30)
    stack.drain()
    assert sorted(values(stack.broker, "a")) == [b"v0", b"v10"]
    assert sorted(values(stack.broker, "b")) == [b"v0", b"v30"]
    assert sorted(values(stack.broker, "c")) == [b"v11", b"v20", b"v30"]
    assert stack.router.describe("direct").unroutable == 1


def test_routing_key_header_overrides_the_key(stack: Stack) -> None:
    stack.broker.create_topic("eu", 1)
    stack.registry.declare("events", "topic")
    stack.registry.bind("events", "eu", pattern="eu.*")
    produce(stack.broker, "events", [b"order-1"], headers=(Header("routing-key", b"eu.x"),))
    produce(stack.broker, "events", [b"eu.y"], start=1)
    stack.drain()
    assert values(stack.broker, "eu") == [b"v0", b"v1"]


def test_unroutable_records_are_counted_or_sent_to_the_alternate(stack: Stack) -> None:
    stack.broker.create_topic("dest", 1)
    stack.broker.create_topic("lost", 1)
    stack.registry.declare("plain", "direct")
    stack.registry.bind("plain", "dest", pattern="k")
    stack.registry.declare("alt", "direct", alternate="lost")
    stack.registry.bind("alt", "dest", pattern="k")
    produce(stack.broker, "plain", [b"k", b"x", None])
    produce(stack.broker, "alt", [b"k", b"x", None], start=10)
    result = stack.router.run_once()
    assert result.unroutable == 4
    assert stack.router.describe("plain").unroutable == 2
    assert stack.router.describe("plain").routed == 1
    assert values(stack.broker, "lost") == [b"v11", b"v12"]
    assert sorted(values(stack.broker, "dest")) == [b"v0", b"v10"]
    stack.reopen()  # the counters are checkpointed
    assert stack.router.describe("plain").unroutable == 2


def test_provenance_headers(stack: Stack) -> None:
    stack.broker.create_topic("dest", 1)
    stack.registry.declare("p", "fanout", provenance=True, partitions=2)
    stack.registry.bind("p", "dest")
    produce(stack.broker, "p", [b"k"], partition=1,
            headers=(Header("x-exchange", b"spoofed"), Header("keep", b"1")))
    stack.drain()
    (record,) = read_all(stack.broker, "dest")
    assert {h.key: h.value for h in record.headers} == {
        "keep": b"1", PROVENANCE_HEADERS[0]: b"p", PROVENANCE_HEADERS[1]: b"1",
        PROVENANCE_HEADERS[2]: b"0",
    }


def test_exchange_to_exchange_chain(stack: Stack) -> None:
    stack.broker.create_topic("final", 1)
    stack.registry.declare("first", "fanout")
    stack.registry.declare("second", "topic")
    stack.registry.bind("first", "second")
    stack.registry.bind("second", "final", pattern="a.*")
    produce(stack.broker, "first", [b"a.b", b"c.d"])
    stack.drain()
    assert values(stack.broker, "final") == [b"v0"]


def test_records_before_the_declaration_are_not_routed(stack: Stack) -> None:
    stack.broker.create_topic("events", 1)
    stack.broker.create_topic("dest", 1)
    produce(stack.broker, "events", [b"old"])
    stack.registry.declare("events", "fanout")
    stack.registry.bind("events", "dest")
    produce(stack.broker, "events", [b"new"], start=1)
    stack.drain()
    assert values(stack.broker, "dest") == [b"v1"]


# ---------------------------------------------------------------------------- pauses


def test_missing_destination_pauses_without_dropping(stack: Stack) -> None:
    stack.broker.create_topic("a", 1)
    stack.broker.create_topic("b", 1)
    stack.registry.declare("x", "fanout")
    stack.registry.bind("x", "a")
    stack.registry.bind("x", "b")
    stack.broker.delete_topic("b")
    produce(stack.broker, "x", [b"k1", b"k2"])
    result = stack.router.run_once()
    assert result.paused == ("x",)
    assert result.records == 0
    status = stack.router.describe("x")
    assert status.paused
    assert status.error is not None
    assert "'b' does not exist" in status.error
    assert status.lag == 2
    assert values(stack.broker, "a") == []  # nothing appended anywhere while paused
    stack.broker.create_topic("b", 1)
    stack.drain()
    assert values(stack.broker, "a") == values(stack.broker, "b") == [b"v0", b"v1"]
    assert not stack.router.describe("x").paused


def test_unbinding_a_missing_destination_resumes(stack: Stack) -> None:
    stack.broker.create_topic("a", 1)
    stack.broker.create_topic("b", 1)
    stack.registry.declare("x", "fanout")
    stack.registry.bind("x", "a")
    stack.registry.bind("x", "b")
    stack.broker.delete_topic("b")
    produce(stack.broker, "x", [b"k1"])
    assert stack.router.run_once().paused == ("x",)
    assert stack.registry.unbind("x", "b")
    stack.drain()
    assert values(stack.broker, "a") == [b"v0"]


def test_paused_exchange_is_retried_after_the_interval(stack: Stack) -> None:
    router = Router.open(stack.broker, stack.registry, clock=stack.clock, retry_interval_s=5.0)
    stack.broker.create_topic("a", 1)
    stack.registry.declare("x", "fanout")
    stack.registry.bind("x", "a")
    stack.broker.delete_topic("a")
    produce(stack.broker, "x", [b"k1"])
    assert router.run_once().paused == ("x",)
    stack.broker.create_topic("a", 1)
    assert router.run_once().records == 0  # not yet: the retry interval has not passed
    stack.clock.advance(5000)
    assert router.run_once().records == 1
    router.close()


# ---------------------------------------------------------------------------- exactly once


def test_restart_in_the_middle_of_routing(stack: Stack) -> None:
    _setup_topic_exchange(stack)
    _produce_regions(stack, 1000)
    stack.router.run_once(300)
    stack.reopen()
    _produce_regions(stack, 200, start=1000)
    stack.drain(max_records=170)
    _assert_exactly_once(stack, 1200)
    assert stack.router.describe("events").routed == 1200


@pytest.mark.parametrize("replay_budget", [20, 100, 10_000])
def test_crash_after_destination_appends_before_the_checkpoint(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, replay_budget: int
) -> None:
    _setup_topic_exchange(stack, partitions=1)
    _produce_regions(stack, 600)
    stack.router.run_once(100)  # one clean step: 100 records checkpointed
    _crash_once(monkeypatch, CheckpointStore, "write")
    with pytest.raises(Crash):
        stack.router.run_once(200)  # the appends of records 100..299 are durable, unrecorded
    monkeypatch.undo()
    assert len(values(stack.broker, "audit")) == 300
    stack.reopen()
    # the replay reads fewer, as many, or more records than the interrupted step
    stack.drain(max_records=replay_budget)
    _assert_exactly_once(stack, 600)
    status = stack.router.describe("events")
    assert (status.routed, status.lag) == (600, 0)


def test_crash_between_destination_appends(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    _setup_topic_exchange(stack)
    _produce_regions(stack, 400)
    _crash_once(monkeypatch, Router, "_append_chunk", after=3, before=False)
    with pytest.raises(Crash):
        stack.router.run_once(400)
    monkeypatch.undo()
    stack.reopen()
    stack.drain(max_records=37)
    _assert_exactly_once(stack, 400)


def test_random_crashes_never_lose_or_duplicate(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup_topic_exchange(stack)
    rng = random.Random(5)
    produced = 0
    for _ in range(12):
        count = rng.randint(1, 150)
        _produce_regions(stack, count, batch=rng.randint(1, 60), start=produced)
        produced += count
        target = rng.choice([(CheckpointStore, "write"), (Router, "_append_chunk")])
        _crash_once(monkeypatch, *target, after=rng.randint(0, 4), before=rng.random() < 0.5)
        try:
            for _ in range(rng.randint(1, 4)):
                stack.router.run_once(rng.randint(1, 200))
        except Crash:
            pass
        monkeypatch.undo()
        stack.reopen()
    stack.drain(max_records=rng.randint(1, 300))
    _assert_exactly_once(stack, produced)


def _failing_append(partition_log: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def append(batch: bytes, *, wait_durable: bool = True) -> None:
        raise DiskFullError("disk full (test)", "", 28)

    monkeypatch.setattr(partition_log, "append", append)


def test_partial_failure_is_checkpointed_and_bindings_may_change(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.broker.create_topic("a", 1)
    stack.broker.create_topic("b", 1)
    stack.registry.declare("x", "fanout")
    stack.registry.bind("x", "a")
    stack.registry.bind("x", "b")
    produce(stack.broker, "x", [b"k%d" % i for i in range(10)])
    _failing_append(stack.broker.partition("b", 0), monkeypatch)
    result = stack.router.run_once()
    assert result.paused == ("x",)
    error = stack.router.describe("x").error
    assert error is not None
    assert "disk full" in error
    assert len(values(stack.broker, "a")) == 10  # appended, durable, checkpointed as done
    assert stack.router.describe("x").partitions[0].checkpoint_offset == 0
    stack.registry.unbind("x", "b")  # allowed: nothing is in doubt
    stack.registry.bind("x", "b")
    monkeypatch.undo()
    stack.reopen()
    produce(stack.broker, "x", [b"late"], start=10)
    stack.drain()
    assert values(stack.broker, "a") == [b"v%d" % i for i in range(11)]
    assert values(stack.broker, "b") == [b"v%d" % i for i in range(11)]


def test_failed_checkpoint_puts_the_exchange_in_doubt(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.broker.create_topic("a", 1)
    stack.registry.declare("x", "fanout")
    stack.registry.bind("x", "a")
    produce(stack.broker, "x", [b"k1", b"k2"])

    def failing_write(*args: Any, **kwargs: Any) -> None:
        raise StorageError("checkpoint topic is read-only (test)")

    monkeypatch.setattr(CheckpointStore, "write", failing_write)
    assert stack.router.run_once().paused == ("x",)
    with pytest.raises(ExchangeInDoubtError):
        stack.registry.bind("x", "a-new-dest-that-does-not-matter")
    monkeypatch.undo()
    stack.drain()
    assert values(stack.broker, "a") == [b"v0", b"v1"]  # the replay was recognised
    stack.broker.create_topic("b", 1)
    stack.registry.bind("x", "b")  # no longer in doubt


def test_deleting_an_exchange_forgets_its_checkpoints(stack: Stack) -> None:
    stack.broker.create_topic("a", 1)
    stack.registry.declare("x", "fanout")
    stack.registry.bind("x", "a")
    produce(stack.broker, "x", [b"k1"])
    stack.drain()
    stack.registry.delete("x")
    stack.router.run_once()
    produce(stack.broker, "x", [b"k2"], start=1)
    stack.registry.declare("x", "fanout")
    stack.registry.bind("x", "a")
    produce(stack.broker, "x", [b"k3"], start=2)
    stack.reopen()
    stack.drain()
    assert values(stack.broker, "a") == [b"v0", b"v2"]
    status = stack.router.describe("x")
    assert (status.routed, status.partitions[0].checkpoint_offset) == (1, 3)
    live = [r for r in read_all(stack.broker, CHECKPOINTS_TOPIC) if r.value is not None]
    assert live  # the new incarnation's checkpoint


def test_expired_records_are_counted(stack: Stack) -> None:
    stack.broker.create_topic("a", 1)
    stack.registry.declare("x", "fanout", topic_config={"segment.bytes": "1024"})
    stack.registry.bind("x", "a")
    for i in range(20):
        produce(stack.broker, "x", [b"k" * 100], start=i)
    stack.broker.alter_topic_config("x", {"retention.bytes": "1"})
    stack.broker.run_maintenance(force_retention=True)
    start = stack.broker.partition("x", 0).log_start_offset
    assert start > 0
    stack.drain()
    status = stack.router.describe("x")
    assert status.partitions[0].expired == start
    assert len(values(stack.broker, "a")) == 20 - start


def test_background_thread_routes_new_records(stack: Stack) -> None:
    stack.broker.create_topic("a", 1)
    stack.registry.declare("x", "fanout")
    stack.registry.bind("x", "a")
    stack.router.start(idle_wait_s=0.01)
    produce(stack.broker, "x", [b"k1", b"k2"])
    deadline = time.monotonic() + 10
    while len(values(stack.broker, "a")) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stack.router.close()
    assert values(stack.broker, "a") == [b"v0", b"v1"]

