"""``moldau streams append|read|list|delete``: event-store streams from the command line.

Kept out of ``cli.py``, which only hooks it in (:func:`add_streams_command`,
:func:`run_streams`). Every action is one or a few :class:`moldau.EventStore` calls; errors
are the client's, which ``cli.main`` turns into exit codes. ``--output json`` prints one JSON
object per event (``read``), one JSON document otherwise.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Callable
from typing import Any, TextIO

from moldau._cli_output import format_table, format_time, print_json
from moldau._eventstore_types import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    EventData,
    RecordedEvent,
    expected_name,
)
from moldau.eventstore import EventStore

__all__ = ["add_streams_command", "event_json", "run_streams"]

CommandFactory = Callable[[Any, str, str, str], argparse.ArgumentParser]
EXIT_OK, EXIT_USAGE = 0, 1
_EXPECTED_WORDS = {"any": ANY, "no_stream": NO_STREAM, "no-stream": NO_STREAM,
                   "stream_exists": STREAM_EXISTS, "stream-exists": STREAM_EXISTS}


def _expected_arg(text: str) -> int:
    word = _EXPECTED_WORDS.get(text.lower())
    if word is not None:
        return word
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(
            f"expected version {text!r}: use a version >= 0, any, no_stream or stream_exists")
    return number


def _uuid_arg(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def add_streams_command(commands: Any, command: CommandFactory,
                        add_server: Callable[[Any], None]) -> None:
    """Add ``moldau streams`` to the top-level subparsers of ``cli.build_parser``."""
    streams = command(
        commands, "streams", "append to, read, list and delete event-store streams",
        "  moldau streams append orders order-1 --type OrderPlaced --data '{\"total\": 20}' "
        "--expected-version no_stream\n"
        "  printf '{\"n\":1}\\n{\"n\":2}\\n' | moldau streams append orders order-1 --type Tick\n"
        "  moldau streams read orders order-1 --output json\n"
        "  moldau streams list orders --category order\n"
        "  moldau streams delete orders order-1 --expected-version 3")
    actions = streams.add_subparsers(dest="action", metavar="ACTION", parser_class=type(streams))
    actions.required = True

    append = actions.add_parser("append", help="append events (atomically, with an expected "
                                "version); without --data, each stdin line is one event")
    _topic_stream(append)
    append.add_argument("--type", required=True, help="event type, e.g. OrderPlaced")
    append.add_argument("--data", help="the event's data (JSON text, usually); default: stdin")
    append.add_argument("--metadata", default="", help="the event's metadata (text)")
    append.add_argument("--type-version", type=int, default=1, metavar="N",
                        help="schema version of the type (default 1)")
    append.add_argument("--event-id", type=_uuid_arg, metavar="UUID",
                        help="with --data: the event id (a retry with it is idempotent)")
    append.add_argument("--expected-version", type=_expected_arg, default=ANY, metavar="V",
                        help="any (default), no_stream, stream_exists or a version number")

    read = actions.add_parser("read", help="print a stream's events")
    _topic_stream(read)
    read.add_argument("--from-version", type=int, metavar="N",
                      help="first version (default: the first, or the last with --backwards)")
    read.add_argument("--backwards", action="store_true", help="newest first")
    read.add_argument("--max-count", type=int, metavar="N", help="at most N events (default all)")

    listing = actions.add_parser("list", help="list the streams of a store topic or category")
    listing.add_argument("topic", help="store topic")
    listing.add_argument("--category", help="only streams named CATEGORY-...")
    listing.add_argument("--include-deleted", action="store_true", help="show deleted streams")

    delete = actions.add_parser("delete", help="soft-delete a stream, or hide its events "
                                "below a version (--truncate-before)")
    _topic_stream(delete)
    delete.add_argument("--expected-version", type=_expected_arg, default=ANY, metavar="V",
                        help="delete only if the stream is at V (default any)")
    delete.add_argument("--truncate-before", type=int, metavar="N",
                        help="instead of deleting, hide the versions below N")

    for parser in (append, read, listing, delete):
        add_server(parser)
        parser.add_argument("--output", choices=("table", "json"), default="table")


def _topic_stream(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", help="store topic")
    parser.add_argument("stream", help="stream id, e.g. order-123")


def run_streams(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    """Run ``moldau streams ACTION``; returns the exit code (client errors propagate)."""
    with EventStore(args.server, topic=args.topic) as store:
        if args.action == "append":
            return _append(store, args, out, err, stdin)
        if args.action == "read":
            return _read(store, args, out)
        if args.action == "list":
            return _list(store, args, out)
        return _delete(store, args, out)


def _append(store: EventStore, args: argparse.Namespace, out: TextIO, err: TextIO,
            stdin: TextIO) -> int:
    if args.data is not None:
        payloads = [args.data]
    else:
        payloads = [line.rstrip("\n") for line in stdin if line.strip()]
        if args.event_id is not None:
            err.write("moldau: error: --event-id needs --data (one event)\n")
            return EXIT_USAGE
    if not payloads:
        err.write("moldau: error: no events: pass --data or lines on stdin\n")
        return EXIT_USAGE
    events = [
        EventData(args.type, payload.encode(), args.metadata.encode(), args.type_version,
                  args.event_id if args.event_id is not None else uuid.uuid4())
        for payload in payloads
    ]
    result = store.append_to_stream(args.stream, args.expected_version, events)
    if args.output == "json":
        print_json({"stream": args.stream, "first_version": result.first_version,
                    "last_version": result.last_version, "partition": result.partition,
                    "first_offset": result.first_offset, "last_offset": result.last_offset,
                    "duplicate": result.duplicate,
                    "event_ids": [str(e.event_id) for e in events]}, out)
        return EXIT_OK
    what = "already stored (a retry)" if result.duplicate else "appended"
    out.write(f"{what}: {args.stream} versions {result.first_version}..{result.last_version} "
              f"(expected {expected_name(args.expected_version)}; partition "
              f"{result.partition}, offsets {result.first_offset}..{result.last_offset})\n")
    return EXIT_OK


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def event_json(event: RecordedEvent) -> dict[str, Any]:
    """An event as a JSON object: data and metadata as text when UTF-8, else base16."""
    return {
        "stream": event.stream, "version": event.version, "event_id": str(event.event_id),
        "type": event.type, "type_version": event.type_version,
        "data": event.data.decode() if _is_utf8(event.data) else None,
        "data_hex": None if _is_utf8(event.data) else event.data.hex(),
        "metadata": event.metadata.decode() if _is_utf8(event.metadata) else event.metadata.hex(),
        "timestamp_ms": event.timestamp_ms, "partition": event.position.partition,
        "offset": event.position.offset,
    }


def _read(store: EventStore, args: argparse.Namespace, out: TextIO) -> int:
    found = store.read_stream(args.stream, args.from_version, backwards=args.backwards,
                              max_count=args.max_count)
    if args.output == "json":
        for event in found:
            out.write(json.dumps(event_json(event), separators=(",", ":")) + "\n")
        return EXIT_OK
    rows = [(e.version, e.type, e.type_version, format_time(e.timestamp_ms),
             e.data.decode("utf-8", "replace")[:80]) for e in found]
    out.write(format_table(["VERSION", "TYPE", "TYPE_VERSION", "TIME", "DATA"], rows) + "\n")
    return EXIT_OK


def _list(store: EventStore, args: argparse.Namespace, out: TextIO) -> int:
    streams = store.list_streams(args.category, include_deleted=args.include_deleted)
    if args.output == "json":
        print_json([{"stream": s.stream, "last_version": s.last_version,
                     "truncate_before": s.truncate_before, "deleted": s.deleted,
                     "partition": s.partition} for s in streams], out)
        return EXIT_OK
    rows = [(s.stream, s.last_version, s.truncate_before, "yes" if s.deleted else "",
             s.partition) for s in streams]
    out.write(format_table(["STREAM", "LAST_VERSION", "TRUNCATE_BEFORE", "DELETED",
                            "PARTITION"], rows) + "\n")
    return EXIT_OK


def _delete(store: EventStore, args: argparse.Namespace, out: TextIO) -> int:
    if args.truncate_before is not None:
        store.truncate_stream(args.stream, args.truncate_before)
        done = {"stream": args.stream, "truncated_before": args.truncate_before}
        text = f"truncated: {args.stream} reads start at version {args.truncate_before}\n"
    else:
        store.delete_stream(args.stream, args.expected_version)
        done = {"stream": args.stream, "deleted": True}
        text = f"deleted: {args.stream} (its events stay in the log)\n"
    if args.output == "json":
        print_json(done, out)
    else:
        out.write(text)
    return EXIT_OK
