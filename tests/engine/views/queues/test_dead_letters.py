"""Dead letters: max deliveries, reject, a failing dead-letter topic, and redrive."""

from __future__ import annotations

import random

from engine.clock import ManualClock
from engine.errors import StorageError
from engine.log.log_protocol import Log
from engine.log.memory_log import MemoryTopics
from engine.records.record import Header
from engine.views.queues import (
    HDR_ATTEMPTS,
    HDR_FIRST_FAILURE,
    HDR_LAST_ERROR,
    HDR_LAST_FAILURE,
    HDR_REASON,
    HDR_SOURCE_OFFSET,
    HDR_SOURCE_PARTITION,
    HDR_SOURCE_TOPIC,
    BackoffPolicy,
    NackAction,
    NackOutcome,
    QueueConfig,
    QueueManager,
)
from engine.views.queues.reader import iter_records
from tests.engine.views.queues.conftest import T0, Env, declare, produce

NO_WAIT = BackoffPolicy(0, 1.0, 0, 0.0)


def _fail_until_dead(env: Env, max_deliveries: int) -> None:
    for attempt in range(1, max_deliveries + 1):
        (delivery,) = env.manager.receive("work", 1, consumer="w1")
        assert delivery.delivery_count == attempt
        env.clock.advance(10)
        result = env.manager.nack("work", delivery.lease, NackAction.RETRY, f"err {attempt}")
        expected = (NackOutcome.DEAD_LETTERED if attempt == max_deliveries
                    else NackOutcome.RETRY_SCHEDULED)
        assert result.outcome == expected


def test_max_deliveries_dead_letters_with_headers(env: Env) -> None:
    declare(env, max_deliveries=3, backoff=NO_WAIT)
    produce(env.broker, "jobs", 2, [b"skip", b"poison"], key=b"k",
            headers=(Header("trace", b"t1"),))
    (first,) = env.manager.receive("work", 1)
    env.manager.ack("work", [first.lease])
    _fail_until_dead(env, 3)
    assert env.manager.receive("work", 10) == []
    (record,) = list(iter_records(env.broker.partition("jobs.dlq", 0)))
    headers = {h.key: (h.value or b"").decode() for h in record.headers}
    assert record.value == b"poison"
    assert record.key == b"k"
    assert headers["trace"] == "t1"
    assert headers[HDR_SOURCE_TOPIC] == "jobs"
    assert headers[HDR_SOURCE_PARTITION] == "2"
    assert headers[HDR_SOURCE_OFFSET] == "1"
    assert headers[HDR_ATTEMPTS] == "3"
    assert headers[HDR_LAST_ERROR] == "err 3"
    assert headers[HDR_REASON] == "max-deliveries"
    assert headers[HDR_FIRST_FAILURE] == str(T0 + 10)
    assert headers[HDR_LAST_FAILURE] == str(T0 + 30)
    assert env.manager.describe("work").counters.dead_lettered == 1
    # created fsync'd: the copy must outlive a power loss, as the "done" that follows does
    assert env.broker.describe_topic("jobs.dlq").config.durability == "fsync"
    env.restart()
    assert env.manager.receive("work", 10) == []  # done survives restart


def test_reject_dead_letters_at_once(env: Env) -> None:
    declare(env, dlq_topic="rejects")
    produce(env.broker, "jobs", 0, [b"bad"])
    (delivery,) = env.manager.receive("work", 1)
    result = env.manager.nack("work", delivery.lease, NackAction.REJECT, "schema")
    assert result.outcome == NackOutcome.DEAD_LETTERED
    assert result.dlq_offset == 0
    (letter,) = env.manager.dead_letters("rejects")
    assert (letter.reason, letter.attempts, letter.last_error) == ("rejected", 1, "schema")


def test_expiry_past_max_deliveries_dead_letters(env: Env) -> None:
    declare(env, max_deliveries=2, lease_ms=100)
    produce(env.broker, "jobs", 0, [b"slow"])
    for _ in range(2):
        assert len(env.manager.receive("work", 1)) == 1
        env.clock.advance(100)
        env.manager.run_due()
    (letter,) = env.manager.dead_letters("jobs.dlq")
    assert letter.last_error == "lease expired"
    assert letter.attempts == 2


class _FailingLog:
    def __init__(self, inner: Log) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def append(self, batch: bytes, *, wait_durable: bool = True) -> object:
        raise StorageError("injected: disk gone", "jobs.dlq-0")


class _FlakyTopics(MemoryTopics):
    """Memory topics whose dead-letter topic refuses appends while ``broken``."""

    broken = True

    def partition(self, topic: str, partition: int) -> Log:
        log = super().partition(topic, partition)
        if topic.endswith(".dlq") and self.broken:
            return _FailingLog(log)  # type: ignore[return-value]
        return log


def test_dead_letter_append_failure_keeps_the_record() -> None:
    clock = ManualClock(now_ms=T0)
    topics = _FlakyTopics()
    topics.create_topic("jobs", 1)
    manager = QueueManager.open(topics, clock, rng=random.Random(1))
    manager.declare(QueueConfig("work", "jobs", max_deliveries=1,
                                backoff=BackoffPolicy(500, 1.0, 500, 0.0)))
    produce(topics, "jobs", 0, [b"x"])
    (delivery,) = manager.receive("work", 1)
    result = manager.nack("work", delivery.lease, NackAction.REJECT, "nope")
    assert result.outcome == NackOutcome.DEAD_LETTER_FAILED
    assert result.due_ms == T0 + 500
    assert manager.describe("work").counters.dead_letter_failures == 1
    clock.advance(500)
    (again,) = manager.receive("work", 1)
    assert again.value == b"x"
    assert [a.outcome for a in again.attempts] == ["nack", "dlq-failed"]
    topics.broken = False
    result = manager.nack("work", again.lease, NackAction.RETRY, "still bad")
    assert result.outcome == NackOutcome.DEAD_LETTERED
    clock.advance(10_000)
    assert manager.receive("work", 1) == []
    (letter,) = manager.dead_letters("jobs.dlq")
    assert letter.last_error == "still bad"


def _dead_letter_five(env: Env) -> None:
    declare(env, max_deliveries=1)
    produce(env.broker, "jobs", 0, [b"v%d" % i for i in range(5)])
    for delivery in env.manager.receive("work", 5):
        error = "timeout" if delivery.offset % 2 else "bad schema"
        env.manager.nack("work", delivery.lease, NackAction.REJECT, error)
    assert len(env.manager.dead_letters("jobs.dlq")) == 5


def _requeued(env: Env) -> list[bytes]:
    got = env.manager.receive("work", 100)
    env.manager.ack("work", [d.lease for d in got])
    return sorted(d.value or b"" for d in got)


def test_redrive_dry_run_then_all_once(env: Env) -> None:
    _dead_letter_five(env)
    dry = env.manager.redrive("jobs.dlq", dry_run=True)
    assert dry.dry_run
    assert len(dry.moved) == 5
    assert _requeued(env) == []
    moved = env.manager.redrive("jobs.dlq")
    assert len(moved.moved) == 5
    assert _requeued(env) == [b"v%d" % i for i in range(5)]
    again = env.manager.redrive("jobs.dlq")
    assert again.moved == ()
    assert again.already_redriven == 5
    env.restart()
    assert env.manager.redrive("jobs.dlq").moved == ()  # the checkpoint is in the log


def test_redrive_one_range_and_filter(env: Env) -> None:
    _dead_letter_five(env)
    letters = env.manager.dead_letters("jobs.dlq")
    one = env.manager.redrive("jobs.dlq", offsets=range(2, 3))
    assert [d.value for d in one.moved] == [b"v2"]
    span = env.manager.redrive("jobs.dlq", offsets=range(2))
    assert [d.value for d in span.moved] == [b"v0", b"v1"]
    rest = env.manager.redrive("jobs.dlq", predicate=lambda d: d.last_error == "timeout")
    assert [d.value for d in rest.moved] == [b"v3"]
    assert _requeued(env) == [b"v0", b"v1", b"v2", b"v3"]
    redriven = env.manager.dead_letters("jobs.dlq", include_redriven=False)
    assert [d.value for d in redriven] == [b"v4"]
    assert all(h.key != HDR_SOURCE_TOPIC for d in letters for h in d.headers)
