"""Event-store appends end to end: the Python client over gRPC to a real server subprocess.

Every append carries an exact expected version (or NO_STREAM for a stream's first event) and is
acknowledged after fsync (store topics default to ``durability=fsync``). All appends of a round
go through :meth:`moldau.AsyncEventStore.append_async` on one connection: one ``AppendStream``
call, pipelined, the client packing the appends queued in one loop turn into one message and
the server grouping each partition's queued appends into one log batch and one fsync.

- ``test_single_event_appends_pipelined``: ``SINGLE_APPENDS`` appends of one event each, spread
  over ``STREAMS`` streams (consecutive versions per stream); events/s = SINGLE_APPENDS / median.
- ``test_batched_appends_pipelined``: ``BATCH_APPENDS`` appends of ``BATCH`` events each;
  events/s = BATCH_APPENDS * BATCH / median.
- ``test_single_event_appends_unary``: the same single events one unary ``AppendToStream`` at
  a time (the baseline the pipeline improves on).

``extra_info["events_per_round"]`` turns a round time into events/s. With
``--benchmark-disable`` (the smoke run) every size is cut to a few hundred events.

    .venv/bin/pytest benchmarks/test_eventstore_grpc_bench.py --benchmark-only \\
        --benchmark-columns=min,median,max,rounds
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from grpc_api.testing import ServerProcess
from moldau import NO_STREAM, AsyncEventStore, EventData

SINGLE_APPENDS = 20_000
STREAMS = 1_000
BATCH = 100
BATCH_APPENDS = 500
UNARY_APPENDS = 1_000
ROUNDS = 5
PAYLOAD = b'{"order": 123456, "amount": 1999, "currency": "EUR"}'

_topics = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("es-bench") / "data",
                            env={"MOLDAU_LOG_LEVEL": "WARNING"})
    process.start()
    yield process
    process.stop()


def _scale(benchmark: BenchmarkFixture, full: int, smoke: int) -> int:
    return smoke if benchmark.disabled else full


class _Round:
    """One client and store topic on a private loop; each round appends the next versions."""

    def __init__(self, address: str, streams: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.topic = f"es-bench-{next(_topics)}"
        self.streams = streams
        self.next_version = 0
        self.client = AsyncEventStore(address, topic=self.topic)
        self.loop.run_until_complete(self.client.create_store_topic())

    def appends(self, count: int, events_per_append: int) -> list[tuple[str, int, list[EventData]]]:
        """``count`` appends round-robin over the streams, with exact expected versions."""
        appends = []
        for n in range(count):
            version = self.next_version + n // self.streams
            expected = version * events_per_append - 1 if version else NO_STREAM
            appends.append((f"order-{n % self.streams}", expected,
                            [EventData("OrderPlaced", PAYLOAD) for _ in range(events_per_append)]))
        self.next_version += -(-count // self.streams)
        return appends

    def pipelined(self, appends: list[tuple[str, int, list[EventData]]]) -> None:
        async def run() -> None:
            outcomes = await self.client.append_many(appends)
            failed = [o for o in outcomes if isinstance(o, Exception)]
            assert not failed, failed[:3]

        self.loop.run_until_complete(run())

    def unary(self, appends: list[tuple[str, int, list[EventData]]]) -> None:
        async def run() -> None:
            for stream, expected, events in appends:
                await self.client.append_to_stream(stream, expected, events)

        self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


def _bench(benchmark: BenchmarkFixture, bench_round: _Round, count: int, per_append: int,
           unary: bool = False) -> None:
    benchmark.extra_info["events_per_round"] = count * per_append
    run = bench_round.unary if unary else bench_round.pipelined
    try:
        benchmark.pedantic(run, setup=lambda: ((bench_round.appends(count, per_append),), {}),
                           rounds=ROUNDS if not benchmark.disabled else 1)
    finally:
        bench_round.close()


def test_single_event_appends_pipelined(benchmark: BenchmarkFixture,
                                        server: ServerProcess) -> None:
    count = _scale(benchmark, SINGLE_APPENDS, 300)
    _bench(benchmark, _Round(server.address, _scale(benchmark, STREAMS, 30)), count, 1)


def test_batched_appends_pipelined(benchmark: BenchmarkFixture, server: ServerProcess) -> None:
    count = _scale(benchmark, BATCH_APPENDS, 5)
    _bench(benchmark, _Round(server.address, count), count, BATCH)


def test_single_event_appends_unary(benchmark: BenchmarkFixture, server: ServerProcess) -> None:
    count = _scale(benchmark, UNARY_APPENDS, 50)
    _bench(benchmark, _Round(server.address, _scale(benchmark, STREAMS, 30)), count, 1,
           unary=True)
