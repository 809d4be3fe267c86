"""``moldau exchanges`` against a real broker: declare, bind, route, describe, unbind."""

from __future__ import annotations

import json
import time

from tests.cli.conftest import Run


def test_topic_exchange_end_to_end(moldau: Run) -> None:
    for topic in ("xcli-eu", "xcli-all"):
        assert moldau("topics", "create", topic).code == 0
    made = moldau("exchanges", "declare", "xcli-events", "--type", "topic", "--partitions", "2")
    assert made.out == "declared topic exchange xcli-events (2 partition(s))\n", made.err
    same = moldau("exchanges", "declare", "xcli-events", "--type", "topic", "--output", "json")
    assert json.loads(same.out)["created"] is False
    other = moldau("exchanges", "declare", "xcli-events", "--type", "fanout")
    assert other.code == 2
    assert "ALREADY_EXISTS" in other.err
    assert moldau("exchanges", "bind", "xcli-events", "xcli-eu", "--pattern",
                  "eu.#").out == "bound: xcli-events -> xcli-eu\n"
    assert moldau("exchanges", "bind", "xcli-events", "xcli-eu", "--pattern",
                  "eu.#").out == "already bound: xcli-events -> xcli-eu\n"
    assert moldau("exchanges", "bind", "xcli-events", "xcli-all", "--pattern", "#").code == 0
    produced = moldau("produce", "xcli-events", "--key-separator", ":",
                      stdin="eu.order.created:1\nus.order.created:2\n")
    assert produced.code == 0
    deadline = time.monotonic() + 10
    while True:
        summary = json.loads(moldau("exchanges", "list", "--output", "json").out)
        mine = next(s for s in summary if s["exchange"]["name"] == "xcli-events")
        if mine["routed"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (mine["routed"], mine["unroutable"], mine["bindings"]) == (2, 0, 2)
    eu = moldau("consume", "xcli-eu", "--from-beginning", "--timeout-ms", "500")
    assert eu.out == "1\n"
    everything = moldau("consume", "xcli-all", "--from-beginning", "--timeout-ms", "500")
    assert sorted(everything.out.split()) == ["1", "2"]
    described = moldau("exchanges", "describe", "xcli-events")
    assert "exchange xcli-events: topic, 2 partition(s)" in described.out
    assert "eu.#" in described.out
    assert "CHECKPOINT" in described.out
    bindings = json.loads(moldau("exchanges", "bindings", "xcli-events", "--destination",
                                 "xcli-eu", "--output", "json").out)
    assert bindings == [{"exchange": "xcli-events", "destination": "xcli-eu",
                         "pattern": "eu.#", "arguments": [], "match": "all"}]
    assert moldau("exchanges", "unbind", "xcli-events", "xcli-eu", "--pattern",
                  "eu.#").out == "unbound: xcli-events -> xcli-eu\n"
    assert moldau("exchanges", "unbind", "xcli-events", "xcli-eu", "--pattern",
                  "eu.#").out == "no such binding: xcli-events -> xcli-eu\n"
    assert moldau("exchanges", "delete", "xcli-events").code == 0
    gone = moldau("exchanges", "describe", "xcli-events")
    assert gone.code == 2
    assert "NOT_FOUND" in gone.err


def test_headers_bindings_and_errors(moldau: Run) -> None:
    assert moldau("topics", "create", "xcli-pager").code == 0
    assert moldau("exchanges", "declare", "xcli-alerts", "--type", "headers").code == 0
    bound = moldau("exchanges", "bind", "xcli-alerts", "xcli-pager", "--arg",
                   "severity=critical", "--arg", "team", "--match", "any", "--output", "json")
    assert json.loads(bound.out)["binding"]["arguments"] == [["severity", "critical"],
                                                             ["team", None]]
    listed = moldau("exchanges", "bindings", "xcli-alerts")
    assert listed.out.splitlines()[1].split() == ["xcli-pager", "-", "severity=critical",
                                                  "team", "any"]
    missing = moldau("exchanges", "bind", "xcli-alerts", "no-such-topic")
    assert missing.code == 2
    assert "NOT_FOUND" in missing.err
    bad = moldau("exchanges", "bind", "xcli-alerts", "xcli-pager", "--pattern", "x.y")
    assert bad.code == 2
    assert "INVALID_ARGUMENT" in bad.err
    twice = moldau("exchanges", "bind", "xcli-alerts", "xcli-pager", "--arg", "a=1", "--arg",
                   "a=2")
    assert twice.code == 1
    assert "once" in twice.err
    no_type = moldau("exchanges", "declare", "x")
    assert no_type.code == 1
    assert "--type" in no_type.err
