"""``moldau groups``: called through ``main(argv)`` against a real broker, plus properties of
its pure parsers (ISO durations, ``T[:partitions]``, the offsets CSV)."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moldau import Admin, Producer
from moldau._cli_groups import format_offsets_csv, parse_offsets_csv, parse_topic_spec
from moldau._cli_output import format_duration_ms, parse_duration_ms, parse_local_time_ms
from moldau._types import TopicPartition
from moldau.testing import RunningBroker
from tests.cli.conftest import Run
from tests.client.test_group_admin import LiveMember

_names = itertools.count()


@pytest.fixture
def names() -> tuple[str, str]:
    """A fresh (topic, group) pair."""
    number = next(_names)
    return f"cli-groups-{number}", f"cli-group-{number}"


@pytest.fixture
def filled(server: RunningBroker, names: tuple[str, str]) -> tuple[str, str]:
    """The topic of ``names`` with 2 partitions of records 0..9, timestamps 1_000 + offset."""
    topic, group = names
    with Admin(server.address) as admin:
        admin.create_topic(topic, 2, {"durability": "async"})
    with Producer(server.address) as producer:
        for offset in range(10):
            for partition in (0, 1):
                producer.send(topic, b"x", partition=partition, timestamp=1_000 + offset)
            producer.flush()
    return topic, group


@pytest.fixture
def live_member(server: RunningBroker) -> Iterator[Callable[[str, list[str]], LiveMember]]:
    members: list[LiveMember] = []

    def join(group: str, topics: list[str]) -> LiveMember:
        members.append(LiveMember(server.address, group, topics))
        return members[-1]

    yield join
    for member in members:
        member.close()


def _commit(server: RunningBroker, group: str, offsets: dict[tuple[str, int], int]) -> None:
    with Admin(server.address) as admin:
        admin.commit_offsets(group, offsets)


def _committed(server: RunningBroker, group: str) -> dict[int, int]:
    with Admin(server.address) as admin:
        return {tp.partition: o.offset for tp, o in admin.fetch_offsets(group).items()}


def _plan(moldau: Run, *argv: str) -> tuple[list[list[object]], str]:
    result = moldau("groups", "reset-offsets", *argv, "--output", "json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)["rows"]
    return [[r["partition"], r["current"], r["new_offset"], r["clamped"]] for r in rows], result.err


# ---------------------------------------------------------------------------- list, describe


def test_list_and_describe(moldau: Run, server: RunningBroker, filled: tuple[str, str]) -> None:
    topic, group = filled
    _commit(server, group, {(topic, 0): 4, (topic, 1): 10})
    listed = moldau("groups", "list")
    assert listed.code == 0, listed.err
    assert listed.out.splitlines()[0].split() == ["GROUP", "STATE", "MEMBERS"]
    assert [group, "empty", "0"] in [line.split() for line in listed.out.splitlines()]
    as_json = json.loads(moldau("groups", "list", "--output", "json").out)
    assert {"group": group, "state": "empty", "members": 0} in as_json

    described = moldau("groups", "describe", group)
    assert described.code == 0, described.err
    lines = described.out.splitlines()
    assert lines[0] == f"group {group}: empty, generation 0, 0 member(s)"
    assert lines[2].split() == [
        "TOPIC",
        "PARTITION",
        "COMMITTED",
        "LOG",
        "END",
        "LAG",
        "LAG",
        "TIME",
        "OWNER",
    ]
    row0, row1 = (line.split() for line in lines[3:5])
    assert row0[:5] == [topic, "0", "4", "10", "6"]
    assert row0[-1] == "-"
    assert row1[:6] == [topic, "1", "10", "10", "0", "0s"]
    details = json.loads(moldau("groups", "describe", group, "--output", "json").out)
    assert (details["group"], details["state"], details["members"]) == (group, "empty", [])
    assert details["partitions"][0] == {
        "topic": topic,
        "partition": 0,
        "committed": 4,
        "metadata": "",
        "owner": "",
        "log_start_offset": 0,
        "log_end_offset": 10,
        "lag_records": 6,
        "lag_ms": details["partitions"][0]["lag_ms"],
    }
    assert details["partitions"][0]["lag_ms"] > 0


def test_describe_with_a_live_member(
    moldau: Run, filled: tuple[str, str], live_member: Callable[[str, list[str]], LiveMember]
) -> None:
    topic, group = filled
    member = live_member(group, [topic])
    described = moldau("groups", "describe", group)
    assert described.code == 0, described.err
    assert "1 member(s)" in described.out.splitlines()[0]
    assert "assignor sticky" in described.out.splitlines()[0]
    member_row = next(
        line for line in described.out.splitlines() if line.startswith(member.member_id)
    )
    assert f"{topic}:0,1" in member_row
    partition_rows = [line.split() for line in described.out.splitlines() if line.startswith(topic)]
    assert [row[-1] for row in partition_rows] == [member.member_id, member.member_id]
    assert [row[2] for row in partition_rows] == ["-", "-"]  # nothing committed
    details = json.loads(moldau("groups", "describe", group, "--output", "json").out)
    (described_member,) = details["members"]
    assert described_member["member_id"] == member.member_id
    assert described_member["topics"] == [topic]
    assert {(p["topic"], p["partition"]) for p in described_member["assignment"]} == {
        (topic, 0),
        (topic, 1),
    }
    refused = moldau("groups", "delete", group)
    assert refused.code == 2
    assert "FAILED_PRECONDITION" in refused.err


def test_unknown_group_is_a_server_error(moldau: Run) -> None:
    result = moldau("groups", "describe", "no-such-group")
    assert result.code == 2
    assert result.err.startswith("moldau: NOT_FOUND: group 'no-such-group' does not exist")


# ---------------------------------------------------------------------------- delete


def test_delete_offsets_and_group(
    moldau: Run, server: RunningBroker, filled: tuple[str, str]
) -> None:
    topic, group = filled
    _commit(server, group, {(topic, 0): 1, (topic, 1): 2})
    one = moldau("groups", "delete-offsets", group, "--topic", f"{topic}:1")
    assert one.code == 0, one.err
    assert one.out.splitlines()[1].split() == [topic, "1"]
    assert one.err == f"deleted 1 committed offset(s) of group {group}\n"
    assert _committed(server, group) == {0: 1}
    nothing = moldau(
        "groups", "delete-offsets", group, "--topic", "other-topic", "--output", "json"
    )
    assert json.loads(nothing.out) == {"group": group, "deleted": []}
    assert _committed(server, group) == {0: 1}  # an empty list never means "all"
    whole = moldau("groups", "delete-offsets", group, "--topic", topic, "--output", "json")
    assert json.loads(whole.out)["deleted"] == [{"topic": topic, "partition": 0}]
    deleted = moldau("groups", "delete", group)
    assert deleted.code == 2  # no offsets, no members: the group is gone already
    _commit(server, group, {(topic, 0): 1})
    deleted = moldau("groups", "delete", group)
    assert (deleted.code, deleted.out) == (0, f"deleted group {group}\n")
    assert group not in moldau("groups", "list").out


# ---------------------------------------------------------------------------- reset


def test_reset_modes_dry_run(moldau: Run, server: RunningBroker, filled: tuple[str, str]) -> None:
    topic, group = filled
    _commit(server, group, {(topic, 0): 5})
    target = ("--group", group, "--topic", topic)
    assert _plan(moldau, *target, "--to-earliest")[0] == [[0, 5, 0, False], [1, None, 0, False]]
    assert _plan(moldau, *target, "--to-latest")[0] == [[0, 5, 10, False], [1, None, 10, False]]
    assert _plan(moldau, *target, "--to-offset", "7")[0] == [[0, 5, 7, False], [1, None, 7, False]]
    assert _plan(moldau, *target, "--to-datetime", "1970-01-01T00:00:01.004Z")[0] == [
        [0, 5, 4, False],
        [1, None, 4, False],
    ]
    local = datetime.fromtimestamp(1.004).isoformat(timespec="milliseconds")  # no offset
    assert _plan(moldau, *target, "--to-datetime", local)[0][0] == [0, 5, 4, False]
    assert _plan(moldau, *target, "--shift-by", "-2")[0] == [[0, 5, 3, False], [1, None, 0, True]]
    assert _plan(moldau, "--group", group, "--all-topics", "--shift-by", "2")[0] == [
        [0, 5, 7, False],
        [1, None, 2, False],
    ]
    assert _plan(moldau, "--group", group, "--topic", f"{topic}:1", "--to-offset", "3")[0] == [
        [1, None, 3, False]
    ]
    table = moldau("groups", "reset-offsets", *target, "--to-offset", "7", "--dry-run")
    assert table.code == 0, table.err
    assert table.out.splitlines()[0].split() == [
        "TOPIC",
        "PARTITION",
        "CURRENT",
        "OFFSET",
        "NEW",
        "OFFSET",
    ]
    assert table.out.splitlines()[2].split() == [topic, "1", "-", "7"]
    assert "dry run: nothing was changed" in table.err
    assert _committed(server, group) == {0: 5}


def test_reset_by_duration(moldau: Run, server: RunningBroker, names: tuple[str, str]) -> None:
    topic, group = names
    now_ms = int(time.time() * 1000)
    with Admin(server.address) as admin:
        admin.create_topic(topic, 1, {"durability": "async"})
    with Producer(server.address) as producer:
        for age_ms in (3 * 3_600_000, 2 * 3_600_000, 1_800_000, 600_000):
            producer.send(topic, b"x", timestamp=now_ms - age_ms).result(10)
    target = ("--group", group, "--topic", topic)
    assert _plan(moldau, *target, "--by-duration", "PT1H")[0] == [[0, None, 2, False]]
    assert _plan(moldau, *target, "--by-duration", "P1DT0H")[0] == [[0, None, 0, False]]
    for negative_argv in (["--by-duration=-PT1H"], ["--by-duration", "-PT1H"]):
        negative = moldau("groups", "reset-offsets", *target, *negative_argv)
        assert negative.code == 1
        assert "must not be negative" in negative.err
    bad = moldau("groups", "reset-offsets", *target, "--by-duration", "1 hour")
    assert bad.code == 1
    assert "is not an ISO 8601 duration" in bad.err


def test_execute_clamp_warning_and_export_round_trip(
    moldau: Run, server: RunningBroker, filled: tuple[str, str], tmp_path: Path
) -> None:
    topic, group = filled
    plan_file = tmp_path / "plan.csv"
    clamped = moldau(
        "groups",
        "reset-offsets",
        "--group",
        group,
        "--topic",
        f"{topic}:0",
        "--to-offset",
        "99",
        "--export",
        str(plan_file),
    )
    assert clamped.code == 0, clamped.err
    assert clamped.out.splitlines()[1].split() == [topic, "0", "-", "10", "clamped"]
    assert (
        f"warning: {topic}:0: the requested offset is outside the partition's range "
        "[log start, log end]; clamped to 10\n"
    ) in clamped.err
    assert plan_file.read_text() == f"{topic},0,10\n"
    assert _committed(server, group) == {}

    plan_file.write_text(f"topic,partition,offset\n{topic},0,4\n{group},{topic},1,6\n\n")
    executed = moldau(
        "groups",
        "reset-offsets",
        "--group",
        group,
        "--from-file",
        str(plan_file),
        "--execute",
        "--export",
        str(tmp_path / "again.csv"),
    )
    assert executed.code == 0, executed.err
    assert f"executed: stored 2 offset(s) of group {group}" in executed.err
    assert "warning:" not in executed.err
    assert _committed(server, group) == {0: 4, 1: 6}
    assert (tmp_path / "again.csv").read_text() == f"{topic},0,4\n{topic},1,6\n"
    replay = moldau(
        "groups",
        "reset-offsets",
        "--group",
        group,
        "--from-file",
        str(tmp_path / "again.csv"),
        "--output",
        "json",
    )
    assert json.loads(replay.out)["rows"] == [
        {"topic": topic, "partition": 0, "current": 4, "new_offset": 4, "clamped": False},
        {"topic": topic, "partition": 1, "current": 6, "new_offset": 6, "clamped": False},
    ]
    other_group = moldau(
        "groups", "reset-offsets", "--group", "someone-else", "--from-file", str(plan_file)
    )
    assert other_group.code == 1
    assert "a row for group" in other_group.err
    missing = moldau(
        "groups", "reset-offsets", "--group", group, "--from-file", str(tmp_path / "missing.csv")
    )
    assert (missing.code, "cannot read" in missing.err) == (1, True)


def test_execute_refused_while_live_then_live(
    moldau: Run,
    server: RunningBroker,
    filled: tuple[str, str],
    live_member: Callable[[str, list[str]], LiveMember],
) -> None:
    topic, group = filled
    _commit(server, group, {(topic, 0): 3, (topic, 1): 3})
    member = live_member(group, [topic])
    target = ("groups", "reset-offsets", "--group", group, "--topic", topic, "--to-earliest")
    dry = moldau(*target)
    assert dry.code == 0, dry.err
    refused = moldau(*target, "--execute")
    assert refused.code == 2
    assert refused.err.startswith("moldau: FAILED_PRECONDITION: ")
    assert "live member" in refused.err
    assert "--live" in refused.err
    assert _committed(server, group) == {0: 3, 1: 3}
    done = moldau(*target, "--execute", "--live", "--output", "json")
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert result["executed"] is True
    assert result["fence_generation"] >= 1
    assert "members were fenced" in done.err
    assert _committed(server, group) == {0: 0, 1: 0}
    positions = member.next_event("positions").positions
    assert {(p.partition, p.offset) for p in positions.positions} == {(0, 0), (1, 0)}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--topic", "t", "--to-earliest", "--to-latest"], "not allowed with argument"),
        (["--topic", "t", "--all-topics", "--to-earliest"], "not allowed with argument"),
        (["--topic", "t"], "one of the arguments --to-earliest"),
        (["--to-earliest"], "say which partitions to reset"),
        (["--topic", "t", "--to-earliest", "--live"], "--live only applies with --execute"),
        (["--topic", "t", "--to-earliest", "--dry-run", "--execute"], "not allowed with"),
        (["--topic", "t:x", "--to-earliest"], "partitions are numbers"),
        (["--topic", "t", "--to-datetime", "yesterday"], "not an ISO 8601 time"),
        (["--topic", "t", "--to-offset", "ten"], "invalid int value"),
    ],
)
def test_reset_usage_errors(moldau: Run, argv: list[str], message: str) -> None:
    result = moldau("groups", "reset-offsets", "--group", "g", *argv)
    assert result.code == 1
    assert result.err.startswith("moldau: error: ")
    assert message in result.err
    assert result.out == ""


def test_help_mentions_local_time(moldau: Run) -> None:
    result = moldau("groups", "reset-offsets", "--help")
    assert result.code == 0
    assert "local time" in " ".join(result.out.split())


# ---------------------------------------------------------------------------- parsers

_durations = st.tuples(*(st.integers(0, 10_000) for _ in range(4)), st.integers(0, 999))


@given(_durations, st.booleans())
def test_duration_round_trip(parts: tuple[int, int, int, int, int], lower: bool) -> None:
    days, hours, minutes, seconds, millis = parts
    text = f"P{days}DT{hours}H{minutes}M{seconds}.{millis:03d}S"
    expected = (((days * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000 + millis
    assert parse_duration_ms(text.lower() if lower else text) == expected


@given(st.text(max_size=20))
def test_duration_parser_only_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert parse_duration_ms(text) >= 0


@given(st.integers(1, 10**9))
def test_negative_durations_are_refused(amount: int) -> None:
    for text in (f"-PT{amount}S", f"PT-{amount}S", f"P-{amount}D"):
        with pytest.raises(ValueError, match="must not be negative"):
            parse_duration_ms(text)


def test_duration_examples_and_formatting() -> None:
    assert parse_duration_ms("PT15M") == 900_000
    assert parse_duration_ms("P2W") == 14 * 86_400_000
    for bad in ("P", "PT", "P1DT", "1h", "P1Y", "P1M"):
        with pytest.raises(ValueError, match="ISO 8601 duration"):
            parse_duration_ms(bad)
    with pytest.raises(ValueError, match="use days"):
        parse_duration_ms("P1M")
    assert [
        format_duration_ms(ms) for ms in (None, 0, 850, 42_000, 200_000, 7_500_000, 300_000_000)
    ] == ["-", "0s", "850ms", "42s", "3m 20s", "2h 05m", "3d 11h"]
    assert parse_local_time_ms("1970-01-01T00:00:01+00:00") == 1000
    assert parse_local_time_ms("1234") == 1234
    naive = datetime(2026, 3, 1, 12, 0)
    assert parse_local_time_ms("2026-03-01T12:00:00") == int(naive.timestamp() * 1000)


_topic_names = st.text("abcXYZ019._-", min_size=1, max_size=30)


@given(_topic_names, st.one_of(st.none(), st.sets(st.integers(0, 500), min_size=1)))
def test_topic_spec_round_trip(topic: str, partitions: set[int] | None) -> None:
    text = topic if partitions is None else f"{topic}:{','.join(map(str, partitions))}"
    expected = None if partitions is None else tuple(sorted(partitions))
    assert parse_topic_spec(text) == (topic, expected)


@given(_topic_names, st.integers(0, 100), st.integers(0, 100))
def test_topic_spec_ranges(topic: str, first: int, length: int) -> None:
    spec = f"{topic}:{first}-{first + length}"
    assert parse_topic_spec(spec) == (topic, tuple(range(first, first + length + 1)))


@given(st.text(max_size=20))
def test_topic_spec_only_raises_value_error(text: str) -> None:
    try:
        topic, partitions = parse_topic_spec(text)
    except ValueError:
        return
    assert topic
    assert partitions is None or all(p >= 0 for p in partitions)


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.tuples(_topic_names, st.integers(0, 10_000)), st.integers(0, 2**62), max_size=20
    )
)
def test_offsets_csv_round_trip(offsets: dict[tuple[str, int], int]) -> None:
    text = format_offsets_csv((t, p, o) for (t, p), o in offsets.items())
    assert parse_offsets_csv(text) == {TopicPartition(*tp): o for tp, o in offsets.items()}
    with_group = "".join(f"g,{line}\n" for line in text.splitlines())
    assert parse_offsets_csv(with_group, "g") == parse_offsets_csv(text)


@given(st.text(max_size=60))
def test_offsets_csv_only_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_offsets_csv(text)


def test_offsets_csv_errors() -> None:
    with pytest.raises(ValueError, match="line 2: expected topic,partition,offset"):
        parse_offsets_csv("t,0,1\nt,1\n")
    with pytest.raises(ValueError, match="line 1: partition and offset are numbers"):
        parse_offsets_csv("t,0,-1\n")
    with pytest.raises(ValueError, match="listed twice"):
        parse_offsets_csv("t,0,1\nt,0,2\n")
