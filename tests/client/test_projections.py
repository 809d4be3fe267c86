"""Projections over a real server: runners, stores, checkpoints, errors and the registry."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpc_api.testing import ServerProcess
from moldau._eventstore_types import UpcasterRegistry
from moldau._replay_registry import read_registry
from moldau.projections import (
    AsyncProjectionRunner,
    CallbackStore,
    MemoryStore,
    Projection,
    ProjectionError,
    ProjectionRunner,
    SQLiteStore,
    StoredEvent,
)
from moldau.v1 import eventstore_pb2 as pb
from moldau.v1 import eventstore_pb2_grpc

_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("projections") / "data") as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[Any]:
    with grpc.insecure_channel(server.address) as channel:
        yield eventstore_pb2_grpc.EventStoreServiceStub(channel)


@pytest.fixture
def topic(stub: Any) -> str:
    name = f"proj-{next(_names)}"
    stub.CreateStoreTopic(pb.CreateStoreTopicRequest(topic=name, partitions=2))
    return name


def append(stub: Any, topic: str, stream: str, event_type: str, amount: int) -> None:
    stub.AppendToStream(pb.AppendToStreamRequest(
        topic=topic, stream=stream, special=pb.EXPECTED_VERSION_ANY,
        events=[pb.EventToAppend(type=event_type, data=json.dumps({"amount": amount}).encode(),
                                 event_id=str(uuid.uuid4()))]))


def totals(topic: str, store: Any = None, name: str = "totals") -> Projection:
    projection = Projection(name, topic, category="order", store=store)

    @projection.on("OrderPlaced")
    def _(model: Any, event: Any) -> None:
        model[event.stream] = model.get(event.stream, 0) + json.loads(event.data)["amount"]

    return projection


def test_memory_projection_catches_up_then_follows_live(server: ServerProcess, stub: Any,
                                                        topic: str) -> None:
    for i in range(20):
        append(stub, topic, f"order-{i % 4}", "OrderPlaced", i)
        append(stub, topic, f"user-{i}", "OrderPlaced", 1000)  # another category
    projection = totals(topic)
    runner = ProjectionRunner(projection, server.address, status_interval_s=0.1,
                              poll_timeout_ms=100)
    status = runner.run(until_caught_up=True)
    store = projection.store
    assert isinstance(store, MemoryStore)
    assert store.model == {f"order-{k}": sum(i for i in range(20) if i % 4 == k)
                           for k in range(4)}
    assert (status.state, status.lag, status.events_applied) == ("caught-up", 0, 20)
    assert sum(status.positions.values()) == 40  # past the other category's records too

    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        append(stub, topic, "order-0", "OrderPlaced", 500)
        deadline = time.monotonic() + 10
        while store.model["order-0"] < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.model["order-0"] == sum(range(0, 20, 4)) + 500
    finally:
        runner.stop()
        thread.join(10)
    registry = read_registry(server.address)
    assert registry["totals"].topic == topic
    assert registry["totals"].state == "stopped"
    assert registry["totals"].events_applied == 21  # this runner: 20, then 1 live


def test_async_runner_and_callback_store(server: ServerProcess, stub: Any, topic: str) -> None:
    for i in range(10):
        append(stub, topic, f"order-{i % 2}", "OrderPlaced", 1)
    saved: list[dict[int, int]] = []
    model: dict[str, int] = {}
    store = CallbackStore(model, lambda: saved[-1] if saved else None, saved.append,
                          description="test dict")
    projection = totals(topic, store, name="async-totals")
    status = asyncio.run(AsyncProjectionRunner(projection, server.address,
                                               registry=False).run(until_caught_up=True))
    assert model == {"order-0": 5, "order-1": 5}
    assert status.events_applied == 10
    assert saved[-1] == status.positions
    again = asyncio.run(AsyncProjectionRunner(projection, server.address,
                                              registry=False).run(until_caught_up=True))
    assert again.events_applied == 0
    assert model == {"order-0": 5, "order-1": 5}


def test_sqlite_store_resumes_from_its_checkpoint(server: ServerProcess, stub: Any,
                                                  topic: str, tmp_path: Path) -> None:
    def build() -> Projection:
        projection = Projection("sums", topic, store=SQLiteStore(tmp_path / "sums.db"))

        @projection.init
        def _(db: Any) -> None:
            db.execute("CREATE TABLE sums (stream TEXT PRIMARY KEY, total INTEGER)")

        @projection.on("*")
        def _(db: Any, event: Any) -> None:
            db.execute("INSERT INTO sums VALUES (?, ?) ON CONFLICT(stream) DO UPDATE SET "
                       "total = total + excluded.total",
                       (event.stream, json.loads(event.data)["amount"]))

        return projection

    for i in range(10):
        append(stub, topic, f"order-{i % 3}", "OrderPlaced", 1)
    first = build()
    ProjectionRunner(first, server.address, registry=False).run(until_caught_up=True)
    first.store.close()
    for i in range(5):
        append(stub, topic, f"order-{i % 3}", "Shipped", 10)
    second = build()
    status = ProjectionRunner(second, server.address, registry=False).run(until_caught_up=True)
    assert status.events_applied == 5  # only the new ones
    assert isinstance(second.store, SQLiteStore)
    rows = dict(second.store.connection.execute("SELECT stream, total FROM sums").fetchall())
    assert sum(rows.values()) == 10 + 50


def test_failing_handler_keeps_the_checkpoint_at_the_event(server: ServerProcess, stub: Any,
                                                           topic: str, tmp_path: Path) -> None:
    for i in range(6):
        append(stub, topic, "order-1", "OrderPlaced", i)
    projection = Projection("fails", topic, store=SQLiteStore(tmp_path / "f.db"))

    @projection.init
    def _(db: Any) -> None:
        db.execute("CREATE TABLE seen (version INTEGER PRIMARY KEY)")

    @projection.on("OrderPlaced")
    def _(db: Any, event: Any) -> None:
        if event.version == 4:
            raise RuntimeError("bad data")
        db.execute("INSERT INTO seen VALUES (?)", (event.version,))

    runner = ProjectionRunner(projection, server.address, registry=False)
    with pytest.raises(ProjectionError, match="order-1 v4") as caught:
        runner.run(until_caught_up=True)
    assert caught.value.event.version == 4
    assert runner.status().state == "failed"
    assert "bad data" in (runner.status().last_error or "")
    store = projection.store
    assert isinstance(store, SQLiteStore)
    assert [r[0] for r in store.connection.execute("SELECT version FROM seen")] == [0, 1, 2, 3]
    position = store.load_position() or {}
    assert caught.value.event.offset in position.values()


_CRASHER = textwrap.dedent("""
    import json, os, sys
    from moldau.projections import Projection, ProjectionRunner, SQLiteStore
    topic, path, crash_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    p = Projection("crashy", topic, store=SQLiteStore(path))
    @p.init
    def _(db):
        db.execute("CREATE TABLE applied (stream TEXT, version INTEGER)")
    @p.on("*")
    def _(db, event):
        db.execute("INSERT INTO applied VALUES (?, ?)", (event.stream, event.version))
        if event.version == crash_at:
            os._exit(7)  # after the handler's insert, before the commit
    ProjectionRunner(p, os.environ["SERVER"], registry=False).run(until_caught_up=True)
""")


def test_crash_between_handler_and_commit_does_not_double_apply(
        server: ServerProcess, stub: Any, topic: str, tmp_path: Path) -> None:
    for batch in range(3):
        for i in range(10):
            append(stub, topic, "order-7", "OrderPlaced", batch * 10 + i)
        if batch == 0:
            db = tmp_path / "crash.db"
            env = {**os.environ, "SERVER": server.address}
            done = subprocess.run([sys.executable, "-c", _CRASHER, topic, str(db), "-1"],
                                  env=env, capture_output=True, text=True, timeout=60,
                                  check=False)
            assert done.returncode == 0, done.stderr
    crashed = subprocess.run([sys.executable, "-c", _CRASHER, topic, str(db), "25"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert crashed.returncode == 7, crashed.stderr
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM applied").fetchone()[0] == 10
    finished = subprocess.run([sys.executable, "-c", _CRASHER, topic, str(db), "-1"], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
    assert finished.returncode == 0, finished.stderr
    with sqlite3.connect(db) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM applied ORDER BY rowid")]
    assert versions == list(range(30))  # each exactly once, in order


def test_upcasters_apply_before_handlers(server: ServerProcess, stub: Any, topic: str) -> None:
    append(stub, topic, "order-1", "OrderPlaced", 3)
    append(stub, topic, "order-1", "OrderPaid", 3)
    upcasters = UpcasterRegistry()

    @upcasters.upcaster("OrderPlaced", 1)
    def _(event: Any) -> Any:
        doubled = {"amount": json.loads(event.data)["amount"] * 2}
        return dataclasses.replace(event, data=json.dumps(doubled).encode(), type_version=2)

    projection = Projection("up", topic, upcasters=upcasters)
    seen: list[Any] = []
    projection.on("*")(lambda model, event: seen.append(event))
    ProjectionRunner(projection, server.address, registry=False).run(until_caught_up=True)
    assert [(e.type, json.loads(e.data)["amount"], e.type_version) for e in seen] == [
        ("OrderPlaced", 6, 2), ("OrderPaid", 3, 1)]
    assert {type(e) for e in seen} == {StoredEvent}


def test_projection_validates_names_and_handlers() -> None:
    with pytest.raises(ValueError, match="name"):
        Projection("bad name", "t")
    projection = Projection("ok", "t")
    projection.on("A")(lambda m, e: None)
    with pytest.raises(ValueError, match="already has a handler"):
        projection.on("A")(lambda m, e: None)
    assert projection.event_types == ["A"]
