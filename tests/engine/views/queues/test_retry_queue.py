"""Retry queues: stream consumers hand failed records over by offset and get them back when due."""

from __future__ import annotations

import pytest

from engine.clock import ManualClock
from engine.errors import InvalidQueueRequestError, QueueError
from engine.views.queues import (
    BackoffPolicy,
    NackAction,
    NackOutcome,
    Ordering,
    QueueMode,
    RetryRequest,
)
from engine.views.queues.reader import iter_records
from tests.engine.views.queues.conftest import T0, Env, declare, produce

_BACKOFF = BackoffPolicy(initial_ms=1000, multiplier=2.0, max_ms=60_000)


def _retry_queue(env: Env, **overrides: object) -> None:
    declare(env, name="jobs.retry", mode=QueueMode.RETRY, backoff=_BACKOFF, **overrides)


def test_retry_queue_reads_nothing_by_itself(env: Env) -> None:
    _retry_queue(env)
    produce(env.broker, "jobs", 0, [b"a", b"b", b"c"])
    assert env.manager.receive("jobs.retry", 10) == []
    assert env.manager.describe("jobs.retry").backlog == 0


def test_scheduled_record_comes_back_after_backoff(env: Env, clock: ManualClock) -> None:
    _retry_queue(env)
    offsets = produce(env.broker, "jobs", 1, [b"a", b"b", b"c"])
    (result,) = env.manager.schedule_retries(
        "jobs.retry", [RetryRequest(1, offsets[1], "boom")], consumer="stream-1")
    assert result.outcome == NackOutcome.RETRY_SCHEDULED
    assert result.due_ms == T0 + 1000
    assert env.manager.describe("jobs.retry").backlog == 1
    clock.advance(999)
    assert env.manager.receive("jobs.retry", 10) == []
    clock.advance(1)
    (delivery,) = env.manager.receive("jobs.retry", 10)
    assert (delivery.partition, delivery.offset, delivery.value) == (1, offsets[1], b"b")
    assert delivery.delivery_count == 2
    (attempt,) = delivery.attempts
    assert (attempt.outcome, attempt.error, attempt.consumer) == ("stream", "boom", "stream-1")
    # a second failure backs off twice as long
    (again,) = env.manager.nack_many("jobs.retry", [delivery.lease_id], NackAction.RETRY, "x")
    assert again.due_ms == T0 + 1000 + 2000
    clock.advance(2000)
    (delivery,) = env.manager.receive("jobs.retry", 10)
    assert delivery.delivery_count == 3
    assert not env.manager.ack("jobs.retry", [delivery.lease_id]).failed
    assert env.manager.describe("jobs.retry").backlog == 0


def test_scheduling_twice_is_idempotent_and_an_acked_record_may_fail_again(
    env: Env, clock: ManualClock
) -> None:
    _retry_queue(env)
    (offset,) = produce(env.broker, "jobs", 0, [b"a"])
    env.manager.schedule_retries("jobs.retry", [RetryRequest(0, offset)])
    (second,) = env.manager.schedule_retries("jobs.retry", [RetryRequest(0, offset)])
    assert second.already_scheduled
    assert second.due_ms == T0 + 1000
    clock.advance(1000)
    (delivery,) = env.manager.receive("jobs.retry", 10)
    env.manager.ack("jobs.retry", [delivery.lease_id])
    # a rewound stream consumer fails on the same record again: it is taken in again
    (third,) = env.manager.schedule_retries("jobs.retry", [RetryRequest(0, offset)])
    assert not third.already_scheduled
    assert third.outcome == NackOutcome.RETRY_SCHEDULED


def test_retries_survive_a_restart_and_acks_stay_done(env: Env, clock: ManualClock) -> None:
    _retry_queue(env)
    offsets = produce(env.broker, "jobs", 2, [b"a", b"b", b"c"])
    env.manager.schedule_retries("jobs.retry", [RetryRequest(2, o, "e") for o in offsets])
    clock.advance(1000)
    first = env.manager.receive("jobs.retry", 1)
    env.manager.ack("jobs.retry", [first[0].lease_id])
    env.restart()
    got = env.manager.receive("jobs.retry", 10)
    assert sorted(d.offset for d in got) == sorted(set(offsets) - {first[0].offset})
    assert {d.delivery_count for d in got} == {2}


def test_max_deliveries_one_dead_letters_at_once(env: Env) -> None:
    _retry_queue(env, max_deliveries=1)
    (offset,) = produce(env.broker, "jobs", 0, [b"poison"])
    (result,) = env.manager.schedule_retries("jobs.retry", [RetryRequest(0, offset, "bad")])
    assert result.outcome == NackOutcome.DEAD_LETTERED
    (letter,) = iter_records(env.broker.partition("jobs.dlq", 0))
    assert letter.value == b"poison"


def test_bad_requests_are_refused(env: Env) -> None:
    declare(env)  # a work queue named "work"
    _retry_queue(env)
    produce(env.broker, "jobs", 0, [b"a"])
    with pytest.raises(QueueError, match="work queue"):
        env.manager.schedule_retries("work", [RetryRequest(0, 0)])
    with pytest.raises(InvalidQueueRequestError, match="partitions 0 to 2"):
        env.manager.schedule_retries("jobs.retry", [RetryRequest(3, 0)])
    with pytest.raises(InvalidQueueRequestError, match="records are 0 to 0"):
        env.manager.schedule_retries("jobs.retry", [RetryRequest(0, 1)])
    with pytest.raises(InvalidQueueRequestError, match="unordered"):
        declare(env, name="keyed.retry", mode=QueueMode.RETRY, ordering=Ordering.PER_KEY)


def test_watch_listener_is_called_for_new_data_and_removed(env: Env) -> None:
    declare(env)
    calls: list[int] = []
    remove = env.manager.watch("work", lambda: calls.append(1))
    produce(env.broker, "jobs", 0, [b"a"])
    assert calls
    remove()
    calls.clear()
    produce(env.broker, "jobs", 0, [b"b"])
    assert not calls
