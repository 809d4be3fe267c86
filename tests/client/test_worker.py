"""moldau.Worker / AsyncWorker against a real broker: ack on success, retry and dead-letter on
failure, reject, lease extension for slow handlers, concurrency, competing workers, clean stop."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from moldau import (
    AsyncWorker,
    Backoff,
    Message,
    Producer,
    Queues,
    RejectMessage,
    Worker,
)

_names = itertools.count()


@pytest.fixture
def queues(address: str) -> Iterator[Queues]:
    with Queues(address) as client:
        yield client


def _fill(address: str, topic: str, count: int) -> None:
    with Producer(address) as producer:
        for i in range(count):
            producer.send(topic, str(i).encode(), key=str(i % 7).encode())
        producer.flush()


def _queue(queues: Queues, topic: str, **options: object) -> str:
    name = f"w-{topic}-{next(_names)}"
    queues.declare(name, topic, **options)  # type: ignore[arg-type]
    return name


def _wait(condition: object, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_competing_workers_handle_each_record_once(address: str, queues: Queues,
                                                   topic: str) -> None:
    _fill(address, topic, 400)
    name = _queue(queues, topic)
    seen: Counter[bytes] = Counter()
    lock = threading.Lock()
    workers = [Worker(address, consumer=f"w{i}") for i in range(2)]
    for worker in workers:
        @worker.handler(name, concurrency=4)
        def handle(message: Message) -> None:
            with lock:
                seen[message.value or b""] += 1

        worker.start()
    _wait(lambda: sum(seen.values()) >= 400)
    for worker in workers:
        worker.stop()
    assert len(seen) == 400
    assert set(seen.values()) == {1}
    assert sum(w.stats(name).acked for w in workers) == 400
    assert all(w.stats(name).received > 0 for w in workers)  # both took part
    assert queues.describe(name).stats.depth == 0


def test_failures_retry_with_the_error_text_then_dead_letter(address: str, queues: Queues,
                                                             topic: str) -> None:
    _fill(address, topic, 10)
    name = _queue(queues, topic, max_deliveries=3, backoff=Backoff(initial_ms=50))
    calls: Counter[bytes] = Counter()
    worker = Worker(address, consumer="flaky")

    @worker.handler(name, concurrency=2)
    def handle(message: Message) -> None:
        calls[message.value or b""] += 1
        if message.value == b"3":
            raise ValueError("card declined")
        if message.value == b"4" and message.delivery_count == 1:
            raise TimeoutError()
        if message.value == b"5":
            raise RejectMessage("malformed order")

    with worker:
        _wait(lambda: worker.stats(name).acked == 8 and worker.stats(name).dead_lettered == 2)
    stats = worker.stats(name)
    assert calls[b"3"] == 3
    assert calls[b"4"] == 2
    assert calls[b"5"] == 1
    assert stats.retried == 3
    assert stats.errors == {
        "ValueError": 3, "TimeoutError": 1, "RejectMessage": 1}
    letters = {d.value: d for d in queues.dead_letters(queue=name)}
    assert letters[b"3"].last_error == "ValueError: card declined"
    assert (letters[b"3"].reason, letters[b"3"].attempts) == ("max-deliveries", 3)
    assert letters[b"5"].last_error == "RejectMessage: malformed order"
    assert letters[b"5"].reason == "rejected"


def test_slow_handlers_keep_their_lease(address: str, queues: Queues, topic: str) -> None:
    _fill(address, topic, 2)
    name = _queue(queues, topic, lease_ms=400)
    deliveries: list[int] = []
    worker = Worker(address)

    @worker.handler(name, concurrency=2)
    def handle(message: Message) -> None:
        deliveries.append(message.delivery_count)
        time.sleep(1.5)  # almost four leases

    with worker:
        _wait(lambda: worker.stats(name).acked == 2)
    assert deliveries == [1, 1]
    assert worker.stats(name).extended >= 4
    assert queues.describe(name).stats.expired == 0


def test_concurrency_is_the_limit(address: str, queues: Queues, topic: str) -> None:
    _fill(address, topic, 24)
    name = _queue(queues, topic)
    running = peak = 0
    lock = threading.Lock()
    worker = Worker(address)

    @worker.handler(name, concurrency=4)
    def handle(message: Message) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    with worker:
        _wait(lambda: worker.stats(name).acked == 24)
    assert peak == 4


def test_stop_releases_what_has_not_started(address: str, queues: Queues, topic: str) -> None:
    _fill(address, topic, 50)
    name = _queue(queues, topic)
    started = threading.Event()
    worker = Worker(address, drain_timeout_s=5)

    @worker.handler(name, concurrency=2, prefetch=10)
    def handle(message: Message) -> None:
        started.set()
        time.sleep(0.3)

    worker.start()
    assert started.wait(10)
    worker.stop()
    stats = worker.stats(name)
    assert stats.acked >= 2
    assert stats.released >= 1
    assert stats.acked + stats.released == stats.received
    described = queues.describe(name).stats
    assert described.in_flight == 0  # nothing left leased: the rest is ready at once
    assert described.depth == 50 - stats.acked


def test_async_worker_runs_coroutines(address: str, queues: Queues, topic: str) -> None:
    _fill(address, topic, 30)
    name = _queue(queues, topic, max_deliveries=2, backoff=Backoff(initial_ms=0))
    handled: list[int] = []

    async def scenario() -> None:
        worker = AsyncWorker(address)

        @worker.handler(name, concurrency=5)
        async def handle(message: Message) -> None:
            await asyncio.sleep(0.01)
            if message.offset == 7:
                raise RuntimeError("seven")
            handled.append(message.offset)

        async with worker:
            while worker.stats(name).acked < 29 or worker.stats(name).dead_lettered < 1:
                await asyncio.sleep(0.02)
        assert worker.stats(name).retried == 1

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert sorted(handled) == [i for i in range(30) if i != 7]
    [letter] = queues.dead_letters(queue=name)
    assert letter.source_offset == 7
    assert letter.last_error == "RuntimeError: seven"


def test_misuse_is_refused(address: str) -> None:
    worker = Worker(address)
    with pytest.raises(TypeError, match="use AsyncWorker"):
        @worker.handler("q")
        async def handle(message: Message) -> None: ...
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        worker.handler("q", concurrency=0)
    with pytest.raises(RuntimeError, match="no handlers"):
        asyncio.run(AsyncWorker(address).run())

    @worker.handler("q")
    def plain(message: Message) -> None: ...

    with pytest.raises(ValueError, match="has a handler already"):
        worker.handler("q")
