"""The ``moldau`` command: run the broker, manage topics and groups, produce and consume.

Exit codes (the same for every command)::

    0  success
    1  usage: unknown command or flag, bad argument value, unreadable input
    2  the server refused the request (its message is printed on stderr)
    3  could not connect to the server

Client commands take ``--server HOST:PORT`` (default ``$MOLDAU_SERVER``, else 127.0.0.1:7654).
``main(argv)`` returns the exit code instead of exiting, so tests call it directly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, NoReturn, TextIO

from moldau._cli_acl import (
    add_credential_flags,
    add_security_commands,
    credentials_env,
    run_security_command,
)
from moldau._cli_bench import add_bench_command, run_bench_command
from moldau._cli_dlq import add_dlq_command, run_dlq
from moldau._cli_exchanges import add_exchanges_command, run_exchanges
from moldau._cli_groups import add_groups_command, run_groups
from moldau._cli_output import (
    decode_json_record,
    format_table,
    format_time,
    parse_time_ms,
    print_json,
    record_json,
)
from moldau._cli_projections import add_projections_command, run_projections
from moldau._cli_queues import add_queues_command, run_queues
from moldau._cli_replay import add_replay_command, run_replay
from moldau._cli_status import add_status_command, run_status
from moldau._cli_streams import add_streams_command, run_streams
from moldau._futures import RecordFuture
from moldau._runtime import DEFAULT_SERVER
from moldau._types import Header, TopicDescription
from moldau.admin import Admin
from moldau.consumer import Consumer
from moldau.errors import ConnectionFailedError, MoldauError
from moldau.producer import Producer

__all__ = ["EXIT_CONNECT", "EXIT_OK", "EXIT_SERVER", "EXIT_USAGE", "main"]

EXIT_OK, EXIT_USAGE, EXIT_SERVER, EXIT_CONNECT = 0, 1, 2, 3

_EXIT_CODES = """exit codes:
  0  success
  1  usage error (bad flag or value, unreadable input)
  2  the server refused the request; its message is on stderr
  3  could not connect to the server"""


class UsageError(Exception):
    """Bad command line or input; exit code 1."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as exit code 1 instead of calling sys.exit(2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\n{self.format_usage().rstrip()}")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _time_arg(text: str) -> int:
    try:
        return parse_time_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", metavar="HOST:PORT", default=os.environ.get("MOLDAU_SERVER") or None,
        help=f"broker address (default $MOLDAU_SERVER, else {DEFAULT_SERVER})",
    )


def _command(
    sub: argparse._SubParsersAction[_Parser], name: str, help_text: str, examples: str
) -> _Parser:
    parser: _Parser = sub.add_parser(
        name, help=help_text, description=help_text,
        epilog=f"examples:\n{examples}\n\n{_EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def build_parser() -> _Parser:
    parser = _Parser(
        prog="moldau",
        description="Moldau: a Kafka-style event streaming engine. Run the broker, manage "
        "topics and consumer groups, produce and consume records.",
        epilog="examples:\n  moldau serve\n  moldau topics create orders --partitions 3\n"
        "  echo hello | moldau produce orders\n"
        "  moldau consume orders --from-beginning --max-records 1\n"
        "  moldau groups describe billing\n\n"
        f"Run 'moldau COMMAND --help' for a command's options.\n\n{_EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    serve = _command(commands, "serve", "run the broker (gRPC server) on a data directory",
                     "  moldau serve\n"
                     "  moldau serve --listen 0.0.0.0:7654 --data-dir /var/lib/moldau\n"
                     "  moldau serve --tcp-listen 127.0.0.1:7655\n"
                     "  moldau serve --config moldau.toml")
    serve.add_argument("--listen", metavar="HOST:PORT", help="address to bind "
                       "(default 127.0.0.1:7654; port 0 picks a free one)")
    serve.add_argument("--data-dir", metavar="DIR", help="data directory (default ./moldau-data)")
    serve.add_argument("--config", metavar="FILE", help="TOML config file (or $MOLDAU_CONFIG)")
    serve.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR")
    serve.add_argument("--log-format", choices=("text", "json"),
                       help="text lines (default) or one JSON object per line")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics (default off)")
    serve.add_argument("--tcp-listen", metavar="HOST:PORT",
                       help="also serve the API over plain TCP frames, for lower latency "
                       "(docs/tcp-port.md; default off; port 0 picks a free one)")

    topics = _command(commands, "topics", "create, list, describe, alter and delete topics",
                      "  moldau topics list\n  moldau topics create orders --partitions 3")
    actions = topics.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    _add_topic_commands(actions)

    produce = _command(
        commands, "produce", "send records read from stdin (or --file), one per line",
        "  echo hello | moldau produce orders\n"
        "  printf 'alice:1\\nbob:2\\n' | moldau produce orders --key-separator :\n"
        "  moldau produce orders --header source=cli --partition 0 --file records.txt\n"
        '  echo \'{"key": "k1", "value": "v1", "headers": {"h": "x"}}\' | '
        "moldau produce orders --format json",
    )
    _add_server(produce)
    produce.add_argument("topic", metavar="TOPIC")
    produce.add_argument("--key-separator", metavar="SEP",
                         help="split each plain line at the first SEP into key and value")
    produce.add_argument("--header", metavar="K=V", type=_key_value, action="append",
                         default=[], help="add this header to every record (repeatable)")
    produce.add_argument("--partition", metavar="P", type=int,
                         help="send every record to partition P (default: by key, or spread)")
    produce.add_argument("--file", metavar="F", help="read records from F instead of stdin")
    produce.add_argument("--format", choices=("plain", "json"), default="plain",
                         help="plain: one value per line (empty lines skipped); json: one "
                         "object per line with key, value, headers")
    produce.add_argument("--codec", choices=("none", "gzip", "snappy", "lz4", "zstd"),
                         default="none", help="batch compression")

    consume = _command(
        commands, "consume", "print records of a topic",
        "  moldau consume orders --from-beginning --max-records 10\n"
        "  moldau consume orders --offset 42 --partition 1 --output json\n"
        "  moldau consume orders --from-time 2026-11-28T14:00:00Z --timeout-ms 2000",
    )
    _add_server(consume)
    consume.add_argument("topic", metavar="TOPIC")
    start = consume.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-beginning", action="store_true", help="start at the log start")
    start.add_argument("--from-end", action="store_true", help="only records produced from now")
    start.add_argument("--offset", metavar="N", type=int, help="start at offset N")
    start.add_argument("--from-time", metavar="ISO8601", type=_time_arg,
                       help="start at the first record at or after this time (or epoch ms)")
    consume.add_argument("--partition", metavar="P", type=int,
                         help="read only partition P (default: all)")
    consume.add_argument("--max-records", metavar="N", type=int,
                         help="exit after N records")
    consume.add_argument("--timeout-ms", metavar="MS", type=int,
                         help="exit when no record arrives for MS ms (default: wait forever)")
    consume.add_argument("--output", choices=("plain", "json"), default="plain",
                         help="plain: the value; json: one object per record with topic, "
                         "partition, offset, timestamp, key, value, headers")

    offsets = _command(commands, "offsets", "show each partition's earliest and latest offset",
                       "  moldau offsets orders\n"
                       "  moldau offsets orders --time 2026-11-28T14:00:00Z --output json")
    _add_server(offsets)
    offsets.add_argument("topic", metavar="TOPIC")
    offsets.add_argument("--time", metavar="ISO8601", type=_time_arg,
                         help="also resolve the first offset at or after this time")
    offsets.add_argument("--output", choices=("table", "json"), default="table")

    add_groups_command(commands, _command, _add_server)
    add_queues_command(commands, _command, _add_server)
    add_exchanges_command(commands, _command, _add_server)
    add_dlq_command(commands, _command, _add_server)
    add_projections_command(commands, _command, _add_server)
    add_replay_command(commands, _command, _add_server)
    add_status_command(commands, _command, _add_server)
    add_streams_command(commands, _command, _add_server)
    add_bench_command(commands, _command)
    add_security_commands(commands, _command, _add_server)
    add_credential_flags(parser)  # --token and --tls-* on every command with --server
    return parser


def _add_topic_commands(actions: argparse._SubParsersAction[_Parser]) -> None:
    create = _command(actions, "create", "create a topic",
                      "  moldau topics create orders --partitions 3\n"
                      "  moldau topics create audit --config retention.ms=86400000 "
                      "--config cleanup.policy=compact")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--partitions", metavar="N", type=int, default=1)
    create.add_argument("--config", metavar="K=V", type=_key_value, action="append",
                        default=[], help="topic config override (repeatable)")
    delete = _command(actions, "delete", "delete a topic and all its data",
                      "  moldau topics delete orders")
    delete.add_argument("name", metavar="NAME")
    listing = _command(actions, "list", "list topics",
                       "  moldau topics list\n  moldau topics list --output json")
    listing.add_argument("--internal", action="store_true", help="include internal topics")
    listing.add_argument("--output", choices=("table", "json"), default="table")
    describe = _command(actions, "describe", "show partitions, offsets, sizes and configs",
                        "  moldau topics describe orders\n"
                        "  moldau topics describe orders --output json")
    describe.add_argument("name", metavar="NAME")
    describe.add_argument("--output", choices=("table", "json"), default="table")
    alter = _command(actions, "alter", "set or reset topic config overrides",
                     "  moldau topics alter orders --set retention.ms=3600000\n"
                     "  moldau topics alter orders --delete retention.ms")
    alter.add_argument("name", metavar="NAME")
    alter.add_argument("--set", metavar="K=V", type=_key_value, action="append", default=[],
                       dest="set_configs", help="set an override (repeatable)")
    alter.add_argument("--delete", metavar="K", action="append", default=[],
                       dest="reset_configs", help="remove an override (repeatable)")
    for parser in (create, delete, listing, describe, alter):
        _add_server(parser)


# ---------------------------------------------------------------------------- commands


def _topics(args: argparse.Namespace, out: TextIO) -> int:
    with Admin(args.server) as admin:
        if args.action == "create":
            topic = admin.create_topic(args.name, args.partitions, dict(args.config))
            out.write(f"created topic {topic.name} with {topic.partition_count} partitions\n")
        elif args.action == "delete":
            admin.delete_topic(args.name)
            out.write(f"deleted topic {args.name}\n")
        elif args.action == "list":
            summaries = admin.list_topics(include_internal=args.internal)
            if args.output == "json":
                print_json([{"name": t.name, "partitions": t.partition_count,
                             "internal": t.internal, "overrides": t.overrides}
                            for t in summaries], out)
            elif summaries:
                rows = [(t.name, t.partition_count, _configs(t.overrides)) for t in summaries]
                out.write(format_table(("TOPIC", "PARTITIONS", "OVERRIDES"), rows) + "\n")
        elif args.action == "describe":
            _describe(admin.describe_topic(args.name), args.output, out)
        else:
            if not args.set_configs and not args.reset_configs:
                raise UsageError("topics alter needs at least one --set K=V or --delete K")
            topic = admin.alter_topic_config(args.name, dict(args.set_configs),
                                             args.reset_configs)
            out.write(f"altered topic {topic.name}: {_configs(topic.overrides) or 'no overrides'}"
                      "\n")
    return EXIT_OK


def _configs(configs: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in configs.items())


def _describe(topic: TopicDescription, output: str, out: TextIO) -> None:
    if output == "json":
        print_json({
            "name": topic.name, "partitions": topic.partition_count, "internal": topic.internal,
            "overrides": topic.overrides, "configs": topic.configs,
            "partition_details": [
                {"partition": p.partition, "log_start_offset": p.log_start_offset,
                 "high_watermark": p.high_watermark, "log_end_offset": p.log_end_offset,
                 "size_bytes": p.size_bytes, "segment_count": p.segment_count,
                 "read_only_reason": p.read_only_reason}
                for p in topic.partitions
            ],
        }, out)
        return
    out.write(f"topic {topic.name}: {topic.partition_count} partitions"
              f"{' (internal)' if topic.internal else ''}\n\n")
    rows = [(p.partition, p.log_start_offset, p.high_watermark, p.size_bytes, p.segment_count,
             p.read_only_reason or "ok") for p in topic.partitions]
    out.write(format_table(("PARTITION", "START", "HIGH WATERMARK", "BYTES", "SEGMENTS",
                            "STATUS"), rows) + "\n\n")
    rows_c = [(k, v, "override" if k in topic.overrides else "default")
              for k, v in topic.configs.items()]
    out.write(format_table(("CONFIG", "VALUE", "SOURCE"), rows_c) + "\n")


def _lines(args: argparse.Namespace, stdin: TextIO) -> Iterator[tuple[int, str]]:
    with contextlib.ExitStack() as stack:
        source: IO[str] = stdin
        if args.file:
            try:
                source = stack.enter_context(open(args.file, encoding="utf-8"))
            except OSError as exc:
                raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
        for number, line in enumerate(source, start=1):
            yield number, line.rstrip("\r\n")


def _produce(args: argparse.Namespace, stdin: TextIO, err: TextIO) -> int:
    base_headers = tuple(Header(k, v.encode()) for k, v in args.header)
    with Admin(args.server) as admin:
        admin.describe_topic(args.topic)  # fail fast on a wrong name or address
    futures: list[RecordFuture] = []
    separator = args.key_separator
    with Producer(args.server, codec=args.codec, delivery_timeout_ms=30_000) as producer:
        for number, line in _lines(args, stdin):
            partition, timestamp = args.partition, None
            if args.format == "json":
                if not line.strip():
                    continue
                try:
                    key, value, headers, json_partition, timestamp = decode_json_record(line)
                except (ValueError, TypeError) as exc:
                    raise UsageError(f"line {number}: {exc}") from None
                headers = base_headers + headers
                partition = partition if partition is not None else json_partition
            else:
                if not line:
                    continue
                key, headers = None, base_headers
                if separator:
                    key_text, sep, value_text = line.partition(separator)
                    if not sep:
                        raise UsageError(f"line {number} has no key separator {separator!r}")
                    key, value = key_text.encode(), value_text.encode()
                else:
                    value = line.encode()
            futures.append(producer.send(args.topic, value, key=key, headers=headers,
                                         partition=partition, timestamp=timestamp))
        producer.flush()
    acknowledged = 0
    failure: MoldauError | None = None
    for future in futures:
        error = future.exception()
        if error is None:
            acknowledged += 1
        elif failure is None and isinstance(error, MoldauError):
            failure = error
    err.write(f"{acknowledged} records acknowledged\n")
    if failure is not None:
        raise failure
    return EXIT_OK


def _consume(args: argparse.Namespace, out: TextIO) -> int:
    if args.max_records is not None and args.max_records < 1:
        raise UsageError("--max-records must be at least 1")
    printed = 0
    with Consumer(args.server, auto_offset_reset="earliest") as consumer:
        if args.partition is None:
            consumer.assign_all(args.topic)
        else:
            consumer.assign([(args.topic, args.partition)])
        if args.from_beginning:
            consumer.seek_to_beginning()
        elif args.from_end:
            consumer.seek_to_end()
        elif args.from_time is not None:
            consumer.seek_to_time(args.from_time)
        else:
            for tp in consumer.assignment():
                consumer.seek(tp, args.offset)
        binary_out = getattr(out, "buffer", None)
        last_record = time.monotonic()
        while args.max_records is None or printed < args.max_records:
            wanted = 500 if args.max_records is None else min(500, args.max_records - printed)
            records = consumer.poll(timeout_ms=200, max_records=wanted)
            if not records:
                idle_ms = (time.monotonic() - last_record) * 1000
                if args.timeout_ms is not None and idle_ms >= args.timeout_ms:
                    break
                continue
            last_record = time.monotonic()
            for record in records:
                if args.output == "json":
                    out.write(record_json(record) + "\n")
                elif binary_out is not None:
                    out.flush()
                    binary_out.write((record.value or b"") + b"\n")
                else:
                    out.write((record.value or b"").decode("utf-8", "replace") + "\n")
            out.flush()
            printed += len(records)
    return EXIT_OK


def _offsets(args: argparse.Namespace, out: TextIO) -> int:
    with Admin(args.server) as admin:
        earliest = {o.partition: o.offset for o in admin.list_offsets(args.topic, "earliest")}
        latest = {o.partition: o.offset for o in admin.list_offsets(args.topic, "latest")}
        by_time = ({o.partition: o.offset for o in admin.list_offsets(args.topic, args.time)}
                   if args.time is not None else {})
    partitions = sorted(earliest)
    if args.output == "json":
        rows_json = []
        for p in partitions:
            row: dict[str, object] = {"partition": p, "earliest": earliest[p],
                                      "latest": latest[p]}
            if args.time is not None:
                row["offset_for_time"] = by_time[p]
            rows_json.append(row)
        print_json(rows_json, out)
        return EXIT_OK
    headers = ["PARTITION", "EARLIEST", "LATEST"]
    if args.time is not None:
        headers.append(f"AT {format_time(args.time)}")
    rows = [(p, earliest[p], latest[p], *((by_time[p],) if args.time is not None else ()))
            for p in partitions]
    out.write(format_table(headers, rows) + "\n")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    # the server package only for `moldau serve`: client commands never load it
    from grpc_api.server import main as serve_main  # noqa: PLC0415

    argv: list[str] = []
    for flag, value in (("--listen", args.listen), ("--data-dir", args.data_dir),
                        ("--config", args.config), ("--log-level", args.log_level),
                        ("--log-format", args.log_format),
                        ("--metrics-listen", args.metrics_listen),
                        ("--tcp-listen", args.tcp_listen)):
        if value is not None:
            argv += [flag, value]
    return serve_main(argv)


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the ``moldau`` command line; returns the exit code."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        err.write(f"moldau: error: {exc}\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    handlers: dict[str, Callable[[], int]] = {
        "serve": lambda: _serve(args),
        "topics": lambda: _topics(args, out),
        "produce": lambda: _produce(args, stdin or sys.stdin, err),
        "consume": lambda: _consume(args, out),
        "offsets": lambda: _offsets(args, out),
        "groups": lambda: run_groups(args, out, err),
        "queues": lambda: run_queues(args, out, err),
        "exchanges": lambda: run_exchanges(args, out, err),
        "dlq": lambda: run_dlq(args, out, err),
        "projections": lambda: run_projections(args, out, err),
        "replay": lambda: run_replay(args, out, err),
        "status": lambda: run_status(args, out, err),
        "streams": lambda: run_streams(args, out, err, stdin or sys.stdin),
        "bench": lambda: run_bench_command(args, out, err),
        "acl": lambda: run_security_command(args, out),
        "whoami": lambda: run_security_command(args, out),
        "token": lambda: run_security_command(args, out, stdin),
    }
    try:
        with credentials_env(args):
            return handlers[args.command]()
    except UsageError as exc:
        err.write(f"moldau: error: {exc}\n")
        return EXIT_USAGE
    except ConnectionFailedError as exc:
        err.write(f"moldau: {exc.message}\n"
                  "is the broker running? start one with 'moldau serve'\n")
        return EXIT_CONNECT
    except MoldauError as exc:
        code = exc.code.name if exc.code is not None else type(exc).__name__
        err.write(f"moldau: {code}: {exc.message}\n")
        return EXIT_SERVER
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `moldau consume ... | head`: stop quietly, as cat does
        if out is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit cannot fail again
            os.close(devnull)
        return EXIT_OK
