"""``moldau replay`` over a real server: rebuilds, resume, ranges, dry runs, errors and DLQ."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpc_api.testing import ServerProcess
from moldau import Consumer
from moldau.cli import main
from moldau.projections import ProjectionRunner, SQLiteStore
from moldau.v1 import eventstore_pb2 as pb
from moldau.v1 import eventstore_pb2_grpc
from tests.cli import test_replay_support as support

_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("replay") / "data") as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[Any]:
    with grpc.insecure_channel(server.address) as channel:
        yield eventstore_pb2_grpc.EventStoreServiceStub(channel)


@pytest.fixture
def topic(stub: Any) -> str:
    name = f"replay-{next(_names)}"
    stub.CreateStoreTopic(pb.CreateStoreTopicRequest(topic=name, partitions=2))
    return name


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # resume files land in the current directory
    support.SEEN.clear()


def moldau(server: ServerProcess, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([*argv, "--server", server.address], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _history(stub: Any, topic: str, count: int = 60) -> None:
    for i in range(count):
        support.append(stub, topic, f"order-{i % 9}", "OrderPlaced" if i < 9 else "ItemAdded",
                       i + 1)
        if i % 10 == 0:
            support.append(stub, topic, f"customer-{i}", "CustomerRegistered", 0)


def _use(topic: str, db: Path) -> None:
    """Point the support projection at this test's topic and file."""
    support.summary.topic = topic
    support.summary.store = SQLiteStore(db)


def _live_model(server: ServerProcess, topic: str, db: Path) -> dict[str, Any]:
    _use(topic, db)
    ProjectionRunner(support.summary, server.address, registry=False).run(until_caught_up=True)
    support.summary.store.close()
    return support.orders(str(db))


def test_rebuilt_projection_equals_the_live_one(server: ServerProcess, stub: Any, topic: str,
                                                tmp_path: Path) -> None:
    _history(stub, topic)
    live = _live_model(server, topic, tmp_path / "live.db")
    assert sum(v[1] for v in live.values()) == 60

    _use(topic, tmp_path / "rebuilt.db")
    code, _, err = moldau(server, "replay", "--projection",
                          "tests.cli.test_replay_support:summary")
    assert code == 0, err
    assert "replayed 60 events" in err
    assert support.orders(str(tmp_path / "rebuilt.db")) == live
    assert not (tmp_path / "rebuilt.db.rebuild").exists()
    assert not list(tmp_path.glob(".moldau-replay-*.json"))


def test_interrupted_replay_resumes_without_double_apply(
        server: ServerProcess, stub: Any, topic: str, tmp_path: Path) -> None:
    _history(stub, topic)
    live = _live_model(server, topic, tmp_path / "live.db")
    db = tmp_path / "resumed.db"
    _use(topic, db)
    spec = "tests.cli.test_replay_support:summary"
    code, _, err = moldau(server, "replay", "--projection", spec, "--max-events", "25")
    assert code == 0, err
    assert "run the same command to resume" in err
    assert not db.exists()  # nothing swapped in yet: the rebuild is on the side
    partial = support.orders(f"{db}.rebuild")
    assert sum(v[1] for v in partial.values()) == 25
    code, _, err = moldau(server, "replay", "--projection", spec)
    assert code == 0, err
    assert "replayed 60 events" in err  # 25 before + 35 now, counted once
    assert support.orders(str(db)) == live


def test_killed_replay_resumes_and_ends_equal(server: ServerProcess, stub: Any, topic: str,
                                              tmp_path: Path) -> None:
    _history(stub, topic, count=400)
    live = _live_model(server, topic, tmp_path / "live.db")
    db = tmp_path / "killed.db"
    env = {**os.environ, "MOLDAU_TEST_REPLAY_TOPIC": topic, "MOLDAU_TEST_REPLAY_DB": str(db),
           "PYTHONPATH": os.getcwd() + os.pathsep
           + str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-c", "import sys; from moldau.cli import main; sys.exit(main())",
               "replay", "--projection",
               "tests.cli.test_replay_support:summary", "--server", server.address]
    first = subprocess.run([*command, "--max-events", "150"], env=env, capture_output=True,
                           text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    stored = support.orders(f"{db}.rebuild")
    crash_at = max(stored, key=lambda s: stored[s][2])  # a stream replayed further than 150
    env["MOLDAU_TEST_CRASH_AT"] = f"{crash_at}/{stored[crash_at][2] + 5}"
    crashed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                             check=False)
    assert crashed.returncode == 9, crashed.stderr  # died inside a handler, mid-transaction
    partial = support.orders(f"{db}.rebuild")
    assert sum(v[1] for v in partial.values()) == 150  # the open transaction left no trace
    del env["MOLDAU_TEST_CRASH_AT"]
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert support.orders(str(db)) == live


def test_to_time_stops_at_the_right_event(server: ServerProcess, stub: Any,
                                          topic: str) -> None:
    for i in range(5):
        support.append(stub, topic, "order-1", "OrderPlaced", i)
    time.sleep(0.05)
    code, out, _ = moldau(server, "replay", topic, "--jsonl", "-")
    events = [json.loads(line) for line in out.splitlines()]
    cut = events[2]["timestamp_ms"]
    later = [e for e in events if e["timestamp_ms"] > cut]
    for i in range(5, 8):
        time.sleep(0.01)
        support.append(stub, topic, "order-1", "OrderPlaced", i)
    code, out, err = moldau(server, "replay", topic, "--to-time", str(cut), "--jsonl", "-")
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert [e["version"] for e in got] == [e["version"] for e in events
                                          if e["timestamp_ms"] <= cut]
    assert got[-1]["version"] >= 2
    assert all(e["timestamp_ms"] <= cut for e in got)
    assert not later or got[-1]["version"] < later[0]["version"]


def test_dry_run_writes_nothing(server: ServerProcess, stub: Any, topic: str,
                                tmp_path: Path) -> None:
    _history(stub, topic, count=20)
    code, out, err = moldau(server, "replay", topic, "--category", "order", "--sqlite",
                            str(tmp_path / "x.db"), "--dry-run", "--sample", "3")
    assert code == 0, err
    assert "would replay 20 events" in err
    assert len(out.splitlines()) == 3
    assert json.loads(out.splitlines()[0])["stream"].startswith("order-")
    assert not (tmp_path / "x.db").exists()
    assert not list(tmp_path.glob(".moldau-replay-*"))


def _dlq(server: ServerProcess, topic: str) -> list[Any]:
    with Consumer(server.address, auto_offset_reset="earliest") as consumer:
        consumer.assign_all(f"{topic}.replay-dlq")
        return consumer.poll(timeout_ms=3000)


def test_handler_errors_exit_non_zero_or_go_to_the_dlq(server: ServerProcess, stub: Any,
                                                       topic: str) -> None:
    for i in range(10):
        support.append(stub, topic, f"order-{i}", "OrderPlaced", i, poison=i in (3, 7))
    handler = "tests.cli.test_replay_support:fail_on_poison"
    code, _, err = moldau(server, "replay", topic, "--handler", handler, "--no-resume")
    assert code == 4, err
    assert "cannot handle order-" in err
    assert "resume file" in err

    support.SEEN.clear()
    code, _, err = moldau(server, "replay", topic, "--handler", handler, "--skip-errors",
                          "--no-resume")
    assert code == 0, err
    assert "2 errors" in err
    assert sorted(e.stream for e in support.SEEN) == sorted(
        f"order-{i}" for i in range(10) if i not in (3, 7))
    dead = _dlq(server, topic)
    assert sorted((r.key or b"").decode() for r in dead) == ["order-3", "order-7"]
    headers = {h.key: h.value for h in dead[0].headers}
    assert b"cannot handle" in (headers["replay.error"] or b"")
    assert headers["replay.error_type"] == b"ValueError"
    assert headers["es.type"] == b"OrderPlaced"


def test_stream_source_with_from_version_and_offsets(server: ServerProcess, stub: Any,
                                                     topic: str, tmp_path: Path) -> None:
    for i in range(6):
        support.append(stub, topic, "order-9", "OrderPlaced", i)
        support.append(stub, topic, "order-8", "OrderPlaced", i)
    code, _, err = moldau(server, "replay", topic, "--stream", "order-9", "--from-version", "4",
                          "--handler", "tests.cli.test_replay_support:collect")
    assert code == 0, err
    assert [(e.stream, e.version) for e in support.SEEN] == [("order-9", 4), ("order-9", 5)]
    out_file = tmp_path / "events.jsonl"
    code, _, err = moldau(server, "replay", topic, "--partition", "0", "--from-offset", "1",
                          "--to-offset", "2", "--jsonl", str(out_file))
    assert code == 0, err
    offsets = [json.loads(line)["offset"] for line in out_file.read_text().splitlines()]
    assert offsets == [o for o in (1, 2) if o in offsets]
    assert len(offsets) <= 2
    assert all(json.loads(line)["partition"] == 0
               for line in out_file.read_text().splitlines())


def test_sqlite_and_topic_targets(server: ServerProcess, stub: Any, topic: str,
                                  tmp_path: Path) -> None:
    _history(stub, topic, count=15)
    db = tmp_path / "events.db"
    code, _, err = moldau(server, "replay", topic, "--sqlite", str(db))
    assert code == 0, err
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 17
    copy = f"{topic}-copy"
    code, _, err = moldau(server, "topics", "create", copy)
    assert code == 0, err
    code, _, err = moldau(server, "replay", topic, "--category", "order", "--to-topic", copy,
                          "--rate", "1000")
    assert code == 0, err
    code, out, err = moldau(server, "replay", copy, "--jsonl", "-")
    assert code == 0, err
    assert len(out.splitlines()) == 15  # the copies are events again (es.* headers kept)
