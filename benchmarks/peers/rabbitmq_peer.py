"""RabbitMQ (Debian's rabbitmq-server) quorum queues and streams through pika.

Started in the foreground as ``/usr/lib/rabbitmq/bin/rabbitmq-server`` with its own node
name, config, data and log directories under the run's temporary directory, AMQP on a free
loopback port, Erlang distribution bound to 127.0.0.1, and a private ``epmd`` on a free
loopback port (started first, in its own process group, so nothing outlives the run). No
plugins. Partition ``p`` of topic ``t`` is the durable queue ``t.p`` of the variant's type:

- ``quorum``: a quorum queue (Raft log); publisher confirms come after the log entry is
  fsynced (batched).
- ``stream``: a stream queue; confirms come after the write to the OS (streams do not fsync
  and rely on replication, which one node does not have).

Producers use pika's asynchronous ``SelectConnection`` with publisher confirms and a window
of unconfirmed messages (confirms arrive in batches, ``multiple=True``); consumers use a
``BlockingConnection`` with a prefetch of 2,000 and acknowledge every 500 messages at once.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections import deque
from collections.abc import Callable
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

_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
_WINDOW = 2000  # unconfirmed messages in flight per producer
_PREFETCH = 2000
_ACK_EVERY = 500


def _queue(topic: str, partition: int) -> str:
    return f"{topic}.{partition}"


def _consume_arguments(variant: Variant) -> dict[str, Any] | None:
    return {"x-stream-offset": "first"} if variant.name == "stream" else None


class _Publisher:
    """Publishes ``next_batch()`` results with confirms on a SelectConnection until done."""

    def __init__(self, parameters: Any, gate: Gate,
                 next_batch: Callable[[], tuple[float, list[tuple[str, bytes]]] | None]) -> None:
        import pika

        self.pika = pika
        self.gate = gate
        self.next_batch = next_batch  # () -> (delay s, [(queue, body)]) or None when done
        self.properties = pika.BasicProperties(delivery_mode=2)
        self.outstanding: deque[int] = deque()
        self.acked_early: set[int] = set()
        self.tag = 0
        self.finished = False
        self.waiting = False
        self.error = ""
        self.started = self.ended = 0.0
        self.channel: Any = None
        self.connection = pika.SelectConnection(
            parameters, on_open_callback=self._on_open,
            on_open_error_callback=lambda _c, exc: self._fail(f"open failed: {exc}"),
            on_close_callback=lambda c, _reason: c.ioloop.stop())

    def run(self) -> None:
        self.connection.ioloop.start()
        if self.error:
            raise RuntimeError(self.error)

    def _fail(self, message: str) -> None:
        self.error = message
        self.connection.ioloop.stop()

    def _on_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.confirm_delivery(self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: Any) -> None:
        self.gate()
        self.started = time.monotonic()
        self._publish()

    def _publish(self) -> None:
        self.waiting = False
        while not self.finished and len(self.outstanding) < _WINDOW:
            batch = self.next_batch()
            if batch is None:
                self.finished = True
                break
            delay, messages = batch
            if delay > 0:  # paced (e2e): come back when the next chunk is due
                self.waiting = True
                self.connection.ioloop.call_later(delay, lambda m=messages: self._send(m))
                return
            self._send(messages, resume=False)
        self._maybe_close()

    def _send(self, messages: list[tuple[str, bytes]], resume: bool = True) -> None:
        publish = self.channel.basic_publish
        for queue, body in messages:
            publish("", queue, body, self.properties)
            self.tag += 1
            self.outstanding.append(self.tag)
        if resume:
            self._publish()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, self.pika.spec.Basic.Nack):
            self._fail(f"broker nacked delivery tag {method.delivery_tag}")
            return
        tag = method.delivery_tag
        if method.multiple:
            while self.outstanding and self.outstanding[0] <= tag:
                self.outstanding.popleft()
        else:
            self.acked_early.add(tag)
        while self.outstanding and self.outstanding[0] in self.acked_early:
            self.acked_early.discard(self.outstanding.popleft())
        if not self.finished and not self.waiting:
            self._publish()
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.finished and not self.outstanding and self.connection.is_open:
            self.ended = time.monotonic()
            self.connection.close()


@dataclass(frozen=True, slots=True)
class RabbitClient:
    port: int

    def parameters(self) -> Any:
        import pika

        return pika.ConnectionParameters("127.0.0.1", self.port, heartbeat=0,
                                         blocked_connection_timeout=300)

    def create_topic(self, topic: str, partitions: int, variant: Variant) -> None:
        import pika

        connection = pika.BlockingConnection(self.parameters())
        channel = connection.channel()
        for p in range(partitions):
            channel.queue_declare(_queue(topic, p), durable=True,
                                  arguments={"x-queue-type": variant.name})
        connection.close()

    def produce(self, job: Job, gate: Gate) -> Part:
        pool = value_pool(job.record_size)
        counts = dict.fromkeys(job.partitions, 0)
        state = {"sent": 0, "turn": 0, "stop_at": 0.0}

        def next_batch() -> tuple[float, list[tuple[str, bytes]]] | None:
            if not state["stop_at"]:
                state["stop_at"] = time.monotonic() + job.max_seconds
            sent = int(state["sent"])
            if sent >= job.records or time.monotonic() >= state["stop_at"]:
                return None
            count = min(100, job.records - sent)
            partition = job.partitions[int(state["turn"]) % len(job.partitions)]
            queue = _queue(job.topic, partition)
            start = sent % len(pool)
            state["sent"] = sent + count
            state["turn"] += 1
            counts[partition] += count
            return 0.0, [(queue, v) for v in pool[start:start + count]]

        publisher = _Publisher(self.parameters(), gate, next_batch)
        publisher.run()
        sent = int(state["sent"])
        return Part(sent, sent * job.record_size, publisher.started, publisher.ended, counts)

    def consume(self, job: Job, gate: Gate) -> Part:
        return self._consume(job.topic, job.partitions, job.records, job.variant,
                             job.max_seconds, gate, None)

    def e2e_consume(self, job: E2EJob, gate: Gate) -> Part:
        return self._consume(job.topic, (0,), job.records, job.variant, job.timeout_s, gate,
                             Histogram())

    def _consume(self, topic: str, partitions: tuple[int, ...], records: int,
                 variant: Variant, limit_s: float, gate: Gate,
                 histogram: Histogram | None) -> Part:
        import pika

        connection = pika.BlockingConnection(self.parameters())
        channel = connection.channel()
        channel.basic_qos(prefetch_count=_PREFETCH)
        state = {"records": 0, "bytes": 0}

        def on_message(ch: Any, method: Any, _properties: Any, body: bytes) -> None:
            state["records"] += 1
            state["bytes"] += len(body)
            if histogram is not None:
                histogram.record_many(latencies_us([body], time.time_ns()))
            if state["records"] % _ACK_EVERY == 0 or state["records"] >= records:
                ch.basic_ack(method.delivery_tag, multiple=True)

        arguments = _consume_arguments(variant)
        subscribe = [(_queue(topic, p), arguments) for p in partitions]
        if histogram is not None:  # e2e: subscribed before the producer starts
            for queue, args in subscribe:
                channel.basic_consume(queue, on_message, arguments=args)
        gate()
        started = time.monotonic()
        if histogram is None:
            for queue, args in subscribe:
                channel.basic_consume(queue, on_message, arguments=args)
        stop_at = started + limit_s
        while state["records"] < records and time.monotonic() < stop_at:
            connection.process_data_events(time_limit=0.05)
        ended = time.monotonic()
        # A consumer stopped by the clock still holds prefetched messages; pika rejects them
        # on close, which stream queues refuse by closing the connection. The count is done.
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()
        return Part(state["records"], state["bytes"], started, ended,
                    histogram=tuple(histogram.to_list()) if histogram is not None else ())

    def e2e_produce(self, job: E2EJob, gate: Gate) -> Part:
        queue = _queue(job.topic, 0)
        schedule: deque[tuple[float, int]] = deque()
        planned = []

        def next_batch() -> tuple[float, list[tuple[str, bytes]]] | None:
            if not planned:  # first call: right after the gate, when the clock starts
                schedule.extend(pace(job.rate, job.records, time.monotonic(), job.warmup_s))
                planned.append(True)
            if not schedule:
                return None
            due, count = schedule.popleft()
            values = e2e_values(due, count, job.record_size)
            return max(0.0, due - time.monotonic()), [(queue, v) for v in values]

        publisher = _Publisher(self.parameters(), gate, next_batch)
        publisher.run()
        return Part(job.records, job.records * job.record_size, publisher.started,
                    publisher.ended)


_CONFIG = """\
listeners.tcp.default = 127.0.0.1:{port}
loopback_users = none
disk_free_limit.absolute = 100MB
log.console = false
log.file.level = warning
"""


class RabbitServer:
    system = "rabbitmq"
    client_library = "pika (SelectConnection producer, BlockingConnection consumer)"

    def __init__(self) -> None:
        self._group = ServerGroup()

    def variants(self) -> list[Variant]:
        return [
            Variant("quorum", "quorum queue, confirm after Raft log fsync"),
            Variant("stream", "stream queue, confirm after write to OS, no fsync"),
        ]

    def ensure_installed(self) -> None:
        if not Path(_SERVER).exists() and apt_install("rabbitmq-server", "rabbitmqctl") is None:
            raise PeerUnavailable("rabbitmq-server: apt-get install rabbitmq-server failed")
        if shutil.which("epmd") is None:
            raise PeerUnavailable("rabbitmq: epmd (erlang-base) not found")

    def start(self, workdir: Path) -> RabbitClient:
        port, dist_port, epmd_port = free_port(), free_port(), free_port()
        home = workdir / "rabbitmq"
        (home / "log").mkdir(parents=True, exist_ok=True)
        (home / "rabbitmq.conf").write_text(_CONFIG.format(port=port))
        (home / "enabled_plugins").write_text("[].\n")
        (home / "rabbitmq-env.conf").write_text("")
        epmd_env = {"ERL_EPMD_ADDRESS": "127.0.0.1", "ERL_EPMD_PORT": str(epmd_port)}
        self._group.spawn("epmd", ["epmd", "-address", "127.0.0.1", "-port", str(epmd_port)],
                          home / "epmd.log", env=epmd_env)
        self._group.spawn("rabbitmq-server", [_SERVER], home / "server.log", env={
            **epmd_env,
            "HOME": str(home),
            "RABBITMQ_NODENAME": f"moldau-bench-{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(home / "rabbitmq.pid"),
        })
        client = RabbitClient(port)
        wait_until(lambda: _ready(client), 90, "rabbitmq-server", self._group.check_alive)
        return client

    def prepare(self, client: object, variant: Variant) -> None:
        return None

    def stop(self) -> None:
        self._group.stop()


def _ready(client: RabbitClient) -> bool:
    import pika

    pika.BlockingConnection(client.parameters()).close()
    return True
