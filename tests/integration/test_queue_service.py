"""QueueService over a real server: competing consumers, leases, retries, dead letters, crashes.

Most tests share the session's server and use their own topics; the crash test runs its own
server and kills it with SIGKILL.
"""

from __future__ import annotations

import contextlib
import queue as queue_module
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from moldau.v1 import admin_pb2, common_pb2, fetch_pb2, produce_pb2, queues_pb2, queues_pb2_grpc
from tests.integration.support import StartServer, Stubs, make_stubs

Q = queues_pb2
_S = grpc.StatusCode


@pytest.fixture(scope="module")
def queues(stubs: Stubs) -> queues_pb2_grpc.QueueServiceStub:
    return queues_pb2_grpc.QueueServiceStub(stubs.channel)


def produce(stubs: Stubs, topic: str, values: list[bytes], *, partition: int | None = None,
            headers: list[common_pb2.Header] | None = None) -> None:
    for begin in range(0, len(values), 500):
        records = [common_pb2.Record(value=v, headers=headers or [])
                   for v in values[begin:begin + 500]]
        stubs.produce.Produce(produce_pb2.ProduceRequest(
            topic=topic, partition=partition, records=produce_pb2.RecordList(records=records)))


def declare(queues: Any, name: str, topic: str, **fields: Any) -> Q.DeclareQueueResponse:
    reply: Q.DeclareQueueResponse = queues.DeclareQueue(Q.DeclareQueueRequest(
        config=Q.QueueConfig(name=name, topic=topic, **fields)))
    return reply


def error_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    reason = dict(caught.value.trailing_metadata() or ()).get("moldau-error", "")
    return caught.value.code(), caught.value.details(), reason


def receive_all(queues: Any, name: str, *, wait_ms: int = 300) -> list[Q.Delivery]:
    """Receive and ack until a receive waits ``wait_ms`` for nothing."""
    got: list[Q.Delivery] = []
    while True:
        reply = queues.Receive(Q.ReceiveRequest(queue=name, max_records=500, wait_ms=wait_ms))
        if not reply.deliveries:
            return got
        got.extend(reply.deliveries)
        acked = queues.Ack(Q.AckRequest(queue=name,
                                        lease_ids=[d.lease_id for d in reply.deliveries]))
        assert not acked.failed


class StreamConsumer:
    """A Consume stream driven from a thread: credit, acks with correlation ids."""

    def __init__(self, stub: Any, queue: str, credit: int = 100) -> None:
        self.requests: queue_module.Queue[Q.ConsumeRequest | None] = queue_module.Queue()
        self.requests.put(Q.ConsumeRequest(start=Q.ConsumeStart(queue=queue, consumer="s"),
                                           credit=credit))
        self.call = stub.Consume(self._iterate())

    def _iterate(self) -> Iterator[Q.ConsumeRequest]:
        while True:
            request = self.requests.get()
            if request is None:
                return
            yield request

    def send(self, **fields: Any) -> None:
        self.requests.put(Q.ConsumeRequest(**fields))

    def close(self) -> None:
        self.requests.put(None)


# ---------------------------------------------------------------------------- definitions


def test_declare_is_idempotent_and_bad_input_is_explained(
    stubs: Stubs, queues: Any, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=2)
    first = declare(queues, f"{topic}-q", topic, lease_ms=5000,
                    backoff=Q.Backoff(initial_ms=0))
    assert first.created
    assert first.config.dlq_topic == f"{topic}.dlq"
    assert first.config.backoff.initial_ms == 0
    assert first.config.backoff.multiplier == 2.0
    again = queues.DeclareQueue(Q.DeclareQueueRequest(config=first.config))  # the echo
    assert not again.created

    code, message, reason = error_of(lambda: declare(queues, f"{topic}-q", topic, lease_ms=1))
    assert (code, reason) == (_S.ALREADY_EXISTS, "QueueExistsError")
    assert "another definition" in message
    code, message, _ = error_of(lambda: declare(queues, "q", "no-such-topic"))
    assert code == _S.NOT_FOUND
    assert "no-such-topic" in message
    code, message, _ = error_of(lambda: declare(queues, "bad name!", topic))
    assert code == _S.INVALID_ARGUMENT
    assert "letters, digits" in message
    code, message, _ = error_of(lambda: declare(queues, "q2", topic, max_deliveries=-1))
    assert code == _S.INVALID_ARGUMENT
    assert "max_deliveries" in message
    code, message, _ = error_of(lambda: declare(queues, "q3", topic,
                                                backoff=Q.Backoff(multiplier=0.5)))
    assert code == _S.INVALID_ARGUMENT
    assert "multiplier" in message
    code, message, _ = error_of(lambda: queues.Receive(Q.ReceiveRequest(queue="nope")))
    assert code == _S.NOT_FOUND
    assert "declare it first" in message
    code, message, _ = error_of(lambda: queues.Receive(
        Q.ReceiveRequest(queue=f"{topic}-q", wait_ms=60_000)))
    assert code == _S.INVALID_ARGUMENT
    assert "wait_ms" in message
    code, message, _ = error_of(lambda: queues.Ack(Q.AckRequest(queue=f"{topic}-q",
                                                                lease_ids=["junk"])))
    assert code == _S.INVALID_ARGUMENT
    assert "lease id" in message
    code, message, _ = error_of(lambda: list(queues.Consume(iter([Q.ConsumeRequest(credit=1)]))))
    assert code == _S.INVALID_ARGUMENT
    assert "start" in message
    code, _, _ = error_of(lambda: list(queues.Consume(iter([Q.ConsumeRequest(
        start=Q.ConsumeStart(queue="nope"), credit=1)]))))
    assert code == _S.NOT_FOUND

    listed = {q.config.name for q in queues.ListQueues(Q.ListQueuesRequest()).queues}
    assert f"{topic}-q" in listed
    queues.DeleteQueue(Q.DeleteQueueRequest(name=f"{topic}-q"))
    code, _, _ = error_of(lambda: queues.DescribeQueue(Q.DescribeQueueRequest(name=f"{topic}-q")))
    assert code == _S.NOT_FOUND


# ---------------------------------------------------------------------------- delivery


def test_competing_consumers_get_every_record_exactly_once(
    stubs: Stubs, queues: Any, new_topic: Callable[..., str]
) -> None:
    """Two unary and two streaming consumers share a queue; all ack."""
    topic = new_topic(partitions=3)
    declare(queues, f"{topic}-q", topic)
    values = [b"r%05d" % i for i in range(3000)]
    produce(stubs, topic, values)
    seen: list[bytes] = []
    acked = [0]
    lock = threading.Lock()

    def unary_worker() -> None:
        got = receive_all(queues, f"{topic}-q", wait_ms=500)
        with lock:
            seen.extend(d.value for d in got)
            acked[0] += len(got)

    consumers = [StreamConsumer(queues, f"{topic}-q", credit=200) for _ in range(2)]

    def stream_worker(consumer: StreamConsumer) -> None:
        correlation = 0
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end
            for response in consumer.call:
                if response.deliveries:
                    with lock:
                        seen.extend(d.value for d in response.deliveries)
                    correlation += 1
                    consumer.send(ack=[d.lease_id for d in response.deliveries],
                                  credit=len(response.deliveries), correlation_id=correlation)
                if response.settled.correlation_id:
                    assert not response.settled.failed
                    assert not response.settled.HasField("error")
                    with lock:
                        acked[0] += len(response.settled.acked)

    threads = [threading.Thread(target=unary_worker) for _ in range(2)]
    threads += [threading.Thread(target=stream_worker, args=(c,)) for c in consumers]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while acked[0] < len(values) and time.monotonic() < deadline:
        time.sleep(0.02)
    for consumer in consumers:
        consumer.close()
        consumer.call.cancel()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(seen) == values  # each record once, none missing
    assert acked[0] == len(values)
    stats = queues.DescribeQueue(Q.DescribeQueueRequest(name=f"{topic}-q")).stats
    assert (stats.depth, stats.in_flight, stats.acked) == (0, 0, 3000)


def test_a_crashed_consumers_leases_come_back_after_the_lease(
    stubs: Stubs, queues: Any, new_topic: Callable[..., str]
) -> None:
    topic = new_topic()
    declare(queues, f"{topic}-q", topic, lease_ms=1000)
    produce(stubs, topic, [b"a", b"b", b"c"])
    crashed = StreamConsumer(queues, f"{topic}-q", credit=10)
    first = next(iter(crashed.call))
    assert len(first.deliveries) == 3
    leased_at = time.monotonic()
    crashed.call.cancel()  # the consumer dies without acking
    early = queues.Receive(Q.ReceiveRequest(queue=f"{topic}-q", max_records=10, wait_ms=300))
    assert not early.deliveries  # still leased
    got: list[Q.Delivery] = []
    while len(got) < 3 and time.monotonic() - leased_at < 5:
        got += queues.Receive(Q.ReceiveRequest(queue=f"{topic}-q", max_records=10,
                                               wait_ms=3000)).deliveries
    elapsed = time.monotonic() - leased_at
    assert sorted(d.value for d in got) == [b"a", b"b", b"c"]
    assert {d.delivery_count for d in got} == {2}
    assert {a.outcome for d in got for a in d.attempts} == {"expired"}
    assert 0.9 <= elapsed < 2.5


def test_nack_retry_follows_the_backoff(
    stubs: Stubs, queues: Any, new_topic: Callable[..., str]
) -> None:
    topic = new_topic()
    declare(queues, f"{topic}-q", topic,
            backoff=Q.Backoff(initial_ms=400, multiplier=2.0, max_ms=10_000))
    produce(stubs, topic, [b"job"])
    (delivery,) = queues.Receive(Q.ReceiveRequest(queue=f"{topic}-q", wait_ms=1000)).deliveries
    intervals = []
    for expected_count in (2, 3):
        nacked_ms = time.time() * 1000
        (result,) = queues.Nack(Q.NackRequest(queue=f"{topic}-q", lease_ids=[delivery.lease_id],
                                              error="flaky", consumer="w1")).results
        assert result.outcome == Q.NACK_OUTCOME_RETRY_SCHEDULED
        (delivery,) = queues.Receive(Q.ReceiveRequest(queue=f"{topic}-q",
                                                      wait_ms=5000)).deliveries
        intervals.append(time.time() * 1000 - nacked_ms)
        assert abs(result.due_ms - nacked_ms) - 400 * (expected_count - 1) < 100
        assert delivery.delivery_count == expected_count
        assert delivery.attempts[-1].error == "flaky"
        assert delivery.attempts[-1].consumer == "w1"
    assert 380 <= intervals[0] < 700
    assert 780 <= intervals[1] < 1100


def test_dead_letters_after_max_deliveries_and_redrive(
    stubs: Stubs, queues: Any, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=2)
    name = f"{topic}-q"
    declare(queues, name, topic, max_deliveries=2, backoff=Q.Backoff(initial_ms=0))
    # before the first letter the queue's dead-letter topic does not exist: none, not an error
    by_queue = Q.DeadLetterSelection(queue=name)
    assert not queues.ListDeadLetters(Q.ListDeadLettersRequest(selection=by_queue)).dead_letters
    assert not queues.Redrive(Q.RedriveRequest(selection=by_queue)).moved
    code, _, _ = error_of(lambda: queues.ListDeadLetters(Q.ListDeadLettersRequest(
        selection=Q.DeadLetterSelection(dlq_topic=f"{topic}.dlq"))))
    assert code == _S.NOT_FOUND  # named explicitly, a missing topic is NOT_FOUND
    tag = [common_pb2.Header(key="tenant", value=b"acme")]
    produce(stubs, topic, [b"poison"], partition=1, headers=tag)
    produce(stubs, topic, [b"reject-me"], partition=0)
    outcomes = []
    for _ in range(2):
        (d,) = queues.Receive(Q.ReceiveRequest(queue=name, wait_ms=2000)).deliveries
        if d.value == b"reject-me":
            (r,) = queues.Nack(Q.NackRequest(queue=name, lease_ids=[d.lease_id],
                                             action=Q.NACK_ACTION_REJECT,
                                             error="bad shape")).results
            outcomes.append(r.outcome)
            (d,) = queues.Receive(Q.ReceiveRequest(queue=name, wait_ms=2000)).deliveries
        (r,) = queues.Nack(Q.NackRequest(queue=name, lease_ids=[d.lease_id],
                                         error=f"timeout {d.delivery_count}")).results
        outcomes.append(r.outcome)
    assert sorted(outcomes) == sorted([Q.NACK_OUTCOME_DEAD_LETTERED,
                                       Q.NACK_OUTCOME_RETRY_SCHEDULED,
                                       Q.NACK_OUTCOME_DEAD_LETTERED])
    stats = queues.DescribeQueue(Q.DescribeQueueRequest(name=name))
    assert (stats.stats.depth, stats.stats.dead_lettered, stats.dead_letter_topic_records) == (
        0, 2, 2)

    letters = queues.ListDeadLetters(Q.ListDeadLettersRequest(
        selection=Q.DeadLetterSelection(queue=name))).dead_letters
    by_value = {x.value: x for x in letters}
    poison = by_value[b"poison"]
    assert (poison.source_topic, poison.source_partition, poison.source_offset) == (topic, 1, 0)
    assert (poison.reason, poison.attempts, poison.last_error) == ("max-deliveries", 2,
                                                                   "timeout 2")
    assert poison.first_failure_ms <= poison.last_failure_ms
    assert [(h.key, h.value) for h in poison.headers] == [("tenant", b"acme")]
    assert by_value[b"reject-me"].reason == "rejected"
    # the raw dead letter carries the moldau.dlq.* headers
    raw = stubs.fetch.Fetch(fetch_pb2.FetchRequest(topic=f"{topic}.dlq", offset=poison.dlq_offset,
                                                   decoded=True, max_records=1)).records[0]
    headers = {h.key: h.value for h in raw.headers}
    assert headers["moldau.dlq.source-topic"] == topic.encode()
    assert headers["moldau.dlq.source-offset"] == b"0"
    assert headers["moldau.dlq.attempts"] == b"2"
    assert headers["moldau.dlq.last-error"] == b"timeout 2"

    selection = Q.DeadLetterSelection(
        queue=name, headers=[common_pb2.Header(key="tenant", value=b"acme")])
    dry = queues.Redrive(Q.RedriveRequest(selection=selection, dry_run=True))
    assert dry.dry_run
    assert [m.value for m in dry.moved] == [b"poison"]
    moved = queues.Redrive(Q.RedriveRequest(selection=selection))
    assert [m.value for m in moved.moved] == [b"poison"]
    (back,) = queues.Receive(Q.ReceiveRequest(queue=name, wait_ms=3000)).deliveries
    assert (back.value, back.partition, back.delivery_count) == (b"poison", 1, 1)
    assert [(h.key, h.value) for h in back.headers] == [("tenant", b"acme")]
    queues.Ack(Q.AckRequest(queue=name, lease_ids=[back.lease_id]))
    again = queues.Redrive(Q.RedriveRequest(selection=selection))
    assert (len(again.moved), again.already_redriven) == (0, 1)
    by_error = queues.ListDeadLetters(Q.ListDeadLettersRequest(
        selection=Q.DeadLetterSelection(dlq_topic=f"{topic}.dlq", error_contains="shape")))
    assert [x.value for x in by_error.dead_letters] == [b"reject-me"]
    code, message, _ = error_of(lambda: queues.Redrive(Q.RedriveRequest(
        selection=Q.DeadLetterSelection(queue=name, range=Q.OffsetRange(first=5, last=2)))))
    assert code == _S.INVALID_ARGUMENT
    assert "first <= last" in message
    code, message, _ = error_of(lambda: queues.Redrive(Q.RedriveRequest()))
    assert code == _S.INVALID_ARGUMENT
    assert "dlq_topic" in message


def test_extend_and_release(stubs: Stubs, queues: Any, new_topic: Callable[..., str]) -> None:
    topic = new_topic()
    declare(queues, f"{topic}-q", topic, lease_ms=500)
    produce(stubs, topic, [b"a", b"b"])
    got = queues.Receive(Q.ReceiveRequest(queue=f"{topic}-q", max_records=2,
                                          wait_ms=1000)).deliveries
    a, b = sorted(got, key=lambda d: d.value)
    extended = queues.ExtendLease(Q.ExtendLeaseRequest(queue=f"{topic}-q",
                                                       lease_ids=[a.lease_id], lease_ms=5000))
    assert extended.extended[0].lease_expires_ms > a.lease_expires_ms + 4000
    released = queues.Release(Q.ReleaseRequest(queue=f"{topic}-q", lease_ids=[b.lease_id]))
    assert list(released.released) == [b.lease_id]
    (again,) = queues.Receive(Q.ReceiveRequest(queue=f"{topic}-q", wait_ms=1000)).deliveries
    assert (again.value, again.delivery_count) == (b"b", 1)  # a release costs no attempt
    assert list(queues.Ack(Q.AckRequest(queue=f"{topic}-q", lease_ids=[again.lease_id])).acked)
    time.sleep(0.8)  # past a's original lease: the extension holds it
    assert not queues.Receive(Q.ReceiveRequest(queue=f"{topic}-q", wait_ms=0)).deliveries
    stale = queues.Ack(Q.AckRequest(queue=f"{topic}-q", lease_ids=[b.lease_id]))
    assert not stale.acked
    assert "already done" in stale.failed[0].reason


def test_stream_consumer_retries_through_a_retry_queue(
    stubs: Stubs, queues: Any, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=2)
    retry = f"{topic}.retry"
    declare(queues, retry, topic, mode=Q.QUEUE_MODE_RETRY, max_deliveries=3,
            backoff=Q.Backoff(initial_ms=300))
    declare(queues, f"{topic}-work", topic)
    produce(stubs, topic, [b"ok", b"fails"], partition=1)
    assert not queues.Receive(Q.ReceiveRequest(queue=retry, wait_ms=200)).deliveries
    scheduled = queues.ScheduleRetry(Q.ScheduleRetryRequest(
        queue=retry, topic=topic, consumer="group-a",
        records=[Q.RetryRecord(partition=1, offset=1, error="db down")]))
    (row,) = scheduled.results
    assert row.outcome == Q.NACK_OUTCOME_RETRY_SCHEDULED
    assert not row.already_scheduled
    again = queues.ScheduleRetry(Q.ScheduleRetryRequest(
        queue=retry, records=[Q.RetryRecord(partition=1, offset=1)]))
    assert again.results[0].already_scheduled
    started = time.monotonic()
    (delivery,) = queues.Receive(Q.ReceiveRequest(queue=retry, wait_ms=3000)).deliveries
    assert time.monotonic() - started >= 0.2
    assert (delivery.value, delivery.offset, delivery.delivery_count) == (b"fails", 1, 2)
    assert (delivery.attempts[0].outcome, delivery.attempts[0].error) == ("stream", "db down")
    queues.Ack(Q.AckRequest(queue=retry, lease_ids=[delivery.lease_id]))

    code, message, _ = error_of(lambda: queues.ScheduleRetry(Q.ScheduleRetryRequest(
        queue=retry, topic="other", records=[Q.RetryRecord(partition=1, offset=0)])))
    assert code == _S.INVALID_ARGUMENT
    assert "retries records of" in message
    code, message, _ = error_of(lambda: queues.ScheduleRetry(Q.ScheduleRetryRequest(
        queue=retry, records=[Q.RetryRecord(partition=1, offset=99)])))
    assert code == _S.INVALID_ARGUMENT
    assert "records are 0 to 1" in message
    code, message, _ = error_of(lambda: queues.ScheduleRetry(Q.ScheduleRetryRequest(
        queue=f"{topic}-work", records=[Q.RetryRecord(partition=1, offset=0)])))
    assert code == _S.FAILED_PRECONDITION
    assert "work queue" in message


# ---------------------------------------------------------------------------- crash


def test_kill_9_loses_nothing_acked_or_unacked(tmp_path: Path,
                                               start_server: StartServer) -> None:
    """Consumers ack while the server is killed; after a restart every record never acked
    comes back, no confirmed ack is delivered again, and only records whose ack was in flight
    at the kill may go either way."""
    data = tmp_path / "crash"
    process = start_server(data_dir=data)
    values = [b"c%05d" % i for i in range(4000)]
    confirmed: set[bytes] = set()
    in_flight: set[bytes] = set()  # ack sent, answer not seen: may or may not be durable
    stop = threading.Event()
    with grpc.insecure_channel(process.address) as channel:
        stubs = make_stubs(channel)
        stub = queues_pb2_grpc.QueueServiceStub(channel)
        stubs.admin.CreateTopic(admin_pb2.CreateTopicRequest(name="crash", partitions=3))
        declare(stub, "crash-q", "crash")
        produce(stubs, "crash", values)

        def worker() -> None:
            while not stop.is_set():
                try:
                    got = stub.Receive(Q.ReceiveRequest(queue="crash-q", max_records=50,
                                                        wait_ms=200)).deliveries
                    in_flight.update(d.value for d in got)
                    reply = stub.Ack(Q.AckRequest(queue="crash-q",
                                                  lease_ids=[d.lease_id for d in got]))
                except grpc.RpcError:
                    return
                by_lease = {d.lease_id: d.value for d in got}
                confirmed.update(by_lease[lease] for lease in reply.acked)
                in_flight.difference_update(by_lease.values())

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(confirmed) < 1500 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.kill()  # SIGKILL mid-run: acks in flight, records leased
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert 1500 <= len(confirmed) < len(values)
    restarted = start_server(data_dir=data)
    with grpc.insecure_channel(restarted.address) as channel:
        stub = queues_pb2_grpc.QueueServiceStub(channel)
        after = [d.value for d in receive_all(stub, "crash-q", wait_ms=500)]
    assert not set(after) & confirmed  # no acked record comes back
    assert len(after) == len(set(after))  # and each comes back once
    assert set(values) - confirmed - in_flight <= set(after)  # nothing unacked is lost
    assert set(after) | confirmed | in_flight == set(values)
    assert len(in_flight) <= 3 * 50  # at most one batch per consumer was in doubt
