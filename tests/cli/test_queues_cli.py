"""``moldau queues`` against a real broker: declare, list, describe, receive, ack, nack."""

from __future__ import annotations

import json

from tests.cli.conftest import Run


def _topic(moldau: Run, name: str, lines: str = "") -> None:
    assert moldau("topics", "create", name).code == 0
    if lines:
        assert moldau("produce", name, stdin=lines).code == 0


def test_declare_list_describe_delete(moldau: Run) -> None:
    _topic(moldau, "qcli-orders", "a\nb\nc\n")
    made = moldau("queues", "declare", "qcli-work", "--topic", "qcli-orders",
                  "--max-deliveries", "3", "--backoff-initial-ms", "250", "--ordering",
                  "per-key")
    assert made.code == 0, made.err
    assert made.out == "declared work queue qcli-work over qcli-orders (dead letters to " \
        "qcli-orders.dlq)\n"
    again = moldau("queues", "declare", "qcli-work", "--topic", "qcli-orders",
                   "--max-deliveries", "3", "--backoff-initial-ms", "250", "--ordering",
                   "per-key", "--output", "json")
    body = json.loads(again.out)
    assert body["created"] is False
    assert body["queue"]["backoff"]["initial_ms"] == 250
    assert body["queue"]["ordering"] == "per-key"
    conflict = moldau("queues", "declare", "qcli-work", "--topic", "qcli-orders")
    assert conflict.code == 2
    assert "ALREADY_EXISTS" in conflict.err
    listed = moldau("queues", "list")
    assert listed.code == 0
    row = next(line for line in listed.out.splitlines() if line.startswith("qcli-work"))
    assert row.split()[:4] == ["qcli-work", "qcli-orders", "work", "3"]
    as_json = json.loads(moldau("queues", "list", "--output", "json").out)
    assert any(q["queue"]["name"] == "qcli-work" and q["stats"]["depth"] == 3 for q in as_json)
    described = moldau("queues", "describe", "qcli-work")
    assert "max deliveries 3" in described.out
    assert "backoff: 250 ms x2" in described.out
    detail = json.loads(moldau("queues", "describe", "qcli-work", "--output", "json").out)
    assert detail["partitions"][0]["high_watermark"] == 3
    assert moldau("queues", "delete", "qcli-work").out == "deleted queue qcli-work\n"
    missing = moldau("queues", "describe", "qcli-work")
    assert missing.code == 2
    assert "NOT_FOUND" in missing.err
    assert "declare it first" in missing.err


def test_receive_ack_nack(moldau: Run) -> None:
    _topic(moldau, "qcli-jobs", "j1\nj2\nj3\n")
    assert moldau("queues", "declare", "qcli-jobs-q", "--topic", "qcli-jobs",
                  "--backoff-initial-ms", "0").code == 0
    got = moldau("queues", "receive", "qcli-jobs-q", "--max-records", "2", "--output", "json")
    assert got.code == 0, got.err
    deliveries = json.loads(got.out)
    assert [d["value"] for d in deliveries] == ["j1", "j2"]
    assert all(d["delivery_count"] == 1 and not d["acked"] for d in deliveries)
    assert "settle them with 'moldau queues ack qcli-jobs-q" in got.err
    acked = moldau("queues", "ack", "qcli-jobs-q", deliveries[0]["lease_id"])
    assert acked.code == 0
    assert "acked" in acked.out
    twice = moldau("queues", "ack", "qcli-jobs-q", deliveries[0]["lease_id"], "--output",
                   "json")
    assert json.loads(twice.out)["failed"][0]["lease_id"] == deliveries[0]["lease_id"]
    assert "no longer current" in twice.err
    nacked = moldau("queues", "nack", "qcli-jobs-q", deliveries[1]["lease_id"], "--error",
                    "flaky", "--output", "json")
    assert json.loads(nacked.out)[0]["outcome"] == "retry-scheduled"
    table = moldau("queues", "receive", "qcli-jobs-q", "--max-records", "5", "--wait-ms",
                   "2000", "--ack")
    assert table.code == 0
    assert table.out.splitlines()[0].split() == ["LEASE", "PARTITION", "OFFSET", "DELIVERY",
                                                 "KEY", "VALUE"]
    assert "acked 2 of 2 record(s)" in table.err
    empty = moldau("queues", "receive", "qcli-jobs-q")
    assert empty.out == ""
    assert "no records ready" in empty.err


def test_usage_errors(moldau: Run) -> None:
    bad = moldau("queues", "receive", "x", "--max-records", "0")
    assert bad.code == 1
    assert "--max-records must be 1 to 10000" in bad.err
    no_topic = moldau("queues", "declare", "x")
    assert no_topic.code == 1
    assert "--topic" in no_topic.err
    bad_mode = moldau("queues", "declare", "x", "--topic", "t", "--mode", "fifo")
    assert bad_mode.code == 1
    assert "invalid choice" in bad_mode.err
    assert moldau("queues", "declare", "x", "--topic", "t", "--lease-ms", "0").code == 1
