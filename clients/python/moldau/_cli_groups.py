"""``moldau groups``: list, describe and delete consumer groups, delete and reset their offsets.

Kept out of ``cli.py`` (which only hooks it in with :func:`add_groups_command` and
:func:`run_groups`) so that module stays one screenful per command. Usage errors found after
parsing are reported with the subcommand's ``parser.error`` (kept in ``args.usage_error``), so
they take the same path, message shape and exit code as argparse's own.

``reset-offsets`` works like Kafka's ``kafka-consumer-groups --reset-offsets``: it prints the
plan (a dry run unless ``--execute``), warns on stderr about clamped rows, and ``--export``
writes the plan as Kafka-compatible ``topic,partition,offset`` CSV lines that ``--from-file``
reads back.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from moldau._cli_output import (
    format_duration_ms,
    format_table,
    parse_duration_ms,
    parse_local_time_ms,
    print_json,
)
from moldau._group_types import (
    ByDuration,
    FromRows,
    GroupDescription,
    ResetPlan,
    ResetSpec,
    ShiftBy,
    ToDatetime,
    ToEarliest,
    ToLatest,
    ToOffset,
)
from moldau._types import TopicPartition
from moldau.admin import Admin
from moldau.errors import MoldauError

__all__ = [
    "TopicSpec",
    "add_groups_command",
    "format_offsets_csv",
    "parse_offsets_csv",
    "parse_topic_spec",
    "run_groups",
]

TopicSpec = tuple[str, tuple[int, ...] | None]
"""A ``--topic`` value: the topic and its listed partitions (None: all of them)."""

CommandFactory = Callable[[Any, str, str, str], argparse.ArgumentParser]
"""``cli._command``: adds a subcommand with help, examples and the exit-code epilog."""

_HEADER = ["topic", "partition", "offset"]
_LIVE_HINT = (
    "the group has live members, which would overwrite the new offsets with their next "
    "commit: stop its consumers first, or add --live to fence them and move their positions"
)


# ---------------------------------------------------------------------------- pure parsers


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _partition_number(text: str, spec: str) -> int:
    if not _is_number(text.strip()):
        raise ValueError(f"{spec!r}: partitions are numbers >= 0 or ranges like 0-3, got {text!r}")
    return int(text)


def parse_topic_spec(text: str) -> TopicSpec:
    """``orders`` (every partition), ``orders:0,2`` or ``orders:0-3,7`` (those partitions).

    Topic names cannot contain ``:`` or ``,`` (Kafka's alphabet), so both are separators.

    Raises:
        ValueError: no topic name, or a partition that is not a number or an ascending range.
    """
    topic, sep, listed = text.partition(":")
    if not topic:
        raise ValueError(f"{text!r}: expected TOPIC or TOPIC:PARTITIONS such as orders:0,2")
    if not sep:
        return topic, None
    partitions: set[int] = set()
    for item in listed.split(","):
        low, dash, high = item.partition("-")
        first = _partition_number(low, text)
        last = _partition_number(high, text) if dash else first
        if last < first:
            raise ValueError(f"{text!r}: the range {item!r} goes downwards")
        partitions.update(range(first, last + 1))
    return topic, tuple(sorted(partitions))


def parse_offsets_csv(text: str, group: str | None = None) -> dict[TopicPartition, int]:
    """Rows of ``topic,partition,offset`` (as ``--export`` and Kafka's tool write them).

    Kafka's four-column form ``group,topic,partition,offset`` is accepted when the group is
    ``group``; a first line ``topic,partition,offset`` is taken as a header; blank lines are
    skipped.

    Raises:
        ValueError: a malformed line (its number is in the message), a partition listed twice,
            or a row for another group.
    """
    offsets: dict[TopicPartition, int] = {}
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise ValueError(f"not CSV: {exc}") from None
    for number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if number == 1 and [c.lower() for c in cells[-3:]] == _HEADER:
            continue
        if len(cells) == len(_HEADER) + 1:
            row_group, *cells = cells
            if group is not None and row_group != group:
                raise ValueError(f"line {number}: a row for group {row_group!r}, not {group!r}")
        if len(cells) != len(_HEADER) or not cells[0]:
            raise ValueError(f"line {number}: expected topic,partition,offset, got {row!r}")
        topic, partition, offset = cells
        if not _is_number(partition) or not _is_number(offset):
            raise ValueError(f"line {number}: partition and offset are numbers >= 0: {row!r}")
        tp = TopicPartition(topic, int(partition))
        if tp in offsets:
            raise ValueError(f"line {number}: {topic}:{partition} is listed twice")
        offsets[tp] = int(offset)
    return offsets


def format_offsets_csv(offsets: Iterable[tuple[str, int, int]]) -> str:
    """``topic,partition,offset`` lines, no header: what Kafka's ``--export`` writes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(offsets)
    return buffer.getvalue()


def _argtype(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` reporting a parser's ValueError as argparse's usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__  # argparse names the type in "invalid X value"
    return convert


# ---------------------------------------------------------------------------- parser


def add_groups_command(
    commands: Any, command: CommandFactory, add_server: Callable[[Any], None]
) -> None:
    """Add ``moldau groups ACTION`` to the top-level subparsers of ``cli.build_parser``."""
    groups = command(
        commands,
        "groups",
        "list, describe and delete consumer groups; delete and reset their offsets",
        "  moldau groups list\n  moldau groups describe billing\n"
        "  moldau groups reset-offsets --group billing --topic orders --to-earliest --execute",
    )
    actions = groups.add_subparsers(dest="action", metavar="ACTION", parser_class=type(groups))
    actions.required = True
    listing = command(
        actions,
        "list",
        "list groups with their state and member count",
        "  moldau groups list\n  moldau groups list --output json",
    )
    describe = command(
        actions,
        "describe",
        "show a group's state, members and assignment, and each partition's offset and lag",
        "  moldau groups describe billing\n  moldau groups describe billing --output json",
    )
    describe.add_argument("group", metavar="GROUP")
    delete = command(
        actions,
        "delete",
        "delete a group without members and its offsets",
        "  moldau groups delete billing",
    )
    delete.add_argument("group", metavar="GROUP")
    delete_offsets = command(
        actions,
        "delete-offsets",
        "delete a group's committed offsets (all, or those of the given topics)",
        "  moldau groups delete-offsets billing\n"
        "  moldau groups delete-offsets billing --topic orders --topic payments:0,1",
    )
    delete_offsets.add_argument("group", metavar="GROUP")
    delete_offsets.add_argument(
        "--topic",
        metavar="T[:P,P]",
        type=_argtype(parse_topic_spec),
        action="append",
        default=[],
        help="only this topic, or these partitions of it (repeatable)",
    )
    reset = command(
        actions,
        "reset-offsets",
        "plan (dry run) or execute a reset of a group's offsets",
        "  moldau groups reset-offsets --group billing --topic orders --to-earliest\n"
        "  moldau groups reset-offsets --group billing --all-topics --by-duration PT1H --execute\n"
        "  moldau groups reset-offsets --group billing --topic orders:0,1 --shift-by -100 \\\n"
        "      --export plan.csv\n"
        "  moldau groups reset-offsets --group billing --from-file plan.csv --execute --live",
    )
    _add_reset_options(reset)
    for parser in (listing, describe, delete, delete_offsets, reset):
        add_server(parser)
        parser.add_argument("--output", choices=("table", "json"), default="table")
        parser.set_defaults(usage_error=parser.error)


def _add_reset_options(reset: argparse.ArgumentParser) -> None:
    # "--by-duration -PT1H" should reach parse_duration_ms, which says that negative durations
    # are refused, not argparse's bare "expected one argument": read "-P..." as a value, as
    # argparse already does for negative numbers ("--shift-by -5").
    reset._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-P", re.IGNORECASE)
    reset.add_argument(
        "--group",
        metavar="GROUP",
        required=True,
        help="the consumer group (a new group gets these offsets as its start)",
    )
    targets = reset.add_mutually_exclusive_group()
    targets.add_argument(
        "--topic",
        metavar="T[:P,P]",
        type=_argtype(parse_topic_spec),
        action="append",
        default=[],
        help="every partition of topic T, or the listed ones (orders:0,2 or "
        "orders:0-3); repeatable",
    )
    targets.add_argument(
        "--all-topics",
        action="store_true",
        help="every topic the group has offsets for or subscribes to",
    )
    spec = reset.add_mutually_exclusive_group(required=True)
    spec.add_argument("--to-earliest", action="store_true", help="the log start offset")
    spec.add_argument("--to-latest", action="store_true", help="the log end offset")
    spec.add_argument("--to-offset", metavar="N", type=int, help="offset N")
    spec.add_argument(
        "--to-datetime",
        metavar="ISO8601",
        type=_argtype(parse_local_time_ms),
        help="the first record at or after this time, e.g. 2026-11-28T14:00:00 (no offset "
        "means local time), 2026-11-28T14:00:00Z or ...+01:00",
    )
    spec.add_argument(
        "--by-duration",
        metavar="PnDTnHnMnS",
        type=_argtype(parse_duration_ms),
        help="the first record at or after now minus this ISO 8601 duration (P1D, PT30M)",
    )
    spec.add_argument(
        "--shift-by",
        metavar="N",
        type=int,
        help="the committed offset plus N (negative moves back)",
    )
    spec.add_argument(
        "--from-file",
        metavar="CSV",
        help="topic,partition,offset lines (as --export writes); only those partitions are reset",
    )
    mode = reset.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="only show the plan (the default)")
    mode.add_argument("--execute", action="store_true", help="store the planned offsets")
    reset.add_argument(
        "--live",
        action="store_true",
        help="with --execute: also when consumers are running (they are "
        "fenced and seek to the new offsets)",
    )
    reset.add_argument("--export", metavar="FILE", help="also write the plan as CSV to FILE")


# ---------------------------------------------------------------------------- commands


def _usage(args: argparse.Namespace, message: str) -> NoReturn:
    """Report a usage error through the subcommand's parser (exit code 1, with its usage)."""
    args.usage_error(message)
    raise AssertionError("parser.error returned")  # pragma: no cover  (it always raises)


def run_groups(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``moldau groups ACTION``; returns 0 (errors are raised for ``cli.main``)."""
    with Admin(args.server) as admin:
        if args.action == "list":
            _list(admin, args.output, out)
        elif args.action == "describe":
            _describe(admin.describe_group(args.group), args.output, out)
        elif args.action == "delete":
            admin.delete_group(args.group)
            if args.output == "json":
                print_json({"group": args.group, "deleted": True}, out)
            else:
                out.write(f"deleted group {args.group}\n")
        elif args.action == "delete-offsets":
            _delete_offsets(admin, args, out, err)
        else:
            _reset(admin, args, out, err)
    return 0


def _list(admin: Admin, output: str, out: TextIO) -> None:
    groups = admin.list_groups()
    if output == "json":
        print_json(
            [{"group": g.group, "state": g.state.value, "members": g.members} for g in groups], out
        )
    elif groups:
        rows = [(g.group, g.state.value, g.members) for g in groups]
        out.write(format_table(("GROUP", "STATE", "MEMBERS"), rows) + "\n")


def _tp_json(partitions: Iterable[TopicPartition]) -> list[dict[str, object]]:
    return [{"topic": t, "partition": p} for t, p in partitions]


def _short(partitions: Sequence[TopicPartition]) -> str:
    """``orders:0,1 payments:2``: a member's partitions on one line."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        by_topic.setdefault(topic, []).append(partition)
    return " ".join(f"{t}:{','.join(map(str, ps))}" for t, ps in by_topic.items()) or "-"


def _describe(group: GroupDescription, output: str, out: TextIO) -> None:
    if output == "json":
        print_json(_describe_json(group), out)
        return
    head = f"group {group.group}: {group.state.value}, generation {group.generation}"
    if group.assignor:
        head += f", assignor {group.assignor}"
    out.write(f"{head}, {len(group.members)} member(s)\n\n")
    if group.members:
        rows_m = []
        for m in group.members:
            holding = _short(m.assignment)
            if m.revoking:
                holding += f" (revoking {_short(m.revoking)})"
            if m.target != m.assignment:
                holding += f" (target {_short(m.target)})"
            rows_m.append(
                (
                    m.member_id,
                    m.instance_id or "-",
                    m.pattern or ",".join(m.topics) or "-",
                    holding,
                    "departed"
                    if m.departed
                    else f"{format_duration_ms(m.last_heartbeat_age_ms)} ago",
                )
            )
        out.write(
            format_table(("MEMBER", "INSTANCE", "SUBSCRIPTION", "ASSIGNMENT", "HEARTBEAT"), rows_m)
            + "\n\n"
        )
    rows = [
        (
            p.topic,
            p.partition,
            p.committed,
            p.log_end_offset,
            p.lag_records,
            format_duration_ms(p.lag_ms),
            p.owner or "-",
        )
        for p in group.partitions
    ]
    if rows:
        out.write(
            format_table(
                ("TOPIC", "PARTITION", "COMMITTED", "LOG END", "LAG", "LAG TIME", "OWNER"), rows
            )
            + "\n"
        )
    else:
        out.write("no partitions: nothing committed, no subscriptions\n")


def _describe_json(group: GroupDescription) -> dict[str, object]:
    return {
        "group": group.group,
        "state": group.state.value,
        "generation": group.generation,
        "assignor": group.assignor,
        "members": [
            {
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "topics": list(m.topics),
                "pattern": m.pattern,
                "assignment": _tp_json(m.assignment),
                "target": _tp_json(m.target),
                "revoking": _tp_json(m.revoking),
                "session_timeout_ms": m.session_timeout_ms,
                "last_heartbeat_age_ms": m.last_heartbeat_age_ms,
                "departed": m.departed,
            }
            for m in group.members
        ],
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "committed": p.committed,
                "metadata": p.metadata,
                "owner": p.owner,
                "log_start_offset": p.log_start_offset,
                "log_end_offset": p.log_end_offset,
                "lag_records": p.lag_records,
                "lag_ms": p.lag_ms,
            }
            for p in group.partitions
        ],
    }


def _delete_offsets(admin: Admin, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    deleted: list[TopicPartition] = []
    if not args.topic:
        deleted = admin.delete_offsets(args.group)
    else:
        # A whole topic means the partitions the group committed there: an empty list would
        # mean "all of the group's offsets" to the server, so it is never sent.
        committed = admin.fetch_offsets(args.group)
        partitions = {
            tp
            for topic, listed in args.topic
            if listed is None
            for tp in committed
            if tp.topic == topic
        } | {TopicPartition(topic, p) for topic, listed in args.topic for p in listed or ()}
        if partitions:
            deleted = admin.delete_offsets(args.group, sorted(partitions))
    if args.output == "json":
        print_json({"group": args.group, "deleted": _tp_json(deleted)}, out)
        return
    if deleted:
        out.write(format_table(("TOPIC", "PARTITION"), deleted) + "\n")
    err.write(f"deleted {len(deleted)} committed offset(s) of group {args.group}\n")


def _reset_spec(args: argparse.Namespace) -> ResetSpec:
    if args.to_earliest:
        return ToEarliest()
    if args.to_latest:
        return ToLatest()
    if args.to_offset is not None:
        return ToOffset(args.to_offset)
    if args.to_datetime is not None:
        return ToDatetime(args.to_datetime)
    if args.by_duration is not None:
        return ByDuration(args.by_duration)
    if args.shift_by is not None:
        return ShiftBy(args.shift_by)
    try:
        text = Path(args.from_file).read_text(encoding="utf-8")
    except OSError as exc:
        _usage(args, f"cannot read {args.from_file}: {exc.strerror}")
    try:
        rows = parse_offsets_csv(text, args.group)
    except ValueError as exc:
        _usage(args, f"{args.from_file}: {exc}")
    if not rows:
        _usage(args, f"{args.from_file} lists no topic,partition,offset rows")
    return FromRows(rows)


def _reset(admin: Admin, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    if not (args.topic or args.all_topics or args.from_file):
        _usage(
            args,
            "say which partitions to reset: --topic T[:P,P] or --all-topics "
            "(only --from-file may go without)",
        )
    if args.live and not args.execute:
        _usage(args, "--live only applies with --execute")
    spec = _reset_spec(args)
    topics = [t for t, listed in args.topic if listed is None]
    partitions = [TopicPartition(t, p) for t, listed in args.topic for p in listed or ()]
    try:
        plan = admin.reset_offsets(
            args.group,
            spec,
            topics=topics,
            partitions=partitions,
            all_topics=args.all_topics,
            execute=args.execute,
            live=args.live,
        )
    except MoldauError as exc:
        if args.execute and "live member" in exc.message and "--live" not in exc.message:
            raise type(exc)(f"{exc.message}\n{_LIVE_HINT}", exc.code) from None
        raise
    if args.export:
        csv_text = format_offsets_csv((r.topic, r.partition, r.new_offset) for r in plan.rows)
        try:
            Path(args.export).write_text(csv_text, encoding="utf-8")
        except OSError as exc:
            _usage(args, f"cannot write {args.export}: {exc.strerror}")
    _print_plan(plan, args.output, out)
    for row in plan.clamped:
        err.write(
            f"warning: {row.topic}:{row.partition}: the requested offset is outside "
            f"the partition's range [log start, log end]; clamped to {row.new_offset}\n"
        )
    if args.export:
        err.write(f"wrote the plan to {args.export}\n")
    if not plan.executed:
        err.write("dry run: nothing was changed; add --execute to store these offsets\n")
    elif plan.fence_generation is not None:
        err.write(
            f"executed: stored {len(plan.rows)} offset(s) of group {plan.group}; its "
            f"members were fenced (generation {plan.fence_generation}) and sent the "
            "new positions\n"
        )
    else:
        err.write(f"executed: stored {len(plan.rows)} offset(s) of group {plan.group}\n")


def _print_plan(plan: ResetPlan, output: str, out: TextIO) -> None:
    if output == "json":
        print_json(
            {
                "group": plan.group,
                "executed": plan.executed,
                "fence_generation": plan.fence_generation,
                "rows": [
                    {
                        "topic": r.topic,
                        "partition": r.partition,
                        "current": r.current,
                        "new_offset": r.new_offset,
                        "clamped": r.clamped,
                    }
                    for r in plan.rows
                ],
            },
            out,
        )
    elif plan.rows:
        rows = [
            (
                r.topic,
                r.partition,
                r.current,
                r.new_offset,
                "clamped" if r.clamped else "",
            )
            for r in plan.rows
        ]
        out.write(
            format_table(("TOPIC", "PARTITION", "CURRENT OFFSET", "NEW OFFSET", ""), rows) + "\n"
        )
    else:
        out.write("no partitions to reset\n")
