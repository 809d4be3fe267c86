"""``moldau queues``: declare, delete, list and describe work queues; receive, ack and nack.

Kept out of ``cli.py``, which hooks it in with :func:`add_queues_command` and
:func:`run_queues`. ``receive`` prints each delivery with its lease id, which ``ack`` and
``nack`` take back (or pass ``--ack`` to settle at once): a lease not settled in time comes
back to the queue, so a look with ``receive`` is never destructive.

Byte fields in JSON (key, value, header values) are UTF-8 text when they decode, else the
object carries ``"encoding": "base64"`` and all its byte fields in base64, as in
``moldau consume --output json``.
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from moldau._cli_output import format_duration_ms, format_table, format_time, print_json
from moldau._queue_types import (
    Backoff,
    DeliveryAttempt,
    Message,
    QueueConfig,
    QueueDescription,
    QueueStats,
)
from moldau._types import Header
from moldau.queues import Queues

__all__ = [
    "CommandFactory",
    "add_queues_command",
    "bytes_fields",
    "config_json",
    "run_queues",
]

CommandFactory = Callable[[Any, str, str, str], argparse.ArgumentParser]
"""``cli._command``: adds a subcommand with help, examples and the exit-code epilog."""


# ---------------------------------------------------------------------------- JSON helpers


def _utf8(data: bytes | None) -> bool:
    if data is None:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def bytes_fields(key: bytes | None, value: bytes | None,
                 headers: Sequence[Header]) -> dict[str, Any]:
    """``key``, ``value`` and ``headers`` as JSON fields: text, or all base64 when any field
    is not UTF-8 (then with ``"encoding": "base64"``)."""
    binary = not (_utf8(key) and _utf8(value) and all(_utf8(h.value) for h in headers))

    def text(data: bytes | None) -> str | None:
        if data is None:
            return None
        return base64.b64encode(data).decode("ascii") if binary else data.decode("utf-8")

    fields: dict[str, Any] = {
        "key": text(key), "value": text(value),
        "headers": [[h.key, text(h.value)] for h in headers],
    }
    if binary:
        fields["encoding"] = "base64"
    return fields


def _shown(data: bytes | None, width: int = 40) -> str:
    """A byte field in a table cell: text, cut to ``width``; ``-`` for null."""
    if data is None:
        return "-"
    text = data.decode("utf-8", "replace").replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def config_json(config: QueueConfig) -> dict[str, Any]:
    b = config.backoff
    return {
        "name": config.name, "topic": config.topic, "mode": config.mode,
        "ordering": config.ordering, "lease_ms": config.lease_ms,
        "max_deliveries": config.max_deliveries,
        "backoff": {"initial_ms": b.initial_ms, "multiplier": b.multiplier,
                    "max_ms": b.max_ms, "jitter": b.jitter},
        "dlq_topic": config.dlq_topic, "start": config.start,
    }


def _stats_json(stats: QueueStats) -> dict[str, int]:
    return {name: getattr(stats, name) for name in QueueStats.__slots__}


def _attempt_json(attempt: DeliveryAttempt) -> dict[str, Any]:
    return {"number": attempt.number, "outcome": attempt.outcome, "error": attempt.error,
            "consumer": attempt.consumer, "time_ms": attempt.time_ms}


def _message_json(message: Message) -> dict[str, Any]:
    return {
        "lease_id": message.lease_id, "topic": message.topic, "partition": message.partition,
        "offset": message.offset, "timestamp": message.timestamp_ms,
        "delivery_count": message.delivery_count,
        "lease_expires_ms": message.lease_expires_ms,
        **bytes_fields(message.key, message.value, message.headers),
        "attempts": [_attempt_json(a) for a in message.attempts],
    }


# ---------------------------------------------------------------------------- parser


def add_queues_command(
    commands: Any, command: CommandFactory, add_server: Callable[[Any], None]
) -> None:
    """Add ``moldau queues ACTION`` to the top-level subparsers of ``cli.build_parser``."""
    queues = command(
        commands, "queues",
        "declare, list, describe and delete work queues; receive, ack and nack records",
        "  moldau queues declare orders-work --topic orders --max-deliveries 3\n"
        "  moldau queues list\n  moldau queues receive orders-work --max-records 5 --ack",
    )
    actions = queues.add_subparsers(dest="action", metavar="ACTION", parser_class=type(queues))
    actions.required = True
    declare = command(
        actions, "declare", "create a queue over a topic (or find it unchanged)",
        "  moldau queues declare orders-work --topic orders\n"
        "  moldau queues declare payments --topic payments --ordering per-key \\\n"
        "      --max-deliveries 4 --backoff-initial-ms 500 --backoff-multiplier 2\n"
        "  moldau queues declare billing-retry --topic orders --mode retry",
    )
    _add_declare_options(declare)
    delete = command(actions, "delete", "delete a queue and its state (the topic stays)",
                     "  moldau queues delete orders-work")
    delete.add_argument("name", metavar="NAME")
    listing = command(actions, "list", "list queues with their depth and counts",
                      "  moldau queues list\n  moldau queues list --output json")
    describe = command(actions, "describe",
                       "show a queue's definition, counts and per-partition state",
                       "  moldau queues describe orders-work\n"
                       "  moldau queues describe orders-work --output json")
    describe.add_argument("name", metavar="NAME")
    receive = command(
        actions, "receive", "lease records and print them with their lease ids",
        "  moldau queues receive orders-work\n"
        "  moldau queues receive orders-work --max-records 10 --wait-ms 5000 --output json\n"
        "  moldau queues receive orders-work --max-records 100 --ack",
    )
    receive.add_argument("name", metavar="QUEUE")
    receive.add_argument("--max-records", metavar="N", type=int, default=1,
                         help="lease up to N records (1 to 10000; default 1)")
    receive.add_argument("--wait-ms", metavar="MS", type=int, default=0,
                         help="wait up to MS ms (at most 30000) for the first record")
    receive.add_argument("--lease-ms", metavar="MS", type=int, default=0,
                         help="lease for these records (default: the queue's)")
    receive.add_argument("--ack", action="store_true",
                         help="acknowledge the printed records at once (they are done)")
    ack = command(actions, "ack", "acknowledge leased records: they are done for good",
                  "  moldau queues ack orders-work 0:17:1a2b3c 1:4:1a2b3d")
    ack.add_argument("name", metavar="QUEUE")
    ack.add_argument("lease_ids", metavar="LEASE_ID", nargs="+")
    nack = command(
        actions, "nack", "report leased records as failed: retry after the backoff, or reject",
        "  moldau queues nack orders-work 0:17:1a2b3c --error 'card declined'\n"
        "  moldau queues nack orders-work 0:17:1a2b3c --reject --error 'malformed'",
    )
    nack.add_argument("name", metavar="QUEUE")
    nack.add_argument("lease_ids", metavar="LEASE_ID", nargs="+")
    nack.add_argument("--error", metavar="TEXT", default="", help="why it failed")
    nack.add_argument("--reject", action="store_true", help="dead-letter now, no retry")
    for parser in (declare, delete, listing, describe, receive, ack, nack):
        add_server(parser)
        parser.add_argument("--output", choices=("table", "json"), default="table")
        parser.set_defaults(usage_error=parser.error)


def _add_declare_options(declare: argparse.ArgumentParser) -> None:
    defaults = Backoff()
    declare.add_argument("name", metavar="NAME")
    declare.add_argument("--topic", metavar="TOPIC", required=True,
                         help="the topic the queue consumes (it must exist)")
    declare.add_argument("--mode", choices=("work", "retry"), default="work",
                         help="work: every record of the topic (default); retry: only "
                         "records stream consumers hand over for a retry")
    declare.add_argument("--ordering", choices=("unordered", "per-key"), default="unordered",
                         help="per-key: one record of a key in flight at a time")
    declare.add_argument("--lease-ms", metavar="MS", type=int, default=30_000,
                         help="visibility timeout of a delivery (default 30000)")
    declare.add_argument("--max-deliveries", metavar="N", type=int, default=5,
                         help="deliveries before a failing record is dead-lettered (default 5)")
    declare.add_argument("--backoff-initial-ms", metavar="MS", type=int,
                         default=defaults.initial_ms, help="delay after the first failure "
                         f"(default {defaults.initial_ms})")
    declare.add_argument("--backoff-multiplier", metavar="X", type=float,
                         default=defaults.multiplier,
                         help=f"growth per failure, >= 1 (default {defaults.multiplier})")
    declare.add_argument("--backoff-max-ms", metavar="MS", type=int, default=defaults.max_ms,
                         help=f"longest delay (default {defaults.max_ms})")
    declare.add_argument("--backoff-jitter", metavar="F", type=float, default=defaults.jitter,
                         help="random spread of each delay, a fraction in [0, 1] (default 0)")
    declare.add_argument("--dlq-topic", metavar="TOPIC", default="",
                         help="dead-letter topic (default TOPIC.dlq, created when needed)")
    declare.add_argument("--start", choices=("earliest", "latest"), default="earliest",
                         help="earliest: every stored record (default); latest: only new ones")


# ---------------------------------------------------------------------------- commands


def run_queues(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``moldau queues ACTION``; returns 0 (errors are raised for ``cli.main``)."""
    with Queues(args.server, consumer="moldau-cli") as queues:
        if args.action == "declare":
            _declare(queues, args, out)
        elif args.action == "delete":
            queues.delete(args.name)
            if args.output == "json":
                print_json({"queue": args.name, "deleted": True}, out)
            else:
                out.write(f"deleted queue {args.name}\n")
        elif args.action == "list":
            _list(queues, args.output, out)
        elif args.action == "describe":
            _describe(queues.describe(args.name), args.output, out)
        elif args.action == "receive":
            _receive(queues, args, out, err)
        elif args.action == "ack":
            result = queues.ack(args.lease_ids, queue=args.name)
            _print_settled(args.output, out, err, "acked", result.acked,
                           [(f.lease_id, f.reason) for f in result.failed])
        else:
            results = queues.nack(args.lease_ids, error=args.error, reject=args.reject,
                                  queue=args.name)
            if args.output == "json":
                print_json([{"lease_id": r.lease_id, "outcome": r.outcome, "due_ms": r.due_ms,
                             "dlq_offset": r.dlq_offset, "detail": r.detail}
                            for r in results], out)
            else:
                rows = [(r.lease_id, r.outcome, format_time(r.due_ms) if r.due_ms >= 0 else "-",
                         r.dlq_offset if r.dlq_offset >= 0 else None, r.detail)
                        for r in results]
                out.write(format_table(("LEASE", "OUTCOME", "DUE", "DLQ OFFSET", "DETAIL"),
                                       rows) + "\n")
    return 0


def _declare(queues: Queues, args: argparse.Namespace, out: TextIO) -> None:
    for name, value, low in (("--lease-ms", args.lease_ms, 1),
                             ("--max-deliveries", args.max_deliveries, 1)):
        if value < low:
            args.usage_error(f"{name} must be at least {low}, got {value}")
    backoff = Backoff(args.backoff_initial_ms, args.backoff_multiplier, args.backoff_max_ms,
                      args.backoff_jitter)
    declared = queues.declare(
        args.name, args.topic, ordering=args.ordering, lease_ms=args.lease_ms,
        max_deliveries=args.max_deliveries, backoff=backoff, dlq_topic=args.dlq_topic,
        start=args.start, mode=args.mode)
    config = declared.config
    if args.output == "json":
        print_json({"created": declared.created, "queue": config_json(config)}, out)
        return
    verb = "declared" if declared.created else "found unchanged"
    out.write(f"{verb} {config.mode} queue {config.name} over {config.topic} (dead letters "
              f"to {config.dlq_topic})\n")


def _list(queues: Queues, output: str, out: TextIO) -> None:
    summaries = queues.list_queues()
    if output == "json":
        print_json([{"queue": config_json(s.config), "stats": _stats_json(s.stats)}
                    for s in summaries], out)
    elif summaries:
        rows = [(s.config.name, s.config.topic, s.config.mode, s.stats.depth, s.stats.ready,
                 s.stats.in_flight, s.stats.waiting_retry, s.stats.dead_lettered)
                for s in summaries]
        out.write(format_table(("QUEUE", "TOPIC", "MODE", "DEPTH", "READY", "IN FLIGHT",
                                "WAITING RETRY", "DEAD-LETTERED"), rows) + "\n")


def _describe(d: QueueDescription, output: str, out: TextIO) -> None:
    c, s = d.config, d.stats
    if output == "json":
        print_json({
            "queue": config_json(c), "stats": _stats_json(s),
            "partitions": [{name: getattr(p, name) for name in type(p).__slots__}
                           for p in d.partitions],
            "dead_letter_topic_records": d.dead_letter_topic_records,
        }, out)
        return
    b = c.backoff
    out.write(
        f"queue {c.name}: {c.mode} queue over {c.topic}, {c.ordering}, lease "
        f"{format_duration_ms(c.lease_ms)}, max deliveries {c.max_deliveries}\n"
        f"backoff: {b.initial_ms} ms x{b.multiplier:g} up to {b.max_ms} ms, jitter "
        f"{b.jitter:g}\ndead letters: {c.dlq_topic} ({d.dead_letter_topic_records} "
        f"record(s))\n\n")
    counts = [("depth", s.depth), ("ready", s.ready), ("in flight", s.in_flight),
              ("waiting retry", s.waiting_retry), ("scheduled", s.scheduled),
              ("blocked by key", s.blocked_by_key), ("delivered", s.delivered),
              ("acked", s.acked), ("retried", s.retried), ("expired", s.expired),
              ("dead-lettered", s.dead_lettered),
              ("dead-letter failures", s.dead_letter_failures),
              ("lost to retention", s.lost_to_retention)]
    out.write(format_table(("COUNT", "VALUE"), counts) + "\n\n")
    rows = [(p.partition, p.start_offset, p.scanned_offset, p.high_watermark, p.ready,
             p.in_flight, p.waiting_retry, p.scheduled) for p in d.partitions]
    out.write(format_table(("PARTITION", "START", "SCANNED", "HIGH WATERMARK", "READY",
                            "IN FLIGHT", "WAITING RETRY", "SCHEDULED"), rows) + "\n")


def _receive(queues: Queues, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    if not 1 <= args.max_records <= 10_000:
        args.usage_error(f"--max-records must be 1 to 10000, got {args.max_records}")
    if not 0 <= args.wait_ms <= 30_000:
        args.usage_error(f"--wait-ms must be 0 to 30000, got {args.wait_ms}")
    messages = queues.receive(args.name, args.max_records, wait_ms=args.wait_ms,
                              lease_ms=args.lease_ms)
    acked: set[str] = set()
    if args.ack and messages:
        acked = set(queues.ack(messages).acked)
    if args.output == "json":
        print_json([{**_message_json(m), "acked": m.lease_id in acked} for m in messages], out)
    elif messages:
        rows = [(m.lease_id, m.partition, m.offset, m.delivery_count, _shown(m.key),
                 _shown(m.value)) for m in messages]
        out.write(format_table(("LEASE", "PARTITION", "OFFSET", "DELIVERY", "KEY", "VALUE"),
                               rows) + "\n")
    if not messages:
        err.write("no records ready\n")
    elif args.ack:
        err.write(f"acked {len(acked)} of {len(messages)} record(s)\n")
    else:
        expiry = min(m.lease_expires_ms for m in messages)
        err.write(f"leased {len(messages)} record(s) until {format_time(expiry)}; settle them "
                  f"with 'moldau queues ack {args.name} LEASE_ID...' or they come back\n")


def _print_settled(output: str, out: TextIO, err: TextIO, verb: str, done: Iterable[str],
                   failed: list[tuple[str, str]]) -> None:
    done = list(done)
    if output == "json":
        print_json({verb: done, "failed": [{"lease_id": lease, "reason": reason}
                                           for lease, reason in failed]}, out)
    else:
        rows = [(lease, verb) for lease in done] + list(failed)
        if rows:
            out.write(format_table(("LEASE", "RESULT"), rows) + "\n")
    if failed:
        err.write(f"{len(failed)} lease(s) were no longer current (expired, released or "
                  "settled); their records are not changed by this\n")
