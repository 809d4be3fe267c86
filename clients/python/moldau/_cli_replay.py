"""``moldau replay``: rebuild read models and re-drive consumers from a topic's history.

The loop is :func:`moldau._replay.replay`; this module turns flags into a selection, a range
and a target, draws the progress bar, and prints the summary. Exit codes: those of ``cli``,
plus 4 when a handler failed (without ``--skip-errors``) and 130 when interrupted; both leave
the resume file, so the same command continues where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

from moldau._cli_output import parse_time_ms
from moldau._replay import ReplayRange, ReplaySummary, describe_item, replay
from moldau._replay_registry import ensure_registry, read_registry, write_status
from moldau._replay_source import Selection
from moldau._replay_targets import (
    HandlerTarget,
    JsonLinesTarget,
    ProjectionTarget,
    ReplayTarget,
    ReplayTargetError,
    SQLiteTarget,
    TopicTarget,
)
from moldau.admin import Admin
from moldau.producer import Producer
from moldau.projections import Projection

__all__ = ["EXIT_HANDLER", "add_replay_command", "load_attr", "load_projection", "run_replay"]

EXIT_HANDLER = 4
CommandFactory = Callable[[Any, str, str, str], argparse.ArgumentParser]


def _time(text: str) -> int:
    try:
        return parse_time_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def add_replay_command(
    commands: Any, command: CommandFactory, add_server: Callable[[Any], None]
) -> None:
    """Add ``moldau replay`` to the top-level subparsers of ``cli.build_parser``."""
    parser = command(
        commands, "replay", "replay a topic's history into a handler, a projection, JSON lines, "
        "a SQLite file or another topic",
        "  moldau replay orders --handler myapp.audit:on_event\n"
        "  moldau replay --projection order-summary\n"
        "  moldau replay orders --category order --to-time 2026-11-28T14:00:00Z --jsonl -\n"
        "  moldau replay orders --stream order-42 --from-version 3 --jsonl order-42.jsonl\n"
        "  moldau replay orders --from-offset 1000 --to-offset 1999 --sqlite history.db\n"
        "  moldau replay orders --to-topic orders-copy --rate 500\n"
        "  moldau replay orders --handler myapp.audit:on_event --dry-run",
    )
    add_server(parser)
    parser.set_defaults(usage_error=parser.error)
    source = parser.add_argument_group("source")
    source.add_argument("topic", metavar="TOPIC", nargs="?",
                        help="the topic to read (a projection target brings its own)")
    source.add_argument("--partition", metavar="P", type=_count, action="append",
                        help="only partition P (repeatable; default: all)")
    source.add_argument("--stream", metavar="ID", help="only this stream's events")
    source.add_argument("--category", metavar="NAME",
                        help="only the streams NAME-... (order: order-1, order-2, ...)")
    source.add_argument("--records", action="store_true",
                        help="hand out raw records, not events (for topics that are not "
                        "event stores)")
    span = parser.add_argument_group("range (offsets and times inclusive)")
    span.add_argument("--from-offset", metavar="N", type=_count)
    span.add_argument("--to-offset", metavar="N", type=_count)
    span.add_argument("--from-time", metavar="TIME", type=_time,
                      help="ISO 8601 (no offset: UTC) or epoch ms")
    span.add_argument("--to-time", metavar="TIME", type=_time)
    span.add_argument("--from-version", metavar="N", type=_count,
                      help="with --stream: from this stream version")
    targets = parser.add_argument_group("target (exactly one)")
    target = targets.add_mutually_exclusive_group(required=True)
    target.add_argument("--handler", metavar="MODULE:FUNCTION",
                        help="call FUNCTION(event) for each event")
    target.add_argument("--projection", metavar="NAME|MODULE:ATTR",
                        help="rebuild this projection into a fresh read model, swapped in at "
                        "the end")
    target.add_argument("--jsonl", metavar="FILE", help="write JSON lines to FILE (- : stdout)")
    target.add_argument("--sqlite", metavar="FILE", help="write rows to a SQLite file")
    target.add_argument("--to-topic", metavar="TOPIC", help="re-publish to TOPIC")
    options = parser.add_argument_group("options")
    options.add_argument("--rate", metavar="N", type=float,
                         help="with --to-topic: at most N records per second")
    options.add_argument("--dry-run", action="store_true",
                         help="count what would be replayed and print a sample; write nothing")
    options.add_argument("--sample", metavar="N", type=_count, default=5,
                         help="events a dry run prints (default 5)")
    options.add_argument("--skip-errors", action="store_true",
                         help="send events the target fails on to <topic>.replay-dlq and go on "
                         "(exit 0); without it the first failure stops the replay (exit 4)")
    options.add_argument("--max-events", metavar="N", type=_count,
                         help="stop after N events (run again to resume)")
    options.add_argument("--resume-file", metavar="FILE",
                         help="where progress is kept (default: .moldau-replay-<hash>.json "
                         "in the current directory; removed on completion)")
    options.add_argument("--no-resume", action="store_true",
                         help="ignore and replace an existing resume file: start over")
    options.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                         help="progress bar on stderr (default: when stderr is a terminal)")


def load_attr(spec: str) -> Any:
    """``package.module:attr`` (the current directory is importable, as for ``python -m``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r}: expected package.module:attribute")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name}: {exc}") from None
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ValueError(f"{module_name} has no attribute {attr!r}") from None
    return value


def load_projection(server: str | None, spec: str) -> Projection:
    """A projection by ``package.module:attr``, or by name through the registry's code path."""
    if ":" not in spec:
        status = read_registry(server).get(spec)
        if status is None:
            raise ValueError(f"no projection named {spec!r} in the registry; run it once, or "
                             "pass --projection package.module:attr")
        if status.code is None:
            raise ValueError(f"the registry does not say where projection {spec!r} is defined; "
                             "pass --projection package.module:attr")
        spec = status.code
    projection = load_attr(spec)
    if not isinstance(projection, Projection):
        raise ValueError(f"{spec} is a {type(projection).__name__}, not a moldau Projection")
    return projection


def _fail(args: argparse.Namespace, message: str) -> NoReturn:
    args.usage_error(message)
    raise AssertionError("parser.error returned")  # pragma: no cover


def _selection(args: argparse.Namespace, projection: Projection | None) -> Selection:
    topic = args.topic
    if projection is not None:
        if topic is not None and topic != projection.topic:
            _fail(args, f"projection {projection.name} reads {projection.topic}, not {topic}")
        if args.stream or args.category or args.records or args.partition:
            _fail(args, "a projection brings its own source; drop --stream, --category, "
                  "--records and --partition")
        if args.from_offset is not None or args.from_time is not None:
            _fail(args, "a projection is rebuilt from the start of its topic; use --to-offset "
                  "or --to-time to rebuild it as of a point")
        return projection.selection
    if topic is None:
        _fail(args, "name the TOPIC to replay")
    try:
        return Selection(topic, tuple(args.partition) if args.partition else None,
                         args.stream, args.category, args.from_version, args.records)
    except ValueError as exc:
        _fail(args, str(exc))


def _target(args: argparse.Namespace, projection: Projection | None,
            out: TextIO) -> ReplayTarget:
    if args.rate is not None and not args.to_topic:
        _fail(args, "--rate applies to --to-topic")
    if args.rate is not None and args.rate <= 0:
        _fail(args, "--rate must be above 0")
    if projection is not None:
        return ProjectionTarget(projection)
    if args.handler:
        try:
            handler = load_attr(args.handler)
        except ValueError as exc:
            _fail(args, str(exc))
        if not callable(handler):
            _fail(args, f"{args.handler} is not callable")
        return HandlerTarget(handler, args.handler)
    if args.jsonl:
        return JsonLinesTarget(args.jsonl, out)
    if args.sqlite:
        return SQLiteTarget(args.sqlite)
    if args.to_topic == args.topic:
        _fail(args, "re-publishing a topic into itself would never end; choose another topic")
    return TopicTarget(args.server, args.to_topic, args.rate)


class ProgressBar:
    """``[#####.....]  45.0%  45,000/100,000 offsets  120,000 events/s  ETA 0:04`` on one
    line of ``err``, redrawn in place."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.drawn = False

    def __call__(self, done: int, total: int, events: int, elapsed_s: float) -> None:
        fraction = done / total if total else 1.0
        width = 24
        filled = int(fraction * width)
        rate = events / elapsed_s if elapsed_s > 0 else 0.0
        offset_rate = done / elapsed_s if elapsed_s > 0 else 0.0
        eta = (total - done) / offset_rate if offset_rate > 0 else 0.0
        minutes, seconds = divmod(int(eta), 60)
        self.err.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}%  "
                       f"{done:,}/{total:,} offsets  {events:,} events  {rate:,.0f} events/s  "
                       f"ETA {minutes}:{seconds:02d} ")
        self.err.flush()
        self.drawn = True

    def end(self) -> None:
        if self.drawn:
            self.err.write("\n")
            self.drawn = False


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the replay like Ctrl-C (resume file written), on the main thread only."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume_path(args: argparse.Namespace, selection: Selection, target: ReplayTarget) -> Path:
    if args.resume_file:
        return Path(args.resume_file)
    identity = json.dumps([selection.describe(), args.from_offset, args.to_offset, args.from_time,
                           args.to_time, target.description], sort_keys=True)
    return Path(f".moldau-replay-{hashlib.sha256(identity.encode()).hexdigest()[:12]}.json")


def run_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``moldau replay``; returns the exit code (server errors are raised)."""
    projection = None
    if args.projection:
        try:
            projection = load_projection(args.server, args.projection)
        except ValueError as exc:
            _fail(args, str(exc))
    selection = _selection(args, projection)
    try:
        span = ReplayRange(args.from_offset, args.to_offset, args.from_time, args.to_time)
    except ValueError as exc:
        _fail(args, str(exc))
    target = _target(args, projection, out)
    resume_file = _resume_path(args, selection, target)
    if args.no_resume and resume_file.exists():
        resume_file.unlink()
    show = err.isatty() if args.progress is None else args.progress
    bar = ProgressBar(err) if show else None
    code = 0
    try:
        with _sigterm_interrupts():
            summary = replay(
                args.server, selection, target, span, resume_file=resume_file,
                dry_run=args.dry_run, sample_size=args.sample, skip_errors=args.skip_errors,
                max_events=args.max_events, progress=bar, out=out,
            )
    except ReplayTargetError as failure:
        if bar is not None:
            bar.end()
        if failure.summary is not None:
            _print_summary(failure.summary, selection, args, resume_file, err)
        err.write(f"moldau: replay stopped: the target failed on {describe_item(failure.item)}"
                  "\n"
                  f"  {failure}\nfix it and run the same command to resume (from that event), "
                  "or pass --skip-errors to send failures to "
                  f"{selection.topic}.replay-dlq\nresume file: {resume_file}\n")
        return EXIT_HANDLER
    except KeyboardInterrupt:
        if bar is not None:
            bar.end()
        err.write(f"moldau: replay interrupted; run the same command to resume\n"
                  f"resume file: {resume_file}\n")
        return 130
    finally:
        target.close()
    if bar is not None:
        bar.end()
    if projection is not None and summary.completed and not args.dry_run:
        _register_rebuild(args.server, projection, summary)
    _print_summary(summary, selection, args, resume_file, err)
    if summary.errors and not args.skip_errors:
        code = EXIT_HANDLER
    return code


def _register_rebuild(server: str | None, projection: Projection,
                      summary: ReplaySummary) -> None:
    """Record the rebuilt model's checkpoint in the registry (state ``rebuilt``)."""
    record = projection.status()
    record.state, record.positions = "rebuilt", dict(summary.positions)
    record.events_applied, record.updated_ms = summary.events, int(time.time() * 1000)
    with Admin(server) as admin:
        ensure_registry(admin)
    with Producer(server) as producer:
        write_status(producer, record)
        producer.flush()


def _print_summary(summary: ReplaySummary, selection: Selection, args: argparse.Namespace,
                   resume_file: Path, err: TextIO) -> None:
    verb = "would replay" if args.dry_run else "replayed"
    err.write(f"{verb} {summary.events:,} events from {selection.topic} to {summary.target} in "
              f"{summary.elapsed_s:.2f} s ({summary.rate:,.0f} events/s); {summary.errors:,} "
              f"errors, {summary.skipped:,} records skipped (not events, or filtered out)\n")
    if summary.errors and args.skip_errors:
        err.write(f"{summary.errors:,} failed events were sent to {selection.topic}.replay-dlq\n")
    if not summary.completed and not args.dry_run:
        err.write(f"stopped before the end; run the same command to resume "
                  f"(resume file: {resume_file})\n")
