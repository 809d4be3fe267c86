"""A hypothesis state machine: random receive/ack/nack/expire/restart against a simple model.

Properties: an acked record is never delivered again; no record has two live leases at once;
after draining, every record is acked or dead-lettered exactly once (nothing lost).
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine.clock import ManualClock
from engine.log.memory_log import MemoryTopics
from engine.views.queues import (
    BackoffPolicy,
    Delivery,
    NackAction,
    Ordering,
    QueueConfig,
    QueueManager,
)
from engine.views.queues.dead_letters import parse_dead_letter
from engine.views.queues.reader import iter_records
from tests.engine.views.queues.conftest import T0, produce

LEASE_MS = 1000
PARTITIONS = 2


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(now_ms=T0)
        self.topics = MemoryTopics()
        self.topics.create_topic("jobs", PARTITIONS)
        self.produced: set[tuple[int, int]] = set()
        self.acked: set[tuple[int, int]] = set()
        self.live: dict[tuple[int, int], tuple[Delivery, int]] = {}  # -> (delivery, deadline)
        self.manager: QueueManager

    @initialize(ordering=st.sampled_from([Ordering.UNORDERED, Ordering.PER_KEY]),
                max_deliveries=st.integers(1, 4))
    def setup(self, ordering: Ordering, max_deliveries: int) -> None:
        self.manager = QueueManager.open(self.topics, self.clock, state_partitions=2,
                                         rng=random.Random(0))
        self.manager.declare(QueueConfig(
            "q", "jobs", ordering=ordering, lease_ms=LEASE_MS, max_deliveries=max_deliveries,
            backoff=BackoffPolicy(100, 2.0, 400, 0.5)))

    @rule(partition=st.integers(0, PARTITIONS - 1), count=st.integers(1, 5),
          key=st.sampled_from([None, b"a", b"b"]))
    def produce(self, partition: int, count: int, key: bytes | None) -> None:
        offsets = produce(self.topics, "jobs", partition, [b"v"] * count, key=key)
        self.produced.update((partition, o) for o in offsets)

    def _expire_model(self) -> None:
        now = self.clock.now_ms()
        self.live = {k: v for k, v in self.live.items() if v[1] > now}

    @rule(count=st.integers(1, 6))
    def receive(self, count: int) -> None:
        self._expire_model()
        for delivery in self.manager.receive("q", count):
            place = (delivery.partition, delivery.offset)
            assert place not in self.acked, f"acked record {place} delivered again"
            assert place not in self.live, f"two live leases on {place}"
            self.live[place] = (delivery, delivery.lease_expires_ms)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        self._expire_model()
        if not self.live:
            return
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.live)), min_size=1,
                                    unique=True))
        result = self.manager.ack("q", [self.live[p][0].lease for p in chosen])
        assert not result.failed, result.failed  # unexpired leases must be accepted
        for place in chosen:
            self.acked.add(place)
            del self.live[place]

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), reject=st.booleans())
    def nack(self, data: st.DataObject, reject: bool) -> None:
        self._expire_model()
        if not self.live:
            return
        place = data.draw(st.sampled_from(sorted(self.live)))
        action = NackAction.REJECT if reject else NackAction.RETRY
        self.manager.nack("q", self.live.pop(place)[0].lease, action, "boom")

    @rule(ms=st.sampled_from([1, 100, 500, LEASE_MS, 3000]))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms)
        self._expire_model()

    @rule()
    def run_due(self) -> None:
        self.manager.run_due()

    @rule()
    def restart(self) -> None:
        self.manager.close()
        self.manager = QueueManager.open(self.topics, self.clock, state_partitions=2,
                                         rng=random.Random(0))
        self.live.clear()  # leases do not survive a restart

    @invariant()
    def acked_and_live_disjoint(self) -> None:
        assert not (self.acked & set(self.live))

    def teardown(self) -> None:
        if not hasattr(self, "manager"):
            return
        for _ in range(200):
            self.clock.advance(5000)
            got = self.manager.receive("q", 100)
            for delivery in got:
                place = (delivery.partition, delivery.offset)
                assert place not in self.acked
            result = self.manager.ack("q", [d.lease for d in got])
            self.acked.update((r.partition, r.offset) for r in result.succeeded)
            if not got and self.manager.describe("q").backlog == 0:
                break
        dead: list[tuple[int, int]] = []
        if self.topics.has_topic("jobs.dlq"):
            for record in iter_records(self.topics.partition("jobs.dlq", 0)):
                letter = parse_dead_letter("jobs.dlq", 0, record, redriven=False)
                dead.append((letter.source_partition, letter.source_offset))
        assert len(dead) == len(set(dead)), "a record was dead-lettered twice"
        assert not (set(dead) & self.acked)
        assert set(dead) | self.acked == self.produced


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
