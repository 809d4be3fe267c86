"""The ``moldau`` command, called through ``main(argv)`` against a real broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moldau.cli import build_parser, main
from tests.cli.conftest import Run


def test_the_thirty_second_tour(moldau: Run) -> None:
    """The tour in docs/getting-started.md, verbatim."""
    created = moldau("topics", "create", "tour", "--partitions", "3")
    assert created.code == 0, created.err
    assert created.out == "created topic tour with 3 partitions\n"
    produced = moldau("produce", "tour", "--key-separator", ":",
                      stdin="alice:hello\nbob:world\nalice:again\n")
    assert (produced.code, produced.err) == (0, "3 records acknowledged\n")
    consumed = moldau("consume", "tour", "--from-beginning", "--max-records", "3")
    assert consumed.code == 0, consumed.err
    assert sorted(consumed.out.splitlines()) == ["again", "hello", "world"]
    as_json = moldau("consume", "tour", "--from-beginning", "--max-records", "3",
                     "--output", "json")
    records = [json.loads(line) for line in as_json.out.splitlines()]
    alice = [r for r in records if r["key"] == "alice"]
    assert [r["value"] for r in alice] == ["hello", "again"]  # one key, one partition, in order
    assert alice[0]["partition"] == alice[1]["partition"]
    assert alice[1]["offset"] > alice[0]["offset"]
    assert set(records[0]) == {"topic", "partition", "offset", "timestamp", "key", "value",
                               "headers"}
    listed = moldau("topics", "list")
    assert "tour" in listed.out
    assert "PARTITIONS" in listed.out


def test_produce_headers_partition_and_json(moldau: Run, tmp_path: Path) -> None:
    assert moldau("topics", "create", "cli-json", "--partitions", "2").code == 0
    lines = [json.dumps({"key": "k", "value": "v1", "headers": {"h": "x"}}),
             json.dumps({"key": None, "value": None, "headers": [["n", None]]})]
    result = moldau("produce", "cli-json", "--format", "json", "--partition", "1",
                    "--header", "src=cli", stdin="\n".join(lines) + "\n")
    assert result.code == 0, result.err
    source = tmp_path / "records.txt"
    source.write_bytes(b"from-file\n\n")
    assert moldau("produce", "cli-json", "--partition", "1", "--file", str(source)).code == 0
    out = moldau("consume", "cli-json", "--partition", "1", "--offset", "0", "--max-records",
                 "3", "--output", "json").out
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["key"], r["value"], r["headers"]) for r in records] == [
        ("k", "v1", {"src": "cli", "h": "x"}),
        (None, None, {"src": "cli", "n": None}),
        (None, "from-file", {}),
    ]
    replay = moldau("produce", "cli-json", "--format", "json", stdin=out)  # output replays
    assert replay.err == "3 records acknowledged\n"


def test_consume_from_time_and_timeout(moldau: Run) -> None:
    assert moldau("topics", "create", "cli-time").code == 0
    lines = [json.dumps({"value": str(i), "timestamp": 1_767_225_600_000 + i * 1000})
             for i in range(5)]  # 2026-01-01T00:00:00Z + i s
    for line in lines:  # one batch per record
        assert moldau("produce", "cli-time", "--format", "json", stdin=line).code == 0
    result = moldau("consume", "cli-time", "--from-time", "2026-01-01T00:00:03Z",
                    "--timeout-ms", "300")
    assert (result.code, result.out) == (0, "3\n4\n")
    offsets = moldau("offsets", "cli-time", "--time", "2026-01-01T00:00:02Z", "--output", "json")
    assert json.loads(offsets.out) == [
        {"partition": 0, "earliest": 0, "latest": 5, "offset_for_time": 2}
    ]
    table = moldau("offsets", "cli-time")
    assert table.out.splitlines()[1].split() == ["0", "0", "5"]


def test_topics_describe_alter_delete(moldau: Run) -> None:
    assert moldau("topics", "create", "cli-admin", "--config", "retention.ms=60000").code == 0
    described = moldau("topics", "describe", "cli-admin")
    assert "retention.ms" in described.out
    assert "override" in described.out
    altered = moldau("topics", "alter", "cli-admin", "--set", "segment.ms=120000",
                     "--delete", "retention.ms")
    assert altered.out == "altered topic cli-admin: segment.ms=120000\n"
    data = json.loads(moldau("topics", "describe", "cli-admin", "--output", "json").out)
    assert data["overrides"] == {"segment.ms": "120000"}
    assert data["partition_details"][0]["high_watermark"] == 0
    listed = json.loads(moldau("topics", "list", "--output", "json").out)
    assert {"name": "cli-admin", "partitions": 1, "internal": False,
            "overrides": {"segment.ms": "120000"}} in listed
    assert moldau("topics", "delete", "cli-admin").out == "deleted topic cli-admin\n"


def test_server_errors_exit_2_with_the_message(moldau: Run) -> None:
    assert moldau("topics", "create", "cli-dup").code == 0
    duplicate = moldau("topics", "create", "cli-dup")
    assert duplicate.code == 2
    assert "ALREADY_EXISTS" in duplicate.err
    assert "already exists" in duplicate.err
    missing = moldau("produce", "no-such-topic", stdin="x\n")
    assert missing.code == 2
    assert "does not exist" in missing.err
    bad = moldau("topics", "create", "cli-bad", "--config", "retention.ms=soon")
    assert bad.code == 2
    assert "INVALID_ARGUMENT" in bad.err


def test_usage_errors_exit_1(moldau: Run) -> None:
    for argv in (["bogus"], ["topics"], ["consume", "t"], ["topics", "create"],
                 ["topics", "create", "x", "--config", "novalue"],
                 ["consume", "t", "--from-time", "yesterday"]):
        result = moldau(*argv)
        assert result.code == 1, argv
        assert result.err.startswith("moldau: error:"), result.err
    no_separator = moldau("produce", "tour-missing", "--key-separator", ":", stdin="x\n")
    assert no_separator.code in (1, 2)
    assert moldau("topics", "create", "cli-sep").code == 0
    assert moldau("produce", "cli-sep", "--key-separator", ":", stdin="x\n").code == 1
    assert moldau("produce", "cli-sep", "--format", "json", stdin="[1]\n").code == 1


def test_unreachable_server_exits_3(moldau: Run) -> None:
    for argv in (["topics", "list"], ["produce", "t"], ["consume", "t", "--from-beginning"],
                 ["offsets", "t"]):
        result = moldau(*argv, "--server", "127.0.0.1:1")
        assert result.code == 3, (argv, result.err)
        assert "cannot connect to 127.0.0.1:1" in result.err


@pytest.mark.parametrize(
    "argv",
    [[], ["serve"], ["topics"], ["topics", "create"], ["topics", "delete"], ["topics", "list"],
     ["topics", "describe"], ["topics", "alter"], ["produce"], ["consume"], ["offsets"]],
)
def test_every_command_has_help_with_examples(argv: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text
    assert "exit codes:" in text


def test_serve_delegates_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr("grpc_api.server.main", lambda argv: calls.append(argv) or 0)
    assert main(["serve", "--listen", "127.0.0.1:0", "--data-dir", "d"]) == 0
    assert calls == [["--listen", "127.0.0.1:0", "--data-dir", "d"]]
    assert build_parser().prog == "moldau"
