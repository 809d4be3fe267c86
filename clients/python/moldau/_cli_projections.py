"""``moldau projections list|status|reset|rebuild``: the projection registry for operators.

``list`` and ``status`` read the registry topic (any machine); ``status`` also asks the broker
for the topic's current end offsets, so the lag shown is fresh even when the runner is down.
``reset`` and ``rebuild`` act on the read model itself, so they import the projection (the
registry's code path, or ``--projection package.module:attr``) and run where its store lives.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any, NoReturn, TextIO

from moldau._cli_output import (
    format_duration_ms,
    format_table,
    format_time,
    parse_time_ms,
    print_json,
)
from moldau._cli_replay import load_projection, run_replay
from moldau._replay_registry import (
    ProjectionStatus,
    ensure_registry,
    read_registry,
    write_status,
)
from moldau.admin import Admin
from moldau.producer import Producer

__all__ = ["add_projections_command", "run_projections"]

CommandFactory = Callable[[Any, str, str, str], argparse.ArgumentParser]
LIVE_WINDOW_MS = 30_000
"""A runner whose record is younger than this is taken to be running (it writes every 5 s)."""


def add_projections_command(
    commands: Any, command: CommandFactory, add_server: Callable[[Any], None]
) -> None:
    """Add ``moldau projections ACTION`` to the top-level subparsers of ``cli.build_parser``."""
    parser = command(commands, "projections", "list projections, show their status, reset or "
                     "rebuild their read models",
                     "  moldau projections list\n  moldau projections status order-summary\n"
                     "  moldau projections rebuild order-summary\n"
                     "  moldau projections reset order-summary --force")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    listing = command(actions, "list", "list the projections in the registry",
                      "  moldau projections list\n  moldau projections list --output json")
    status = command(actions, "status", "show a projection's position, lag, events and errors",
                     "  moldau projections status order-summary")
    reset = command(actions, "reset", "empty a projection's read model and checkpoint (it "
                    "rebuilds from the start when its runner next runs)",
                    "  moldau projections reset order-summary\n"
                    "  moldau projections reset order-summary --projection shop.views:summary")
    rebuild = command(actions, "rebuild", "rebuild a projection into a fresh read model and "
                      "swap it in (moldau replay --projection NAME)",
                      "  moldau projections rebuild order-summary --progress")
    for sub in (listing, status, reset, rebuild):
        add_server(sub)
        sub.set_defaults(usage_error=sub.error)
    for sub in (status, reset, rebuild):
        sub.add_argument("name", metavar="NAME")
    for sub in (listing, status):
        sub.add_argument("--output", choices=("table", "json"), default="table")
    for sub in (reset, rebuild):
        sub.add_argument("--projection", metavar="MODULE:ATTR", dest="code",
                         help="where the projection is defined (default: the registry's record)")
    reset.add_argument("--force", action="store_true",
                       help="reset even though the registry says a runner is live")
    rebuild.add_argument("--to-time", metavar="TIME", help="rebuild as of this time")
    rebuild.add_argument("--skip-errors", action="store_true",
                         help="send failing events to <topic>.replay-dlq and go on")
    rebuild.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def _fail(args: argparse.Namespace, message: str) -> NoReturn:
    args.usage_error(message)
    raise AssertionError("parser.error returned")  # pragma: no cover


def _row(status: ProjectionStatus, now_ms: int) -> dict[str, Any]:
    return {
        "name": status.name, "topic": status.topic, "category": status.category,
        "state": status.state, "lag": status.lag, "events_applied": status.events_applied,
        "positions": {str(p): o for p, o in sorted(status.positions.items())},
        "last_error": status.last_error, "store": status.store, "code": status.code,
        "updated": format_time(status.updated_ms), "age_ms": now_ms - status.updated_ms,
    }


def _fresh_lag(server: str | None, status: ProjectionStatus) -> int | None:
    with Admin(server) as admin:
        ends = admin.list_offsets(status.topic, "latest")
    return sum(max(0, o.offset - status.positions.get(o.partition, 0)) for o in ends)


def run_projections(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``moldau projections ACTION``; returns the exit code."""
    now_ms = int(time.time() * 1000)
    if args.action == "rebuild":
        return _rebuild(args, out, err)
    registry = read_registry(args.server)
    if args.action == "list":
        rows = [_row(s, now_ms) for _, s in sorted(registry.items())]
        if args.output == "json":
            print_json(rows, out)
        elif rows:
            out.write(format_table(
                ("NAME", "TOPIC", "CATEGORY", "STATE", "LAG", "EVENTS", "UPDATED"),
                [(r["name"], r["topic"], r["category"] or "*", r["state"], r["lag"],
                  r["events_applied"], f"{format_duration_ms(r['age_ms'])} ago")
                 for r in rows]) + "\n")
        else:
            err.write("no projections in the registry yet (runners register themselves)\n")
        return 0
    status = registry.get(args.name)
    if status is None:
        _fail(args, f"no projection named {args.name!r} in the registry; "
              "'moldau projections list' shows the known ones")
    if args.action == "status":
        row = _row(status, now_ms)
        row["lag"] = _fresh_lag(args.server, status)
        if args.output == "json":
            print_json(row, out)
            return 0
        for label, key in (("name", "name"), ("topic", "topic"), ("category", "category"),
                           ("state", "state"), ("lag", "lag"), ("events applied", "events_applied"),
                           ("positions", "positions"), ("last error", "last_error"),
                           ("store", "store"), ("code", "code"), ("updated", "updated")):
            value = row[key]
            if key == "positions":
                value = ", ".join(f"{p}:{o}" for p, o in value.items()) or "-"
            out.write(f"{label + ':':<16}{'-' if value is None else value}\n")
        return 0
    return _reset(args, status, now_ms, out)


def _reset(args: argparse.Namespace, status: ProjectionStatus, now_ms: int, out: TextIO) -> int:
    live = status.state in ("running", "caught-up") and now_ms - status.updated_ms < LIVE_WINDOW_MS
    if live and not args.force:
        _fail(args, f"projection {status.name} has a live runner (updated "
              f"{format_duration_ms(now_ms - status.updated_ms)} ago); stop it first, or pass "
              "--force")
    try:
        projection = load_projection(args.server, args.code or status.code or status.name)
    except ValueError as exc:
        _fail(args, str(exc))
    projection.store.open(projection)
    projection.store.reset()
    projection.store.close()
    with Admin(args.server) as admin:
        ensure_registry(admin)
    with Producer(args.server) as producer:
        record = projection.status()
        record.state, record.updated_ms = "reset", int(time.time() * 1000)
        write_status(producer, record)
        producer.flush()
    out.write(f"reset projection {projection.name} ({projection.store.describe()}); it rebuilds "
              "from the start of its topic when its runner next runs\n")
    return 0


def _rebuild(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    replay_args = argparse.Namespace(
        server=args.server, usage_error=args.usage_error, projection=args.code or args.name,
        topic=None, partition=None, stream=None, category=None, records=False,
        from_offset=None, to_offset=None, from_time=None, to_time=None, from_version=None,
        handler=None, jsonl=None, sqlite=None, to_topic=None, rate=None, dry_run=False,
        sample=5, skip_errors=args.skip_errors, max_events=None, resume_file=None,
        no_resume=False, progress=args.progress,
    )
    if args.to_time is not None:
        try:
            replay_args.to_time = parse_time_ms(args.to_time)
        except ValueError as exc:
            _fail(args, str(exc))
    code = run_replay(replay_args, out, err)
    if code == 0:
        out.write(f"rebuilt projection {args.name}\n")
    return code
