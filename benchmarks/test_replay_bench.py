"""Replay: events/s from a store topic on a real server into a Python handler.

Run with ``pytest benchmarks/test_replay_bench.py --benchmark-only``. Figures to read:

- ``test_replay_into_handler``: :func:`moldau._replay.replay` of ``EVENTS`` events (appends of
  1,000 events, one partition) into a no-op handler, end to end: fetch over gRPC from a server
  process, decode, call the handler; events/s = EVENTS / median.
- ``test_decode_only``: the client-side part alone, decoding the same batches already in
  memory (:func:`moldau._replay_codec.decode_events`); events/s = EVENTS / median. The
  difference to the first figure is the fetch (the server reading and pushing the bytes, the
  client taking chunks), which runs in parallel on the other core.

With ``--benchmark-disable`` (the smoke run) the history is cut to 2,000 events.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from engine.records import iter_batches
from grpc_api.testing import ServerProcess
from moldau import Consumer
from moldau._replay import replay
from moldau._replay_codec import StoredEvent, decode_events
from moldau._replay_source import Selection
from moldau._replay_targets import HandlerTarget
from moldau.v1 import eventstore_pb2 as pb
from moldau.v1 import eventstore_pb2_grpc

EVENTS = 200_000
APPEND = 1000
ROUNDS = 3


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    smoke = request.config.getoption("benchmark_disable", False)
    count = 2000 if smoke else EVENTS
    with ServerProcess(tmp_path_factory.mktemp("replay-bench") / "data") as server, \
            grpc.insecure_channel(server.address) as channel:
        stub: Any = eventstore_pb2_grpc.EventStoreServiceStub(channel)
        stub.CreateStoreTopic(pb.CreateStoreTopicRequest(topic="bench", partitions=1))
        for start in range(0, count, APPEND):
            events = [pb.EventToAppend(
                type="OrderPlaced", event_id=str(uuid.uuid4()),
                data=json.dumps({"order": f"order-{n}", "amount": 1999}).encode())
                for n in range(start, start + APPEND)]
            stub.AppendToStream(pb.AppendToStreamRequest(
                topic="bench", stream=f"order-{start // APPEND}",
                special=pb.EXPECTED_VERSION_ANY, events=events))
        yield server.address, count


def test_replay_into_handler(benchmark: BenchmarkFixture, history: tuple[str, int],
                             tmp_path: Path) -> None:
    address, count = history
    seen = [0]

    def handler(event: StoredEvent) -> None:
        seen[0] += 1

    def run() -> None:
        seen[0] = 0
        summary = replay(address, Selection("bench"), HandlerTarget(handler, "bench:noop"),
                         resume_file=tmp_path / "resume.json")
        assert summary.completed
        assert summary.events == count

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    assert seen[0] == count
    benchmark.extra_info["events"] = count


def test_decode_only(benchmark: BenchmarkFixture, history: tuple[str, int]) -> None:
    address, count = history
    chunks: list[Any] = []
    with Consumer(address, auto_offset_reset="earliest") as consumer:
        consumer.assign_all("bench")
        while sum(len(b) for b in chunks) < count:
            chunks.extend(consumer.poll_batches(timeout_ms=1000))
    raw = [(b._data, b._position, b.header) for b in chunks]

    def run() -> None:
        decoded = 0
        for data, position, header in raw:  # a list per batch, as the replay loop keeps them
            out: list[StoredEvent] = []
            decode_events(data, position, header, "bench", 0, 0, out)
            decoded += len(out)
        assert decoded == count

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    assert sum(1 for data, _, _ in raw for _ in iter_batches(data, 0, max_batch_bytes=len(data)))
    benchmark.extra_info["events"] = count
