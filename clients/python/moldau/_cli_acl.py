"""``moldau acl``, ``moldau whoami``, ``moldau token``, and the credential flags of every client
command.

Kept out of ``cli.py``, which only hooks it in: :func:`add_security_commands` adds the commands
and, to every client command (those with ``--server``), the flags ``--token``,
``--tls-ca-file``, ``--tls-cert-file`` and ``--tls-key-file``. :func:`credentials_env` turns the
flags given into the ``MOLDAU_TOKEN`` / ``MOLDAU_TLS_*`` variables for the duration of the
command, which every client reads (see docs/security.md), so no command needs to pass them on.

``acl add`` takes one principal, one resource and one or more operations; it stores one binding
per operation (``--operation read --operation describe``), like Kafka's ``kafka-acls --add``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from moldau._acl_admin import Acl
from moldau._cli_output import format_table, print_json
from moldau.admin import Admin

__all__ = ["add_security_commands", "credentials_env", "hash_token", "run_security_command"]

CommandFactory = Callable[[Any, str, str, str], argparse.ArgumentParser]

RESOURCE_TYPES = ("topic", "group", "queue", "exchange", "stream", "cluster")
OPERATIONS = ("read", "write", "create", "delete", "alter", "describe", "all")
_CREDENTIAL_FLAGS = {
    "--token": ("token", "MOLDAU_TOKEN", "TOKEN", "bearer token (default $MOLDAU_TOKEN)"),
    "--tls-ca-file": ("tls_ca_file", "MOLDAU_TLS_CA_FILE", "FILE",
                      "CA of the server's certificate: use TLS (default $MOLDAU_TLS_CA_FILE)"),
    "--tls-cert-file": ("tls_cert_file", "MOLDAU_TLS_CERT_FILE", "FILE",
                        "client certificate for mTLS (default $MOLDAU_TLS_CERT_FILE)"),
    "--tls-key-file": ("tls_key_file", "MOLDAU_TLS_KEY_FILE", "FILE",
                       "key of the client certificate (default $MOLDAU_TLS_KEY_FILE)"),
}


def hash_token(token: str) -> str:
    """The tokens-file form: ``sha256:`` + hex SHA-256 (the server's grpc_api.auth does the
    same; repeated here so client commands never import the server)."""
    import hashlib  # noqa: PLC0415  (only the token command needs it)

    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


# ---------------------------------------------------------------------------- parsers


def _resource_flags(parser: argparse.ArgumentParser, *, required: bool) -> None:
    resource = parser.add_mutually_exclusive_group(required=required)
    for kind in RESOURCE_TYPES:
        if kind == "cluster":
            resource.add_argument("--cluster", action="store_true",
                                  help="the cluster itself (ACL administration)")
        else:
            resource.add_argument(f"--{kind}", metavar="NAME",
                                  help=f"a {kind} name ('*' for every {kind}), or a prefix with "
                                  "--prefixed" + (" (streams are TOPIC/STREAM)"
                                                  if kind == "stream" else ""))
    parser.add_argument("--prefixed", action="store_true",
                        help="the name is a prefix: the ACL covers every name starting with it")


def add_security_commands(commands: Any, command: CommandFactory,
                          add_server: Callable[[Any], None]) -> None:
    """Add ``acl``, ``whoami`` and ``token`` to the top-level subparsers of ``cli``."""
    acl = command(commands, "acl", "add, remove and list access control entries (ACLs)",
                  "  moldau acl add --allow User:alice --operation read --topic orders\n"
                  "  moldau acl add --allow User:etl --operation write --topic orders. "
                  "--prefixed\n  moldau acl list --principal User:alice\n"
                  "  moldau acl remove --principal User:alice --topic orders")
    actions = acl.add_subparsers(dest="action", metavar="ACTION", parser_class=type(acl))
    actions.required = True
    add = command(actions, "add", "allow (or deny) a principal operations on a resource",
                  "  moldau acl add --allow User:alice --operation read --topic orders\n"
                  "  moldau acl add --deny User:* --operation all --topic secrets\n"
                  "  moldau acl add --allow User:ops --operation alter --cluster")
    who = add.add_mutually_exclusive_group(required=True)
    who.add_argument("--allow", metavar="PRINCIPAL", help="User:<name>, User:* or User:ANONYMOUS")
    who.add_argument("--deny", metavar="PRINCIPAL", help="a deny wins over every allow")
    add.add_argument("--operation", metavar="OP", action="append", required=True,
                     choices=OPERATIONS, help=f"one of {', '.join(OPERATIONS)} (repeatable)")
    _resource_flags(add, required=True)
    remove = command(actions, "remove", "remove the ACLs matching every flag given",
                     "  moldau acl remove --principal User:alice\n"
                     "  moldau acl remove --principal User:etl --topic orders. --prefixed\n"
                     "  moldau acl remove --all")
    listing = command(actions, "list", "list ACLs (those matching every flag given)",
                      "  moldau acl list\n  moldau acl list --topic orders --output json")
    for parser in (remove, listing):
        parser.add_argument("--principal", metavar="PRINCIPAL")
        parser.add_argument("--operation", metavar="OP", choices=OPERATIONS)
        parser.add_argument("--permission", choices=("allow", "deny"))
        _resource_flags(parser, required=False)
        parser.add_argument("--output", choices=("table", "json"), default="table")
    remove.add_argument("--all", action="store_true", help="remove every ACL")
    for parser in (add, remove, listing):
        add_server(parser)

    whoami = command(commands, "whoami", "show the principal the server sees for you",
                     "  MOLDAU_TOKEN=... moldau whoami\n  moldau whoami --output json")
    whoami.add_argument("--output", choices=("plain", "json"), default="plain")
    add_server(whoami)

    token = command(commands, "token", "make tokens and their hashes for the tokens file",
                    "  moldau token new --name alice\n  moldau token hash s3cret\n"
                    "  printf %s \"$TOKEN\" | moldau token hash")
    token_actions = token.add_subparsers(dest="action", metavar="ACTION",
                                         parser_class=type(token))
    token_actions.required = True
    new = command(token_actions, "new", "print a new random token and its tokens-file line",
                  "  moldau token new --name alice")
    new.add_argument("--name", metavar="NAME", default="NAME",
                     help="the user name for the tokens-file line (principal User:NAME)")
    hashing = command(token_actions, "hash", "print the sha256:... form of a token",
                      "  moldau token hash s3cret\n  moldau token hash < token.txt")
    hashing.add_argument("token", metavar="TOKEN", nargs="?",
                         help="the token (default: read one line from stdin)")


def add_credential_flags(parser: argparse.ArgumentParser) -> None:
    """``--token`` and the TLS flags on every client command of ``parser``'s tree."""
    if any("--server" in action.option_strings for action in parser._actions):
        group = parser.add_argument_group("credentials")
        for flag, (dest, _env, metavar, help_text) in _CREDENTIAL_FLAGS.items():
            group.add_argument(flag, dest=dest, metavar=metavar, help=help_text,
                               default=argparse.SUPPRESS)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                add_credential_flags(child)


@contextlib.contextmanager
def credentials_env(args: argparse.Namespace) -> Iterator[None]:
    """Export the credential flags given as ``MOLDAU_*`` variables while the command runs."""
    saved: dict[str, str | None] = {}
    for dest, env, _metavar, _help in _CREDENTIAL_FLAGS.values():
        value = getattr(args, dest, None)
        if value:
            saved[env] = os.environ.get(env)
            os.environ[env] = value
    try:
        yield
    finally:
        for env, previous in saved.items():
            if previous is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = previous


# ---------------------------------------------------------------------------- commands


def _resource(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(resource type, name) from the resource flags; (None, None) when none is given."""
    if getattr(args, "cluster", False):
        return "cluster", "cluster"
    for kind in RESOURCE_TYPES:
        name = getattr(args, kind, None)
        if isinstance(name, str):
            return kind, name
    return None, None


def _acl_rows(acls: list[Acl]) -> list[tuple[str, ...]]:
    return [(a.permission.upper(), a.principal, a.operation, a.resource_type, a.pattern_type,
             a.resource_name) for a in acls]


def _print_acls(acls: list[Acl], output: str, out: TextIO) -> None:
    if output == "json":
        print_json([{"principal": a.principal, "permission": a.permission,
                     "operation": a.operation, "resource_type": a.resource_type,
                     "pattern_type": a.pattern_type, "resource_name": a.resource_name,
                     "created_ms": a.created_ms} for a in acls], out)
    elif acls:
        out.write(format_table(("PERMISSION", "PRINCIPAL", "OPERATION", "RESOURCE", "PATTERN",
                                "NAME"), _acl_rows(acls)) + "\n")


def _acl(args: argparse.Namespace, out: TextIO) -> int:
    resource_type, name = _resource(args)
    pattern = "prefixed" if args.prefixed else None
    with Admin(args.server) as admin:
        if args.action == "add":
            assert resource_type is not None
            assert name is not None
            principal = args.allow or args.deny
            acls = [Acl(principal, resource_type, name, operation,
                        "allow" if args.allow else "deny", pattern or "literal")
                    for operation in dict.fromkeys(args.operation)]
            created = admin.create_acls(acls)
            for acl in acls:
                state = "added" if acl in {_strip(c) for c in created} else "already present"
                out.write(f"{state}: {acl.permission} {acl.principal} {acl.operation} on "
                          f"{acl.resource_type} {acl.pattern_type} {acl.resource_name!r}\n")
            return 0
        fields = {"principal": args.principal, "resource_type": resource_type,
                  "resource_name": name, "operation": args.operation,
                  "permission": args.permission, "pattern_type": pattern}
        if args.action == "remove":
            if not any(fields.values()) and not args.all:
                from moldau.cli import UsageError  # noqa: PLC0415  (a cycle at import time)

                raise UsageError("acl remove needs at least one filter flag, or --all to "
                                 "remove every ACL")
            deleted = admin.delete_acls(**fields)
            if args.output == "json":
                _print_acls(deleted, "json", out)
            else:
                out.write(f"removed {len(deleted)} ACL(s)\n")
                _print_acls(deleted, "table", out)
            return 0
        _print_acls(admin.list_acls(**fields), args.output, out)
    return 0


def _strip(acl: Acl) -> Acl:
    return Acl(acl.principal, acl.resource_type, acl.resource_name, acl.operation,
               acl.permission, acl.pattern_type)


def _whoami(args: argparse.Namespace, out: TextIO) -> int:
    with Admin(args.server) as admin:
        me = admin.whoami()
    if args.output == "json":
        print_json({"principal": me.principal, "method": me.method,
                    "super_user": me.super_user, "auth_enabled": me.auth_enabled}, out)
        return 0
    notes = [f"by {me.method}"]
    if me.super_user:
        notes.append("super user")
    if not me.auth_enabled:
        notes.append("authentication is off on this server: everything is allowed")
    out.write(f"{me.principal} ({', '.join(notes)})\n")
    return 0


def _token(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    if args.action == "new":
        token = secrets.token_urlsafe(32)
        out.write(f"token: {token}\n")
        out.write(f"tokens-file line (under [tokens]): {args.name} = \"{hash_token(token)}\"\n")
        return 0
    token = args.token if args.token is not None else stdin.readline().rstrip("\r\n")
    if not token:
        from moldau.cli import UsageError  # noqa: PLC0415  (a cycle at import time)

        raise UsageError("token hash needs a token: as an argument or on stdin")
    out.write(hash_token(token) + "\n")
    return 0


def run_security_command(args: argparse.Namespace, out: TextIO, stdin: TextIO | None = None
                         ) -> int:
    """Run ``moldau acl|whoami|token``; errors are raised for ``cli.main``."""
    if args.command == "acl":
        return _acl(args, out)
    if args.command == "whoami":
        return _whoami(args, out)
    return _token(args, stdin or sys.stdin, out)
