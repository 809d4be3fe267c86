"""The Python client: encode cost, and end-to-end produce/consume through a real broker.

``extra_info["records_per_round"]`` turns a round time into records/s. The end-to-end rounds
move ``E2E_RECORDS`` 100-byte records (``MOLDAU_BENCH_CLIENT_RECORDS`` overrides) to a
``durability=async`` topic, so the client and the gRPC path are measured rather than fsync
(see test_grpc_bench.py and test_log_bench.py for the broker alone). Runs once in CI with
``--benchmark-disable``.

    .venv/bin/pytest benchmarks/test_client_bench.py --benchmark-only \
        --benchmark-columns=min,median,max,rounds
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

import moldau
from moldau._accumulator import PendingBatch
from moldau.testing import RunningBroker, broker

RECORD_BYTES = 100
E2E_RECORDS = int(os.environ.get("MOLDAU_BENCH_CLIENT_RECORDS", "200000"))
ROUNDS = 5

_topics = itertools.count()
VALUES = [bytes([i % 251]) * RECORD_BYTES for i in range(E2E_RECORDS)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with broker(data_dir=tmp_path_factory.mktemp("client-bench") / "data") as running:
        yield running


def _topic(address: str) -> str:
    name = f"client-bench-{next(_topics)}"
    with moldau.Admin(address) as admin:
        admin.create_topic(name, 1, {"durability": "async"})
    return name


def _run(benchmark: Any, function: Any, records_per_round: int, rounds: int = ROUNDS) -> None:
    benchmark.extra_info["records_per_round"] = records_per_round
    benchmark.pedantic(function, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_encode_send_many_batch(benchmark: Any, codec: str) -> None:
    """What send_many does per batch on the client: 1,000 x 100-byte records, encoded."""
    values = VALUES[:1_000]
    parsed = moldau.producer.parse_codec(codec)

    def encode() -> bytes:
        batch = PendingBatch("t", 0, 0)
        batch.bulk_values, batch.count, batch.epoch, batch.base_sequence = values, 1_000, 0, 0
        return batch.encode(parsed, producer_id=1)

    benchmark.extra_info["records_per_round"] = 1_000
    benchmark(encode)


def test_produce_send_many(benchmark: Any, server: RunningBroker) -> None:
    topic = _topic(server.address)
    with moldau.Producer(server.address) as producer:
        _run(benchmark, lambda: producer.send_many(topic, VALUES, partition=0).result(60),
             E2E_RECORDS)


def test_produce_send_per_record(benchmark: Any, server: RunningBroker) -> None:
    topic = _topic(server.address)
    count = E2E_RECORDS // 4
    values = VALUES[:count]

    def produce() -> None:
        send = producer.send
        for value in values:
            send(topic, value, partition=0)
        producer.flush(60)

    with moldau.Producer(server.address) as producer:
        _run(benchmark, produce, count, rounds=3)


@pytest.fixture(scope="module")
def filled_topic(server: RunningBroker) -> str:
    topic = _topic(server.address)
    with moldau.Producer(server.address) as producer:
        producer.send_many(topic, VALUES, partition=0).result(60)
    return topic


def test_consume_poll_batches_values(benchmark: Any, server: RunningBroker,
                                     filled_topic: str) -> None:
    with moldau.Consumer(server.address) as consumer:
        consumer.assign([(filled_topic, 0)])

        def consume() -> None:
            consumer.seek((filled_topic, 0), 0)
            seen = 0
            while seen < E2E_RECORDS:
                for batch in consumer.poll_batches(timeout_ms=5_000):
                    seen += len(batch.values())

        _run(benchmark, consume, E2E_RECORDS)


def test_consume_poll_records(benchmark: Any, server: RunningBroker, filled_topic: str) -> None:
    with moldau.Consumer(server.address) as consumer:
        consumer.assign([(filled_topic, 0)])

        def consume() -> None:
            consumer.seek((filled_topic, 0), 0)
            seen = 0
            while seen < E2E_RECORDS:
                seen += len(consumer.poll(timeout_ms=5_000, max_records=10_000))

        _run(benchmark, consume, E2E_RECORDS, rounds=3)
