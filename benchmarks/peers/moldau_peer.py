"""Moldau through its Python client (``moldau.Producer.send_many``, ``Consumer.poll_batches``).

Started as ``python -m grpc_api --listen 127.0.0.1:0 --tcp-listen 127.0.0.1:0 --data-dir TMP``
(grpc_api.testing's ServerProcess); the clients produce and subscribe on the TCP port (the
lower-latency framing, docs/tcp-port.md) and make metadata calls on gRPC.
``MOLDAU_PEER_TRANSPORT=grpc`` runs everything over gRPC instead. Variants are topic configs on
one server: ``durability=fsync`` (the default: a batch is acknowledged after its segment is
fsynced, by group commit) and ``durability=async`` (acknowledged after the write to the OS).
Partition ``p`` is the topic's partition ``p``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    REPO,
    E2EJob,
    Gate,
    Histogram,
    Job,
    Part,
    PeerUnavailable,
    Variant,
    e2e_values,
    latencies_us,
    pace,
    value_pool,
)

_CHUNK = 10_000  # records per send_many call (send_many cuts them into batch_size batches)


@dataclass(frozen=True, slots=True)
class MoldauClient:
    address: str
    tcp_address: str | None = None  # produce and subscribe go to the TCP port when set

    def create_topic(self, topic: str, partitions: int, variant: Variant) -> None:
        from moldau import Admin

        with Admin(self.address) as admin:
            admin.create_topic(topic, partitions, {"durability": variant.name})

    def produce(self, job: Job, gate: Gate) -> Part:
        from moldau import Producer

        pool = value_pool(job.record_size)
        counts = dict.fromkeys(job.partitions, 0)
        futures = []
        with Producer(self.address, linger_ms=5, tcp_address=self.tcp_address) as producer:
            producer.partition_count(job.topic)
            gate()
            started = time.monotonic()
            stop_at = started + job.max_seconds
            sent = 0
            turn = 0
            while sent < job.records and time.monotonic() < stop_at:
                count = min(_CHUNK, job.records - sent)
                partition = job.partitions[turn % len(job.partitions)]
                futures.append((producer.send_many(job.topic, pool[:count],
                                                   partition=partition), partition, count))
                sent += count
                turn += 1
            for future, partition, count in futures:
                future.result(120)
                counts[partition] += count
            ended = time.monotonic()
        return Part(sent, sent * job.record_size, started, ended, counts)

    def consume(self, job: Job, gate: Gate) -> Part:
        from moldau import Consumer

        with Consumer(self.address, auto_offset_reset="earliest",
                      tcp_address=self.tcp_address) as consumer:
            consumer.assign([(job.topic, p) for p in job.partitions])
            consumer.seek_to_beginning()
            gate()
            started = time.monotonic()
            stop_at = started + job.max_seconds
            records = size = 0
            while records < job.records and time.monotonic() < stop_at:
                for batch in consumer.poll_batches(timeout_ms=1000):
                    values = batch.values()
                    records += len(values)
                    size += sum(map(len, values))  # type: ignore[arg-type]
            ended = time.monotonic()
        return Part(records, size, started, ended)

    def e2e_produce(self, job: E2EJob, gate: Gate) -> Part:
        from moldau import Producer

        failed: list[BaseException] = []

        def check(future: Any) -> None:
            if future.exception() is not None and not failed:
                failed.append(future.exception())

        # linger 0: a chunk is sent as soon as it is queued (the latency setting). The
        # futures are not kept: a list of one per chunk grows the heap for the whole run,
        # and CPython's full collections over it stall the sender for tens of ms.
        with Producer(self.address, linger_ms=0, tcp_address=self.tcp_address) as producer:
            producer.partition_count(job.topic)
            gate()
            started = time.monotonic()
            for due, count in pace(job.rate, job.records, started, job.warmup_s):
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                values = e2e_values(due, count, job.record_size)
                producer.send_many(job.topic, values, partition=0).add_done_callback(check)
            producer.flush(60)
            if failed:
                raise failed[0]
            ended = time.monotonic()
        return Part(job.records, job.records * job.record_size, started, ended)

    def e2e_consume(self, job: E2EJob, gate: Gate) -> Part:
        from moldau import Consumer

        histogram = Histogram()
        received = 0
        with Consumer(self.address, auto_offset_reset="earliest",
                      tcp_address=self.tcp_address) as consumer:
            consumer.assign([(job.topic, 0)])
            consumer.seek_to_beginning()
            gate()
            started = time.monotonic()
            stop_at = started + job.timeout_s
            while received < job.records and time.monotonic() < stop_at:
                for batch in consumer.poll_batches(timeout_ms=100):
                    values = batch.values()
                    histogram.record_many(latencies_us(values, time.time_ns()))  # type: ignore[arg-type]
                    received += len(values)
            ended = time.monotonic()
        return Part(received, received * job.record_size, started, ended,
                    histogram=tuple(histogram.to_list()))


class MoldauServer:
    system = "moldau"

    def __init__(self) -> None:
        self._server: object | None = None
        self.transport = os.environ.get("MOLDAU_PEER_TRANSPORT", "tcp")
        if self.transport not in ("tcp", "grpc"):
            raise PeerUnavailable(f"MOLDAU_PEER_TRANSPORT must be tcp or grpc, "
                                  f"not {self.transport!r}")
        self.client_library = (
            "moldau (Python; produce/subscribe on the TCP port, metadata on gRPC)"
            if self.transport == "tcp" else "moldau (Python, gRPC)"
        )

    def variants(self) -> list[Variant]:
        return [
            Variant("fsync", "fsync before ack (group commit)"),
            Variant("async", "ack after write to OS, no fsync"),
        ]

    def ensure_installed(self) -> None:
        if not (REPO / "grpc_api" / "__main__.py").exists():
            raise PeerUnavailable("grpc_api is not in this checkout")

    def start(self, workdir: Path) -> MoldauClient:
        from grpc_api.testing import ServerProcess

        extra = ["--tcp-listen", "127.0.0.1:0"] if self.transport == "tcp" else []
        server = ServerProcess(workdir / "moldau-data", extra_args=extra)
        self._server = server
        try:
            address = server.start()
        except (RuntimeError, TimeoutError) as exc:
            raise PeerUnavailable(f"moldau server did not start: {str(exc)[:300]}") from None
        return MoldauClient(address, server.tcp_address or None)

    def prepare(self, client: object, variant: Variant) -> None:
        return None

    def stop(self) -> None:
        from grpc_api.testing import ServerProcess

        if isinstance(self._server, ServerProcess):
            self._server.stop()
        self._server = None
