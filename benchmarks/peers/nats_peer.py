"""NATS JetStream (Debian's nats-server with ``-js``) through nats-py.

Started as ``nats-server -js -a 127.0.0.1 -p PORT -sd TMP``. A topic is a stream with file
storage and subjects ``TOPIC.*``; partition ``p`` is subject ``TOPIC.p``. Durability: file
storage with the server's default sync (writes go to the OS at once, fsync on a timer, not
per message). Producers use ``publish_async`` (acks collected asynchronously, nats-py's
throughput path); consumers are ordered push consumers (flow control, no acks).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
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

_GO_VERSION = "v2.10.24"  # used only when Debian's package cannot be installed


def _stream(topic: str) -> str:
    return topic.replace(".", "_").replace("-", "_")


@dataclass(frozen=True, slots=True)
class NatsClient:
    url: str

    async def _connect(self) -> tuple[Any, Any]:
        import nats

        connection = await nats.connect(self.url, pending_size=64 * 1024 * 1024)
        return connection, connection.jetstream(publish_async_max_pending=8000)

    def create_topic(self, topic: str, partitions: int, variant: Variant) -> None:
        from nats.js.api import StorageType

        async def create() -> None:
            connection, stream = await self._connect()
            await stream.add_stream(name=_stream(topic), subjects=[f"{topic}.*"],
                                    storage=StorageType.FILE)
            await connection.close()

        asyncio.run(create())

    def produce(self, job: Job, gate: Gate) -> Part:
        return asyncio.run(self._produce(job, gate))

    async def _produce(self, job: Job, gate: Gate) -> Part:
        connection, stream = await self._connect()
        pool = value_pool(job.record_size)
        counts = dict.fromkeys(job.partitions, 0)
        publish = stream.publish_async
        gate()
        started = time.monotonic()
        stop_at = started + job.max_seconds
        sent = turn = 0
        futures = []
        while sent < job.records and time.monotonic() < stop_at:
            count = min(1000, job.records - sent)
            partition = job.partitions[turn % len(job.partitions)]
            subject = f"{job.topic}.{partition}"
            futures.extend([await publish(subject, value) for value in pool[:count]])
            counts[partition] += count
            sent += count
            turn += 1
            if len(futures) > 100_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
        ended = time.monotonic()
        await connection.close()
        return Part(sent, sent * job.record_size, started, ended, counts)

    def consume(self, job: Job, gate: Gate) -> Part:
        return asyncio.run(self._consume(job, gate, None))

    def e2e_consume(self, job: E2EJob, gate: Gate) -> Part:
        return asyncio.run(self._consume(job, gate, Histogram()))

    async def _consume(self, job: Job | E2EJob, gate: Gate,
                       histogram: Histogram | None) -> Part:
        connection, stream = await self._connect()
        state = {"records": 0, "bytes": 0}
        done = asyncio.Event()
        partitions = job.partitions if isinstance(job, Job) else (0,)
        limit = job.max_seconds if isinstance(job, Job) else job.timeout_s

        async def on_message(message: Any) -> None:
            data = message.data
            state["records"] += 1
            state["bytes"] += len(data)
            if histogram is not None:
                histogram.record_many(latencies_us([data], time.time_ns()))
            if state["records"] >= job.records:
                done.set()

        async def subscribe() -> list[Any]:
            return [
                await stream.subscribe(f"{job.topic}.{p}", cb=on_message, ordered_consumer=True,
                                       pending_msgs_limit=1_000_000,
                                       pending_bytes_limit=512 * 1024 * 1024)
                for p in partitions
            ]

        # e2e: subscribed before the producer starts; replay: creating the consumer is part
        # of reading, so it is timed.
        subscriptions = await subscribe() if histogram is not None else []
        gate()
        started = time.monotonic()
        if histogram is None:
            subscriptions = await subscribe()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), limit)
        ended = time.monotonic()
        for subscription in subscriptions:
            await subscription.unsubscribe()
        await connection.close()
        return Part(state["records"], state["bytes"], started, ended,
                    histogram=tuple(histogram.to_list()) if histogram is not None else ())

    def e2e_produce(self, job: E2EJob, gate: Gate) -> Part:
        return asyncio.run(self._e2e_produce(job, gate))

    async def _e2e_produce(self, job: E2EJob, gate: Gate) -> Part:
        connection, stream = await self._connect()
        gate()
        started = time.monotonic()
        futures = []
        subject = f"{job.topic}.0"
        for due, count in pace(job.rate, job.records, started, job.warmup_s):
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for value in e2e_values(due, count, job.record_size):
                futures.append(await stream.publish_async(subject, value))
        await asyncio.gather(*futures)
        await connection.close()
        return Part(job.records, job.records * job.record_size, started, time.monotonic())


class NatsServer:
    system = "nats"
    client_library = "nats-py (asyncio)"

    def __init__(self) -> None:
        self._group = ServerGroup()
        self._binary = ""

    def variants(self) -> list[Variant]:
        return [Variant("file", "file storage, default sync (fsync on a timer)")]

    def ensure_installed(self) -> None:
        found = shutil.which("nats-server") or apt_install("nats-server", "nats-server")
        if found is None:
            found = _go_install()
        if found is None:
            raise PeerUnavailable("nats-server: apt-get install nats-server and "
                                  f"go install nats-server@{_GO_VERSION} both failed")
        self._binary = found

    def start(self, workdir: Path) -> NatsClient:
        port = free_port()
        home = workdir / "nats"
        home.mkdir(parents=True, exist_ok=True)
        self._group.spawn("nats-server", [self._binary or "nats-server", "-js", "-a",
                                          "127.0.0.1", "-p", str(port), "-sd",
                                          str(home / "store")], home / "server.log")
        client = NatsClient(f"nats://127.0.0.1:{port}")
        wait_until(lambda: _ready(client), 30, "nats-server", self._group.check_alive)
        return client

    def prepare(self, client: object, variant: Variant) -> None:
        return None

    def stop(self) -> None:
        self._group.stop()


def _ready(client: NatsClient) -> bool:
    async def check() -> bool:
        import nats

        async def quiet(_error: Exception) -> None:
            return None

        connection = await nats.connect(client.url, error_cb=quiet, allow_reconnect=False,
                                        connect_timeout=1)
        await connection.jetstream().account_info()
        await connection.close()
        return True

    return asyncio.run(check())


def _go_install() -> str | None:
    go = shutil.which("go") or ("/usr/local/go/bin/go"
                                if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        return None
    done = subprocess.run([go, "install", f"github.com/nats-io/nats-server/v2@{_GO_VERSION}"],
                          capture_output=True, timeout=900, check=False)
    gopath = subprocess.run([go, "env", "GOPATH"], capture_output=True, text=True,
                            check=False).stdout
    binary = Path(gopath.strip()) / "bin" / "nats-server"
    return str(binary) if done.returncode == 0 and binary.exists() else None
