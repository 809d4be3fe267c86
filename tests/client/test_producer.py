"""Producer against a real broker: codecs, bulk sends, ordering, partitioning, retries."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import moldau
from engine.partitioner import partition_for_key
from moldau import Consumer, ConsumerRecord, Header, Producer
from moldau._sender import Sender
from moldau.testing import _free_port, broker

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def read_all(address: str, topic: str, expected: int, timeout_s: float = 10) -> list[
    ConsumerRecord
]:
    """Every record of ``topic`` from the beginning, once ``expected`` have arrived."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    with Consumer(address, auto_offset_reset="earliest") as consumer:
        consumer.assign_all(topic)
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(consumer.poll(timeout_ms=200, max_records=100_000))
        records.extend(consumer.poll(timeout_ms=100))  # nothing more may arrive
    return records


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_with_every_codec(address: str, topic: str, codec: str) -> None:
    with Producer(address, codec=codec, linger_ms=1) as producer:
        futures = [
            producer.send(topic, f"value-{i}".encode() * 5, key=f"k{i}".encode(),
                          headers={"n": str(i).encode(), "null": None}, timestamp=1_000 + i)
            for i in range(300)
        ]
        bulk = producer.send_many(topic, [b"b" * 100] * 2_000, partition=0)
        metadata = [f.result(10) for f in futures]
        batches = bulk.result(10)
    assert [m.offset for m in metadata] == list(range(300))
    assert [m.timestamp for m in metadata] == [1_000 + i for i in range(300)]
    assert batches[0].base_offset == 300
    assert sum(b.record_count for b in batches) == 2_000
    records = read_all(address, topic, 2_300)
    assert len(records) == 2_300
    assert [r.offset for r in records] == list(range(2_300))
    first = records[7]
    assert (first.key, first.value, first.timestamp) == (b"k7", b"value-7" * 5, 1_007)
    assert first.headers == (Header("n", b"7"), Header("null", None))
    assert {r.value for r in records[300:]} == {b"b" * 100}


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_send_many_with_varied_values_and_keys(address: str, new_topic: Callable[..., str],
                                               codec: str) -> None:
    topic = new_topic(partitions=3)
    values = [f"v{i}".encode() * (i % 7 + 1) for i in range(5_000)]
    keys = [f"key-{i % 50}".encode() for i in range(5_000)]
    with Producer(address, codec=codec, batch_size=16 * 1024) as producer:
        batches = producer.send_many(topic, values, keys=keys).result(10)
    assert sum(b.record_count for b in batches) == 5_000
    records = read_all(address, topic, 5_000)
    assert sorted(r.value for r in records if r.value) == sorted(values)
    for record in records:
        assert record.key is not None
        assert record.partition == partition_for_key(record.key, 3)


def test_order_is_kept_per_partition(address: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=3)
    with Producer(address, linger_ms=0, batch_size=2_000) as producer:
        for i in range(3_000):
            producer.send(topic, str(i).encode(), key=f"key-{i % 10}".encode())
    records = read_all(address, topic, 3_000)
    assert len(records) == 3_000
    by_key: dict[bytes, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.key is not None
        assert record.value is not None
        by_key.setdefault(record.key, []).append(int(record.value))
    for sequence in by_key.values():
        assert sequence == sorted(sequence)


def test_keyed_partitioning_matches_kafka(address: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=7)
    keys = [f"customer-{i}".encode() for i in range(200)]
    with Producer(address) as producer:
        metadata = [producer.send(topic, b"x", key=key).result(10) for key in keys[:20]]
        futures = [producer.send(topic, b"x", key=key) for key in keys]
    assert [m.partition for m in metadata] == [partition_for_key(k, 7) for k in keys[:20]]
    assert [f.result().partition for f in futures] == [partition_for_key(k, 7) for k in keys]


def test_unkeyed_records_stick_then_move_on(address: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=4)
    with Producer(address, batch_size=1_000) as producer:
        futures = [producer.send(topic, b"v" * 84) for _ in range(400)]
    partitions = [f.result().partition for f in futures]
    assert set(partitions) == {0, 1, 2, 3}
    changes = sum(1 for a, b in itertools.pairwise(partitions) if a != b)
    assert changes < 60  # sticky: whole batches go to one partition


def test_lost_acknowledgement_is_resent_and_deduplicated(
    address: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker stores a batch but the ack is lost: the resend must not duplicate it."""
    original = Sender._on_response
    dropped: list[int] = []

    def lose_first_ack(self: Sender, response: object) -> None:
        if not dropped:
            dropped.append(1)
            self._stream_failed(self._call, moldau.UnavailableError("ack lost", None))
            return
        original(self, response)  # type: ignore[arg-type]

    monkeypatch.setattr(Sender, "_on_response", lose_first_ack)
    with Producer(address, retry_backoff_ms=10) as producer:
        batches = producer.send_many(topic, [b"once"] * 100, partition=0).result(10)
        second = producer.send(topic, b"after", partition=0).result(10)
    assert dropped
    assert batches[0].base_offset == 0
    assert second.offset == 100
    records = read_all(address, topic, 101)
    assert len(records) == 101


def test_a_broken_stream_keeps_the_order_of_resends(
    address: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream breaks while one drain is being written: the batches not yet written wait
    behind the requeued ones instead of going ahead on a new stream (where the broker would
    store them first, and the resends could fall out of the five batches it remembers)."""
    original_send_all, original_send = Sender._send_all, Sender._send
    writes: list[tuple[int, int, int, int]] = []  # stream, partition, base sequence, count
    cut = {"armed": False, "done": False}

    async def send_all(self: Sender, batches: list[Any]) -> None:
        cut["armed"] = len(batches) >= 3 and not cut["done"]
        await original_send_all(self, batches)

    async def send(self: Sender, batch: Any) -> Any:
        stream = await original_send(self, batch)
        writes.append((id(stream), batch.partition, batch.base_sequence, batch.count))
        if cut["armed"]:  # the reader saw the connection drop during this write
            cut["armed"], cut["done"] = False, True
            self._stream_failed(stream, moldau.UnavailableError("connection lost", None))
        return stream

    monkeypatch.setattr(Sender, "_send_all", send_all)
    monkeypatch.setattr(Sender, "_send", send)

    async def run() -> list[list[moldau.BatchMetadata]]:
        async with moldau.AsyncProducer(address, retry_backoff_ms=10) as producer:
            futures = [await producer.send_many(topic, [b"%d" % n] * 20, partition=0)
                       for n in range(10)]
            await producer.flush(10)
            return [await future for future in futures]

    results = asyncio.run(run())
    assert cut["done"], "no drain held three batches"
    assert [b.base_offset for batches in results for b in batches] == list(range(0, 200, 20))
    by_stream: dict[int, list[tuple[int, int]]] = {}
    for stream, _, sequence, count in writes:
        by_stream.setdefault(stream, []).append((sequence, count))
    for sent in by_stream.values():  # each stream carries one contiguous run of sequences
        for (sequence, count), (following, _) in itertools.pairwise(sent):
            assert following == sequence + count, writes
    records = read_all(address, topic, 200)
    assert [r.value for r in records] == [b"%d" % n for n in range(10) for _ in range(20)]


def test_broker_restart_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    port = _free_port()
    listen = ["--listen", f"127.0.0.1:{port}"]
    data = tmp_path / "data"
    quick = {"MOLDAU_SHUTDOWN_GRACE_MS": "200"}  # the producer's stream stays open
    with broker(data_dir=data, extra_args=listen, env=quick) as running:
        with moldau.Admin(running.address) as admin:
            admin.create_topic("restart", 2)
        producer = Producer(running.address, retry_backoff_ms=20)
        first = [producer.send("restart", str(i).encode(), key=str(i).encode())
                 for i in range(500)]
        producer.flush(10)
    # the broker is down: these wait in the producer, retried until it is back
    later = [producer.send("restart", str(i).encode(), key=str(i).encode())
             for i in range(500, 1_000)]
    time.sleep(0.3)
    with broker(data_dir=data, extra_args=listen, env=quick) as running:
        producer.flush(20)
        producer.close()
        assert all(f.exception() is None for f in first + later)
        records = read_all(running.address, "restart", 1_000)
    assert sorted(int(r.value or b"") for r in records) == list(range(1_000))


def test_full_buffer_blocks_then_raises() -> None:
    producer = Producer("127.0.0.1:1", buffer_memory=1_000, max_block_ms=200,
                        delivery_timeout_ms=60_000)
    try:
        pending = producer.send("nowhere", b"x" * 900, partition=0)
        started = time.monotonic()
        with pytest.raises(moldau.BufferFullError, match="buffer_memory"):
            producer.send("nowhere", b"x" * 900, partition=0)
        assert 0.15 < time.monotonic() - started < 2
    finally:
        producer.close(timeout=0)
    with pytest.raises(moldau.ClientClosedError):
        pending.result(1)
    with pytest.raises(moldau.ClientClosedError):
        producer.send("nowhere", b"x")


def test_errors_reach_the_future_or_the_caller(address: str, new_topic: Callable[..., str]
                                              ) -> None:
    small = new_topic(configs={"max.message.bytes": "1024"})
    with Producer(address) as producer:
        with pytest.raises(moldau.TopicNotFoundError, match="does not exist"):
            producer.send("no-such-topic", b"x")
        missing = producer.send("no-such-topic", b"x", partition=0)
        too_large = producer.send(small, b"x" * 2_000)
        producer.flush(10)
        fine = producer.send(small, b"x" * 100)
        with pytest.raises(TypeError):
            producer.send(small, "not bytes")  # type: ignore[arg-type]
        producer.flush(10)
    with pytest.raises(moldau.TopicNotFoundError):
        missing.result()
    error = too_large.exception()
    assert isinstance(error, moldau.RecordTooLargeError), error
    assert error.code is not None
    assert error.code.name == "RESOURCE_EXHAUSTED"
    assert fine.result().offset == 0  # the next batch went through after the failed one


def test_async_producer(address: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=2)

    async def run() -> tuple[moldau.RecordMetadata, list[moldau.BatchMetadata]]:
        async with moldau.AsyncProducer(address, codec="zstd") as producer:
            future = await producer.send(topic, b"hello", key=b"k")
            bulk = await producer.send_many(topic, [b"x" * 50] * 1_000, partition=1)
            futures = [await producer.send(topic, str(i).encode()) for i in range(100)]
            await producer.flush()
            assert all(f.done() for f in futures)
            return await future, await bulk

    first, batches = asyncio.run(run())
    assert first.partition == partition_for_key(b"k", 2)
    assert sum(b.record_count for b in batches) == 1_000
    assert len(read_all(address, topic, 1_101)) == 1_101


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="codec"):
        Producer("127.0.0.1:1", codec="brotli")
    with pytest.raises(ValueError, match=r"1\.\.5"):
        Producer("127.0.0.1:1", max_in_flight_per_partition=6)
