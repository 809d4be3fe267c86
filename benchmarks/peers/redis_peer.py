"""Redis Streams (Debian's redis-server) through redis-py with hiredis.

Started as ``redis-server --bind 127.0.0.1 --port PORT --dir TMP --save ""``. Partition ``p``
of topic ``t`` is the stream key ``t:p``. Producers pipeline ``XADD`` (1,000 per round trip,
no transaction: redis-py's throughput path); consumers ``XREAD`` 10,000 entries at a time
(``BLOCK`` for e2e). Variants switch persistence on the running server with ``CONFIG SET``:
``aof-off`` (memory only), ``aof-everysec`` and ``aof-always`` (fsync before the reply, one
fsync per event-loop turn, i.e. per pipeline).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    E2EJob,
    Gate,
    Histogram,
    Job,
    Part,
    PeerUnavailable,
    ServerGroup,
    Variant,
    apt_install,
    e2e_values,
    free_port,
    latencies_us,
    pace,
    value_pool,
    wait_until,
)

_PIPELINE = 1000
_FIELD = b"v"


def _key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


@dataclass(frozen=True, slots=True)
class RedisClient:
    port: int

    def connect(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=60)

    def create_topic(self, topic: str, partitions: int, variant: Variant) -> None:
        return None  # streams are created by their first XADD

    def produce(self, job: Job, gate: Gate) -> Part:
        client = self.connect()
        client.ping()
        pool = value_pool(job.record_size)
        counts = dict.fromkeys(job.partitions, 0)
        gate()
        started = time.monotonic()
        stop_at = started + job.max_seconds
        sent = turn = 0
        while sent < job.records and time.monotonic() < stop_at:
            count = min(_PIPELINE, job.records - sent)
            partition = job.partitions[turn % len(job.partitions)]
            key = _key(job.topic, partition)
            pipe = client.pipeline(transaction=False)
            for value in pool[:count]:
                pipe.xadd(key, {_FIELD: value})
            pipe.execute()
            counts[partition] += count
            sent += count
            turn += 1
        ended = time.monotonic()
        client.close()
        return Part(sent, sent * job.record_size, started, ended, counts)

    def consume(self, job: Job, gate: Gate) -> Part:
        client = self.connect()
        client.ping()
        positions = {_key(job.topic, p): b"0-0" for p in job.partitions}
        gate()
        started = time.monotonic()
        stop_at = started + job.max_seconds
        records = size = 0
        while records < job.records and time.monotonic() < stop_at:
            for key, entries in client.xread(positions, count=10_000, block=1000):
                for _entry_id, fields in entries:
                    size += len(fields[_FIELD])
                records += len(entries)
                positions[key.decode()] = entries[-1][0]
        ended = time.monotonic()
        client.close()
        return Part(records, size, started, ended)

    def e2e_produce(self, job: E2EJob, gate: Gate) -> Part:
        client = self.connect()
        client.ping()
        key = _key(job.topic, 0)
        gate()
        started = time.monotonic()
        for due, count in pace(job.rate, job.records, started, job.warmup_s):
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pipe = client.pipeline(transaction=False)
            for value in e2e_values(due, count, job.record_size):
                pipe.xadd(key, {_FIELD: value})
            pipe.execute()
        client.close()
        return Part(job.records, job.records * job.record_size, started, time.monotonic())

    def e2e_consume(self, job: E2EJob, gate: Gate) -> Part:
        client = self.connect()
        client.ping()
        key = _key(job.topic, 0)
        position = b"0-0"
        histogram = Histogram()
        received = 0
        gate()
        started = time.monotonic()
        stop_at = started + job.timeout_s
        while received < job.records and time.monotonic() < stop_at:
            for _key_name, entries in client.xread({key: position}, count=10_000, block=100):
                now_ns = time.time_ns()
                histogram.record_many(latencies_us([f[_FIELD] for _i, f in entries], now_ns))
                received += len(entries)
                position = entries[-1][0]
        client.close()
        return Part(received, received * job.record_size, started, time.monotonic(),
                    histogram=tuple(histogram.to_list()))


class RedisServer:
    system = "redis"
    client_library = "redis-py + hiredis"

    def __init__(self) -> None:
        self._group = ServerGroup()

    def variants(self) -> list[Variant]:
        return [
            Variant("aof-off", "memory only (AOF off, no snapshots)"),
            Variant("aof-everysec", "AOF, fsync every second"),
            Variant("aof-always", "AOF, fsync before reply (per pipeline)"),
        ]

    def ensure_installed(self) -> None:
        if shutil.which("redis-server") is None and apt_install(
                "redis-server", "redis-server") is None:
            raise PeerUnavailable("redis-server: apt-get install redis-server failed")
        try:
            import hiredis  # noqa: F401  (redis-py uses it when present)
            import redis  # noqa: F401
        except ImportError as exc:
            raise PeerUnavailable(f"redis-py missing: {exc}") from None

    def start(self, workdir: Path) -> RedisClient:
        port = free_port()
        home = workdir / "redis"
        home.mkdir(parents=True, exist_ok=True)
        self._group.spawn("redis-server", [
            "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(home),
            "--save", "", "--appendonly", "no", "--protected-mode", "yes",
            "--daemonize", "no",
        ], home / "server.log")
        client = RedisClient(port)
        wait_until(lambda: bool(client.connect().ping()), 30, "redis-server",
                   self._group.check_alive)
        return client

    def prepare(self, client: object, variant: Variant) -> None:
        assert isinstance(client, RedisClient)
        connection = client.connect()
        connection.flushall()
        if variant.name == "aof-off":
            connection.config_set("appendonly", "no")
        else:
            connection.config_set("appendfsync", variant.name.removeprefix("aof-"))
            connection.config_set("appendonly", "yes")
        # Turning AOF on starts a rewrite; measure only after it finished.
        wait_until(lambda: _persistence_idle(connection), 60, "redis AOF rewrite")
        connection.close()

    def stop(self) -> None:
        self._group.stop()


def _persistence_idle(connection: Any) -> bool:
    info = connection.info("persistence")
    return not (info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled")
                or info.get("rdb_bgsave_in_progress"))
