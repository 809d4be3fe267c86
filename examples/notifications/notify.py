"""Notifications: email, SMS and push, routed by each user's preferences.

Flow::

    publish --> [notify: headers exchange] --email=yes--> notify-email --> send-email queue
                                          \\--sms=yes----> notify-sms   --> send-sms queue
                                          \\--push=yes---> notify-push  --> send-push queue

A notification carries one header per channel its user opted into (``email: yes`` ...), so
the headers exchange routes it to exactly those channels. Each channel is a work queue whose
sender is an async handler of one :class:`moldau.AsyncWorker`. A sender that fails raises;
the queue retries it with exponential backoff (``BACKOFF``) and dead-letters it to
``notify-<channel>.dlq`` after ``MAX_DELIVERIES`` attempts.

The channel gateways are simulated, deterministically, so runs and tests are repeatable:
an SMS to a number that does not exist always fails (dead-lettered), a push to an offline
device and some emails fail once (retried, then sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from moldau import Admin as _Admin
from moldau import (
    AsyncWorker,
    Backoff,
    Exchanges,
    Message,
    Producer,
    Queues,
    TopicExistsError,
)

EXCHANGE = "notify"
CHANNELS = ("email", "sms", "push")
BACKOFF = Backoff(initial_ms=20, multiplier=2.0, max_ms=500, jitter=0.2)
MAX_DELIVERIES = 4


class ChannelError(Exception):
    """The channel's gateway refused or did not answer."""


@dataclass(frozen=True, slots=True)
class User:
    user_id: int
    channels: tuple[str, ...]


def users(count: int) -> list[User]:
    """Users with varied preferences; everyone has at least one channel."""
    result = []
    for i in range(count):
        chosen = tuple(c for c, wanted in zip(
            CHANNELS, (i % 2 == 0, i % 3 == 0, i % 5 != 0), strict=True) if wanted)
        result.append(User(i, chosen or ("email",)))
    return result


def declare_topology(server: str, partitions: int = 2) -> None:
    """The exchange, one topic and queue per channel, and the bindings; safe to rerun."""
    with _Admin(server) as admin:
        for channel in CHANNELS:
            with contextlib.suppress(TopicExistsError):
                admin.create_topic(f"notify-{channel}", partitions)
    with Exchanges(server) as exchanges:
        exchanges.declare(EXCHANGE, "headers", partitions=partitions)
        for channel in CHANNELS:
            exchanges.bind(EXCHANGE, f"notify-{channel}", arguments={channel: "yes"})
    with Queues(server) as queues:
        for channel in CHANNELS:
            queues.declare(f"send-{channel}", f"notify-{channel}", backoff=BACKOFF,
                           max_deliveries=MAX_DELIVERIES, lease_ms=10_000)


def publish(producer: Producer, notifications: Iterable[tuple[int, User, str]]) -> int:
    """Send ``(notification id, user, text)`` to the exchange; returns how many."""
    sent = 0
    for notification_id, user, text in notifications:
        body = json.dumps({"id": notification_id, "user": user.user_id, "text": text})
        producer.send(EXCHANGE, body.encode(), key=str(user.user_id).encode(),
                      headers=dict.fromkeys(user.channels, b"yes"))
        sent += 1
    return sent


def gateway_fails(channel: str, notification_id: int, user_id: int, attempt: int) -> str:
    """The simulated gateway's answer: "" when it delivers, else why it failed."""
    if channel == "sms" and user_id % 99 == 33:
        return f"SMS gateway: number of user {user_id} does not exist"
    if channel == "push" and notification_id % 10 == 3 and attempt == 1:
        return "push service: device offline"
    if channel == "email" and notification_id % 50 == 8 and attempt < 3:
        return "SMTP 451: try again later"
    return ""


@dataclass
class ChannelMetrics:
    """Delivery metrics of one channel: what was sent, retried and dead-lettered, and how
    long a notification took from publish to successful delivery."""

    sent: int = 0
    retried: int = 0
    dead_lettered: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def latency_ms(self, quantile: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def summary(self) -> dict[str, float]:
        return {"sent": self.sent, "retried": self.retried,
                "dead_lettered": self.dead_lettered,
                "latency_p50_ms": round(self.latency_ms(0.50), 1),
                "latency_p99_ms": round(self.latency_ms(0.99), 1)}


@dataclass
class Report:
    notifications: int
    seconds: float
    channels: dict[str, ChannelMetrics]

    @property
    def per_second(self) -> float:
        return self.notifications / self.seconds if self.seconds else 0.0


def expected_deliveries(user_list: list[User], count: int) -> dict[str, int]:
    expected = dict.fromkeys(CHANNELS, 0)
    for n in range(count):
        for channel in user_list[n % len(user_list)].channels:
            expected[channel] += 1
    return expected


async def run(server: str, count: int = 1_000, user_count: int = 200,
              concurrency: int = 64, timeout_s: float = 120.0) -> Report:
    """Publish ``count`` notifications and run the senders until each delivery is sent or
    dead-lettered; returns the per-channel metrics and the end-to-end rate."""
    await asyncio.to_thread(declare_topology, server)
    user_list = users(user_count)
    expected = expected_deliveries(user_list, count)
    metrics = {channel: ChannelMetrics() for channel in CHANNELS}
    worker = AsyncWorker(server, consumer="notifier")
    for channel in CHANNELS:
        _register(worker, channel, metrics[channel], concurrency)
    started = time.perf_counter()
    async with worker:
        notifications = ((n, user_list[n % len(user_list)], f"hello #{n}")
                         for n in range(count))
        await asyncio.to_thread(_publish_all, server, notifications)
        deadline = time.monotonic() + timeout_s
        while any(_finished(worker, c, metrics[c]) < expected[c] for c in CHANNELS):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not all delivered: {metrics}")
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - started
    for channel in CHANNELS:
        stats = worker.stats(f"send-{channel}")
        metrics[channel].retried = stats.retried
        metrics[channel].dead_lettered = stats.dead_lettered
    return Report(count, seconds, metrics)


def _finished(worker: AsyncWorker, channel: str, metrics: ChannelMetrics) -> int:
    return metrics.sent + worker.stats(f"send-{channel}").dead_lettered


def _publish_all(server: str, notifications: Iterable[tuple[int, User, str]]) -> None:
    with Producer(server, linger_ms=5) as producer:
        publish(producer, notifications)
        producer.flush()


def _register(worker: AsyncWorker, channel: str, metrics: ChannelMetrics,
              concurrency: int) -> None:
    @worker.handler(f"send-{channel}", concurrency=concurrency, prefetch=4 * concurrency)
    async def send(message: Message) -> None:
        body = json.loads(message.value or b"{}")
        why = gateway_fails(channel, body["id"], body["user"], message.delivery_count)
        if why:
            raise ChannelError(why)
        metrics.sent += 1
        metrics.latencies_ms.append(time.time() * 1000 - message.timestamp_ms)
