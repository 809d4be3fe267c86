"""``moldau exchanges``: declare, delete, list and describe exchanges; bind and unbind.

Kept out of ``cli.py``, which hooks it in with :func:`add_exchanges_command` and
:func:`run_exchanges`. A binding is named by all of its fields, so ``unbind`` takes the same
``--pattern`` / ``--arg`` / ``--match`` as the ``bind`` that made it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from moldau._cli_output import format_table, print_json
from moldau._cli_queues import CommandFactory
from moldau.exchanges import Binding, Exchange, ExchangeDescription, Exchanges

__all__ = ["add_exchanges_command", "parse_argument", "run_exchanges"]


def parse_argument(text: str) -> tuple[str, str | None]:
    """``K=V`` (header K with value V) or ``K`` (header K present, any value)."""
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE or NAME, got {text!r}")
    return key, value if sep else None


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_exchanges_command(
    commands: Any, command: CommandFactory, add_server: Callable[[Any], None]
) -> None:
    """Add ``moldau exchanges ACTION`` to the top-level subparsers of ``cli.build_parser``."""
    exchanges = command(
        commands, "exchanges",
        "declare, list, describe and delete exchanges; bind and unbind destinations",
        "  moldau exchanges declare events --type topic\n"
        "  moldau exchanges bind events eu-orders --pattern 'eu.order.#'\n"
        "  moldau exchanges describe events",
    )
    actions = exchanges.add_subparsers(dest="action", metavar="ACTION",
                                       parser_class=type(exchanges))
    actions.required = True
    declare = command(
        actions, "declare", "declare an exchange, creating its topic when missing",
        "  moldau exchanges declare events --type topic --partitions 3\n"
        "  moldau exchanges declare alerts --type fanout --alternate unrouted --provenance",
    )
    declare.add_argument("name", metavar="NAME")
    declare.add_argument("--type", required=True, dest="kind",
                         choices=("direct", "fanout", "topic", "headers"))
    declare.add_argument("--alternate", metavar="TOPIC",
                         help="topic for records that match no binding (it must exist)")
    declare.add_argument("--partitions", metavar="N", type=int, default=0,
                         help="partitions of the topic when it is created here (default 1)")
    declare.add_argument("--provenance", action="store_true",
                         help="routed records get x-exchange* headers naming their origin")
    declare.add_argument("--config", metavar="K=V", type=_key_value, action="append",
                         default=[], help="topic config override for a new topic (repeatable)")
    delete = command(actions, "delete", "delete an exchange and its bindings (the topic stays)",
                     "  moldau exchanges delete events")
    delete.add_argument("name", metavar="NAME")
    listing = command(actions, "list", "list exchanges with their routing counts",
                      "  moldau exchanges list\n  moldau exchanges list --output json")
    describe = command(actions, "describe",
                       "show an exchange, its bindings and the router's progress",
                       "  moldau exchanges describe events --output json")
    describe.add_argument("name", metavar="NAME")
    examples = ("  moldau exchanges {0} events eu-orders --pattern 'eu.order.*'\n"
                "  moldau exchanges {0} alerts pager --arg severity=critical --arg team "
                "--match all")
    bind = command(actions, "bind", "route an exchange's matching records to a topic",
                   examples.format("bind"))
    unbind = command(actions, "unbind", "remove the binding with exactly these fields",
                     examples.format("unbind"))
    for parser in (bind, unbind):
        parser.add_argument("exchange", metavar="EXCHANGE")
        parser.add_argument("destination", metavar="DESTINATION")
        parser.add_argument("--pattern", metavar="P", default="",
                            help="direct: the routing key; topic: a word pattern with * and #")
        parser.add_argument("--arg", metavar="K[=V]", type=parse_argument, action="append",
                            default=[], dest="arguments",
                            help="headers: header K with value V, or K present (repeatable)")
        parser.add_argument("--match", choices=("all", "any"), default="all",
                            help="headers: every argument must match (all) or one (any)")
    bindings = command(actions, "bindings", "list an exchange's bindings",
                       "  moldau exchanges bindings events\n"
                       "  moldau exchanges bindings events --destination eu-orders")
    bindings.add_argument("exchange", metavar="EXCHANGE")
    bindings.add_argument("--destination", metavar="TOPIC", default="",
                          help="only bindings to this topic")
    for parser in (declare, delete, listing, describe, bind, unbind, bindings):
        add_server(parser)
        parser.add_argument("--output", choices=("table", "json"), default="table")
        parser.set_defaults(usage_error=parser.error)


def _exchange_json(exchange: Exchange) -> dict[str, Any]:
    return {"name": exchange.name, "type": exchange.type, "alternate": exchange.alternate,
            "provenance": exchange.provenance, "partitions": exchange.partitions}


def _argument_text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _binding_json(binding: Binding) -> dict[str, Any]:
    return {"exchange": binding.exchange, "destination": binding.destination,
            "pattern": binding.pattern,
            "arguments": [[a.key, _argument_text(a.value)] for a in binding.arguments],
            "match": binding.match}


def _binding_row(binding: Binding) -> tuple[str, str, str, str]:
    arguments = " ".join(a.key if a.value is None else f"{a.key}={_argument_text(a.value)}"
                         for a in binding.arguments)
    return (binding.destination, binding.pattern or "-", arguments or "-",
            binding.match if binding.arguments else "-")


def run_exchanges(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``moldau exchanges ACTION``; returns 0 (errors are raised for ``cli.main``)."""
    with Exchanges(args.server) as exchanges:
        if args.action == "declare":
            declared = exchanges.declare(
                args.name, args.kind, alternate=args.alternate, partitions=args.partitions,
                provenance=args.provenance, configs=dict(args.config))
            if args.output == "json":
                print_json({"created": declared.created,
                            "exchange": _exchange_json(declared.exchange)}, out)
            else:
                e = declared.exchange
                verb = "declared" if declared.created else "found unchanged"
                out.write(f"{verb} {e.type} exchange {e.name} ({e.partitions} partition(s))\n")
        elif args.action == "delete":
            exchanges.delete(args.name)
            if args.output == "json":
                print_json({"exchange": args.name, "deleted": True}, out)
            else:
                out.write(f"deleted exchange {args.name} (its topic and records stay)\n")
        elif args.action == "list":
            _list(exchanges, args.output, out)
        elif args.action == "describe":
            _describe(exchanges.describe(args.name), args.output, out)
        elif args.action in ("bind", "unbind"):
            _bind(exchanges, args, out)
        else:
            found = exchanges.list_bindings(args.exchange, args.destination)
            _print_bindings(found, args.output, out)
    return 0


def _bind(exchanges: Exchanges, args: argparse.Namespace, out: TextIO) -> None:
    names = [key for key, _ in args.arguments]
    if len(set(names)) != len(names):
        args.usage_error("each --arg header name may be given once")
    arguments = dict(args.arguments)
    method = exchanges.bind if args.action == "bind" else exchanges.unbind
    changed = method(args.exchange, args.destination, pattern=args.pattern,
                     arguments=arguments, match=args.match)
    if args.output == "json":
        key = "created" if args.action == "bind" else "removed"
        print_json({key: changed, "binding": {
            "exchange": args.exchange, "destination": args.destination,
            "pattern": args.pattern, "arguments": [list(a) for a in args.arguments],
            "match": args.match}}, out)
    elif args.action == "bind":
        state = "bound" if changed else "already bound"
        out.write(f"{state}: {args.exchange} -> {args.destination}\n")
    else:
        state = "unbound" if changed else "no such binding"
        out.write(f"{state}: {args.exchange} -> {args.destination}\n")


def _list(exchanges: Exchanges, output: str, out: TextIO) -> None:
    summaries = exchanges.list_exchanges()
    if output == "json":
        print_json([{"exchange": _exchange_json(s.exchange), "bindings": s.bindings,
                     "routed": s.routed, "unroutable": s.unroutable, "lag": s.lag,
                     "error": s.error} for s in summaries], out)
    elif summaries:
        rows = [(s.exchange.name, s.exchange.type, s.bindings, s.routed, s.unroutable, s.lag,
                 s.error or "routing") for s in summaries]
        out.write(format_table(("EXCHANGE", "TYPE", "BINDINGS", "ROUTED", "UNROUTABLE", "LAG",
                                "STATUS"), rows) + "\n")


def _describe(d: ExchangeDescription, output: str, out: TextIO) -> None:
    s, e = d.summary, d.summary.exchange
    if output == "json":
        print_json({
            "exchange": _exchange_json(e), "routed": s.routed, "unroutable": s.unroutable,
            "lag": s.lag, "error": s.error,
            "bindings": [_binding_json(b) for b in d.bindings],
            "partitions": [{name: getattr(p, name) for name in type(p).__slots__}
                           for p in d.partitions],
        }, out)
        return
    extra = f", alternate {e.alternate}" if e.alternate else ""
    extra += ", provenance headers" if e.provenance else ""
    out.write(f"exchange {e.name}: {e.type}, {e.partitions} partition(s){extra}\n"
              f"routed {s.routed}, unroutable {s.unroutable}, lag {s.lag}"
              f"{', PAUSED: ' + s.error if s.error else ''}\n\n")
    _print_bindings(list(d.bindings), "table", out)
    rows = [(p.partition, p.checkpoint_offset, p.high_watermark, p.lag, p.routed, p.unroutable,
             p.expired) for p in d.partitions]
    out.write("\n" + format_table(("PARTITION", "CHECKPOINT", "HIGH WATERMARK", "LAG",
                                   "ROUTED", "UNROUTABLE", "EXPIRED"), rows) + "\n")


def _print_bindings(bindings: Sequence[Binding], output: str, out: TextIO) -> None:
    if output == "json":
        print_json([_binding_json(b) for b in bindings], out)
    elif bindings:
        out.write(format_table(("DESTINATION", "PATTERN", "ARGUMENTS", "MATCH"),
                               [_binding_row(b) for b in bindings]) + "\n")
    else:
        out.write("no bindings\n")
