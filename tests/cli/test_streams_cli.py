"""``moldau streams append|read|list|delete`` against a real broker."""

from __future__ import annotations

import itertools
import json
import uuid

import pytest

from moldau import EventStore
from moldau.testing import RunningBroker
from tests.cli.conftest import Run

_names = itertools.count()


@pytest.fixture
def store_topic(server: RunningBroker) -> str:
    name = f"cli-es-{next(_names)}"
    with EventStore(server.address) as store:
        store.create_store_topic(name, 2, {"durability": "async"})
    return name


def test_append_read_round_trip(moldau: Run, store_topic: str) -> None:
    appended = moldau("streams", "append", store_topic, "order-1", "--type", "OrderPlaced",
                      "--data", '{"total": 20}', "--expected-version", "no_stream",
                      "--output", "json")
    assert appended.code == 0, appended.err
    result = json.loads(appended.out)
    assert (result["first_version"], result["last_version"]) == (0, 0)
    piped = moldau("streams", "append", store_topic, "order-1", "--type", "Tick",
                   "--expected-version", "0", stdin='{"n": 1}\n{"n": 2}\n')
    assert piped.code == 0
    assert "versions 1..2" in piped.out
    read = moldau("streams", "read", store_topic, "order-1", "--output", "json")
    events = [json.loads(line) for line in read.out.splitlines()]
    assert [(e["version"], e["type"]) for e in events] == [
        (0, "OrderPlaced"), (1, "Tick"), (2, "Tick")]
    assert json.loads(events[0]["data"]) == {"total": 20}
    table = moldau("streams", "read", store_topic, "order-1", "--backwards", "--max-count", "1")
    assert table.code == 0
    assert "VERSION" in table.out
    assert "Tick" in table.out
    assert "OrderPlaced" not in table.out


def test_wrong_expected_version_exits_2_with_the_reason(moldau: Run, store_topic: str) -> None:
    assert moldau("streams", "append", store_topic, "cart-1", "--type", "A",
                  "--data", "{}").code == 0
    refused = moldau("streams", "append", store_topic, "cart-1", "--type", "A", "--data", "{}",
                     "--expected-version", "no_stream")
    assert refused.code == 2
    assert "FAILED_PRECONDITION" in refused.err
    assert "is at version 0" in refused.err
    bad = moldau("streams", "append", store_topic, "cart-1", "--type", "A", "--data", "{}",
                 "--expected-version", "maybe")
    assert bad.code == 1
    assert "no_stream" in bad.err


def test_event_id_makes_the_retry_idempotent(moldau: Run, store_topic: str) -> None:
    event_id = str(uuid.uuid4())
    argv = ("streams", "append", store_topic, "pay-1", "--type", "Paid", "--data", "{}",
            "--event-id", event_id, "--output", "json")
    first, again = moldau(*argv), moldau(*argv)
    assert json.loads(first.out)["duplicate"] is False
    assert json.loads(again.out)["duplicate"] is True
    assert json.loads(again.out)["event_ids"] == [event_id]


def test_list_and_delete(moldau: Run, store_topic: str) -> None:
    for stream in ("order-1", "order-2", "user-1"):
        moldau("streams", "append", store_topic, stream, "--type", "A", "--data", "{}")
        moldau("streams", "append", store_topic, stream, "--type", "B", "--data", "{}")
    listed = json.loads(moldau("streams", "list", store_topic, "--category", "order",
                               "--output", "json").out)
    assert [(s["stream"], s["last_version"]) for s in listed] == [("order-1", 1), ("order-2", 1)]
    truncated = moldau("streams", "delete", store_topic, "order-2", "--truncate-before", "1")
    assert truncated.code == 0
    assert moldau("streams", "delete", store_topic, "order-1", "--expected-version", "0").code == 2
    assert moldau("streams", "delete", store_topic, "order-1", "--expected-version", "1").code == 0
    table = moldau("streams", "list", store_topic, "--include-deleted")
    lines = table.out.splitlines()
    assert lines[0].split() == ["STREAM", "LAST_VERSION", "TRUNCATE_BEFORE", "DELETED",
                                "PARTITION"]
    assert any(line.startswith("order-1") and "yes" in line for line in lines)
    missing = moldau("streams", "read", store_topic, "order-1")
    assert missing.code == 2
    assert "was deleted" in missing.err
    assert moldau("streams", "append", store_topic, "x-1", "--type", "A", stdin="").code == 1
