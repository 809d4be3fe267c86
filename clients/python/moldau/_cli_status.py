"""``moldau status``: the broker's health, topics, rates and consumer lag at a glance.

Rates come from two looks at the high watermarks ``--interval`` seconds apart, so the command
takes that long; ``--interval 0`` skips the rates. ``--watch`` repeats until Ctrl-C. Exit 0
when the broker reports SERVING and no partition is read-only, 2 otherwise (so scripts and
probes can use it), 3 when the broker cannot be reached (as every command).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from moldau._cli_output import format_duration_ms, format_table, print_json
from moldau._group_types import GroupDescription
from moldau._types import TopicDescription
from moldau.admin import Admin
from moldau.errors import GroupNotFoundError, TopicNotFoundError

__all__ = ["Snapshot", "add_status_command", "run_status", "take_snapshot"]

CommandFactory = Callable[[Any, str, str, str], argparse.ArgumentParser]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one look at the broker saw; ``taken`` is ``time.monotonic()`` after the look."""

    health: str
    round_trip_ms: float
    topics: tuple[TopicDescription, ...]
    groups: tuple[GroupDescription, ...]
    taken: float


def take_snapshot(admin: Admin, *, include_internal: bool = False) -> Snapshot:
    """Health, every topic's partitions and every group's lag; vanished objects are skipped."""
    started = time.monotonic()
    health = admin.health()
    round_trip_ms = (time.monotonic() - started) * 1000.0
    topics = []
    for summary in admin.list_topics(include_internal=include_internal):
        try:
            topics.append(admin.describe_topic(summary.name))
        except TopicNotFoundError:
            continue  # deleted between the list and the describe
    groups = []
    for group in admin.list_groups():
        try:
            groups.append(admin.describe_group(group.group))
        except GroupNotFoundError:
            continue
    return Snapshot(health, round_trip_ms, tuple(topics), tuple(groups), time.monotonic())


def _records(topic: TopicDescription) -> int:
    return sum(p.high_watermark - p.log_start_offset for p in topic.partitions)


def _end(topic: TopicDescription) -> int:
    return sum(p.high_watermark for p in topic.partitions)


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _read_only(snapshot: Snapshot) -> list[str]:
    return [
        f"{t.name}/{p.partition}: {p.read_only_reason}"
        for t in snapshot.topics
        for p in t.partitions
        if p.read_only_reason
    ]


def _rates(before: Snapshot | None, after: Snapshot) -> dict[str, float]:
    """Records/s appended per topic between two snapshots (topics present in both)."""
    if before is None:
        return {}
    elapsed = after.taken - before.taken
    if elapsed <= 0:
        return {}
    ends = {t.name: _end(t) for t in before.topics}
    return {
        t.name: max(0, _end(t) - ends[t.name]) / elapsed for t in after.topics if t.name in ends
    }


def _group_row(group: GroupDescription) -> dict[str, Any]:
    lags = [p.lag_records for p in group.partitions if p.lag_records is not None]
    ages = [p.lag_ms for p in group.partitions if p.lag_ms is not None]
    return {
        "group": group.group,
        "state": group.state.value,
        "members": len(group.members),
        "partitions": len(group.partitions),
        "lag_records": sum(lags),
        "max_lag_ms": max(ages, default=0),
    }


def status_json(before: Snapshot | None, after: Snapshot) -> dict[str, Any]:
    """The ``--output json`` document (one per look)."""
    rates = _rates(before, after)
    return {
        "health": after.health,
        "round_trip_ms": round(after.round_trip_ms, 3),
        "healthy": _healthy(after),
        "read_only_partitions": _read_only(after),
        "topics": [
            {
                "topic": t.name,
                "partitions": t.partition_count,
                "records": _records(t),
                "size_bytes": sum(p.size_bytes for p in t.partitions),
                "segments": sum(p.segment_count for p in t.partitions),
                "records_per_sec": round(rates[t.name], 1) if t.name in rates else None,
            }
            for t in after.topics
        ],
        "groups": [_group_row(g) for g in after.groups],
    }


def _healthy(snapshot: Snapshot) -> bool:
    return snapshot.health == "SERVING" and not _read_only(snapshot)


def _print_table(document: dict[str, Any], server: str, out: TextIO) -> None:
    topics, groups = document["topics"], document["groups"]
    total_size = sum(t["size_bytes"] for t in topics)
    rates = [t["records_per_sec"] for t in topics if t["records_per_sec"] is not None]
    out.write(
        f"broker {server}: {document['health']} (round trip {document['round_trip_ms']:.1f} ms)\n"
        f"topics {len(topics)}, partitions {sum(t['partitions'] for t in topics)}, "
        f"stored {_human_bytes(total_size)}"
        + (f", in {sum(rates):,.0f} records/s" if rates else "")
        + f"; groups {len(groups)}, total lag {sum(g['lag_records'] for g in groups):,} records\n"
    )
    for line in document["read_only_partitions"]:
        out.write(f"READ-ONLY {line}\n")
    if topics:
        out.write("\n")
        out.write(
            format_table(
                ["TOPIC", "PARTITIONS", "RECORDS", "SIZE", "SEGMENTS", "IN/S"],
                [
                    [
                        t["topic"],
                        t["partitions"],
                        f"{t['records']:,}",
                        _human_bytes(t["size_bytes"]),
                        t["segments"],
                        "-" if t["records_per_sec"] is None else f"{t['records_per_sec']:,.0f}",
                    ]
                    for t in topics
                ],
            )
            + "\n"
        )
    if groups:
        out.write("\n")
        out.write(
            format_table(
                ["GROUP", "STATE", "MEMBERS", "PARTITIONS", "LAG", "OLDEST UNCOMMITTED"],
                [
                    [
                        g["group"],
                        g["state"],
                        g["members"],
                        g["partitions"],
                        f"{g['lag_records']:,}",
                        format_duration_ms(g["max_lag_ms"]) if g["max_lag_ms"] else "-",
                    ]
                    for g in groups
                ],
            )
            + "\n"
        )


def add_status_command(
    commands: Any, command: CommandFactory, add_server: Callable[[Any], None]
) -> None:
    """Add ``moldau status`` to the top-level subparsers of ``cli.build_parser``."""
    status = command(
        commands,
        "status",
        "show broker health, topics with sizes and rates, and consumer group lag",
        "  moldau status\n  moldau status --watch --interval 5\n  moldau status --output json",
    )
    add_server(status)
    status.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between the two looks that give the rates (0: no rates; default 1)",
    )
    status.add_argument("--watch", action="store_true", help="repeat every --interval until Ctrl-C")
    status.add_argument(
        "--internal", action="store_true", help="include internal topics (__consumer_offsets ...)"
    )
    status.add_argument("--output", choices=("table", "json"), default="table")


def run_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``moldau status``; 0 when healthy, 2 when not (errors are raised for ``cli.main``)."""
    if args.interval < 0 or (args.watch and args.interval == 0):
        err.write("moldau: error: --interval must be >= 0, and > 0 with --watch\n")
        return 1
    with Admin(args.server) as admin:
        before: Snapshot | None = None
        if args.interval > 0:
            before = take_snapshot(admin, include_internal=args.internal)
            time.sleep(args.interval)
        while True:
            after = take_snapshot(admin, include_internal=args.internal)
            document = status_json(before, after)
            if args.output == "json":
                print_json(document, out)
            else:
                _print_table(document, admin.server, out)
            out.flush()
            if not args.watch:
                return 0 if document["healthy"] else 2
            out.write("\n")
            before = after
            time.sleep(args.interval)
