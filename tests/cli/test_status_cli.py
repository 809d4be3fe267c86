"""``moldau status`` against a real broker: health, topic sizes, rates while producing, lag."""

from __future__ import annotations

import io
import json
import socket
import threading

from moldau import Admin, Producer
from moldau.cli import EXIT_CONNECT, main
from moldau.testing import RunningBroker
from tests.cli.conftest import Run


def _status_json(moldau: Run, *argv: str) -> dict[str, object]:
    result = moldau("status", "--output", "json", *argv)
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert isinstance(document, dict)
    return document


def test_status_shows_topics_and_group_lag(moldau: Run, server: RunningBroker) -> None:
    topic, group = "status-topic", "status-group"
    with Admin(server.address) as admin:
        admin.create_topic(topic, 2, {"durability": "async"})
        with Producer(server.address) as producer:
            producer.send_many(topic, [b"v" * 10] * 30, partition=0)
            producer.send_many(topic, [b"v" * 10] * 12, partition=1)
            producer.flush()
        admin.commit_offsets(group, {(topic, 0): 10, (topic, 1): 12})

    document = _status_json(moldau, "--interval", "0")
    assert document["health"] == "SERVING"
    assert document["healthy"] is True
    rows = {t["topic"]: t for t in document["topics"]}  # type: ignore[attr-defined]
    assert rows[topic]["partitions"] == 2
    assert rows[topic]["records"] == 42
    assert rows[topic]["size_bytes"] > 42 * 10
    assert rows[topic]["records_per_sec"] is None  # no second look with --interval 0
    groups = {g["group"]: g for g in document["groups"]}  # type: ignore[attr-defined]
    assert groups[group]["lag_records"] == 20  # 30 - 10 on partition 0, caught up on 1
    assert groups[group]["max_lag_ms"] > 0
    assert "__consumer_offsets" not in rows

    table = moldau("status", "--interval", "0")
    assert table.code == 0, table.err
    assert table.out.startswith(f"broker {server.address}: SERVING")
    assert f"{topic}  " in table.out
    line = next(x for x in table.out.splitlines() if x.startswith(group))
    assert line.split()[1:5] == ["empty", "0", "2", "20"]

    internal = _status_json(moldau, "--interval", "0", "--internal")
    assert "__consumer_offsets" in {t["topic"] for t in internal["topics"]}  # type: ignore[attr-defined]


def test_status_measures_the_append_rate(moldau: Run, server: RunningBroker) -> None:
    topic = "status-rate"
    with Admin(server.address) as admin:
        admin.create_topic(topic, 1, {"durability": "async"})
    stop = threading.Event()

    def produce() -> None:
        with Producer(server.address, linger_ms=0) as producer:
            while not stop.is_set():
                producer.send_many(topic, [b"r"] * 100, partition=0).result(10)

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        document = _status_json(moldau, "--interval", "1")
    finally:
        stop.set()
        thread.join()
    rate = {t["topic"]: t for t in document["topics"]}[topic]["records_per_sec"]  # type: ignore[attr-defined]
    assert rate is not None
    assert rate > 100


def test_status_bad_interval_and_unreachable_broker() -> None:
    err = io.StringIO()
    code = main(["status", "--watch", "--interval", "0"], stdout=io.StringIO(), stderr=err)
    assert code == 1
    assert "--interval" in err.getvalue()

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    err = io.StringIO()
    code = main(["status", "--server", f"127.0.0.1:{port}", "--interval", "0"],
                stdout=io.StringIO(), stderr=err)
    assert code == EXIT_CONNECT
    assert "is the broker running" in err.getvalue()
