"""Routing: topic matching with 1,000 bindings, and routed records/s through the engine.

Run with ``pytest benchmarks/test_routing_bench.py --benchmark-only``. Figures to read:

- ``test_match_warm``: ``KEYS`` routing keys (1,000 distinct, repeating) matched against a
  topic exchange's 1,000 bindings with the per-key memo; keys/s = KEYS / median.
- ``test_match_cold``: the same without the memo (every key walks the trie).
- ``test_route_topic_exchange``: ``RECORDS`` records (100-byte values, keyed, 1,000 per
  batch) routed end to end by :meth:`Router.run_once`: read, match, one batch per destination,
  fsync of the 10 destinations, checkpoint; records/s = RECORDS / median. Each record matches
  exactly one of the 1,000 bindings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from engine.broker import Broker
from engine.clock import ManualClock
from engine.records.batch import encode_batch
from engine.records.record import NewRecord
from engine.views.routing import Binding, ExchangeRegistry, Router, TopicMatcher

BINDINGS = 1000
DESTINATIONS = 10
KEYS = 100_000
RECORDS = 100_000
SMOKE_RECORDS = 2_000  # under --benchmark-disable (make test), one quick pass
BATCH = 1000
ROUNDS = 5


def _pattern(index: int) -> str:
    return f"region{index % 50}.svc{index // 50}.*"


def _key(index: int) -> bytes:
    return f"region{index % 50}.svc{(index // 50) % 20}.evt{index % 7}".encode()


def _matcher(memo_entries: int) -> TopicMatcher:
    matcher = TopicMatcher(memo_entries=memo_entries)
    for index in range(BINDINGS):
        matcher.add(Binding("events", f"d{index % DESTINATIONS}", _pattern(index)))
    return matcher


def _match_all(matcher: TopicMatcher, keys: list[bytes]) -> int:
    match = matcher.match
    return sum(len(match(key)) for key in keys)


def test_match_warm(benchmark: BenchmarkFixture) -> None:
    matcher = _matcher(65_536)
    keys = [_key(i) for i in range(KEYS)]
    assert benchmark.pedantic(_match_all, (matcher, keys), rounds=ROUNDS, warmup_rounds=1) == KEYS


def test_match_cold(benchmark: BenchmarkFixture) -> None:
    matcher = _matcher(1)  # the memo keeps one key: every distinct key walks the trie
    keys = [_key(i) for i in range(KEYS // 10)]
    result = benchmark.pedantic(_match_all, (matcher, keys), rounds=ROUNDS, warmup_rounds=1)
    assert result == len(keys)


@pytest.fixture
def routing(tmp_path: Path) -> Iterator[tuple[Broker, Router]]:
    clock = ManualClock()
    broker = Broker.open(tmp_path, background=False, clock=clock)
    registry = ExchangeRegistry.open(broker, clock=clock)
    router = Router.open(broker, registry, clock=clock)
    registry.declare("events", "topic")
    for index in range(DESTINATIONS):
        broker.create_topic(f"d{index}", 1)
    for index in range(BINDINGS):
        registry.bind("events", f"d{index % DESTINATIONS}", pattern=_pattern(index))
    yield broker, router
    router.close()
    broker.close()


def test_route_topic_exchange(
    benchmark: BenchmarkFixture, routing: tuple[Broker, Router]
) -> None:
    broker, router = routing
    count = SMOKE_RECORDS if benchmark.disabled else RECORDS
    value = b"x" * 100

    def produce() -> tuple[tuple[()], dict[str, object]]:
        for start in range(0, count, BATCH):
            records = [NewRecord(value, _key(i)) for i in range(start, start + BATCH)]
            broker.append("events", 0, encode_batch(records))
        return (), {}

    def drain() -> int:
        routed = 0
        while (result := router.run_once()).records:
            routed += result.records
        return routed

    benchmark.pedantic(drain, setup=produce, rounds=ROUNDS, iterations=1)
    assert router.describe("events").lag == 0
