"""moldau.Queues / AsyncQueues / RetryQueue against a real broker: the whole lease life cycle,
backoff timing, dead letters with their headers, redrive, and stream-consumer retries."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator

import pytest

from moldau import (
    AsyncQueues,
    Backoff,
    Consumer,
    InvalidQueueRequestError,
    Message,
    Producer,
    QueueExistsError,
    QueueNotFoundError,
    Queues,
    QueueStateError,
    RetryQueue,
    TopicNotFoundError,
)
from moldau.queues import lease_ids

_names = itertools.count()


@pytest.fixture
def queues(address: str) -> Iterator[Queues]:
    with Queues(address, consumer="tester") as client:
        yield client


def _produce(address: str, topic: str, values: list[bytes],
             headers: dict[str, bytes | None] | None = None) -> None:
    with Producer(address) as producer:
        for value in values:
            producer.send(topic, value, headers=headers)
        producer.flush()


def _queue(queues: Queues, topic: str, **options: object) -> str:
    name = f"q-{topic}-{next(_names)}"
    queues.declare(name, topic, **options)  # type: ignore[arg-type]
    return name


def _drain(queues: Queues, queue: str, wait_ms: int = 300) -> list[Message]:
    got: list[Message] = []
    while batch := queues.receive(queue, 500, wait_ms=wait_ms):
        got += batch
        assert not queues.ack(batch).failed
    return got


def test_declare_is_idempotent_and_conflicts_are_named(queues: Queues, topic: str) -> None:
    first = queues.declare("orders-work", topic, max_deliveries=3,
                           backoff=Backoff(initial_ms=100, multiplier=3.0))
    assert first.created
    assert first.config.dlq_topic == f"{topic}.dlq"
    assert first.config.backoff == Backoff(100, 3.0, 300_000, 0.0)
    again = queues.declare("orders-work", topic, max_deliveries=3,
                           backoff=Backoff(initial_ms=100, multiplier=3.0))
    assert not again.created
    assert again.config == first.config
    with pytest.raises(QueueExistsError, match="another definition"):
        queues.declare("orders-work", topic, max_deliveries=4)
    with pytest.raises(TopicNotFoundError):
        queues.declare("nowhere", "no-such-topic")
    with pytest.raises(InvalidQueueRequestError):
        queues.declare("bad", topic, max_deliveries=-1)
    with pytest.raises(ValueError, match="ordering must be one of"):
        queues.declare("bad", topic, ordering="sorted")  # type: ignore[arg-type]
    assert "orders-work" in [s.config.name for s in queues.list_queues()]
    queues.delete("orders-work")
    with pytest.raises(QueueNotFoundError, match="declare it first"):
        queues.describe("orders-work")


def test_receive_ack_release_extend(address: str, queues: Queues, topic: str) -> None:
    _produce(address, topic, [b"a", b"b", b"c"], headers={"tenant": b"acme"})
    name = _queue(queues, topic)
    got = queues.receive(name, 2, wait_ms=2000)
    assert [m.value for m in got] == [b"a", b"b"]
    assert got[0].header("tenant") == b"acme"
    assert got[0].delivery_count == 1
    assert got[0].queue == name
    assert got[0].lease_expires_ms > time.time() * 1000
    extended = queues.extend_lease(got[0], 60_000)
    assert extended.extended[got[0].lease_id] > got[0].lease_expires_ms
    released = queues.release(got[1])
    assert released.released == (got[1].lease_id,)
    assert queues.ack(got[0]).acked == (got[0].lease_id,)
    stale = queues.ack(got[0])  # settled already: reported, not raised
    assert stale.acked == ()
    assert stale.failed[0].lease_id == got[0].lease_id
    rest = _drain(queues, name)
    assert sorted(m.value for m in rest) == [b"b", b"c"]  # the released one came back at once
    # a release is no failure (no attempt recorded), but the next delivery is a new one
    released_again = next(m for m in rest if m.value == b"b")
    assert released_again.delivery_count == 1  # a release costs no attempt
    assert released_again.attempts == ()
    assert queues.describe(name).stats.depth == 0


def test_backoff_timing_then_dead_letter_with_headers_then_redrive(
        address: str, queues: Queues, topic: str) -> None:
    _produce(address, topic, [b"poison"], headers={"kind": b"order"})
    name = _queue(queues, topic, max_deliveries=3,
                  backoff=Backoff(initial_ms=300, multiplier=2.0, max_ms=10_000))
    delays = []
    [message] = queues.receive(name, 1, wait_ms=5000)
    for attempt in (1, 2):
        assert message.delivery_count == attempt
        failed_at = time.time() * 1000
        [result] = queues.nack(message, error=f"boom {attempt}")
        assert result.outcome == "retry-scheduled"
        expected = 300 * 2 ** (attempt - 1)
        assert result.due_ms - failed_at == pytest.approx(expected, abs=100)
        assert queues.receive(name, 1) == []  # invisible until due
        [message] = queues.receive(name, 1, wait_ms=5000)
        delays.append(time.time() * 1000 - failed_at)
        assert [a.error for a in message.attempts] == [
            f"boom {n}" for n in range(1, attempt + 1)]
        assert message.attempts[-1].consumer == "tester"
    assert delays[0] == pytest.approx(300, abs=250)
    assert delays[1] == pytest.approx(600, abs=250)
    last = message
    [result] = queues.nack(last, error="boom 3")
    assert result.outcome == "dead-lettered"
    assert result.dlq_offset >= 0
    [letter] = queues.dead_letters(queue=name)
    assert (letter.source_topic, letter.source_offset, letter.queue) == (topic, 0, name)
    assert (letter.reason, letter.attempts, letter.last_error) == ("max-deliveries", 3, "boom 3")
    assert letter.first_failure_ms <= letter.last_failure_ms
    assert letter.value == b"poison"
    assert {h.key: h.value for h in letter.headers} == {"kind": b"order"}
    assert queues.describe(name).dead_letter_topic_records >= 1
    dry = queues.redrive(queue=name, dry_run=True)
    assert dry.dry_run
    assert [d.dlq_offset for d in dry.moved] == [letter.dlq_offset]
    assert queues.dead_letters(queue=name)[0].redriven is False
    moved = queues.redrive(queue=name, offset=letter.dlq_offset)
    assert len(moved.moved) == 1
    assert queues.redrive(queue=name).already_redriven == 1
    assert queues.dead_letters(queue=name) == []
    assert queues.dead_letters(queue=name, include_redriven=True)[0].redriven
    [again] = queues.receive(name, 1, wait_ms=5000)
    assert again.value == b"poison"
    assert again.delivery_count == 1
    queues.ack(again)


def test_dead_letter_filters(address: str, queues: Queues, topic: str) -> None:
    _produce(address, topic, [b"x1"], headers={"tenant": b"acme"})
    _produce(address, topic, [b"x2", b"x3"], headers={"tenant": b"other"})
    name = _queue(queues, topic)
    got = queues.receive(name, 3, wait_ms=2000)
    for message, error in zip(got, ["timeout at gateway", "card declined", "timeout"],
                              strict=True):
        queues.nack(message, error=error, reject=True)
    assert len(queues.dead_letters(queue=name)) == 3
    by_error = queues.dead_letters(queue=name, error_contains="timeout")
    assert sorted(d.value for d in by_error) == [b"x1", b"x3"]  # type: ignore[type-var]
    by_header = queues.dead_letters(queue=name, headers={"tenant": "acme"})
    assert [d.value for d in by_header] == [b"x1"]
    assert len(queues.dead_letters(queue=name, headers={"tenant": None})) == 3
    offsets = [d.dlq_offset for d in queues.dead_letters(queue=name)]
    in_range = queues.dead_letters(queue=name, offsets=(offsets[1], offsets[2]))
    assert [d.dlq_offset for d in in_range] == offsets[1:]
    assert queues.dead_letters(dlq_topic=f"{topic}.dlq", reason="max-deliveries") == []
    assert len(queues.dead_letters(queue=name, limit=2)) == 2
    moved = queues.redrive(queue=name, error_contains="declined")
    assert [d.value for d in moved.moved] == [b"x2"]
    with pytest.raises(ValueError, match="exactly one of queue and dlq_topic"):
        queues.dead_letters()


def test_lease_ids_need_their_queue() -> None:
    message = Message("q1", "lease-1", "t", 0, 0, None, b"v", (), 0, 1, 0)
    assert lease_ids(message, None) == ("q1", ["lease-1"])
    assert lease_ids(["a", "b"], "q2") == ("q2", ["a", "b"])
    with pytest.raises(ValueError, match="pass queue="):
        lease_ids("lease-1", None)
    with pytest.raises(ValueError, match="settle each queue's messages separately"):
        lease_ids([message], "q2")


def test_retry_queue_for_a_group_consumer(address: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=2)
    _produce(address, topic, [f"r{i}".encode() for i in range(6)])
    failed = []
    with Consumer(address, auto_offset_reset="earliest") as consumer:
        consumer.assign_all(topic)
        while len(failed) < 6:
            failed += consumer.poll(timeout_ms=1000)
    retry = RetryQueue(address, f"retry-{topic}", topic=topic, max_deliveries=2,
                       backoff=Backoff(initial_ms=400))
    with retry:
        started = time.monotonic()
        results = retry.retry(failed[:3], "downstream 503")
        assert [r.outcome for r in results] == ["retry-scheduled"] * 3
        assert retry.retry(failed[0], "again")[0].already_scheduled
        assert retry.retry([(failed[3].partition, failed[3].offset)], "x")[0].due_ms > 0
        assert retry.receive(10) == []  # not due yet
        got: list[Message] = []
        while len(got) < 4 and time.monotonic() - started < 10:
            got += retry.receive(10, wait_ms=1000)
        assert time.monotonic() - started >= 0.35
        assert sorted((m.partition, m.offset) for m in got) == sorted(
            (r.partition, r.offset) for r in failed[:4])
        assert all(m.delivery_count == 2 and m.attempts[0].outcome == "stream" for m in got)
        assert next(m for m in got if m.value == failed[0].value).attempts[0].error == (
            "downstream 503")
        retry.ack(got[:3])
        [result] = retry.nack(got[3], "still failing")
        assert result.outcome == "dead-lettered"  # its 2nd delivery was the last
    with Queues(address) as queues:
        name = _queue(queues, topic)
        with pytest.raises(QueueStateError, match="work queue"):
            queues.schedule_retry(name, failed[0])
        [letter] = queues.dead_letters(queue=f"retry-{topic}")
        assert letter.attempts == 2
        assert letter.last_error == "still failing"


def test_async_queues_and_the_consume_stream(address: str, queues: Queues, topic: str) -> None:
    _produce(address, topic, [f"v{i}".encode() for i in range(50)])
    name = _queue(queues, topic, max_deliveries=2, backoff=Backoff(initial_ms=0))

    async def scenario() -> tuple[int, int, int]:
        async with AsyncQueues(address, consumer="async") as client:
            assert (await client.describe(name)).stats.depth == 50
            stream = client.consume(name, max_batch=10)
            await stream.open(credit=20)
            acked = nacked = 0
            while acked < 50:  # the retried ones come back on the same stream
                batch = await asyncio.wait_for(stream.next_batch(), 10)
                assert len(batch) <= 10
                outcomes = await asyncio.gather(*(
                    stream.nack(m.lease_id, "odd") if m.offset % 2 and m.delivery_count == 1
                    else stream.ack(m.lease_id) for m in batch))
                for m, outcome in zip(batch, outcomes, strict=True):
                    if outcome is None:
                        acked += 1
                        assert m.delivery_count == 1 + m.offset % 2
                        assert [a.error for a in m.attempts] == ["odd"] * (m.offset % 2)
                    else:
                        assert outcome.outcome == "retry-scheduled"
                        nacked += 1
                stream.grant(len(batch))
            await stream.close()
            return acked, nacked, (await client.describe(name)).stats.depth

    assert asyncio.run(scenario()) == (50, 25, 0)


def test_settlement_callbacks_and_a_failing_one(address: str, queues: Queues, topic: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """``queue_settlement`` reports through its callback; a callback that raises is logged
    and the stream goes on settling the others."""
    _produce(address, topic, [b"a", b"b", b"c"])
    name = _queue(queues, topic)

    async def scenario() -> list[tuple[object, object]]:
        outcomes: list[tuple[object, object]] = []

        def failing(result: object, error: object) -> None:
            raise RuntimeError("a bug in the callback")

        async with AsyncQueues(address, consumer="callbacks") as client:
            stream = client.consume(name, max_batch=3)
            await stream.open(credit=3)
            batch: list[Message] = []
            while len(batch) < 3:
                batch += await asyncio.wait_for(stream.next_batch(), 10)
            stream.queue_settlement("ack", batch[0].lease_id, "", failing)
            stream.queue_settlement("ack", batch[1].lease_id, "",
                                    lambda r, e: outcomes.append((r, e)))
            stream.queue_settlement("nack", batch[2].lease_id, "later",
                                    lambda r, e: outcomes.append((r, e)))
            for _ in range(1000):  # the answer comes on the stream's reader
                if len(outcomes) == 2:
                    break
                await asyncio.sleep(0.01)
            await stream.close()
            return outcomes

    with caplog.at_level("ERROR", logger="moldau._queue_stream"):
        outcomes = asyncio.run(scenario())
    assert outcomes[0] == (None, None)  # acked, durable
    nacked, error = outcomes[1]
    assert error is None
    assert getattr(nacked, "outcome", None) == "retry-scheduled"
    assert "settlement callback for lease" in caplog.text
    assert queues.describe(name).stats.depth == 1  # only the nacked one is left
