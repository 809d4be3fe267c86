"""Apache Kafka (one KRaft broker in combined mode) through confluent-kafka.

Maven copies ``org.apache.kafka:kafka_2.13`` and its runtime dependencies (kafka/pom.xml)
into ``~/.cache/moldau-peers/kafka/libs``; the broker is formatted with
``kafka.tools.StorageTool format --standalone`` and started as
``java -cp 'libs/*' kafka.Kafka server.properties`` on two free loopback ports (clients and
controller), data in the run's temporary directory. Durability: ``acks=all`` with one
replica, and Kafka's default of no fsync per message (the OS flushes; Kafka relies on
replication, which a single broker does not have). Partition ``p`` is the topic's partition.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from common import (
    REPO,
    E2EJob,
    Gate,
    Histogram,
    Job,
    Part,
    PeerUnavailable,
    ServerGroup,
    Variant,
    e2e_values,
    free_port,
    latencies_us,
    pace,
    value_pool,
    wait_until,
)

CACHE = Path(os.environ.get("MOLDAU_PEERS_CACHE", Path.home() / ".cache" / "moldau-peers"))
LIBS = CACHE / "kafka" / "libs"
POM = REPO / "benchmarks" / "peers" / "kafka" / "pom.xml"

# confluent-kafka's throughput settings: big batches, a little linger, a deep local queue.
_PRODUCER = {
    "acks": "all",
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 2_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "compression.type": "none",
    "enable.idempotence": True,
}
_CONSUMER = {
    "enable.auto.commit": False,
    "fetch.max.bytes": 52_428_800,
    "max.partition.fetch.bytes": 10_485_760,
    "queued.min.messages": 200_000,
    "fetch.wait.max.ms": 100,
}


@dataclass(frozen=True, slots=True)
class KafkaClient:
    bootstrap: str

    def create_topic(self, topic: str, partitions: int, variant: Variant) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30)
        futures[topic].result(60)
        # Wait for leadership so the first produce does not hit "unknown partition".
        wait_until(lambda: _leaders_ready(admin, topic, partitions), 30, f"kafka topic {topic}")

    def produce(self, job: Job, gate: Gate) -> Part:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, **_PRODUCER})
        producer.list_topics(job.topic, timeout=30)
        pool = value_pool(job.record_size)
        counts = dict.fromkeys(job.partitions, 0)
        produce, poll, topic = producer.produce, producer.poll, job.topic
        gate()
        started = time.monotonic()
        stop_at = started + job.max_seconds
        sent = 0
        turn = 0
        while sent < job.records and time.monotonic() < stop_at:
            count = min(len(pool), job.records - sent)
            partition = job.partitions[turn % len(job.partitions)]
            for value in pool[:count]:
                while True:
                    try:
                        produce(topic, value, partition=partition)
                        break
                    except BufferError:  # local queue full: serve delivery reports, retry
                        poll(0.005)
            poll(0)
            counts[partition] += count
            sent += count
            turn += 1
        unsent = producer.flush(120)
        ended = time.monotonic()
        if unsent:
            raise RuntimeError(f"{unsent} records not delivered")
        return Part(sent, sent * job.record_size, started, ended, counts)

    def consume(self, job: Job, gate: Gate) -> Part:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap,
                             "group.id": f"bench-{uuid.uuid4().hex}", **_CONSUMER})
        consumer.assign([TopicPartition(job.topic, p, OFFSET_BEGINNING)
                         for p in job.partitions])
        gate()
        started = time.monotonic()
        stop_at = started + job.max_seconds
        records = size = 0
        while records < job.records and time.monotonic() < stop_at:
            for message in consumer.consume(num_messages=10_000, timeout=1.0):
                if message.error() is None:
                    records += 1
                    size += len(message.value())
        ended = time.monotonic()
        consumer.close()
        return Part(records, size, started, ended)

    def e2e_produce(self, job: E2EJob, gate: Gate) -> Part:
        from confluent_kafka import Producer

        # linger.ms=0: send as soon as possible (the latency setting).
        producer = Producer({"bootstrap.servers": self.bootstrap, **_PRODUCER, "linger.ms": 0})
        producer.list_topics(job.topic, timeout=30)
        gate()
        started = time.monotonic()
        for due, count in pace(job.rate, job.records, started, job.warmup_s):
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for value in e2e_values(due, count, job.record_size):
                producer.produce(job.topic, value, partition=0)
            producer.poll(0)
        producer.flush(60)
        return Part(job.records, job.records * job.record_size, started, time.monotonic())

    def e2e_consume(self, job: E2EJob, gate: Gate) -> Part:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap,
                             "group.id": f"bench-{uuid.uuid4().hex}", **_CONSUMER,
                             "fetch.wait.max.ms": 10})
        consumer.assign([TopicPartition(job.topic, 0, OFFSET_BEGINNING)])
        consumer.consume(num_messages=1, timeout=1.0)  # connect and fetch once before go
        histogram = Histogram()
        received = 0
        gate()
        started = time.monotonic()
        stop_at = started + job.timeout_s
        while received < job.records and time.monotonic() < stop_at:
            # consume() waits for num_messages or the timeout, so for latency: block in
            # poll() for the first message, then take what else is already there.
            first = consumer.poll(0.1)
            if first is not None:
                messages = [first, *consumer.consume(num_messages=10_000, timeout=0)]
                now_ns = time.time_ns()
                values = [m.value() for m in messages if m.error() is None]
                histogram.record_many(latencies_us(values, now_ns))
                received += len(values)
        consumer.close()
        return Part(received, received * job.record_size, started, time.monotonic(),
                    histogram=tuple(histogram.to_list()))


def _leaders_ready(admin: object, topic: str, partitions: int) -> bool:
    metadata = admin.list_topics(topic, timeout=5)  # type: ignore[attr-defined]
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or len(found.partitions) < partitions:
        return False
    return all(p.leader >= 0 for p in found.partitions.values())


_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
"""

_LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka.server.KafkaRaftServer
logger.kafka.level = INFO
"""


class KafkaServer:
    system = "kafka"
    client_library = "confluent-kafka (librdkafka)"

    def __init__(self) -> None:
        self._group = ServerGroup()

    def variants(self) -> list[Variant]:
        return [Variant("acks-all", "acks=all, 1 replica, no fsync (OS flushes)")]

    def ensure_installed(self) -> None:
        if shutil.which("java") is None:
            raise PeerUnavailable("kafka needs java (apt-get install openjdk-17-jre-headless)")
        if any(LIBS.glob("kafka_2.13-*.jar")):
            return
        if shutil.which("mvn") is None:
            raise PeerUnavailable("kafka needs Maven to fetch its jars (apt-get install maven)")
        LIBS.mkdir(parents=True, exist_ok=True)
        command = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                   f"-DoutputDirectory={LIBS}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0 or not any(LIBS.glob("kafka_2.13-*.jar")):
            raise PeerUnavailable("mvn could not fetch kafka: "
                                  + (done.stdout + done.stderr).strip()[-300:])

    def start(self, workdir: Path) -> KafkaClient:
        port, controller_port = free_port(), free_port()
        home = workdir / "kafka"
        home.mkdir(parents=True, exist_ok=True)
        properties = home / "server.properties"
        properties.write_text(_PROPERTIES.format(port=port, controller_port=controller_port,
                                                 data=home / "data"))
        (home / "log4j2.properties").write_text(_LOG4J.format(log=home / "broker.log"))
        java = ["java", "-Xms1g", "-Xmx1g", "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
                "-Dkafka.logs.dir=" + str(home), "-cp", str(LIBS / "*")]
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        formatted = subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c",
             str(properties), "--standalone"], capture_output=True, text=True, timeout=120,
            check=False)
        if formatted.returncode != 0:
            raise PeerUnavailable("kafka storage format failed: "
                                  + (formatted.stdout + formatted.stderr).strip()[-300:])
        self._group.spawn("kafka", [*java, "kafka.Kafka", str(properties)],
                          home / "stdout.log")
        client = KafkaClient(f"127.0.0.1:{port}")
        wait_until(lambda: _broker_up(client.bootstrap), 90, "kafka broker",
                   self._group.check_alive)
        return client

    def prepare(self, client: object, variant: Variant) -> None:
        return None

    def stop(self) -> None:
        self._group.stop()


def _broker_up(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    return len(admin.list_topics(timeout=2).brokers) > 0
