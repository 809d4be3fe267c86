"""Consumer against a real broker: seeks, time lookups, batches, iteration, async, CRC."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import struct
import threading
import time
from collections.abc import Callable

import pytest

import moldau
import moldau.testing
from engine.records import encode_values
from moldau import Consumer, Producer, TopicPartition, _fetcher
from moldau._fetcher import Chunk
from tests.client.lending import poll_until_lent
from tests.client.lost_cancel import swallows_one_cancel


def fill(address: str, topic: str, count: int, partition: int = 0, start_ts: int = 0) -> None:
    """``count`` records valued 0..count-1, timestamps start_ts + i when start_ts is set."""
    with Producer(address) as producer:
        for i in range(count):
            producer.send(topic, str(i).encode(), partition=partition,
                          timestamp=start_ts + i if start_ts else None)


def test_seeks_and_positions(address: str, topic: str) -> None:
    fill(address, topic, 100)
    tp = TopicPartition(topic, 0)
    with Consumer(address) as consumer:
        consumer.assign([tp])
        assert consumer.position(tp) == 100  # latest by default, as Kafka
        assert consumer.poll(timeout_ms=100) == []
        consumer.seek(tp, 42)
        records = consumer.poll(timeout_ms=2000, max_records=5)
        assert [r.offset for r in records] == [42, 43, 44, 45, 46]
        assert [r.value for r in records] == [b"42", b"43", b"44", b"45", b"46"]
        assert consumer.position(tp) == 47
        consumer.seek_to_beginning()
        assert consumer.poll(timeout_ms=2000, max_records=1)[0].offset == 0
        consumer.seek_to_end()
        assert consumer.position(tp) == 100
        fill(address, topic, 1)
        (record,) = consumer.poll(timeout_ms=5000)
        assert (record.offset, record.value) == (100, b"0")
        with pytest.raises(ValueError, match="not assigned"):
            consumer.seek_to_end([(topic, 5)])


def test_seek_to_time(address: str, topic: str) -> None:
    base = 1_700_000_000_000
    fill(address, topic, 50, start_ts=base)
    with Consumer(address) as consumer:
        consumer.assign_all(topic)
        consumer.seek_to_time(base + 30)
        assert consumer.position((topic, 0)) == 30
        first = consumer.poll(timeout_ms=2000, max_records=1)[0]
        assert (first.offset, first.timestamp) == (30, base + 30)
        consumer.seek_to_time(base + 10_000)  # after everything: the end
        assert consumer.position((topic, 0)) == 50


def test_poll_batches_decodes_lazily_from_the_position(address: str, topic: str) -> None:
    with Producer(address) as producer:
        producer.send_many(topic, [b"v" * 100] * 3_000, partition=0).result(10)
        producer.send_many(topic, [b"w" * 100] * 3_000, partition=0).result(10)
    with Consumer(address, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, 0)])
        consumer.seek((topic, 0), 10)
        values: list[bytes | None] = []
        offsets = []
        while len(values) < 5_990:
            for batch in consumer.poll_batches(timeout_ms=2000):
                offsets.append((batch.first_offset, batch.last_offset, len(batch)))
                values.extend(batch.values())
        assert len(values) == 5_990
        assert offsets[0][0] == 10
        assert values[:2_990] == [b"v" * 100] * 2_990
        assert consumer.position((topic, 0)) == 6_000


def test_iteration_and_multiple_partitions(address: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=3)
    for partition in range(3):
        fill(address, topic, 10, partition=partition)
    seen = []
    with Consumer(address, auto_offset_reset="earliest") as consumer:
        consumer.assign_all(topic)
        assert sorted(consumer.assignment()) == [(topic, 0), (topic, 1), (topic, 2)]
        for record in consumer:
            seen.append((record.partition, record.offset))
            if len(seen) == 30:
                break
        consumer.assign([(topic, 1)])  # keeps partition 1 and its position
        assert consumer.assignment() == [(topic, 1)]
        assert consumer.position((topic, 1)) == 10
    assert sorted(seen) == [(p, o) for p in range(3) for o in range(10)]


def test_consumer_waits_for_new_records(address: str, topic: str) -> None:
    with Consumer(address) as consumer:
        consumer.assign([(topic, 0)])
        timer = threading.Timer(0.3, fill, (address, topic, 3))
        timer.start()
        started = time.monotonic()
        records = consumer.poll(timeout_ms=5000)
        timer.join()
        assert records
        assert time.monotonic() - started < 4


def test_a_waiting_poll_reads_the_push_in_its_own_thread(
    address: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blocking consumer lends its event loop to a poll that waits: the push is read and
    handed out by the polling thread, with no hand-off from the loop thread."""
    put_by: list[int] = []
    put = _fetcher.ChunkBuffer.put

    def traced_put(self: _fetcher.ChunkBuffer, chunk: Chunk) -> None:
        put_by.append(threading.get_ident())
        put(self, chunk)

    monkeypatch.setattr(_fetcher.ChunkBuffer, "put", traced_put)
    with Consumer(address) as consumer:
        consumer.assign([(topic, 0)])
        poll_until_lent(consumer)
        put_by.clear()
        timer = threading.Timer(0.2, fill, (address, topic, 3))
        timer.start()
        records = consumer.poll(timeout_ms=5000)
        timer.join()
        assert [r.value for r in records] != []
        assert put_by
        assert set(put_by) == {threading.get_ident()}


def test_close_from_another_thread_ends_a_waiting_poll(address: str, topic: str) -> None:
    consumer = Consumer(address)
    consumer.assign([(topic, 0)])
    for _ in range(3):
        consumer.poll(timeout_ms=20)  # the loop is lent to this thread now, or soon
    closer = threading.Timer(0.3, consumer.close)
    closer.start()
    started = time.monotonic()
    assert consumer.poll(timeout_ms=30_000) == []
    assert time.monotonic() - started < 10
    closer.join(15)
    assert not closer.is_alive()
    assert not consumer._thread._thread.is_alive()


def test_close_from_a_signal_handler_during_a_waiting_poll(address: str, topic: str) -> None:
    """A SIGTERM handler that closes the consumer runs inside the waiting poll, which runs the
    event loop in this (the main) thread: the close completes as the poll returns."""
    consumer = Consumer(address)
    consumer.assign([(topic, 0)])
    poll_until_lent(consumer)
    previous = signal.signal(signal.SIGALRM, lambda _signum, _frame: consumer.close())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        started = time.monotonic()
        assert consumer.poll(timeout_ms=30_000) == []
        assert time.monotonic() - started < 10
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert consumer._closed
    assert not consumer._thread._thread.is_alive()
    with pytest.raises(moldau.ClientClosedError):
        consumer.poll(timeout_ms=10)


def test_ctrl_c_during_a_waiting_poll_then_close(address: str, topic: str) -> None:
    """KeyboardInterrupt raised inside the borrowed loop leaves poll(); the consumer then
    goes on reading and closes cleanly, and a new one reads the same records."""
    fill(address, topic, 2)

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    consumer = Consumer(address, auto_offset_reset="earliest")
    consumer.assign([(topic, 0)])
    got: list[bytes | None] = []
    while len(got) < 2:
        got += [r.value for r in consumer.poll(timeout_ms=5000)]
    poll_until_lent(consumer)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            consumer.poll(timeout_ms=30_000)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    fill(address, topic, 1)  # the same consumer goes on (a REPL after Ctrl-C)
    deadline = time.monotonic() + 10
    while len(got) < 3 and time.monotonic() < deadline:
        got += [r.value for r in consumer.poll(timeout_ms=500)]
    assert got == [b"0", b"1", b"0"]
    started = time.monotonic()
    consumer.close()
    assert time.monotonic() - started < 10
    assert not consumer._thread._thread.is_alive()
    with Consumer(address, auto_offset_reset="earliest") as again:
        again.assign([(topic, 0)])
        values: list[bytes | None] = []
        deadline = time.monotonic() + 10
        while len(values) < 3 and time.monotonic() < deadline:
            values += [r.value for r in again.poll(timeout_ms=500)]
        assert values == [b"0", b"1", b"0"]


def test_async_consumer(address: str, topic: str) -> None:
    fill(address, topic, 20)

    async def run() -> list[int]:
        async with moldau.AsyncConsumer(address, auto_offset_reset="earliest") as consumer:
            await consumer.assign([(topic, 0)])
            offsets = []
            async for record in consumer:
                offsets.append(record.offset)
                if len(offsets) == 10:
                    break
            await consumer.seek((topic, 0), 15)
            batches = await consumer.poll_batches(timeout_ms=2000)
            offsets += [v for b in batches for v in range(b.first_offset, b.next_offset)]
            return offsets

    assert asyncio.run(run()) == [*range(10), *range(15, 20)]


def test_unknown_topic_and_partition(address: str, topic: str) -> None:
    with Consumer(address) as consumer:
        with pytest.raises(moldau.TopicNotFoundError):
            consumer.assign_all("no-such-topic")
        with pytest.raises(moldau.PartitionNotFoundError):
            consumer.assign([(topic, 3)])


def test_a_corrupted_batch_is_refused(address: str, topic: str) -> None:
    with Consumer(address) as consumer:
        consumer.assign([(topic, 0)])
        consumer.seek((topic, 0), 0)
        batch = bytearray(encode_values([b"a", b"b"]))
        struct.pack_into(">B", batch, len(batch) - 2, batch[-2] ^ 0xFF)  # flip value bits
        generation = consumer._generations[TopicPartition(topic, 0)]
        consumer._buffer.put(Chunk(TopicPartition(topic, 0), generation, bytes(batch), 2))
        with pytest.raises(moldau.CorruptRecordError, match="CRC"):
            consumer.poll(timeout_ms=100)


def test_a_partition_resumes_after_its_topic_is_recreated(address: str, topic: str) -> None:
    """A deleted topic is raised from poll once it is gone, and the partition stays assigned
    and tried again: once the topic is back, its records arrive without a new assign."""
    fill(address, topic, 5)
    with Consumer(address, auto_offset_reset="earliest") as consumer:
        consumer.assign_all(topic)
        assert len(consumer.poll(timeout_ms=5000, max_records=5)) == 5
        with moldau.Admin(address) as admin:
            admin.delete_topic(topic)
        deadline = time.monotonic() + 20
        raised: Exception | None = None
        while raised is None and time.monotonic() < deadline:
            try:
                consumer.poll(timeout_ms=200)
            except moldau.TopicNotFoundError as exc:
                raised = exc
        assert raised is not None, "the deleted topic was never reported"
        with moldau.Admin(address) as admin:
            admin.create_topic(topic, 1, {"durability": "async"})
        fill(address, topic, 3)
        records: list[moldau.ConsumerRecord] = []
        deadline = time.monotonic() + 20
        while len(records) < 3 and time.monotonic() < deadline:
            with contextlib.suppress(moldau.TopicNotFoundError):
                records += consumer.poll(timeout_ms=200)
        assert [(r.offset, r.value) for r in records] == [(0, b"0"), (1, b"1"), (2, b"2")]


def test_credit_is_given_back_in_bulk_and_never_runs_dry(address: str, topic: str) -> None:
    """4 KiB of credit, 3,000 records sent one batch each: many grants, no stall."""
    fill(address, topic, 3000)
    with Consumer(address, credit_bytes=4096) as consumer:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < 3000 and time.monotonic() < deadline:
            got += [r.value or b"" for r in consumer.poll(timeout_ms=500)]
        assert got == [str(i).encode() for i in range(3000)]


def test_grants_wait_for_a_quarter_of_the_credit() -> None:
    fetcher = _fetcher.Fetcher("127.0.0.1:1", _fetcher.ChunkBuffer(), credit_bytes=400,
                               auto_offset_reset="earliest")
    tp = TopicPartition("t", 0)
    stream = fetcher._streams[tp] = _fetcher._Stream(tp, 1, 0)
    stream.unconsumed = 400  # four pushes of 100 bytes delivered
    grants = []
    for _ in range(4):
        fetcher.consumed(tp, 1, 60)
        while not stream.credits.empty():
            grants.append(stream.credits.get_nowait())
    assert [g.credit_bytes for g in grants] == [120, 120]  # 60 alone is under 100
    assert (stream.unconsumed, stream.returned) == (160, 0)
    fetcher.consumed(tp, 1, 60)
    fetcher.consumed(tp, 2, 60)  # a stale generation: ignored
    assert stream.returned == 60


def test_the_blocking_consumer_wakes_its_loop_only_when_a_grant_is_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Consumed bytes add up in the polling thread; a wake-up per chunk was a self-pipe write
    in the path of every poll."""
    calls: list[tuple[object, ...]] = []
    tp = TopicPartition("t", 0)
    with Consumer("127.0.0.1:1", credit_bytes=400) as consumer:
        monkeypatch.setattr(consumer._thread, "call_soon", lambda _fn, *args: calls.append(args))
        for _ in range(3):
            consumer._grant(tp, 1, 40)  # the grant is due at 100 bytes: on the third
        consumer._grant(tp, 1, 10)
        consumer._grant(tp, 2, 90)  # a new generation starts from nothing
        consumer._grant(tp, 2, 20)
        monkeypatch.undo()
    assert calls == [(tp, 1, 120), (tp, 2, 110)]


def test_an_unexpected_fetch_failure_is_retried_not_a_silent_stop(
    address: str, topic: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fetch task that ended on an exception that is no RpcError left its partition unread
    for good, and raised into the next seek (or rebalance) that stopped the task."""
    fill(address, topic, 5)
    original = _fetcher.Fetcher._subscribe
    failures = [RuntimeError("a library bug")]

    def flaky(self: _fetcher.Fetcher, *args: object) -> object:
        if failures:
            raise failures.pop()
        return original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(_fetcher.Fetcher, "_subscribe", flaky)
    tp = TopicPartition(topic, 0)
    with caplog.at_level("WARNING", logger="moldau.consumer"), Consumer(address) as consumer:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        got: list[int] = []
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            got += [r.offset for r in consumer.poll(timeout_ms=200)]
        assert got == [0, 1, 2, 3, 4]
        failures.append(RuntimeError("again"))
        consumer.seek(tp, 3)  # stops a task that already retried once: must not raise
        later: list[int] = []
        while len(later) < 2 and time.monotonic() < deadline:
            later += [r.offset for r in consumer.poll(timeout_ms=200)]
        assert later == [3, 4]
    assert "failed unexpectedly; retrying" in caplog.text


def test_unsubscribe_ends_a_stream_task_that_lost_its_cancel() -> None:
    """One cancel() was lost this way during broker restarts, and the rebalance that stopped
    the partition waited for the task forever: poll() hung with records buffered."""

    async def scenario() -> tuple[bool, bool]:
        fetcher = _fetcher.Fetcher("127.0.0.1:1", _fetcher.ChunkBuffer(), credit_bytes=400,
                                   auto_offset_reset="earliest")
        tp = TopicPartition("t", 0)
        stream = fetcher._streams[tp] = _fetcher._Stream(tp, 1, 0)
        stream.task = asyncio.get_running_loop().create_task(swallows_one_cancel())
        await asyncio.sleep(0.01)  # the task waits in the preparation
        plain = asyncio.get_running_loop().create_task(swallows_one_cancel())
        await asyncio.sleep(0.01)
        plain.cancel()  # what unsubscribe used to do
        done, _ = await asyncio.wait({plain}, timeout=0.5)
        unsubscribing = asyncio.ensure_future(fetcher.unsubscribe(tp))
        ended, _ = await asyncio.wait({unsubscribing}, timeout=5)  # no cancel from outside
        plain.cancel()
        return bool(done), bool(ended) and stream.task.cancelled()

    single_cancel_ended, ended = asyncio.run(scenario())
    assert not single_cancel_ended  # the pattern really loses one cancel
    assert ended


@pytest.mark.parametrize("tcp", [False, True], ids=["grpc", "tcp"])
def test_a_broken_fetch_stream_leaves_no_task_pending(
    caplog: pytest.LogCaptureFixture, tcp: bool
) -> None:
    """grpc.aio (and the TCP call) leave the task reading a failed call's request stream
    waiting on it; the fetcher ends the stream, or each broker restart logged "Task was
    destroyed but it is pending!" as an ERROR in the application's log once that task was
    collected."""
    with moldau.testing.broker(tcp=tcp) as running:
        with moldau.Admin(running.address) as admin:
            admin.create_topic("broken", 1, {"durability": "async"})
        with Consumer(running.address, tcp_address=running.tcp_address or None) as consumer:
            consumer.assign([("broken", 0)])
            consumer.poll(timeout_ms=200)
            running.stop()  # the stream breaks; the fetcher retries after 0.1, 0.2, 0.4 s...
            with caplog.at_level(logging.ERROR, logger="asyncio"):
                time.sleep(1.5)
                gc.collect()
    assert "Task was destroyed but it is pending" not in caplog.text
