"""Queue semantics over a real broker: delivery, acks, leases, ordering, scheduling, restart."""

from __future__ import annotations

import threading

import pytest

from engine.errors import (
    InvalidQueueRequestError,
    QueueExistsError,
    UnknownQueueError,
    UnknownTopicError,
)
from engine.records.record import Header
from engine.views.queues import (
    QUEUE_STATE_TOPIC,
    BackoffPolicy,
    LeaseRef,
    NackAction,
    NackOutcome,
    Ordering,
    QueueConfig,
    StartPosition,
)
from engine.views.queues.reader import iter_records
from tests.engine.views.queues.conftest import T0, Env, declare, produce


def test_competing_consumers_get_each_record_once(env: Env) -> None:
    declare(env)
    for partition in range(3):
        produce(env.broker, "jobs", partition, [b"%d-%d" % (partition, i) for i in range(200)])
    seen: list[bytes] = []
    lock = threading.Lock()

    def consume(name: str) -> None:
        while True:
            got = env.manager.receive("work", 25, consumer=name)
            if not got:
                return
            with lock:
                seen.extend(d.value or b"" for d in got)
            assert not env.manager.ack("work", [d.lease_id for d in got]).failed

    threads = [threading.Thread(target=consume, args=(f"c{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 600
    assert len(set(seen)) == 600
    description = env.manager.describe("work")
    assert description.backlog == 0
    assert [p.start_offset for p in description.partitions] == [200, 200, 200]


def test_lease_expiry_redelivers_with_count(env: Env) -> None:
    declare(env, lease_ms=5000)
    produce(env.broker, "jobs", 0, [b"x"])
    first = env.manager.receive("work", 10, consumer="a")
    assert [d.delivery_count for d in first] == [1]
    assert env.manager.receive("work", 10) == []
    env.clock.advance(4999)
    assert env.manager.receive("work", 10) == []
    env.clock.advance(1)
    second = env.manager.receive("work", 10, consumer="b")
    assert [d.delivery_count for d in second] == [2]
    assert second[0].attempts[0].outcome == "expired"
    assert second[0].attempts[0].consumer == "a"
    # the old lease is useless now; the new one works
    stale = env.manager.ack("work", [first[0].lease])
    assert stale.succeeded == ()
    assert len(stale.failed) == 1
    assert env.manager.ack("work", [second[0].lease]).succeeded == (second[0].lease,)


def test_run_due_expires_without_receive(env: Env) -> None:
    declare(env, lease_ms=100)
    produce(env.broker, "jobs", 0, [b"x"])
    env.manager.receive("work", 1)
    env.clock.advance(100)
    assert env.manager.run_due() == 1
    assert env.manager.describe("work").counters.expired == 1


def test_extend_and_release(env: Env) -> None:
    declare(env, lease_ms=1000)
    produce(env.broker, "jobs", 0, [b"x", b"y"])
    got = env.manager.receive("work", 2)
    extended = env.manager.extend_lease("work", [got[0].lease], 10_000)
    assert extended.extended[0][1] == T0 + 10_000
    released = env.manager.release("work", [got[1].lease])
    assert released.succeeded == (got[1].lease,)
    env.clock.advance(1500)
    again = env.manager.receive("work", 10)
    assert [(d.value, d.delivery_count) for d in again] == [(b"y", 1)]  # release: no attempt
    assert env.manager.ack("work", [got[0].lease]).succeeded


def test_backoff_schedule_exact_without_jitter(env: Env) -> None:
    declare(env, max_deliveries=10, backoff=BackoffPolicy(100, 3.0, 2000, 0.0))
    produce(env.broker, "jobs", 0, [b"x"])
    expected = [100, 300, 900, 2000, 2000]
    for attempt, delay in enumerate(expected, start=1):
        (delivery,) = env.manager.receive("work", 1)
        assert delivery.delivery_count == attempt
        result = env.manager.nack("work", delivery.lease, NackAction.RETRY, f"boom {attempt}")
        assert result.outcome == NackOutcome.RETRY_SCHEDULED
        assert result.due_ms == env.clock.now_ms() + delay
        env.clock.advance(delay - 1)
        assert env.manager.receive("work", 1) == []
        env.clock.advance(1)
    (delivery,) = env.manager.receive("work", 1)
    assert [a.error for a in delivery.attempts] == [f"boom {n}" for n in range(1, 6)]


def test_backoff_with_jitter_stays_in_bounds(env: Env) -> None:
    declare(env, max_deliveries=50, backoff=BackoffPolicy(1000, 2.0, 8000, 0.25))
    produce(env.broker, "jobs", 0, [b"x"])
    for attempt in range(1, 8):
        (delivery,) = env.manager.receive("work", 1)
        result = env.manager.nack("work", delivery.lease)
        base = min(8000, 1000 * 2 ** (attempt - 1))
        delay = result.due_ms - env.clock.now_ms()
        assert base * 0.75 <= delay <= base * 1.25
        env.clock.advance(delay)


def test_per_key_ordering(env: Env) -> None:
    declare(env, ordering=Ordering.PER_KEY, lease_ms=60_000)
    produce(env.broker, "jobs", 0, [b"a1", b"a2"], key=b"a")
    produce(env.broker, "jobs", 0, [b"b1"], key=b"b")
    produce(env.broker, "jobs", 0, [b"a3"], key=b"a")
    produce(env.broker, "jobs", 0, [b"n1", b"n2"])  # no key: unordered
    got = env.manager.receive("work", 10)
    assert sorted(d.value or b"" for d in got) == [b"a1", b"b1", b"n1", b"n2"]
    a1 = next(d for d in got if d.value == b"a1")
    # a retry keeps the key blocked until it is done
    env.manager.nack("work", a1.lease, NackAction.RETRY, "later")
    assert env.manager.receive("work", 10) == []
    env.clock.advance(1000)
    (again,) = env.manager.receive("work", 10)
    assert again.value == b"a1"
    env.manager.ack("work", [again.lease])
    (a2,) = env.manager.receive("work", 10)
    assert a2.value == b"a2"
    env.manager.ack("work", [a2.lease])
    assert [d.value for d in env.manager.receive("work", 10)] == [b"a3"]


def test_unordered_hands_out_same_key_in_parallel(env: Env) -> None:
    declare(env)
    produce(env.broker, "jobs", 0, [b"a1", b"a2"], key=b"a")
    assert len(env.manager.receive("work", 10)) == 2


def test_scheduled_delivery(env: Env) -> None:
    declare(env, lease_ms=60_000)
    at = str(T0 + 5000).encode()
    produce(env.broker, "jobs", 0, [b"later"], headers=(Header("deliver-at", at),))
    produce(env.broker, "jobs", 0, [b"after"], timestamp=T0,
            headers=(Header("deliver-after", b"2000"),))
    produce(env.broker, "jobs", 0, [b"iso"],
            headers=(Header("deliver-at", b"2023-11-14T22:13:23Z"),))  # T0 + 3 s
    produce(env.broker, "jobs", 0, [b"bad"], headers=(Header("deliver-at", b"tomorrow"),))
    produce(env.broker, "jobs", 0, [b"now"])
    first = env.manager.receive("work", 10)
    assert sorted(d.value or b"" for d in first) == [b"bad", b"now"]
    env.manager.ack("work", [d.lease for d in first])
    description = env.manager.describe("work")
    assert description.counters.malformed_schedule_headers == 1
    assert description.partitions[0].scheduled == 3
    env.clock.advance(2000)
    assert [d.value for d in env.manager.receive("work", 10)] == [b"after"]
    env.clock.advance(1000)
    assert [d.value for d in env.manager.receive("work", 10)] == [b"iso"]
    env.clock.advance(2000)
    assert [d.value for d in env.manager.receive("work", 10)] == [b"later"]


def test_scheduled_survives_restart(env: Env) -> None:
    declare(env)
    produce(env.broker, "jobs", 0, [b"later"],
            headers=(Header("deliver-at", str(T0 + 60_000).encode()),))
    assert env.manager.receive("work", 10) == []
    env.restart()
    assert env.manager.receive("work", 10) == []
    env.clock.advance(60_000)
    assert [d.value for d in env.manager.receive("work", 10)] == [b"later"]


def test_restart_keeps_acked_acked_and_unacked_available(env: Env) -> None:
    declare(env, max_deliveries=10)
    produce(env.broker, "jobs", 0, [b"%d" % i for i in range(3000)])
    got = env.manager.receive("work", 2500)
    acked = [d for d in got if int(d.value or b"0") % 3 != 0]
    env.manager.ack("work", [d.lease for d in acked])
    retry = next(d for d in got if d.value == b"3")
    result = env.manager.nack("work", retry.lease, NackAction.RETRY, "db down")
    env.manager.run_due()
    env.restart()
    remaining: list[bytes] = []
    while batch := env.manager.receive("work", 1000):
        remaining.extend(d.value or b"" for d in batch)
        env.manager.ack("work", [d.lease for d in batch])
    expected = {b"%d" % i for i in range(3000)} - {d.value for d in acked} - {b"3"}
    assert set(remaining) == expected
    assert len(remaining) == len(expected)
    # the delay index came back: the retried record appears when due, with its history
    env.clock.advance(result.due_ms - env.clock.now_ms())
    (back,) = env.manager.receive("work", 10)
    assert back.value == b"3"
    assert back.delivery_count == 2
    assert back.attempts[0].error == "db down"


def test_state_stays_bounded_by_tombstones(env: Env) -> None:
    declare(env)
    for _ in range(5):
        produce(env.broker, "jobs", 0, [b"x"] * 1000)
        got = env.manager.receive("work", 1000)
        env.manager.ack("work", [d.lease for d in got])
        env.manager.run_due()
    latest: dict[bytes, bytes | None] = {}
    for partition in range(2):
        for record in iter_records(env.broker.partition(QUEUE_STATE_TOPIC, partition)):
            assert record.key is not None
            latest[record.key] = record.value
    live = [key for key, value in latest.items() if value is not None]
    # one S record per partition plus at most one chunk still above the start
    assert len(live) <= 3 + 1


def test_declare_rules(env: Env) -> None:
    config = declare(env)
    assert env.manager.declare(config).config == config  # identical: idempotent
    with pytest.raises(QueueExistsError):
        env.manager.declare(QueueConfig("work", "jobs", lease_ms=5))
    with pytest.raises(UnknownTopicError):
        env.manager.declare(QueueConfig("other", "nope"))
    with pytest.raises(InvalidQueueRequestError):
        env.manager.declare(QueueConfig("bad name", "jobs"))
    with pytest.raises(InvalidQueueRequestError):
        env.manager.receive("work", 0)
    with pytest.raises(InvalidQueueRequestError):
        env.manager.ack("work", ["not-a-lease"])
    assert [c.name for c in env.manager.list_queues()] == ["work"]


def test_delete_and_redeclare_starts_fresh(env: Env) -> None:
    declare(env)
    produce(env.broker, "jobs", 0, [b"a"])
    got = env.manager.receive("work", 10)
    env.manager.ack("work", [d.lease for d in got])
    env.manager.delete("work")
    with pytest.raises(UnknownQueueError):
        env.manager.receive("work", 1)
    env.restart()
    assert env.manager.list_queues() == []
    declare(env)
    assert [d.value for d in env.manager.receive("work", 10)] == [b"a"]


def test_start_latest(env: Env) -> None:
    produce(env.broker, "jobs", 0, [b"old"])
    declare(env, start=StartPosition.LATEST)
    produce(env.broker, "jobs", 0, [b"new"])
    assert [d.value for d in env.manager.receive("work", 10)] == [b"new"]
    env.restart()
    assert [d.value for d in env.manager.receive("work", 10)] == [b"new"]


def test_receive_waits_for_data(env: Env) -> None:
    declare(env)
    timer = threading.Timer(0.1, lambda: produce(env.broker, "jobs", 1, [b"late"]))
    timer.start()
    got = env.manager.receive("work", 5, wait_ms=5000)
    timer.join()
    assert [d.value for d in got] == [b"late"]


def test_lease_id_round_trip() -> None:
    ref = LeaseRef(3, 42, "abc1")
    assert LeaseRef.parse(str(ref)) == ref
