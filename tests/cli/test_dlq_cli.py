"""``moldau dlq`` against a real broker: list, show, redrive by offset, range and filters."""

from __future__ import annotations

import json

from moldau import Queues
from moldau.testing import RunningBroker
from tests.cli.conftest import Run


def _dead_letters(moldau: Run, server: RunningBroker, topic: str, queue: str) -> None:
    """Five records, all dead-lettered; records 1 and 3 carry tenant=acme."""
    assert moldau("topics", "create", topic).code == 0
    assert moldau("produce", topic, stdin="p0\np2\np4\n").code == 0
    assert moldau("produce", topic, "--header", "tenant=acme", stdin="p1\np3\n").code == 0
    assert moldau("queues", "declare", queue, "--topic", topic).code == 0
    with Queues(server.address) as queues:
        got = queues.receive(queue, 5, wait_ms=2000)
        assert len(got) == 5
        for message in got:
            error = "gateway timeout" if message.offset % 2 else "card declined"
            queues.nack(message, error=error, reject=True)


def test_list_and_show(moldau: Run, server: RunningBroker) -> None:
    _dead_letters(moldau, server, "dcli-pay", "dcli-pay-q")
    listed = moldau("dlq", "list", "--queue", "dcli-pay-q")
    assert listed.code == 0, listed.err
    lines = listed.out.splitlines()
    assert lines[0].split()[:4] == ["OFFSET", "SOURCE", "QUEUE", "REASON"]
    assert len(lines) == 6
    assert "rejected" in lines[1]
    as_json = json.loads(moldau("dlq", "list", "--topic", "dcli-pay.dlq", "--output",
                                "json").out)
    assert [d["value"] for d in as_json] == ["p0", "p2", "p4", "p1", "p3"]
    acme = json.loads(moldau("dlq", "list", "--queue", "dcli-pay-q", "--header",
                             "tenant=acme", "--output", "json").out)
    assert [d["value"] for d in acme] == ["p1", "p3"]
    assert acme[0]["headers"] == [["tenant", "acme"]]
    timeouts = json.loads(moldau("dlq", "list", "--queue", "dcli-pay-q", "--error-contains",
                                 "timeout", "--output", "json").out)
    assert {d["last_error"] for d in timeouts} == {"gateway timeout"}
    ranged = json.loads(moldau("dlq", "list", "--queue", "dcli-pay-q", "--range", "1-2",
                               "--output", "json").out)
    assert [d["dlq_offset"] for d in ranged] == [1, 2]
    shown = moldau("dlq", "show", "--queue", "dcli-pay-q", "3")
    assert shown.code == 0
    assert "source:        dcli-pay partition 0 offset 3" in shown.out
    assert "header:        tenant=acme" in shown.out
    assert "reason:        rejected after 1 attempt(s)" in shown.out
    one = json.loads(moldau("dlq", "show", "--queue", "dcli-pay-q", "0", "--output",
                            "json").out)
    assert one["value"] == "p0"
    assert one["source_offset"] == 0
    missing = moldau("dlq", "show", "--queue", "dcli-pay-q", "99")
    assert missing.code == 1
    assert "no dead letter at offset 99" in missing.err
    nothing = moldau("dlq", "list", "--queue", "dcli-pay-q", "--reason", "max-deliveries")
    assert nothing.out == ""
    assert "no dead letters match" in nothing.err


def test_redrive(moldau: Run, server: RunningBroker) -> None:
    _dead_letters(moldau, server, "dcli-red", "dcli-red-q")
    refused = moldau("dlq", "redrive", "--queue", "dcli-red-q")
    assert refused.code == 1
    assert "say which dead letters to move" in refused.err
    both = moldau("dlq", "redrive", "--queue", "dcli-red-q", "--all", "--offset", "1")
    assert both.code == 1
    dry = moldau("dlq", "redrive", "--queue", "dcli-red-q", "--all", "--dry-run", "--output",
                 "json")
    assert json.loads(dry.out)["dry_run"] is True
    assert len(json.loads(dry.out)["moved"]) == 5
    assert "nothing was moved" in dry.err
    one = moldau("dlq", "redrive", "--queue", "dcli-red-q", "--offset", "0")
    assert one.code == 0
    assert "moved 1 dead letter(s)" in one.err
    by_filter = moldau("dlq", "redrive", "--queue", "dcli-red-q", "--header", "tenant=acme",
                       "--output", "json")
    assert [d["value"] for d in json.loads(by_filter.out)["moved"]] == ["p1", "p3"]
    ranged = moldau("dlq", "redrive", "--queue", "dcli-red-q", "--range", "0-2")
    assert "moved 2 dead letter(s)" in ranged.err
    assert "1 selected letter(s) were moved before" in ranged.err
    rest = moldau("dlq", "redrive", "--queue", "dcli-red-q", "--all")
    assert "moved 0 dead letter(s)" in rest.err
    assert json.loads(moldau("dlq", "list", "--queue", "dcli-red-q", "--output",
                             "json").out) == []
    back = json.loads(moldau("queues", "receive", "dcli-red-q", "--max-records", "10",
                             "--wait-ms", "2000", "--ack", "--output", "json").out)
    assert sorted(d["value"] for d in back) == ["p0", "p1", "p2", "p3", "p4"]
