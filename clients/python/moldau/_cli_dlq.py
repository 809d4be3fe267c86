"""``moldau dlq``: list, show and redrive dead letters.

Kept out of ``cli.py``, which hooks it in with :func:`add_dlq_command` and :func:`run_dlq`.
Every action names whose dead letters it means (``--queue Q``: that queue's dead-letter topic,
or ``--topic T``) and may narrow them by offset (``--offset N`` or ``--range FIRST-LAST``) and
by filters (``--header``, ``--error-contains``, ``--from-queue``, ``--reason``). ``redrive``
refuses to run without a selection: moving every letter back takes an explicit ``--all``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from moldau._cli_exchanges import parse_argument
from moldau._cli_output import format_table, format_time, print_json
from moldau._cli_queues import CommandFactory, bytes_fields
from moldau._queue_types import DeadLetter
from moldau.queues import Queues

__all__ = ["add_dlq_command", "parse_range", "run_dlq"]


def parse_range(text: str) -> tuple[int, int]:
    """``FIRST-LAST`` (both included), e.g. ``10-20``."""
    first, sep, last = text.partition("-")
    if not (sep and first.isdigit() and last.isdigit()) or int(first) > int(last):
        raise argparse.ArgumentTypeError(
            f"expected FIRST-LAST with 0 <= FIRST <= LAST, e.g. 10-20, got {text!r}")
    return int(first), int(last)


def add_dlq_command(
    commands: Any, command: CommandFactory, add_server: Callable[[Any], None]
) -> None:
    """Add ``moldau dlq ACTION`` to the top-level subparsers of ``cli.build_parser``."""
    dlq = command(
        commands, "dlq", "list, show and redrive dead letters",
        "  moldau dlq list --queue payments\n  moldau dlq show --queue payments 3\n"
        "  moldau dlq redrive --queue payments --error-contains timeout --dry-run",
    )
    actions = dlq.add_subparsers(dest="action", metavar="ACTION", parser_class=type(dlq))
    actions.required = True
    listing = command(
        actions, "list", "list dead letters, oldest first",
        "  moldau dlq list --queue payments\n"
        "  moldau dlq list --topic payments.dlq --range 0-99 --reason rejected\n"
        "  moldau dlq list --queue payments --header tenant=acme --output json",
    )
    listing.add_argument("--include-redriven", action="store_true",
                         help="also letters moved back by an earlier redrive")
    show = command(actions, "show", "show one dead letter in full: value, headers, history",
                   "  moldau dlq show --queue payments 3\n"
                   "  moldau dlq show --topic payments.dlq 3 --output json")
    show.add_argument("offset", metavar="OFFSET", type=int,
                      help="the dead letter's offset in the dead-letter topic")
    redrive = command(
        actions, "redrive", "move dead letters back to their source topic (or --dry-run)",
        "  moldau dlq redrive --queue payments --all --dry-run\n"
        "  moldau dlq redrive --queue payments --offset 3\n"
        "  moldau dlq redrive --queue payments --range 10-20\n"
        "  moldau dlq redrive --queue payments --error-contains 'gateway timeout'",
    )
    redrive.add_argument("--all", action="store_true", dest="everything",
                         help="every dead letter not moved before (no other selection)")
    redrive.add_argument("--dry-run", action="store_true",
                         help="only list what would move")
    for parser in (listing, show, redrive):
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--queue", metavar="QUEUE", help="the dead letters of this queue")
        source.add_argument("--topic", metavar="TOPIC", help="the dead letters in this topic")
        add_server(parser)
        parser.add_argument("--output", choices=("table", "json"), default="table")
        parser.set_defaults(usage_error=parser.error)
    for parser in (listing, redrive):
        offsets = parser.add_mutually_exclusive_group()
        offsets.add_argument("--offset", metavar="N", type=int, help="only this dead letter")
        offsets.add_argument("--range", metavar="FIRST-LAST", type=parse_range,
                             help="dead-letter offsets FIRST to LAST, both included")
        parser.add_argument("--header", metavar="K[=V]", type=parse_argument, action="append",
                            default=[], help="the record has header K (with value V); "
                            "repeatable, all must match")
        parser.add_argument("--error-contains", metavar="TEXT", default="",
                            help="the last error contains TEXT (case-sensitive)")
        parser.add_argument("--from-queue", metavar="QUEUE", default="",
                            help="only letters this queue dead-lettered")
        parser.add_argument("--reason", choices=("max-deliveries", "rejected"), default="",
                            help="only letters dead-lettered for this reason")
        parser.add_argument("--limit", metavar="N", type=int, default=0,
                            help="at most N letters (default and maximum 10000)")


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    headers = dict(getattr(args, "header", []))
    if len(headers) != len(getattr(args, "header", [])):
        args.usage_error("each --header name may be given once")
    if getattr(args, "limit", 0) < 0:
        args.usage_error(f"--limit must be >= 0, got {args.limit}")
    return {
        "queue": args.queue, "dlq_topic": args.topic,
        "offset": getattr(args, "offset", None), "offsets": getattr(args, "range", None),
        "headers": headers or None, "error_contains": getattr(args, "error_contains", ""),
        "from_queue": getattr(args, "from_queue", ""), "reason": getattr(args, "reason", ""),
        "limit": getattr(args, "limit", 0),
    }


def _narrowed(args: argparse.Namespace) -> bool:
    return bool(args.offset is not None or args.range or args.header or args.error_contains
                or args.from_queue or args.reason)


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "dlq_topic": letter.dlq_topic, "dlq_partition": letter.dlq_partition,
        "dlq_offset": letter.dlq_offset, "source_topic": letter.source_topic,
        "source_partition": letter.source_partition, "source_offset": letter.source_offset,
        "queue": letter.queue, "reason": letter.reason, "attempts": letter.attempts,
        "last_error": letter.last_error, "first_failure_ms": letter.first_failure_ms,
        "last_failure_ms": letter.last_failure_ms, "redriven": letter.redriven,
        **bytes_fields(letter.key, letter.value, letter.headers),
    }


def _short(text: str, width: int = 48) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_letters(letters: Sequence[DeadLetter], out: TextIO) -> None:
    rows = [(d.dlq_offset, f"{d.source_topic}:{d.source_partition}:{d.source_offset}",
             d.queue or "-", d.reason, d.attempts, format_time(d.last_failure_ms),
             _short(d.last_error) or "-", "yes" if d.redriven else "")
            for d in letters]
    out.write(format_table(("OFFSET", "SOURCE", "QUEUE", "REASON", "ATTEMPTS", "LAST FAILURE",
                            "LAST ERROR", "REDRIVEN"), rows) + "\n")


def run_dlq(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``moldau dlq ACTION``; returns 0 (errors are raised for ``cli.main``)."""
    with Queues(args.server) as queues:
        if args.action == "list":
            letters = queues.dead_letters(include_redriven=args.include_redriven,
                                          **_selection(args))
            if args.output == "json":
                print_json([letter_json(d) for d in letters], out)
            elif letters:
                _print_letters(letters, out)
            else:
                err.write("no dead letters match\n")
        elif args.action == "show":
            _show(queues, args, out)
        else:
            _redrive(queues, args, out, err)
    return 0


def _show(queues: Queues, args: argparse.Namespace, out: TextIO) -> None:
    if args.offset < 0:
        args.usage_error(f"OFFSET must be >= 0, got {args.offset}")
    selection = _selection(args)
    found = queues.dead_letters(include_redriven=True, **selection)
    if not found:
        where = f"queue {args.queue}'s dead letters" if args.queue else f"topic {args.topic}"
        args.usage_error(f"no dead letter at offset {args.offset} in {where}; "
                         "'moldau dlq list' shows the offsets")
    letter = found[0]
    if args.output == "json":
        print_json(letter_json(letter), out)
        return
    fields = letter_json(letter)
    lines = [
        f"dead letter {letter.dlq_topic}:{letter.dlq_partition}:{letter.dlq_offset}"
        f"{' (redriven)' if letter.redriven else ''}",
        f"source:        {letter.source_topic} partition {letter.source_partition} offset "
        f"{letter.source_offset}",
        f"queue:         {letter.queue or '-'}",
        f"reason:        {letter.reason} after {letter.attempts} attempt(s)",
        f"last error:    {letter.last_error or '-'}",
        f"first failure: {format_time(letter.first_failure_ms)}",
        f"last failure:  {format_time(letter.last_failure_ms)}",
        f"key:           {fields['key']}",
        f"value:         {fields['value']}",
    ]
    if "encoding" in fields:
        lines.append("encoding:      base64 (the record is not UTF-8)")
    for key, value in fields["headers"]:
        lines.append(f"header:        {key}={'' if value is None else value}")
    out.write("\n".join(lines) + "\n")


def _redrive(queues: Queues, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    if args.everything == _narrowed(args):
        args.usage_error("say which dead letters to move: --all, or --offset, --range or a "
                         "filter (--header, --error-contains, --from-queue, --reason), not both")
    result = queues.redrive(dry_run=args.dry_run, **_selection(args))
    if args.output == "json":
        print_json({"dry_run": result.dry_run, "moved": [letter_json(d) for d in result.moved],
                    "already_redriven": result.already_redriven}, out)
    elif result.moved:
        _print_letters(result.moved, out)
    verb = "would move" if result.dry_run else "moved"
    err.write(f"{verb} {len(result.moved)} dead letter(s) back to their source topic")
    if result.already_redriven:
        err.write(f"; {result.already_redriven} selected letter(s) were moved before")
    err.write("\n")
    if result.dry_run:
        err.write("dry run: nothing was moved; run again without --dry-run to move them\n")
